"""Memory and time of the meta-gradient for K inner steps, with and without rematerialisation.

    python -m experiments.benchmark_memory --inner-steps 1 5 10 --meta-batch 20

Prints one JSON object per configuration: the compiled program's temporary buffer size
(``compiled.memory_analysis()``; on a GPU also the device's peak bytes in use), compile time
and median run time of the jitted second-order meta-gradient on 2D navigation.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from benchmarks.benchmarking import cpu_model
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params, make_meta_gradient
from metarl_jax.networks import GaussianPolicy
from metarl_jax.tasks import Navigation2D, sample_tasks
from metarl_jax.cli import OneLineArgumentParser
from metarl_jax.validation import check_int


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


def main(argv=None) -> list[dict]:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args(argv)
    try:  # every value before the first measurement
        for k in args.inner_steps:
            check_int("inner_steps", k, minimum=1)
        for name in ("meta_batch", "episodes", "horizon", "iters"):
            check_int(name, getattr(args, name), minimum=1)
    except ValueError as err:
        parser.error(str(err))
    results = []
    for k in args.inner_steps:
        for remat in (False, True):
            row = measure(k, remat, args.meta_batch, args.episodes, args.horizon, args.iters)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


if __name__ == "__main__":
    main()
