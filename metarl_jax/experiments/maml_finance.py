"""MAML for financial risk control on real market data, evaluated walk-forward.

    python -m experiments.maml_finance --help
    python -m experiments.maml_finance --num-iterations 300 --train-end 2009-01-01

A task is a 60-day window of one asset (S&P 500, NASDAQ, WTI crude; the daily series the ``arch``
package ships, 1999-2018) with its own risk aversion, transaction cost and daily loss limit
(:class:`metarl_jax.tasks.finance.RiskControl`). Meta-training sees windows before ``--train-end``
only (feature normalisation too); evaluation trades windows after it, the meta-learned policy
adapting on the 60 days before each window (:mod:`metarl_jax.walk_forward`), against cash, buy and
hold, volatility targeting, the multi-task policy and the best fixed position in hindsight.
Writes, beside the usual run files, ``walk_forward.md`` / ``walk_forward.json`` (the table with 95%
confidence intervals over windows), ``equity_curves.png``, ``positions.png`` and
``attributions.png`` (integrated gradients of the position before and after adaptation on one
held-out window). Needs the ``finance`` extra (``pip install 'metarl-jax[finance]'``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax
import numpy as np

from metarl_jax import explain, plotting, walk_forward
from metarl_jax.experiment import MAMLExperimentConfig, ReportContext, build_algorithm, cli_main, write_json
from metarl_jax.tasks.finance import (FEATURE_NAMES, load_arch, risk_control_family, run_episode,
                                      volatility_targeting_policy)
from metarl_jax.tasks.finance.data import ARCH_SERIES
from metarl_jax.training.loop import run as training_run
from metarl_jax.validation import check_bool, check_choice, check_int, check_real, require


@dataclasses.dataclass(frozen=True)
class FinanceConfig(MAMLExperimentConfig):
    """MAML-PG on risk-control windows of real daily prices; defaults run in a few minutes on a 2-core CPU."""

    task: str = "risk_control"
    name: str = "maml_finance"
    num_iterations: int = 100
    meta_batch: int = 20
    num_episodes: int = 10
    horizon: int = 60
    """trading days per window (one episode)"""
    estimator: str = "lvc"
    hidden_sizes: tuple[int, ...] = (64, 64)
    inner_steps: int = 1
    eval_tasks: int = 50
    assets: tuple[str, ...] = ("sp500", "nasdaq", "wti")
    """arch series traded (metarl_jax.tasks.finance.ARCH_SERIES' daily ones)"""
    train_assets: tuple[str, ...] | None = None
    """assets of the meta-training windows (and of the feature statistics); None: every asset"""
    test_assets: tuple[str, ...] | None = None
    """assets of the held-out windows (e.g. one never trained on: across assets as well as time); None: every asset"""
    train_end: str = "2011-01-01"
    """first day of the held-out period: meta-training and feature statistics use only earlier days"""
    eval_windows: int = 100
    """held-out windows of the walk-forward table"""
    target_vol: float = 0.01
    """volatility targeting baseline: daily volatility aimed at (0.01 ~ 16% a year)"""
    multitask_baseline: bool = True
    """also train the multi-task policy (same budget, no adaptation) on the training period as a baseline"""

    TASK_CHOICES: ClassVar[tuple[str, ...]] = ("risk_control",)
    REPORT_PHASES: ClassVar[tuple[str, ...]] = ("multi-task baseline", "walk-forward evaluation", "finance plots")

    def __post_init__(self):
        require(isinstance(self.assets, (tuple, list)) and len(self.assets) >= 1, "assets", self.assets,
                "must name at least one series")
        object.__setattr__(self, "assets", tuple(self.assets))
        daily = tuple(name for name, (_, _, frequency) in ARCH_SERIES.items() if frequency == "daily")
        for asset in self.assets:
            require(asset in daily, "assets", self.assets, f"each must be one of the daily series {daily}")
        for field in ("train_assets", "test_assets"):
            subset = getattr(self, field)
            if subset is not None:
                require(isinstance(subset, (tuple, list)) and len(subset) >= 1
                        and all(a in self.assets for a in subset), field, subset,
                        f"must be None or a non-empty subset of assets={self.assets}")
                object.__setattr__(self, field, tuple(subset))
        try:
            np.datetime64(self.train_end, "D")
        except (TypeError, ValueError):
            require(False, "train_end", self.train_end, "must be a date such as '2011-01-01'")
        check_int("eval_windows", self.eval_windows, minimum=2)
        check_real("target_vol", self.target_vol, minimum=0.0, min_open=True)
        check_bool("multitask_baseline", self.multitask_baseline)
        super().__post_init__()

    def split_day(self) -> tuple[int, int]:
        """``(first held-out day index, number of days)`` of the aligned series."""
        data = load_arch(self.assets)
        split = data.day_index(self.train_end)
        require(2 * self.horizon < split < data.num_days - 2 * self.horizon, "train_end", self.train_end,
                f"must leave at least two windows of {self.horizon} days on each side "
                f"(the series run {data.dates[0]} .. {data.dates[-1]})")
        return split, data.num_days

    def make_family(self, split: str = "train"):
        """Windows of ``train_assets`` before ``train_end`` (``"train"``) or of ``test_assets`` after it
        (``"test"``), features normalised with the statistics of the training days and assets only."""
        check_choice("split", split, ("train", "test"))
        first_test, num_days = self.split_day()
        period, tradable = ((0, first_test), self.train_assets) if split == "train" else \
            ((first_test, num_days), self.test_assets)
        return risk_control_family(self.assets, horizon=self.horizon, period=period, train_end=first_test,
                                   statistics_assets=self.train_assets, tradable=tradable)

    def report(self, context: ReportContext) -> dict:
        """The multi-task baseline, the walk-forward table, the equity / position / attribution plots."""
        test_family = self.make_family("test")
        multitask_params = None
        if self.multitask_baseline:
            baseline = dataclasses.replace(self, algorithm="multitask")
            state, _ = training_run(build_algorithm(baseline), context.train_config,
                                    os.path.join(context.run_dir, "multitask"), progress=False,
                                    interrupt=context.interrupt, metadata={"algorithm": "multitask"})
            multitask_params = state.meta_params
        key = jax.random.PRNGKey(self.seed + 3_000_017)
        results = walk_forward.walk_forward(test_family, context.learner, context.maml_config,
                                            context.state.meta_params, key, self.eval_windows,
                                            self.evaluated_steps, multitask_params, self.target_vol)
        summary = walk_forward.summarize(results)
        last = f"maml k={self.evaluated_steps}"
        comparisons = {f"{last} - {other}": walk_forward.paired_difference(results, last, other)
                       for other in ("maml k=0", "multitask", "volatility_targeting", "buy_and_hold", "cash")
                       if other in results}
        data = load_arch(self.assets)
        first_test, _ = self.split_day()
        title = (f"Walk-forward: {self.eval_windows} held-out windows of {self.horizon} days, "
                 f"{data.dates[first_test]} .. {data.dates[-1]} ({', '.join(self.test_assets or self.assets)}); "
                 f"trained on {data.dates[0]} .. {data.dates[first_test - 1]} "
                 f"({', '.join(self.train_assets or self.assets)}); mean ± 95% CI over windows")
        table = walk_forward.format_table(summary)
        paired = "\n".join(f"- reward of {name}: {v['mean']:.4f} ± {v['ci95']:.4f} (paired by window)"
                           for name, v in comparisons.items())
        with open(os.path.join(context.run_dir, "walk_forward.md"), "w", encoding="utf-8") as f:
            f.write(f"{title}\n\n{table}\n\n{paired}\n")
        windows = {k: v.tolist() for k, v in results["_windows"].items()}
        write_json(os.path.join(context.run_dir, "walk_forward.json"),
                   {"summary": summary, "paired_reward_differences": comparisons, "windows": windows,
                    "per_window": {name: {m: r[m].tolist() for m in walk_forward.METRICS}
                                   for name, r in results.items() if not name.startswith("_")}})
        self._plots(context, test_family, results, data, key)
        return {"walk_forward": summary, "walk_forward_paired": comparisons,
                "report_text": f"{title}\n{table}\n{paired}"}

    def _plots(self, context: ReportContext, family, results: dict, data, key) -> None:
        """Equity curves and positions on the first held-out window; attributions before and after adaptation."""
        window = 0
        start = int(results["_windows"]["start"][window])
        dates = data.dates[start:start + self.horizon + 1]
        shown = [n for n in ("buy_and_hold", "volatility_targeting", "multitask", "maml k=0",
                             f"maml k={self.evaluated_steps}", "hindsight_fixed", "cash") if n in results]
        asset = data.assets[int(results["_windows"]["asset"][window])]
        plotting.plot_equity_curves({n: results[n]["net"][window] for n in shown},
                                    os.path.join(context.run_dir, "equity_curves.png"),
                                    title=f"{asset}, held-out window from {dates[0]}", dates=dates)
        plotting.plot_positions({n: results[n]["position"][window] for n in shown if n != "cash"},
                                os.path.join(context.run_dir, "positions.png"),
                                title=f"{asset}: position over the held-out window", dates=dates[:-1])
        adapt_tasks, eval_tasks = results["_tasks"]["adapt"], results["_tasks"]["eval"]
        pick = lambda tasks: jax.tree.map(lambda x: x[window], tasks)
        # the states a volatility-targeting trader visits on the window (its positions vary, unlike cash's)
        vol_target = volatility_targeting_policy(family, self.target_vol)
        states = run_episode(family, pick(eval_tasks), vol_target, key)["obs"]
        explained = explain.explain_adaptation(context.learner, context.maml_config, context.state.meta_params,
                                               pick(adapt_tasks), key, states, steps=self.evaluated_steps,
                                               num_steps=128)
        plotting.plot_attributions(list(FEATURE_NAMES) + ["position", "time"], explained["before"],
                                   explained["after"], os.path.join(context.run_dir, "attributions.png"),
                                   title=f"integrated gradients of the position, {asset} window from {dates[0]}\n"
                                         f"before vs after {self.evaluated_steps} inner step(s) on the {self.horizon} days before")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) into a :class:`FinanceConfig` and run it; returns the exit status (metarl_jax.experiment.cli_main)."""
    return cli_main(FinanceConfig, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
