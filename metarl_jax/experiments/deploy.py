"""Deploy a meta-trained policy on one task: act, collect the reward feedback, adapt, repeat.

    python -m experiments.deploy --checkpoint runs/maml_bandit/<timestamp> --task 0.2,0.9 --rounds 10
    python -m experiments.deploy --checkpoint runs/maml_navigation/<timestamp>/checkpoints --task 0.3,-0.4
    python -m experiments.deploy --checkpoint runs/maml_tabular_mdp/<timestamp> --task sample --seed 3

``--checkpoint`` is a run directory written by an experiment (``runs/<name>/<timestamp>``, its
latest checkpoint is used), its ``checkpoints/`` directory, or one ``step_<digits>`` checkpoint; the
run's ``config.json`` rebuilds the learner. ``--task`` is ``sample`` (one task drawn from the
family with ``--seed``) or the task's numbers: the goal ``x,y`` for navigation, the arm
probabilities ``p1,...,pK`` for a bandit. Prints a table per round and writes ``deploy.json``,
``returns.png`` and ``pulls.png`` (bandits) or ``paths.png`` (navigation) to ``--out-dir``
(default ``<run dir>/deploy``), each invocation in its own new ``<timestamp>`` directory there.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.deploy import deploy, load_run
from metarl_jax.experiment import new_timestamped_dir, parse_cli, write_json
from metarl_jax.tasks import BanditParams, BernoulliBandit, Navigation2D, NavigationParams
from metarl_jax.validation import check_bool, check_int, check_optional_real, require


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    """Online adaptation of a meta-trained policy on one task, round by round."""

    checkpoint: str
    """run directory (runs/<name>/<timestamp>), its checkpoints/ directory, or one step_<digits> checkpoint"""
    task: str = "sample"
    """'sample', or the task's numbers: navigation goal 'x,y'; bandit arm probabilities 'p1,...,pK'"""
    rounds: int = 10
    """rounds of acting + adapting"""
    seed: int = 0
    """PRNG seed (the sampled task, the rollouts)"""
    inner_lr: float | None = None
    """inner step size (default: the learned or configured one; 0: no adaptation)"""
    keep_best: bool = True
    """policy selection by round return: each update starts from the best parameters so far, so a step that
    made the return worse (likelier beyond the trained K) is undone after one round (--no-keep-best: plain SGD)"""
    out_dir: str | None = None
    """where each invocation makes its own new directory <out-dir>/<timestamp> for deploy.json and the plots (default: <run dir>/deploy)"""

    def __post_init__(self):
        check_int("rounds", self.rounds, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_optional_real("inner_lr", self.inner_lr, minimum=0.0)
        check_bool("keep_best", self.keep_best)
        require(isinstance(self.task, str) and self.task.strip() != "", "task", self.task,
                "use 'sample' or comma-separated numbers")
        if self.task.strip() != "sample":  # the numbers' count and range depend on the family (parse_task)
            numbers = [v.strip() for v in self.task.split(",")]
            require(all(_is_finite_number(v) for v in numbers), "task", self.task,
                    "use 'sample' or comma-separated finite numbers")


def _is_finite_number(text: str) -> bool:
    """Whether ``text`` reads as a finite float (``"0.5"``, ``"-1e-3"``; not ``"nan"``, ``"inf"``, ``"x"``)."""
    try:
        return bool(np.isfinite(float(text)))
    except ValueError:
        return False


def parse_task(family, spec: str, key: jax.Array):
    """The task described by ``spec`` (see the module docstring) as the family's ``EnvParams``."""
    if spec.strip() == "sample":
        return family.sample_params(key)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"task={spec!r} is invalid: use 'sample' or comma-separated numbers") from None
    if not all(np.isfinite(values)):
        raise ValueError(f"task={spec!r} is invalid: numbers must be finite")
    if isinstance(family, Navigation2D):
        if len(values) != 2:
            raise ValueError(f"task={spec!r} is invalid: navigation takes a goal 'x,y' (2 numbers)")
        return NavigationParams(goal=jnp.asarray(values, jnp.float32), max_steps_in_episode=family.horizon)
    if isinstance(family, BernoulliBandit):
        k = family.num_arms
        if len(values) != k or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"task={spec!r} is invalid: this bandit takes {k} arm probabilities in [0, 1]")
        return BanditParams(probs=jnp.asarray(values, jnp.float32), max_steps_in_episode=family.horizon)
    raise ValueError(f"task={spec!r} is invalid for {family.name}: only 'sample' is supported for this family")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def report(family, task, result) -> tuple[str, dict]:
    """A table per round and a JSON-ready dict of the result."""
    returns = np.asarray(result.returns)
    greedy = np.asarray(result.greedy_returns)
    starts = np.asarray(result.update_from_round)
    header = ["round", "return", "mode-policy return", "next update from round"]
    rows = [[str(r), f"{returns[r]:.3f}", f"{greedy[r]:.3f}", str(int(starts[r]))] for r in range(len(returns))]
    payload = {"returns": returns.tolist(), "greedy_returns": greedy.tolist(), "update_from_round": starts.tolist(),
               "extra_episodes": int(np.asarray(result.extra_episodes)),
               "task": {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(task).items()}}
    if result.action_counts is not None:
        counts = np.asarray(result.action_counts)
        header.append("actions taken (per action)")
        for r, row in enumerate(rows):
            row.append(" ".join(f"{int(c)}" for c in counts[r]))
        payload["action_counts"] = counts.tolist()
    if isinstance(family, Navigation2D):
        final = np.linalg.norm(np.asarray(result.paths)[:, -1] - np.asarray(task.goal), axis=-1)
        header.append("final distance to goal")
        for r, row in enumerate(rows):
            row.append(f"{final[r]:.3f}")
        payload["paths"] = np.asarray(result.paths).tolist()
    if getattr(family, "has_optimum", False):
        payload["optimal_return"] = float(family.optimal_return(task, family.horizon))
    return _table(header, rows), payload


