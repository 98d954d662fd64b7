"""Uniform vs prioritised task selection on a bandit family with rare hard tasks (a benchmark).

Family: :class:`metarl_jax.tasks.hard_tasks.RareBestArmBandit` with ``common_arms=1``: the
best arm is arm 0, except in a rare ``rare_fraction`` of the tasks, where it is the last
arm. Every variant (uniform sampling; PLR with rank prioritisation at each temperature in
``temperatures``, scored by the optimality gap ``R* - R_post``) meta-trains the same
learner from the same seed on the same fixed pool of ``pool_size`` tasks for the same
number of meta-iterations (:func:`metarl_jax.algorithms.task_selection.with_task_selection` around MAML). Then,
on ``eval_tasks`` held-out tasks (fresh draws from the family, the same for every run),
each meta-learned policy adapts with the training procedure (``inner_steps`` inner steps)
and is scored with ``eval_episodes`` episodes. Reported per run and as mean ± sd over seeds:

* ``worst_decile``: mean post-adaptation return of the worst 10% of held-out tasks;
* ``mean``: mean post-adaptation return; ``rare_mean`` / ``common_mean`` by task kind;
* ``worst_decile_regret``: mean of the largest 10% of ``R* - R_post``;
* ``rare_sampled``: fraction of training draws that were rare tasks.

    python -m experiments.benchmark_task_selection
    python -m experiments.benchmark_task_selection --seeds 0 1 2 3 4 --num-iterations 500 --temperatures 1.0

Prints one JSON object and writes ``runs/benchmark_task_selection/<timestamp>/`` with
``results.json`` and ``task_selection.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

from metarl_jax import evaluation
from metarl_jax.algorithms.maml import maml
from metarl_jax.algorithms.task_selection import tail_mean, with_task_selection
from metarl_jax.experiment import LEARNERS, MAMLExperimentConfig, new_run_dir, parse_cli, write_json
from metarl_jax.algorithms.task_sampler import TaskSelectionConfig
from metarl_jax.tasks import sample_tasks
from metarl_jax.training.loop import make_optimizer
from metarl_jax.training.loop import run as training_run
from metarl_jax.validation import check_int, check_int_sequence
from metarl_jax.tasks.hard_tasks import RareBestArmBandit

@dataclasses.dataclass(frozen=True)
class TaskSelectionBenchmark:
    """Uniform vs PLR task selection on RareBestArmBandit, equal meta-iterations."""

    num_arms: int = 5
    horizon: int = 10
    rare_fraction: float = 0.1
    common_arms: int = 1
    """the common tasks' best arm is one of the first common_arms arms (1: always arm 0)"""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    num_iterations: int = 300
    meta_batch: int = 20
    pool_size: int = 200
    num_episodes: int = 10
    """episodes per inner step and for the outer loss"""
    normalize: str = "episode"
    """surrogate normalisation ('episode': sum over time; 'step': mean over steps)"""
    inner_lr: float = 0.3
    inner_steps: int = 1
    outer_lr: float = 1e-2
    estimator: str = "lvc"
    hidden_sizes: tuple[int, ...] = (32,)
    temperatures: tuple[float, ...] = (1.0, 0.3)
    """PLR temperatures beta to compare (rank prioritisation: P_S ~ rank^(-1/beta)), one run each"""
    staleness_coef: float = 0.1
    score: str = "optimality_gap"
    eval_tasks: int = 1000
    eval_episodes: int = 100
    """episodes scoring each adapted policy on a held-out task"""
    iterations_per_call: int = 50
    out_dir: str = "runs"
    name: str = "benchmark_task_selection"

    def __post_init__(self):
        check_int_sequence("seeds", self.seeds, minimum=0)
        check_int("eval_tasks", self.eval_tasks, minimum=10)
        check_int("eval_episodes", self.eval_episodes, minimum=1)
        self.family()
        self.experiment_config()
        self.variants()

    def family(self) -> RareBestArmBandit:
        return RareBestArmBandit(num_arms=self.num_arms, horizon=self.horizon, rare_fraction=self.rare_fraction,
                                 common_arms=self.common_arms)

    def experiment_config(self, seed: int = 0) -> MAMLExperimentConfig:
        return MAMLExperimentConfig(
            task="bandit", seed=seed, num_iterations=self.num_iterations, meta_batch=self.meta_batch,
            num_episodes=self.num_episodes, horizon=self.horizon, gamma=1.0, baseline="mean",
            normalize=self.normalize, inner_lr=self.inner_lr, inner_steps=self.inner_steps,
            estimator=self.estimator, outer_lr=self.outer_lr,
            hidden_sizes=self.hidden_sizes, iterations_per_call=self.iterations_per_call,
            checkpoint_every=self.num_iterations, out_dir=self.out_dir, name=self.name,
        )

    def variants(self) -> dict[str, TaskSelectionConfig]:
        """``{"uniform": ..., "prioritized_beta<T>": ...}``: the task-selection configs compared."""
        make = lambda strategy, beta: TaskSelectionConfig(strategy=strategy, pool_size=self.pool_size, score=self.score,
                                                          temperature=beta, staleness_coef=self.staleness_coef)
        out = {"uniform": make("uniform", 1.0)}
        out.update({f"prioritized_beta{beta:g}": make("prioritized", float(beta)) for beta in self.temperatures})
        return out


def _summary(values: list[float]) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "median": float(np.median(values)), "min": float(values.min()), "per_seed": values.tolist()}


