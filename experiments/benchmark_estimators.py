"""Meta-gradient estimator study on 2D navigation: learning speed and gradient variance.

Estimators ``dice`` (unbiased), ``lvc`` (ProMP), ``naive`` (plain surrogate, biased) and
``first_order`` are compared on :class:`experiments.maml_navigation.NavigationConfig`
(every setting but the estimator is the experiment's; flags shrink it).

1. Learning curves. For each estimator, ``--seeds`` meta-training runs in one jitted call
   vmapped over seeds (seed ``s`` runs exactly what ``training.loop.run`` runs for the experiment's
   MAML with seed ``--seed + s``: every estimator sees the same ``theta_0`` and task sequence per seed).
   Recorded: the post-adaptation return of the training batches per meta-iteration, and
   the final post-adaptation return (``K = 1``) on ``--eval-tasks`` held-out tasks.
2. Meta-gradient variance at fixed parameters. For the initial parameters (seed 0's
   ``theta_0``) and a trained checkpoint (the final parameters of seed 0 of ``--reference``,
   or ``--checkpoint-dir``, a MAML training run's ``checkpoints/``), the meta-gradient of
   one fixed task batch (``meta_batch`` tasks) is computed for ``--grad-keys`` PRNG keys in
   one jitted call (``lax.map`` over the keys in vmapped chunks of ``--grad-key-chunk``).
   With ``g_1..g_G`` the flattened gradients and ``g_bar`` their mean: ``var_trace =
   sum_j Var_G(g_j)`` (ddof 1), ``mean_norm = |g_bar|``, ``ratio = var_trace / |g_bar|^2``
   (noise-to-signal), ``mean_standard_error = sqrt(var_trace / G)`` and, since
   ``E|g_bar|^2 = |E g|^2 + var_trace / G``, ``mean_norm_debiased = sqrt(|g_bar|^2 - var_trace / G)``;
   and the cosine between each estimator's ``g_bar`` and DiCE's (the unbiased direction, itself
   only known up to DiCE's standard error).

Writes ``<out-dir>/benchmark_estimators.json``, ``estimators_learning_curves.png`` (mean
over seeds with a min-max band per estimator) and ``benchmark_estimators.md``.

    python -m experiments.benchmark_estimators
    python -m experiments.benchmark_estimators --iterations 40 --seeds 3 --grad-keys 64
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.benchmark_adaptation import device_name, machine_info
from experiments.maml_navigation import NavigationConfig
from metarl_jax import evaluation
from metarl_jax.experiment import build, write_json
from metarl_jax.learners.pg import ESTIMATORS
from metarl_jax.algorithms.maml import make_meta_gradient, maml
from metarl_jax.tasks import sample_tasks
from metarl_jax.training.loop import load_meta_params, make_multi_step, make_optimizer
from metarl_jax.cli import OneLineArgumentParser
from metarl_jax.validation import (check_choice, check_int, check_int_sequence, check_optional_int, check_writable_dir,
                                   require)


@dataclasses.dataclass(frozen=True)
class EstimatorBenchmarkConfig:
    """Settings of the estimator study (validated on construction).

    Attributes:
      estimators: names from :data:`metarl_jax.learners.pg.ESTIMATORS`.
      seeds: training runs per estimator (vmapped in one call).
      iterations: meta-iterations per run (a multiple of ``iterations_per_call`` is run).
      iterations_per_call: meta-iterations per compiled ``lax.scan`` call.
      grad_keys: PRNG keys of the variance measurement (>= 2).
      grad_key_chunk: keys vmapped at once inside the measurement (memory knob).
      reference: estimator whose trained seed-0 parameters are the "trained" point.
      checkpoint_dir: a MAML training run's ``checkpoints/`` to use as the trained point instead.
      eval_tasks: held-out tasks of the final post-adaptation return.
      meta_batch / episodes / horizon / hidden_sizes: override NavigationConfig (None: its default).
    """

    estimators: tuple[str, ...] = ESTIMATORS
    seeds: int = 3
    iterations: int = 40
    iterations_per_call: int = 5
    grad_keys: int = 64
    grad_key_chunk: int = 8
    reference: str = "lvc"
    checkpoint_dir: str | None = None
    eval_tasks: int = 100
    seed: int = 0
    out_dir: str = "runs/benchmark_estimators"
    meta_batch: int | None = None
    episodes: int | None = None
    horizon: int | None = None
    hidden_sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        require(isinstance(self.estimators, (tuple, list)) and len(self.estimators) >= 1
                and all(e in ESTIMATORS for e in self.estimators), "estimators",
                self.estimators, f"must be a non-empty sequence of {ESTIMATORS}")
        for name in ("seeds", "iterations", "iterations_per_call", "grad_key_chunk"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("grad_keys", self.grad_keys, minimum=2)
        check_int("eval_tasks", self.eval_tasks, minimum=2)
        check_int("seed", self.seed, minimum=0)
        check_choice("reference", self.reference, ESTIMATORS)
        for name in ("meta_batch", "episodes", "horizon"):
            check_optional_int(name, getattr(self, name), minimum=1)
        if self.hidden_sizes is not None:
            check_int_sequence("hidden_sizes", self.hidden_sizes)

    def experiment(self, estimator: str) -> NavigationConfig:
        """The navigation experiment config of one estimator."""
        overrides: dict[str, Any] = {"estimator": estimator, "seed": self.seed, "num_iterations": self.iterations,
                                     "iterations_per_call": self.iterations_per_call,
                                     "eval_tasks": self.eval_tasks, "eval_steps": 1}
        for field, name in (("meta_batch", "meta_batch"), ("episodes", "num_episodes"), ("horizon", "horizon"),
                            ("hidden_sizes", "hidden_sizes")):
            if getattr(self, field) is not None:
                overrides[name] = getattr(self, field)
        return NavigationConfig(**overrides)


# ----------------------------------------------------------------------------- measurements


def train_seeds(cfg: NavigationConfig, num_seeds: int):
    """Meta-train ``num_seeds`` runs (seeds ``cfg.seed + s``) vmapped in one jitted call.

    Returns ``(final meta_params with a leading seed axis, post-adaptation returns [S, I],
    number of non-finite gradients, seconds, compile-and-first-call seconds)``.
    """
    family, learner, maml_config, train_config = build(cfg)
    optimizer = make_optimizer(train_config)
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    algorithm = maml(learner, maml_config, optimizer, sample)
    keys = jnp.stack([jax.random.PRNGKey(cfg.seed + s) for s in range(num_seeds)])
    states = jax.vmap(algorithm.init)(keys)
    chunk = int(cfg.iterations_per_call)
    multi = jax.jit(jax.vmap(make_multi_step(algorithm.step, chunk)))
    returns, nonfinite, first = [], 0, None
    t0 = time.perf_counter()
    for _ in range(-(-int(cfg.num_iterations) // chunk)):
        t_call = time.perf_counter()
        states, metrics = multi(states)
        metrics = jax.device_get(metrics)
        first = time.perf_counter() - t_call if first is None else first
        returns.append(np.asarray(metrics["post_adaptation_return"]))
        nonfinite += int(np.sum(~np.asarray(metrics["grad_finite"])))
    returns = np.concatenate(returns, axis=1)[:, : int(cfg.num_iterations)]
    return states.meta_params, returns, nonfinite, time.perf_counter() - t0, first


def make_gradient_statistics(learner, maml_config, tasks, num_keys: int, key_chunk: int):
    """Jitted ``(meta_params, key) -> (mean gradient [P], var_trace, mean_norm)`` over ``num_keys`` keys."""
    meta_gradient = make_meta_gradient(learner, maml_config)

    def stats(meta_params, key):
        keys = jax.random.split(key, num_keys)
        flat = lambda k: ravel_pytree(meta_gradient(meta_params, tasks, k)[1])[0]
        grads = jax.lax.map(flat, keys, batch_size=min(int(key_chunk), num_keys))  # [G, P]
        mean = jnp.mean(grads, axis=0)
        var_trace = jnp.sum(jnp.var(grads, axis=0, ddof=1))
        return mean, var_trace, jnp.linalg.norm(mean)

    return jax.jit(stats)


def final_post_adaptation(cfg: NavigationConfig, learner, maml_config, family, meta_params_seeds) -> np.ndarray:
    """``[S]`` mean return after one inner step on the held-out tasks (same tasks and keys for all)."""
    key_tasks, key_eval = jax.random.split(jax.random.PRNGKey(cfg.seed + 1_000_003))
    tasks = sample_tasks(family, key_tasks, cfg.eval_tasks)
    curve = jax.jit(jax.vmap(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks, key_eval, 1)))
    return np.asarray(curve(meta_params_seeds))[:, :, 1].mean(axis=1)


def run(bench: EstimatorBenchmarkConfig) -> dict:
    """Train every estimator, measure gradient statistics at two points, return the JSON payload."""
    results: dict[str, dict] = {}
    trained_params: dict[str, Any] = {}
    for estimator in bench.estimators:
        cfg = bench.experiment(estimator)
        print(f"[{estimator}] training {bench.seeds} seeds x {cfg.num_iterations} iterations", flush=True)
        params, returns, nonfinite, seconds, first = train_seeds(cfg, bench.seeds)
        family, learner, maml_config, _ = build(cfg)
        held_out = final_post_adaptation(cfg, learner, maml_config, family, params)
        trained_params[estimator] = jax.tree.map(lambda x: x[0], params)
        results[estimator] = {
            "train_post_adaptation_return": returns.tolist(),
            "final_train_return_last5": returns[:, -5:].mean(axis=1).tolist(),
            "held_out_post_adaptation_return": held_out.tolist(),
            "nonfinite_gradients": nonfinite, "train_seconds": round(seconds, 2),
            "compile_and_first_call_s": round(first, 2),
        }
        print(f"  held-out post-adaptation return per seed {np.round(held_out, 2).tolist()} ({seconds:.0f} s)",
              flush=True)

    # Gradient statistics at the initial parameters and at one trained point, shared by all estimators.
    ref_cfg = bench.experiment(bench.reference)
    family, ref_learner, ref_maml, ref_train = build(ref_cfg)
    reference = maml(ref_learner, ref_maml, make_optimizer(ref_train),
                     lambda key: sample_tasks(family, key, ref_train.meta_batch))
    points = {"initial": reference.init(jax.random.PRNGKey(bench.seed)).meta_params}
    if bench.checkpoint_dir is not None:
        points["trained"] = load_meta_params(bench.checkpoint_dir, reference)
        trained_source = bench.checkpoint_dir
    elif bench.reference in trained_params:
        points["trained"] = trained_params[bench.reference]
        trained_source = f"{bench.reference}, seed {bench.seed}, after {ref_cfg.num_iterations} iterations"
    else:
        first_estimator = bench.estimators[0]
        points["trained"] = trained_params[first_estimator]
        trained_source = f"{first_estimator}, seed {bench.seed}, after {ref_cfg.num_iterations} iterations"
    key_tasks, key_grads = jax.random.split(jax.random.PRNGKey(bench.seed + 5_000_011))
    tasks = sample_tasks(family, key_tasks, ref_train.meta_batch)
    means: dict[tuple[str, str], np.ndarray] = {}
    for estimator in bench.estimators:
        cfg = bench.experiment(estimator)
        _, learner, maml_config, _ = build(cfg)
        stats_fn = make_gradient_statistics(learner, maml_config, tasks, bench.grad_keys, bench.grad_key_chunk)
        results[estimator]["gradient"] = {}
        for point, meta_params in points.items():
            t0 = time.perf_counter()
            mean, var_trace, mean_norm = jax.device_get(stats_fn(meta_params, key_grads))
            means[(estimator, point)] = np.asarray(mean, np.float64)
            var_trace, mean_norm = float(var_trace), float(mean_norm)
            results[estimator]["gradient"][point] = {
                "var_trace": var_trace, "mean_norm": mean_norm, "ratio": var_trace / max(mean_norm**2, 1e-30),
                # E|g_bar|^2 = |E g|^2 + var_trace / G: the standard error of g_bar and a debiased |E g|.
                "mean_standard_error": (var_trace / bench.grad_keys) ** 0.5,
                "mean_norm_debiased": max(mean_norm**2 - var_trace / bench.grad_keys, 0.0) ** 0.5,
                "seconds": round(time.perf_counter() - t0, 2),
            }
        print(f"  [{estimator}] gradient statistics {results[estimator]['gradient']}", flush=True)
    if "dice" in bench.estimators:
        for estimator in bench.estimators:
            for point in points:
                a, b = means[(estimator, point)], means[("dice", point)]
                cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
                results[estimator]["gradient"][point]["cosine_to_dice_mean"] = cosine
    return {"estimators": results, "trained_point": trained_source, "grad_keys": bench.grad_keys,
            "grad_task_batch": int(ref_train.meta_batch), "experiment_config": dataclasses.asdict(ref_cfg)}


# ----------------------------------------------------------------------------- outputs


def plot_learning_curves(results: dict, path: str, title: str) -> None:
    """Post-adaptation training return per estimator: mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for estimator, r in results.items():
        y = np.asarray(r["train_post_adaptation_return"])  # [S, I]
        it = np.arange(y.shape[1])
        ax.plot(it, y.mean(axis=0), label=f"{estimator} ({y.shape[0]} seeds)")
        ax.fill_between(it, y.min(axis=0), y.max(axis=0), alpha=0.2)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("post-adaptation return (training batch)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(payload: dict) -> str:
    """One row per estimator: returns (mean ± sd over seeds) and gradient statistics at both points."""
    lines = ["| estimator | final train return (last 5 it.) | held-out return after 1 step | "
             "var trace (init) | mean norm (init) | ratio (init) | cos to DiCE (init) | "
             "var trace (trained) | mean norm (trained) | ratio (trained) | cos to DiCE (trained) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    sd = lambda v: f"{np.mean(v):.2f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.2f}"
    for estimator, r in payload["estimators"].items():
        cells = [estimator, sd(r["final_train_return_last5"]), sd(r["held_out_post_adaptation_return"])]
        for point in ("initial", "trained"):
            g = r["gradient"][point]
            cos = g.get("cosine_to_dice_mean")
            cells += [f"{g['var_trace']:.3g}", f"{g['mean_norm']:.3g}", f"{g['ratio']:.3g}",
                      "" if cos is None else f"{cos:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> EstimatorBenchmarkConfig:
    defaults = EstimatorBenchmarkConfig()
    parser = OneLineArgumentParser(prog="python -m experiments.benchmark_estimators",
                                   description=__doc__.split("\n")[0])
    parser.add_argument("--estimators", nargs="+", default=list(defaults.estimators))
    parser.add_argument("--seeds", type=int, default=defaults.seeds)
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--iterations-per-call", type=int, default=defaults.iterations_per_call)
    parser.add_argument("--grad-keys", type=int, default=defaults.grad_keys)
    parser.add_argument("--grad-key-chunk", type=int, default=defaults.grad_key_chunk)
    parser.add_argument("--reference", default=defaults.reference)
    parser.add_argument("--checkpoint-dir", default=None, help="a MAML training run's checkpoints/ (trained point)")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--meta-batch", type=int, default=None)
    parser.add_argument("--episodes", type=int, default=None)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=None)
    args = parser.parse_args(argv)
    try:
        bench = EstimatorBenchmarkConfig(
            estimators=tuple(x for v in args.estimators for x in v.replace(",", " ").split()), seeds=args.seeds,
            iterations=args.iterations, iterations_per_call=args.iterations_per_call, grad_keys=args.grad_keys,
            grad_key_chunk=args.grad_key_chunk, reference=args.reference, checkpoint_dir=args.checkpoint_dir,
            eval_tasks=args.eval_tasks, seed=args.seed, out_dir=args.out_dir, meta_batch=args.meta_batch,
            episodes=args.episodes, horizon=args.horizon,
            hidden_sizes=None if args.hidden_sizes is None else tuple(args.hidden_sizes))
        check_writable_dir("out_dir", bench.out_dir)
        require(bench.checkpoint_dir is None or os.path.isdir(bench.checkpoint_dir), "checkpoint_dir",
                bench.checkpoint_dir, "must be an existing directory (a MAML training run's checkpoints/)")
        for estimator in bench.estimators:  # the navigation config of every run, before the first one trains
            bench.experiment(estimator)
    except ValueError as err:
        parser.error(str(err))
    return bench


def main(argv: list[str] | None = None) -> dict:
    """Run the study; returns the JSON payload it writes."""
    bench = parse_args(argv)
    command = "python -m experiments.benchmark_estimators " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(bench.out_dir, exist_ok=True)
    machine = machine_info()
    print(command, machine, sep="\n", flush=True)
    t0 = time.perf_counter()
    payload = {"command": command, "machine": machine, "config": dataclasses.asdict(bench), **run(bench)}
    payload["total_seconds"] = round(time.perf_counter() - t0, 1)
    payload["load_average_end"] = machine_info()["load_average"]
    cfg = payload["experiment_config"]
    figure = os.path.join(bench.out_dir, "estimators_learning_curves.png")
    plot_learning_curves(payload["estimators"], figure,
                         f"navigation: meta-batch {cfg['meta_batch']}, {cfg['num_episodes']} episodes x {cfg['horizon']}")
    payload["figure"] = figure
    write_json(os.path.join(bench.out_dir, "benchmark_estimators.json"), payload)
    table = markdown_table(payload)
    text = (f"`{command}`\n\nGradient statistics over {bench.grad_keys} keys on one fixed batch of "
            f"{payload['grad_task_batch']} tasks; trained point: {payload['trained_point']} ({device_name()}).\n\n"
            f"{table}\n")
    with open(os.path.join(bench.out_dir, "benchmark_estimators.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"wrote {bench.out_dir}/benchmark_estimators.{{json,md}} and {figure} ({payload['total_seconds']} s)",
          flush=True)
    return payload


if __name__ == "__main__":
    main()
