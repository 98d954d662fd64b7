r"""Walk-forward evaluation of risk-control policies on held-out market windows.

Meta-training sees windows of an early period only (a :class:`~metarl_jax.tasks.finance.RiskControl`
family on ``(lo, s)``); evaluation uses windows of the later period ``(s, hi)``. For an
evaluation window starting on day ``d`` the meta-learned policy adapts on the **preceding** window,
days ``d - H .. d - 1`` (same asset, same risk parameters): the data a trader has when the window
opens. Adapting on the evaluated window itself would read its future. Every strategy then trades
the evaluation window with deterministic positions (the Gaussian mean):

* ``cash`` (``p = 0``), ``buy_and_hold`` (``p = 1``), ``volatility_targeting``
  (``p = min(1, sigma* / sigma_t)``), the ``multitask`` policy (trained on the early period without
  adaptation), ``maml k=0..K`` (the meta-learned start after ``k`` inner steps on the preceding window);
* ``hindsight_fixed``: the best constant position for the window, chosen knowing the window
  (:func:`~metarl_jax.tasks.finance.hindsight_best_fixed_position`): an exact upper bound on what
  any constant position earns, not a tradable strategy.

Per window, with ``x_t = p_t R_t - c |p_t - p_{t-1}|`` the day's net log-return of the strategy
(``R_t`` the asset's log-return) and ``E_t = sum_{s<=t} x_s`` the log-equity:

* ``return``: ``E_{H-1}`` (the window's log-return), ``reward``: the task's total reward;
* ``volatility``: ``std(x) sqrt(252)``; ``sharpe``: ``mean(x) / std(x) sqrt(252)`` (0 when flat);
* ``max_drawdown``: ``1 - exp(-max_t (max_{s<=t} E_s^+ - E_t))`` with ``E^+`` including the start 0;
* ``breach_rate``: the fraction of days whose loss exceeds the task's limit ``L``.

The table reports each metric's mean over windows with a 95% confidence interval.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.algorithms.maml import MAMLConfig
from metarl_jax.evaluation import adapted_params, mean_and_ci95
from metarl_jax.tasks.finance.risk_control import (
    RiskControl,
    RiskControlParams,
    baseline_policies,
    hindsight_best_fixed_position,
    run_episode,
)
from metarl_jax.validation import check_int, require

TRADING_DAYS = 252
METRICS = ("return", "volatility", "sharpe", "max_drawdown", "breach_rate", "reward")


def window_metrics(pnl: jax.Array, cost: jax.Array, breach: jax.Array, reward: jax.Array) -> dict[str, jax.Array]:
    """The :data:`METRICS` of one window from its daily ``pnl``, ``cost``, ``breach`` and ``reward`` (each ``[H]``)."""
    chex.assert_rank([pnl, cost, breach, reward], 1)
    chex.assert_equal_shape([pnl, cost, breach, reward])
    net = pnl - cost
    equity = jnp.cumsum(net)
    peak = jnp.maximum(jax.lax.cummax(equity), 0.0)  # the window starts at log-equity 0
    std = jnp.std(net)
    sharpe = jnp.where(std > 0, jnp.mean(net) / jnp.where(std > 0, std, 1.0), 0.0) * np.sqrt(TRADING_DAYS)
    return {
        "return": equity[-1],
        "volatility": std * np.sqrt(TRADING_DAYS),
        "sharpe": sharpe,
        "max_drawdown": 1.0 - jnp.exp(-jnp.max(peak - equity)),
        "breach_rate": jnp.mean(breach.astype(jnp.float32)),
        "reward": jnp.sum(reward),
    }


def evaluation_windows(family: RiskControl, key: jax.Array, num_windows: int) -> tuple[RiskControlParams, RiskControlParams]:
    """``(adapt_tasks, eval_tasks)``: ``num_windows`` tasks of ``family`` whose preceding window lies in its period too.

    Evaluation windows start uniformly in ``first_start + H .. last_start``; the adaptation task of
    each is the same task started ``H`` days earlier (the days just before it).
    """
    num_windows = check_int("num_windows", num_windows, minimum=2)
    horizon = family.horizon
    require(family.first_start + horizon <= family.last_start, "family", family.period,
            f"the period must hold two consecutive windows of horizon={horizon} (adaptation, then evaluation)")
    tasks = jax.vmap(family.sample_params)(jax.random.split(key, num_windows))
    k_start = jax.random.fold_in(key, 1)
    starts = jax.random.randint(k_start, (num_windows,), family.first_start + horizon, family.last_start + 1, jnp.int32)
    eval_tasks = tasks.replace(start=starts)
    return eval_tasks.replace(start=starts - horizon), eval_tasks


def _fixed_policy(position):
    return lambda params, state, obs, key: jnp.reshape(position, (1,)).astype(jnp.float32)


def _mode_policy(policy, params):
    """The learner policy's deterministic position at ``params``: the Gaussian mean."""
    return lambda task, state, obs, key: policy.mean(params, obs)