def run(bench: TaskSelectionBenchmark, progress: bool = True) -> dict:
    """Train every variant for every seed, evaluate on the held-out tasks, write results and the figure."""
    family = bench.family()
    base = bench.experiment_config()
    learner = LEARNERS["pg"](base, family)
    maml_config = base.maml_config()
    eval_learner = dataclasses.replace(
        learner, config=dataclasses.replace(learner.config, num_outer_episodes=bench.eval_episodes))
    key_tasks, key_eval = jax.random.split(jax.random.PRNGKey(1_000_003))
    held_out = sample_tasks(family, key_tasks, bench.eval_tasks)
    rare = np.asarray(family.is_rare(held_out))
    optimum = np.asarray(evaluation.optimal_returns(family, held_out, bench.horizon))
    curve = jax.jit(lambda mp: evaluation.adaptation_returns(eval_learner, maml_config, mp, held_out, key_eval,
                                                             bench.inner_steps))
    root = new_run_dir(base)
    print(f"run directory: {root}  (jax {jax.__version__} on {jax.devices()[0].platform})", file=sys.stderr)

    variants = bench.variants()
    # One algorithm per variant, shared by the seeds (they differ only in the initial key): one compilation each.
    outer_tx, skip = make_optimizer(base.train_config()), base.on_nonfinite == "skip"
    algorithms = {name: with_task_selection(lambda sample: maml(learner, maml_config, outer_tx, sample,
                                                                skip_nonfinite=skip),
                                            learner.env, selection, base.meta_batch, int(learner.config.horizon))
                  for name, selection in variants.items()}
    runs = {name: [] for name in variants}
    rare_drawn = {name: [] for name in variants}
    for seed in bench.seeds:
        train_config = bench.experiment_config(seed).train_config()
        for name, selection in variants.items():
            t0 = time.perf_counter()
            state, history = training_run(algorithms[name], train_config, os.path.join(root, f"{name}-seed{seed}"),
                                          progress=progress, desc=f"meta-iterations ({selection.strategy})",
                                          metadata={"selection": dataclasses.asdict(selection)})
            seconds = time.perf_counter() - t0
            returns = np.asarray(curve(state.meta_params))  # [tasks, inner_steps + 1]
            post = returns[:, -1]
            pool_rare = np.asarray(family.is_rare(state.pool))
            drawn = pool_rare[np.asarray([h["task_indices"] for h in history])]  # [iterations, meta_batch]
            runs[name].append({
                "seed": seed,
                "worst_decile": tail_mean(post, 0.1),
                "mean": float(post.mean()),
                "rare_mean": float(post[rare].mean()),
                "common_mean": float(post[~rare].mean()),
                "pre_adaptation_mean": float(returns[:, 0].mean()),
                "worst_decile_regret": -tail_mean(post - optimum, 0.1),
                "rare_sampled": float(drawn.mean()),
                "rare_in_pool": float(pool_rare.mean()),
                "train_seconds_incl_compile": seconds,
            })
            rare_drawn[name].append(drawn.mean(axis=1))
    keys = ("worst_decile", "mean", "rare_mean", "common_mean", "pre_adaptation_mean", "worst_decile_regret",
            "rare_sampled")
    result = {
        "benchmark": "task_selection",
        "family": family.name,
        "config": dataclasses.asdict(bench),
        "held_out": {"tasks": bench.eval_tasks, "rare_fraction": float(rare.mean()),
                     "optimum_mean": float(optimum.mean())},
        "summary": {name: {k: _summary([r[k] for r in runs[name]]) for k in keys} for name in variants},
        "runs": runs,
        "run_dir": root,
        "device": jax.devices()[0].platform,
    }
    write_json(os.path.join(root, "results.json"), result)
    _plot(result, rare_drawn, os.path.join(root, "task_selection.png"))
    return result


def _plot(result: dict, rare_drawn: dict, path: str) -> None:
    from metarl_jax import plotting  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax = axes[0]
    metrics = [("worst_decile", "worst decile"), ("rare_mean", "rare tasks"), ("common_mean", "common tasks"),
               ("mean", "all tasks")]
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        summary = result["summary"][name]
        xs = np.arange(len(metrics)) + (j - (len(names) - 1) / 2) * width
        ax.bar(xs, [summary[m]["mean"] for m, _ in metrics], width, label=name, alpha=0.8)
        for x, (m, _) in zip(xs, metrics):
            ax.scatter(np.full(len(summary[m]["per_seed"]), x), summary[m]["per_seed"], color="k", s=8, zorder=3)
    ax.axhline(result["held_out"]["optimum_mean"], color="k", linestyle=":", label="mean exact optimum")
    ax.set_xticks(np.arange(len(metrics)), [label for _, label in metrics])
    ax.set_ylabel("post-adaptation return, held-out tasks")
    ax.set_title(f"equal meta-iterations; dots: {len(result['runs'][names[0]])} seeds")
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    for name in names:
        y = np.mean(rare_drawn[name], axis=0)
        k = max(1, len(y) // 30)
        ax.plot(np.arange(k - 1, len(y)), np.convolve(y, np.ones(k) / k, mode="valid"), label=name)
    pool_rare = np.mean([r["rare_in_pool"] for runs in result["runs"].values() for r in runs])
    ax.axhline(pool_rare, color="k", linestyle="--", label="rare fraction of the pool")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("fraction of rare tasks in the meta-batch")
    ax.set_title(result["family"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    bench = parse_cli(TaskSelectionBenchmark, argv, description=__doc__)
    result = run(bench)
    brief = {name: {k: [round(v["mean"], 3), round(v["sd"], 3), round(v["median"], 3), round(v["min"], 3)]
                    for k, v in summary.items()} for name, summary in result["summary"].items()}
    print(json.dumps({"benchmark": "task_selection", "family": result["family"], "seeds": list(bench.seeds),
                      "iterations": bench.num_iterations, "summary_mean_sd_median_min": brief,
                      "run_dir": result["run_dir"],
                      "device": result["device"]}))
    return result


if __name__ == "__main__":
    main()
