"""Figures written by the experiments (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curve(history: list[dict], path: str, title: str = "meta-training") -> None:
    """Pre- and post-adaptation return of the training batches against meta-iteration
    (``return`` for the multi-task baseline, which does not adapt while training)."""
    it = np.array([h["iteration"] for h in history])
    fig, ax = plt.subplots(figsize=(6, 4))
    series = [("pre_adaptation_return", "before adaptation"), ("post_adaptation_return", "after adaptation"),
              ("return", "multi-task (no adaptation)")]
    for name, label in series:
        if not history or name not in history[0]:
            continue
        y = np.array([h[name] for h in history])
        k = max(1, len(y) // 20)
        smooth = np.convolve(y, np.ones(k) / k, mode="valid")
        (line,) = ax.plot(it[k - 1:], smooth, label=f"{label} (moving mean of {k})")
        ax.plot(it, y, alpha=0.3, color=line.get_color())
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("mean episode return (training tasks)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_adaptation_curves(curves: dict[str, dict], path: str, optimum: float | None = None,
                           title: str = "adaptation on held-out tasks", trained_steps: int | None = None) -> None:
    """Return after k inner steps (mean and 95% CI) for each initialisation, with the exact optimum.

    ``trained_steps``: the K the meta-objective was trained with, drawn as a vertical line.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, summary in curves.items():
        mean, ci = np.asarray(summary["mean"]), np.asarray(summary["ci95"])
        ks = np.arange(len(mean))
        ax.plot(ks, mean, marker="o", label=name)
        ax.fill_between(ks, mean - ci, mean + ci, alpha=0.2)
    if optimum is not None:
        ax.axhline(optimum, color="k", linestyle="--", label="exact optimum")
    if trained_steps is not None:
        ax.axvline(trained_steps, color="grey", linestyle=":", label=f"trained K={trained_steps}")
    ax.set_xlabel("inner steps k")
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_navigation_paths(goals: np.ndarray, pre_paths: np.ndarray, post_paths: np.ndarray, path: str,
                          goal_range: float = 0.5, num_steps: int | None = None) -> None:
    """Paths ``[N, T, 2]`` of the mean action before and after adaptation, one panel per task."""
    after = "after adaptation" if num_steps is None else f"after {num_steps} inner steps"
    n = goals.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for paths, label, style in [(pre_paths, "before adaptation", "--"), (post_paths, after, "-")]:
            xy = np.concatenate([np.zeros((1, 2)), paths[i]], axis=0)
            ax.plot(xy[:, 0], xy[:, 1], style, label=label)
        ax.scatter([goals[i, 0]], [goals[i, 1]], marker="*", s=150, color="red", label="goal", zorder=3)
        ax.scatter([0], [0], marker="o", color="k", s=20, zorder=3)
        lim = 1.6 * goal_range
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("x position")
        ax.set_ylabel("y position")
        ax.set_title(f"held-out task {i}: goal ({goals[i, 0]:.2f}, {goals[i, 1]:.2f})", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bar(values: dict[str, float], path: str, ylabel: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(list(values), list(values.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_attributions(feature_names, before: np.ndarray, after: np.ndarray, path: str,
                      title: str = "integrated-gradients attributions before and after adaptation",
                      statistic: str = "mean_abs") -> None:
    """Per-feature attributions before vs after adaptation as a grouped bar chart.

    ``before`` and ``after``: ``[N, F]`` attributions on the same ``N`` states (or ``[F]``), e.g.
    :func:`metarl_jax.explain.explain_adaptation`'s. ``statistic``: ``"mean_abs"`` (mean
    ``|IG_i|`` over the states: how much feature ``i`` moves the output) or ``"mean"`` (signed: in
    which direction). Error bars: the standard error over the states.
    """
    if statistic not in ("mean_abs", "mean"):
        raise ValueError(f"statistic={statistic!r} is invalid: must be one of 'mean_abs', 'mean'")
    names = [str(n) for n in feature_names]
    before, after = (np.atleast_2d(np.asarray(a, np.float64)) for a in (before, after))
    if before.shape != after.shape or before.shape[1] != len(names):
        raise ValueError(f"before.shape={before.shape!r} is invalid: before and after must both be "
                         f"[N, F={len(names)}] (one column per feature name); after.shape={after.shape}")
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2.0), 4))
    x = np.arange(len(names))
    width = 0.4
    for shift, values, label in [(-width / 2, before, "before adaptation"), (width / 2, after, "after adaptation")]:
        values = np.abs(values) if statistic == "mean_abs" else values
        sem = values.std(axis=0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else None
        ax.bar(x + shift, values.mean(axis=0), width, yerr=sem, capsize=3, label=label)
    ax.axhline(0.0, color="k", linewidth=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("mean |attribution|" if statistic == "mean_abs" else "mean attribution")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save_window_plot(fig, ax, path: str, ylabel: str, title: str, dated: bool) -> None:
    """Label a plot over the days of one window (``dated``: the x axis holds dates), save it, close it."""
    ax.set_xlabel("date" if dated else "day of the window")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_equity_curves(net_by_strategy: dict[str, np.ndarray], path: str, title: str = "equity on a held-out window",
                       dates: np.ndarray | None = None) -> None:
    """Equity ``exp(cumsum(net))`` of each strategy over one window (``net``: daily net log-returns ``[H]``;
    ``dates``: ``[H + 1]``, the start included)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, net in net_by_strategy.items():
        net = np.asarray(net, np.float64)
        x = np.arange(len(net) + 1) if dates is None else dates
        ax.plot(x, np.exp(np.concatenate([[0.0], np.cumsum(net)])), label=name,
                linestyle="--" if name.startswith(("hindsight", "cash")) else "-")
    _save_window_plot(fig, ax, path, "equity (start = 1)", title, dates is not None)


def plot_positions(positions_by_strategy: dict[str, np.ndarray], path: str, title: str = "position over the window",
                   dates: np.ndarray | None = None) -> None:
    """The position ``p_t`` of each strategy over one window (``[H]`` each)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, position in positions_by_strategy.items():
        position = np.asarray(position, np.float64).reshape(-1)
        x = np.arange(len(position)) if dates is None else dates[:len(position)]
        ax.step(x, position, where="post", label=name)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_ylim(-1.05, 1.05)
    _save_window_plot(fig, ax, path, "position", title, dates is not None)