def _episodes(family: RiskControl, tasks: RiskControlParams, policy_of_task, key: jax.Array) -> dict[str, jax.Array]:
    """:func:`window_metrics` and the daily records of every task (vmapped); ``policy_of_task(i)`` per task index."""
    keys = jax.random.split(key, tasks.start.shape[0])

    def one(i, task, k):
        record = run_episode(family, task, policy_of_task(i), k)
        return {**window_metrics(record["pnl"], record["cost"], record["breach"], record["reward"]),
                "net": record["pnl"] - record["cost"], "position": record["position"]}

    return jax.vmap(one)(jnp.arange(tasks.start.shape[0]), tasks, keys)


def walk_forward(family: RiskControl, learner, maml_config: MAMLConfig, meta_params: dict, key: jax.Array,
                 num_windows: int = 100, steps: int | None = None, multitask_params: Any = None,
                 target_vol: float = 0.01) -> dict[str, dict[str, np.ndarray]]:
    """Every strategy on ``num_windows`` held-out windows of ``family``: ``{strategy: {metric: [N], "net": [N, H],
    "position": [N, H]}}`` (numpy), plus ``"_windows"`` (each window's start, asset, adaptation start and
    hindsight position) and ``"_tasks"`` (``{"adapt", "eval"}``: the evaluated task pytrees).

    ``meta_params``: the meta-learned start (``meta_params["policy"]`` are the policy's parameters);
    ``steps``: the inner steps of the ``maml k=0..steps`` rows (default ``maml_config.inner_steps``),
    taken on each window's preceding window with ``maml_config``'s inner rule (first order, as in
    :func:`metarl_jax.evaluation.adapted_params`); ``multitask_params``: the multi-task baseline's
    parameters (same structure), or ``None`` to leave that row out. The policy must have a ``mean``
    (a Gaussian position).
    """
    steps = int(maml_config.inner_steps if steps is None else check_int("steps", steps, minimum=0))
    key_windows, key_adapt, key_run = jax.random.split(key, 3)
    adapt_tasks, eval_tasks = evaluation_windows(family, key_windows, num_windows)
    policy = learner.policy
    results: dict[str, Any] = {}
    for name, baseline in baseline_policies(family, target_vol).items():
        results[name] = _episodes(family, eval_tasks, lambda i, p=baseline: p, key_run)
    best, _ = jax.vmap(lambda task: hindsight_best_fixed_position(family, task))(eval_tasks)
    results["hindsight_fixed"] = _episodes(family, eval_tasks, lambda i: _fixed_policy(best[i]), key_run)
    if multitask_params is not None:
        start = multitask_params["policy"]
        results["multitask"] = _episodes(family, eval_tasks, lambda i: _mode_policy(policy, start), key_run)
    for k in range(steps + 1):
        if k == 0:
            start = meta_params["policy"]
            results["maml k=0"] = _episodes(family, eval_tasks, lambda i: _mode_policy(policy, start), key_run)
            continue
        phis = adapted_params(learner, maml_config, meta_params, adapt_tasks, key_adapt, k)
        pick = lambda i, phis=phis: _mode_policy(policy, jax.tree.map(lambda x: x[i], phis))
        results[f"maml k={k}"] = _episodes(family, eval_tasks, pick, key_run)
    out = {name: {m: np.asarray(v) for m, v in r.items()} for name, r in results.items()}
    out["_windows"] = {"start": np.asarray(eval_tasks.start), "asset": np.asarray(eval_tasks.asset),
                       "adapt_start": np.asarray(adapt_tasks.start), "hindsight_position": np.asarray(best)}
    out["_tasks"] = {"adapt": adapt_tasks, "eval": eval_tasks}  # the task pytrees themselves
    return out


def summarize(results: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{strategy: {metric: {"mean", "ci95"}}}`` over the windows (95% normal-approximation intervals)."""
    summary = {}
    for name, per_window in results.items():
        if name.startswith("_"):
            continue
        summary[name] = {}
        for metric in METRICS:
            mean, half = mean_and_ci95(per_window[metric])
            summary[name][metric] = {"mean": float(mean), "ci95": float(half)}
    return summary


def paired_difference(results: dict, a: str, b: str, metric: str = "reward") -> dict[str, float]:
    """Mean and 95% interval of ``metric`` of strategy ``a`` minus ``b``, paired by window."""
    mean, half = mean_and_ci95(np.asarray(results[a][metric]) - np.asarray(results[b][metric]))
    return {"mean": float(mean), "ci95": float(half)}


def format_table(summary: dict, scale: dict[str, float] | None = None) -> str:
    """A Markdown table: one row per strategy, ``mean ± ci95`` per metric (returns and drawdowns in %)."""
    scale = {"return": 100.0, "volatility": 100.0, "max_drawdown": 100.0, "breach_rate": 100.0} if scale is None else scale
    header = ["strategy", "return %", "volatility %", "Sharpe", "max drawdown %", "breach rate %", "reward"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, metrics in summary.items():
        cells = [f"{metrics[m]['mean'] * scale.get(m, 1.0):.2f} ± {metrics[m]['ci95'] * scale.get(m, 1.0):.2f}"
                 for m in ("return", "volatility", "sharpe", "max_drawdown", "breach_rate", "reward")]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


__all__ = ["METRICS", "evaluation_windows", "format_table", "paired_difference", "summarize", "walk_forward",
           "window_metrics"]
