"""Memory and time of the meta-gradient for K inner steps, with and without rematerialisation.

    python -m experiments.benchmark_memory --inner-steps 1 5 10 --meta-batch 20

Prints one JSON object per configuration: the compiled program's temporary buffer size
(``compiled.memory_analysis()``; on a GPU also the device's peak bytes in use), compile time
and median run time of the jitted second-order meta-gradient on 2D navigation.

    python -m experiments.benchmark_memory --check-estimate

checks :func:`metarl_jax.resources.estimate_meta_iteration_bytes` (the lower bound an experiment
is refused on) against XLA on :data:`ESTIMATE_GRID`: one JSON line per configuration with the
estimate, the compiled meta-gradient's temporary + argument bytes and their ratio, then a summary
line (ratio min / median / max, whether every estimate is below) and the refusal of a
``--horizon 10000000`` navigation config with its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

from benchmarks.benchmarking import cpu_model
from metarl_jax import experiment, resources
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params, make_meta_gradient
from metarl_jax.algorithms.multitask import multitask_loss
from metarl_jax.networks import GaussianPolicy
from metarl_jax.tasks import Navigation2D, sample_tasks
from metarl_jax.cli import OneLineArgumentParser
from metarl_jax.validation import check_int

#: ``--check-estimate``'s configurations: (task, learner) pairs of the shipped experiments, each at
#: K = 1..3, with longer rollouts, task chunks (unrolled and accumulated), rematerialisation, first
#: order and the multi-task baseline. Unlisted fields: horizon 20, 4 episodes, 4 tasks, no chunks,
#: the experiments' default network (100x100).
_ESTIMATE_VARIANTS = (
    {"inner_steps": 1},
    {"inner_steps": 2},
    {"inner_steps": 3},
    {"inner_steps": 1, "horizon": 100, "num_episodes": 10, "meta_batch": 2},
    {"inner_steps": 3, "horizon": 100, "num_episodes": 10, "meta_batch": 2},
    {"inner_steps": 2, "horizon": 50, "num_episodes": 2, "meta_batch": 6, "task_chunk": 3},
    {"inner_steps": 2, "meta_batch": 8, "task_chunk": 2, "accumulate_chunks": True},
    {"inner_steps": 3, "remat": True},
    {"inner_steps": 2, "estimator": "first_order"},
    {"inner_steps": 1, "algorithm": "multitask"},
)
ESTIMATE_GRID: tuple[dict, ...] = tuple(
    {"task": task, "learner": learner, **variant}
    for task, learner in (("navigation", "pg"), ("bandit", "pg"), ("tabular_mdp", "pg"), ("cartpole_target", "ac"),
                          ("maze", "q"))
    for variant in _ESTIMATE_VARIANTS) + (
    # a ReLU actor beside a tanh critic: the actor-critic step alone keeps the fewest values per unit
    {"task": "navigation", "learner": "ac", "inner_steps": 1, "horizon": 100, "num_episodes": 10, "meta_batch": 2},
    {"task": "navigation", "learner": "ac", "inner_steps": 3, "horizon": 100, "num_episodes": 10, "meta_batch": 2},
)

#: The config ``--check-estimate`` shows refused: ``python -m experiments.maml_navigation --horizon 10000000``.
HUGE_HORIZON = 10_000_000


def _device_name() -> str:
    device = jax.devices()[0]
    return f"{device.platform}:{device.device_kind} ({cpu_model()})"


def measure(inner_steps: int, remat: bool, meta_batch: int, episodes: int, horizon: int, iters: int) -> dict:
    env = Navigation2D(horizon=horizon)
    learner = PolicyGradientLearner(env, GaussianPolicy(2), PGConfig(num_inner_episodes=episodes,
                                                                    num_outer_episodes=episodes, horizon=horizon,
                                                                    normalize="step"))
    config = MAMLConfig(inner_steps=inner_steps, estimator="dice", remat=remat)
    meta_params = init_meta_params(jax.random.PRNGKey(0), learner, config)
    tasks = sample_tasks(env, jax.random.PRNGKey(1), meta_batch)
    key = jax.random.PRNGKey(2)
    t0 = time.perf_counter()
    compiled = jax.jit(make_meta_gradient(learner, config)).lower(meta_params, tasks, key).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    temp_bytes = int(getattr(memory, "temp_size_in_bytes", -1)) if memory is not None else -1
    jax.block_until_ready(compiled(meta_params, tasks, key))
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(meta_params, tasks, jax.random.PRNGKey(10 + i)))
        times.append(time.perf_counter() - t0)
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "benchmark": "memory", "task": "navigation", "learner": "pg", "order": 2, "inner_steps": inner_steps,
        "remat": remat, "meta_batch": meta_batch, "episodes": episodes, "horizon": horizon,
        "temp_bytes": temp_bytes, "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
        "compile_s": round(compile_s, 3), "median_s_per_iter": float(np.median(times)),
        "min_s_per_iter": float(np.min(times)), "device": _device_name(), "jax_version": jax.__version__,
    }


def check_estimate(point: dict) -> dict:
    """The estimate of one :data:`ESTIMATE_GRID` configuration against XLA's bytes for the same program.

    ``point``: ``MAMLExperimentConfig`` fields (``horizon``, ``num_episodes``, ``meta_batch``,
    ``inner_steps``, ``task_chunk``, ``estimator``...) plus ``remat`` and ``accumulate_chunks`` of the
    ``MAMLConfig``. XLA's figure is ``temp + argument`` bytes of ``compiled.memory_analysis()`` of
    ``jax.jit(make_meta_gradient(learner, config))`` (``algorithm="multitask"``: of the gradient of
    :func:`metarl_jax.algorithms.multitask.multitask_loss`); ``ratio = xla / estimate`` (>= 1: a lower bound).
    """
    fields = {"horizon": 20, "num_episodes": 4, "meta_batch": 4, "task_chunk": None, **point}
    maml_fields = {name: fields.pop(name) for name in ("remat", "accumulate_chunks") if name in fields}
    config = experiment.MAMLExperimentConfig(**fields)
    family, learner, maml_config, _ = experiment.build(config)
    maml_config = dataclasses.replace(maml_config, **maml_fields)
    t0 = time.perf_counter()
    estimate = resources.estimate_meta_iteration_bytes(learner, maml_config, config.meta_batch,
                                                       adaptation=config.algorithm != "multitask")
    estimate_s = time.perf_counter() - t0
    meta_params = init_meta_params(jax.random.PRNGKey(0), learner, maml_config)
    tasks = sample_tasks(family, jax.random.PRNGKey(1), config.meta_batch)
    if config.algorithm == "multitask":  # no adaptation: the gradient of the outer loss of theta itself
        loss_fn = lambda theta, tasks, key: multitask_loss(learner, theta, tasks, key, maml_config.task_chunk)
        fn, meta_params = jax.value_and_grad(loss_fn, has_aux=True), meta_params["policy"]
    else:
        fn = make_meta_gradient(learner, maml_config)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(meta_params, tasks, jax.random.PRNGKey(2)).compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    xla = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes)
    return {"benchmark": "memory_estimate", **point, "estimate_bytes": estimate, "xla_bytes": xla,
            "xla_temp_bytes": int(memory.temp_size_in_bytes), "ratio": round(xla / estimate, 3),
            "estimate_s": round(estimate_s, 4), "compile_s": round(compile_s, 2), "device": _device_name(),
            "jax_version": jax.__version__}


def check_refusal(horizon: int = HUGE_HORIZON) -> dict:
    """How :func:`metarl_jax.resources.check_experiment_memory` refuses the navigation experiment at ``horizon``."""
    config = experiment.MAMLExperimentConfig(horizon=horizon)
    t0 = time.perf_counter()
    try:
        need = resources.check_experiment_memory(config)
        message = None
    except ValueError as err:
        need, message = None, str(err)
    return {"benchmark": "memory_refusal", "horizon": horizon, "refused": message is not None, "message": message,
            "estimate_bytes": need, "seconds": round(time.perf_counter() - t0, 3),
            "available_bytes": resources.available_memory_bytes()}


def check_estimate_grid(points=ESTIMATE_GRID) -> list[dict]:
    """:func:`check_estimate` on every point, a summary line and :func:`check_refusal`, printed as JSON lines."""
    rows = []
    for point in points:
        row = check_estimate(point)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summaries = []
    for algorithm in sorted({row.get("algorithm", "maml") for row in rows}):
        ratios = [row["ratio"] for row in rows if row.get("algorithm", "maml") == algorithm]
        summary = {"benchmark": "memory_estimate_summary", "algorithm": algorithm, "points": len(ratios),
                   "ratio_min": min(ratios), "ratio_median": float(np.median(ratios)), "ratio_max": max(ratios),
                   "all_below_xla": all(r >= 1.0 for r in ratios), "device": _device_name()}
        print(json.dumps(summary), flush=True)
        summaries.append(summary)
    refusal = check_refusal()
    print(json.dumps(refusal), flush=True)
    return rows + summaries + [refusal]


def main(argv=None) -> list[dict]:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--check-estimate", action="store_true",
                        help="compare metarl_jax.resources' memory estimate with XLA's on ESTIMATE_GRID instead")
    args = parser.parse_args(argv)
    try:  # every value before the first measurement
        for k in args.inner_steps:
            check_int("inner_steps", k, minimum=1)
        for name in ("meta_batch", "episodes", "horizon", "iters"):
            check_int(name, getattr(args, name), minimum=1)
    except ValueError as err:
        parser.error(str(err))
    if args.check_estimate:
        return check_estimate_grid(ESTIMATE_GRID)
    results = []
    for k in args.inner_steps:
        for remat in (False, True):
            row = measure(k, remat, args.meta_batch, args.episodes, args.horizon, args.iters)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main()