def plot(family, task, result, payload: dict, out_dir: str) -> list[str]:
    from metarl_jax import plotting  # noqa: F401  (selects the Agg backend)
    import matplotlib.pyplot as plt

    written = []
    rounds = np.arange(len(payload["returns"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, payload["returns"], marker="o", label="batch return")
    ax.plot(rounds, payload["greedy_returns"], marker="s", linestyle="--", label="mode-policy episode")
    if "optimal_return" in payload:
        ax.axhline(payload["optimal_return"], color="k", linestyle=":", label="exact optimum")
    ax.set_xticks(rounds)
    ax.set_xlabel("round (one inner update after each)")
    ax.set_ylabel("episode return")
    ax.legend()
    fig.tight_layout()
    written.append(os.path.join(out_dir, "returns.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    if result.action_counts is not None:
        counts = np.asarray(result.action_counts)
        fig, ax = plt.subplots(figsize=(6, 4))
        image = ax.imshow(counts.T, aspect="auto", origin="lower", cmap="viridis")
        fig.colorbar(image, ax=ax, label="times taken in the round's batch")
        ax.set_xticks(np.arange(counts.shape[0]))
        ax.set_xlabel("round")
        ax.set_ylabel("arm" if isinstance(family, BernoulliBandit) else "action")
        if isinstance(family, BernoulliBandit):
            ax.set_yticks(np.arange(counts.shape[1]),
                          [f"{a} (p={p:.2f})" for a, p in enumerate(np.asarray(task.probs))])
        ax.set_title("pulls per arm per round" if isinstance(family, BernoulliBandit) else "actions per round")
        fig.tight_layout()
        written.append(os.path.join(out_dir, "pulls.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    if isinstance(family, Navigation2D):
        paths = np.asarray(result.paths)
        fig, ax = plt.subplots(figsize=(5, 5))
        colors = plt.cm.viridis(np.linspace(0, 1, len(paths)))
        for r, (xy, color) in enumerate(zip(paths, colors)):
            xy = np.concatenate([np.zeros((1, 2)), xy])
            ax.plot(xy[:, 0], xy[:, 1], color=color, label=f"round {r}" if r in (0, len(paths) - 1) else None)
        goal = np.asarray(task.goal)
        ax.scatter([goal[0]], [goal[1]], marker="*", s=180, color="red", label="goal", zorder=3)
        lim = max(1.6 * family.goal_range, 1.2 * float(np.abs(goal).max()), 1.05 * float(np.abs(paths).max()))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title("mean-action path per round")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "paths.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def run(config: DeployConfig) -> dict:
    """Deploy, print the per-round table and write ``deploy.json`` and the plots to a new directory
    ``<out_dir or run dir/deploy>/<timestamp>`` (made once the run and the task are read, before any
    work; a second invocation never overwrites the first's files). ``payload["out_dir"]`` names it."""
    loaded = load_run(config.checkpoint)
    key_task, key_deploy = jax.random.split(jax.random.PRNGKey(config.seed))
    task = parse_task(loaded.family, config.task, key_task)  # a task the family rejects leaves no directory
    try:
        out_dir = new_timestamped_dir(config.out_dir or os.path.join(loaded.run_dir, "deploy"))
    except OSError as err:
        raise ValueError(f"out_dir={config.out_dir!r} is invalid: cannot create a directory there ({err.strerror})") from None
    result = jax.jit(lambda mp, t, k: deploy(loaded.learner, loaded.maml_config, mp, t, k, config.rounds,
                                             config.inner_lr, keep_best=config.keep_best))(
        loaded.meta_params, task, key_deploy)
    table, payload = report(loaded.family, task, result)
    print(f"checkpoint: {loaded.checkpoint}  family: {loaded.family.name}  rounds: {config.rounds}  "
          f"trained K: {loaded.maml_config.inner_steps}  keep_best: {config.keep_best}")
    print(table)
    payload["checkpoint"] = loaded.checkpoint
    payload["out_dir"] = out_dir
    payload["config"] = dataclasses.asdict(config)
    write_json(os.path.join(out_dir, "deploy.json"), payload)
    written = plot(loaded.family, task, result, payload, out_dir)
    print("wrote " + ", ".join([os.path.join(out_dir, "deploy.json"), *written]))
    return payload


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run (:func:`run`, whose payload lands in ``<out dir>/deploy.json``); returns
    the exit status, 0. A bad path or value prints ``error: ...`` and exits with status 2."""
    config = parse_cli(DeployConfig, argv, description=__doc__)
    try:
        run(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
