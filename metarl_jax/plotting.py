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
