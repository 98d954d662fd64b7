"""Throughput of one MAML meta-iteration (a benchmark, not a test): one JSON line per configuration.

Configuration (the MAML-RL navigation set-up of Finn et al. 2017, section 5.3, as in
:mod:`benchmarks.torch_reference`): per task 20 inner and 20 outer episodes of 100
steps, Gaussian MLP policy 100x100 ReLU (a categorical one for ``--task bandit`` and
``tabular_mdp``), linear feature baseline + standardised
advantages, gamma 0.99, one inner SGD step with lr 0.1, ``PGConfig(normalize="step")``,
estimator ``"dice"`` for second order and ``"first_order"`` for first order, then
one ``optax.adam(1e-3)`` update. One meta-iteration is one jitted call of
``step`` of :func:`metarl_jax.algorithms.maml.maml` (task sampling + meta-gradient + Adam).

What is measured, per configuration:

* ``compile_s``: lowering + XLA compilation + the first call (apart from the timed runs;
  ``lower_compile_s`` without the first call);
* ``median_s_per_iter`` / ``min_s_per_iter``: over ``--iters`` calls after ``--warmup``,
  each call followed by ``block_until_ready``; ``cpu_s_per_iter``: median process CPU
  time of the same calls (all threads; on a busy shared machine it is steadier than
  the wall time), ``load_average``: ``os.getloadavg()`` right after the runs;
* ``env_steps_per_s = meta_batch * (inner + outer episodes) * horizon / median``;
* ``gflops``: FLOPs of the compiled program (XLA cost analysis) / median. XLA counts a
  ``while`` body once, so the count is taken on an unrolled twin of the program
  (``flops_source`` says how, see :func:`count_flops`);
* ``matmul_ceiling_gflops``: a jitted f32 ``1024^3`` matmul timed in the same process, and
  ``matmul_skinny_gflops``: the batched ``[N, 2000, 100] @ [N, 100, 100]`` products the
  policy-gradient passes are made of (what this workload could reach at best);
* ``peak_memory_bytes``: ``device.memory_stats()["peak_bytes_in_use"]`` on a GPU; on a CPU
  the compiled program's temporary buffer size (``memory_analysis()``), ``memory_source``
  says which. A CPU configuration whose buffers exceed 60% of the free host memory is
  refused (a shared machine's out-of-memory killer could hit another process).

With ``--compare-torch`` the PyTorch reference (:mod:`benchmarks.torch_reference`, the same
configuration as a task loop) is timed in the same process right after each configuration;
its record is printed first and the JAX record gets ``speedup_vs_torch``.

Usage::

    python -m experiments.benchmark_speed                       # navigation, 1 20 100 tasks, order 1 and 2
    python -m experiments.benchmark_speed --meta-batch 20 --order 2 --iters 20 --compare-torch
    python -m experiments.benchmark_speed --sweep --order 2 --budget-s 60

The learner registry (``LEARNERS``) maps a name to a builder: ``"pg"``, ``"ac"`` (actor-critic) and
``"q"`` (Q-learning; discrete-action tasks only).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from benchmarks.benchmarking import device_description
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, auto_task_chunk, maml
from metarl_jax.networks import make_policy_for
from metarl_jax.resources import available_memory_bytes
from metarl_jax.tasks import make_family
from metarl_jax.tasks.base import sample_tasks
from metarl_jax.cli import OneLineArgumentParser, int_list
from metarl_jax.validation import check_int, check_real

EPISODES = 20
HORIZON = 100
HIDDEN = (100, 100)
OUTER_LR = 1e-3
INNER_LR = 0.1
GAMMA = 0.99

#: Task families and the constructor arguments of the benchmark (100-step episodes).
TASKS: dict[str, dict] = {
    "navigation": {"horizon": HORIZON},
    "bandit": {"num_arms": 5, "horizon": HORIZON},
    "tabular_mdp": {"num_states": 10, "num_actions": 5, "horizon": HORIZON},
}


@dataclasses.dataclass(frozen=True)
class Bench:
    """A configuration to time: what the learner registry returns."""

    learner: object
    family: object
    maml: MAMLConfig
    episodes_per_task: int  # inner + outer episodes per meta-iteration
    horizon: int


def build_pg(task: str, order: int, task_chunk: int | None, rollout_unroll: int = 1) -> Bench:
    """REINFORCE inner learner, linear baseline, standardised advantages, step normalisation."""
    family = make_family(task, **TASKS[task])
    policy = make_policy_for(family, hidden_sizes=HIDDEN, activation="relu")
    pg = PGConfig(num_inner_episodes=EPISODES, num_outer_episodes=EPISODES, horizon=HORIZON, gamma=GAMMA,
                  baseline="linear", standardize_advantages=True, normalize="step", rollout_unroll=rollout_unroll)
    estimator = "dice" if order == 2 else "first_order"
    maml = MAMLConfig(inner_steps=1, inner_lr=INNER_LR, estimator=estimator, task_chunk=task_chunk)
    return Bench(PolicyGradientLearner(family, policy, pg), family, maml,
                 pg.num_inner_episodes + pg.num_outer_episodes, pg.horizon)


def build_ac(task: str, order: int, task_chunk: int | None, rollout_unroll: int = 1) -> Bench:
    """Actor-critic inner learner: separate actor and critic MLPs, GAE(0.95), both adapted."""
    from metarl_jax.learners.actor_critic import ACConfig, ActorCriticLearner

    family = make_family(task, **TASKS[task])
    policy = make_policy_for(family, hidden_sizes=HIDDEN, activation="relu")
    ac = ACConfig(num_inner_episodes=EPISODES, num_outer_episodes=EPISODES, horizon=HORIZON, gamma=GAMMA,
                  normalize="step", rollout_unroll=rollout_unroll)
    estimator = "dice" if order == 2 else "first_order"
    maml = MAMLConfig(inner_steps=1, inner_lr=INNER_LR, estimator=estimator, task_chunk=task_chunk)
    return Bench(ActorCriticLearner(family, policy, ac, critic_hidden_sizes=HIDDEN), family, maml,
                 ac.num_inner_episodes + ac.num_outer_episodes, ac.horizon)


def build_q(task: str, order: int, task_chunk: int | None, rollout_unroll: int = 1) -> Bench:
    """Q-learning inner learner: MLP Q-network, Boltzmann behaviour, TD outer loss (discrete actions only)."""
    from metarl_jax.learners.q_learning import QConfig, QLearner, q_network_for

    family = make_family(task, **TASKS[task])
    network = q_network_for(family, hidden_sizes=HIDDEN)  # raises a clear error for continuous actions
    q = QConfig(num_inner_episodes=EPISODES, num_outer_episodes=EPISODES, horizon=HORIZON, gamma=GAMMA,
                rollout_unroll=rollout_unroll)
    estimator = "dice" if order == 2 else "first_order"
    maml = MAMLConfig(inner_steps=1, inner_lr=INNER_LR, estimator=estimator, task_chunk=task_chunk)
    return Bench(QLearner(family, network, q), family, maml, q.num_inner_episodes + q.num_outer_episodes, q.horizon)


#: name -> builder(task, order, task_chunk, rollout_unroll) -> Bench.
LEARNERS: dict[str, Callable[[str, int, int | None, int], Bench]] = {"pg": build_pg, "ac": build_ac, "q": build_q}


# ----------------------------------------------------------------------------- machine


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def _check_memory(compiled, device, fraction: float = 0.6) -> None:
    """Refuse to run a CPU program whose buffers exceed ``fraction`` of the free host memory
    (:func:`metarl_jax.resources.available_memory_bytes`: ``MemAvailable`` or the cgroup's headroom).

    The machine may be shared: an out-of-memory kill could hit someone else's process.
    """
    if device.platform != "cpu":
        return
    mem, free = compiled.memory_analysis(), available_memory_bytes(device)
    if mem is None or free is None:
        return
    need = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    if need > fraction * free:
        raise MemoryError(f"needs {need / 2**30:.1f} GiB of buffers, {free / 2**30:.1f} GiB available "
                          f"(limit {fraction:.0%})")


def _median_time(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceilings(meta_batch: int, repeats: int = 7) -> dict:
    """Achieved f32 GFLOP/s of a square 1024^3 matmul and of the skinny per-task products."""
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    out = {}
    n = 1024
    a = jax.random.normal(key1, (n, n), jnp.float32)
    b = jax.random.normal(key2, (n, n), jnp.float32)
    square = jax.jit(jnp.matmul)
    jax.block_until_ready(square(a, b))
    out["matmul_ceiling_gflops"] = 2 * n**3 / _median_time(square, (a, b), repeats) / 1e9
    tasks = max(1, min(int(meta_batch), 100))
    rows = EPISODES * HORIZON
    x = jax.random.normal(key1, (tasks, rows, HIDDEN[0]), jnp.float32)
    w = jax.random.normal(key2, (tasks, HIDDEN[0], HIDDEN[1]), jnp.float32)
    skinny = jax.jit(jnp.matmul)
    jax.block_until_ready(skinny(x, w))
    flops = 2 * tasks * rows * HIDDEN[0] * HIDDEN[1]
    out["matmul_skinny_gflops"] = flops / _median_time(skinny, (x, w), repeats) / 1e9
    out["matmul_skinny_shape"] = f"[{tasks},{rows},{HIDDEN[0]}]@[{tasks},{HIDDEN[0]},{HIDDEN[1]}]"
    return out


# ----------------------------------------------------------------------------- timing


def _make_step(bench: Bench, meta_batch: int):
    algorithm = maml(bench.learner, bench.maml, optax.adam(OUTER_LR),
                     lambda key: sample_tasks(bench.family, key, meta_batch))
    return algorithm.step, algorithm.init(jax.random.PRNGKey(0))


def _unrolled_flops(bench: Bench, meta_batch: int) -> float | None:
    learner = bench.learner
    learner = dataclasses.replace(learner, config=dataclasses.replace(learner.config, rollout_unroll=bench.horizon))
    twin = dataclasses.replace(bench, learner=learner, maml=dataclasses.replace(bench.maml, task_chunk=None))
    step, state = _make_step(twin, meta_batch)
    return _flops(jax.jit(step).lower(state).compile())


_FLOPS_CACHE: dict[tuple, tuple[float, float] | None] = {}


def count_flops(bench: Bench, meta_batch: int, key: tuple) -> tuple[float | None, str]:
    """FLOPs of one meta-iteration, every loop iteration counted.

    XLA's cost analysis counts a ``while`` body once, so it is run on a twin of the
    step with the rollout scans fully unrolled and no task chunking (the same
    arithmetic). Every task does the same work, so the count is ``a + b * meta_batch``:
    the twin is compiled for 1 and 2 tasks (cheap) and the line is evaluated at
    ``meta_batch`` (checked against a direct count at 20 tasks: within 0.02%).
    """
    if not hasattr(getattr(bench.learner, "config", None), "rollout_unroll"):
        return None, "unavailable"
    if key not in _FLOPS_CACHE:
        one, two = _unrolled_flops(bench, 1), _unrolled_flops(bench, 2)
        _FLOPS_CACHE[key] = None if one is None or two is None else (2 * one - two, two - one)
    line = _FLOPS_CACHE[key]
    if line is None:
        return None, "unavailable"
    return line[0] + line[1] * meta_batch, "cost_analysis(unrolled twin at 1 and 2 tasks, linear in tasks)"


def resolve_task_chunk(spec: str | int | None, meta_batch: int, platform: str, accumulate: bool = False) -> int | None:
    """``MAMLConfig.task_chunk`` for ``--task-chunk``: ``"none"`` / ``None``, an integer, or ``"auto"``.

    ``"auto"`` is :func:`metarl_jax.algorithms.maml.auto_task_chunk` (no chunking on an accelerator; on
    a CPU about 4 tasks per chunk, never more chunks than :func:`metarl_jax.algorithms.maml.map_tasks`
    unrolls; with ``accumulate``, chunks of 4 on any device).
    """
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return auto_task_chunk(meta_batch, platform, accumulate)
    try:
        chunk = int(spec)
    except ValueError:
        raise ValueError(f"--task-chunk={spec!r} is invalid: allowed are 'auto', 'none' or an integer >= 1") from None
    if chunk < 1:
        raise ValueError(f"--task-chunk={spec!r} is invalid: allowed are 'auto', 'none' or an integer >= 1")
    return chunk


def run_config(task: str, learner_name: str, meta_batch: int, order: int, iters: int, warmup: int,
               task_chunk: str | int | None, precision: str, flops_mode: str, budget_s: float | None,
               rollout_unroll: int = 1, accumulate: bool = False) -> dict:
    chunk_spec = task_chunk
    task_chunk = resolve_task_chunk(chunk_spec, meta_batch, jax.devices()[0].platform, accumulate)
    bench = LEARNERS[learner_name](task, order, task_chunk, rollout_unroll)
    accumulate = accumulate and task_chunk is not None and task_chunk < meta_batch
    if accumulate:
        bench = dataclasses.replace(bench, maml=dataclasses.replace(bench.maml, accumulate_chunks=True))
    step, state = _make_step(bench, meta_batch)
    jitted = jax.jit(step, donate_argnums=0)

    start = time.perf_counter()
    compiled = jitted.lower(state).compile()
    lower_compile_s = time.perf_counter() - start
    _check_memory(compiled, jax.devices()[0])
    state, metrics = compiled(state)
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - start

    times, cpu_times = [], []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    for i in range(warmup + iters):
        t0, c0 = time.perf_counter(), time.process_time()
        state, metrics = compiled(state)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        if deadline is not None and time.perf_counter() > deadline and len(times) >= 3:
            break
    median = statistics.median(times)
    loss = float(metrics["meta_loss"])

    flops, flops_source = None, "none"
    if flops_mode == "auto" and accumulate:  # the unrolled twin would count the un-accumulated program
        flops_source = "none (accumulate_chunks)"
    elif flops_mode == "auto":
        flops = _flops(compiled)
        flops_source = "cost_analysis"
        if flops is not None:  # loops (scan rollouts, lax.map chunks) are counted once: recount unrolled
            unrolled, source = count_flops(bench, meta_batch, (task, learner_name, order))
            if unrolled is not None:
                flops, flops_source = unrolled, source

    dev = jax.devices()[0]
    record = {
        "impl": "metarl_jax",
        "task": task,
        "learner": learner_name,
        "meta_batch": int(meta_batch),
        "order": int(order),
        "estimator": bench.maml.estimator,
        "task_chunk": task_chunk,
        "task_chunk_spec": str(chunk_spec),
        "rollout_unroll": int(rollout_unroll),
        "accumulate_chunks": bool(accumulate),
        "precision": precision,
        "episodes": bench.episodes_per_task // 2,
        "horizon": bench.horizon,
        "compile_s": round(compile_s, 3),
        "lower_compile_s": round(lower_compile_s, 3),
        "median_s_per_iter": median,
        "min_s_per_iter": min(times),
        "cpu_s_per_iter": statistics.median(cpu_times),
        "iters_timed": len(times),
        "env_steps_per_s": meta_batch * bench.episodes_per_task * bench.horizon / median,
        "flops_per_iter": flops,
        "flops_source": flops_source,
        "gflops": None if flops is None else flops / median / 1e9,
        "meta_loss": loss,
        "device": device_description(),
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
    if dev.platform == "cpu":
        mem = compiled.memory_analysis()
        record["peak_memory_bytes"] = None if mem is None else int(mem.temp_size_in_bytes)
        record["memory_source"] = "memory_analysis().temp_size_in_bytes"
    else:
        stats = dev.memory_stats() or {}
        record["peak_memory_bytes"] = stats.get("peak_bytes_in_use")
        record["memory_source"] = "device.memory_stats()['peak_bytes_in_use']"
    return record


def torch_record(meta_batch: int, order: int, iters: int, warmup: int) -> dict | None:
    try:
        from benchmarks.torch_reference import run_benchmark
        return run_benchmark(meta_batch, order, iters, warmup, seed=0)
    except ImportError as err:
        return {"impl": "torch-task-loop", "error": str(err)}


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m experiments.benchmark_speed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=tuple(TASKS), default="navigation")
    parser.add_argument("--learner", choices=tuple(LEARNERS), default="pg")
    parser.add_argument("--meta-batch", nargs="+", default=["1", "20", "100"], help="tasks per meta-iteration")
    parser.add_argument("--order", nargs="+", type=int, choices=(1, 2), default=[1, 2])
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations after the first call")
    parser.add_argument("--task-chunk", default="auto",
                        help="MAMLConfig.task_chunk: 'auto' (default: about 4 tasks per chunk on a CPU, at "
                             "most 8 chunks; one vmap on a GPU), 'none' (one vmap) or an integer")
    parser.add_argument("--accumulate", action="store_true",
                        help="MAMLConfig.accumulate_chunks: the meta-gradient accumulated over task chunks in a "
                             "scan (one chunk's memory; 'auto' chunks are then 4 tasks on any device)")
    parser.add_argument("--rollout-unroll", type=int, default=1,
                        help="time steps per loop iteration of the rollout scans (learner config rollout_unroll)")
    parser.add_argument("--precision", choices=("default", "high", "highest"), default="default",
                        help="jax.default_matmul_precision for the whole run")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also time benchmarks.torch_reference in this process and print the ratio")
    parser.add_argument("--sweep", action="store_true", help="meta-batch 1, 2, 4, ..., 4096 while within budget")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="--sweep: time budget per configuration (compile + runs); the sweep stops "
                             "at the first configuration that exceeds it or fails")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (saves a compile)")
    args = parser.parse_args(argv)
    try:  # every value (and the task-learner pair) before the first compilation
        check_int("iters", args.iters, minimum=1)
        check_int("warmup", args.warmup, minimum=0)
        check_int("rollout_unroll", args.rollout_unroll, minimum=1)
        check_real("budget_s", args.budget_s, minimum=0.0, min_open=True)
        requested = int_list("meta_batch", args.meta_batch)
        resolve_task_chunk(args.task_chunk, 1, "cpu")
    except ValueError as err:
        parser.error(str(err))
    try:  # building the learner (no compilation) rejects a pair such as q on continuous actions
        LEARNERS[args.learner](args.task, args.order[0], None, args.rollout_unroll)
    except ValueError as err:
        parser.error(f"learner={args.learner!r} is invalid with task={args.task!r}: {err}")

    meta_batches = [2**k for k in range(13)] if args.sweep else requested
    precision = args.precision
    ceilings_cache: dict[int, dict] = {}
    with jax.default_matmul_precision(precision if precision != "default" else None):
        for order in args.order:
            for meta_batch in meta_batches:
                key = min(meta_batch, 100)
                if key not in ceilings_cache:
                    ceilings_cache[key] = matmul_ceilings(meta_batch)
                start = time.perf_counter()
                try:
                    record = run_config(args.task, args.learner, meta_batch, order, args.iters, args.warmup,
                                        args.task_chunk, precision, "none" if args.no_flops else "auto",
                                        args.budget_s if args.sweep else None, args.rollout_unroll,
                                        args.accumulate)
                except Exception as err:  # noqa: BLE001 - a sweep stops at the first failure (e.g. memory)
                    print(json.dumps({"task": args.task, "meta_batch": meta_batch, "order": order,
                                      "error": f"{type(err).__name__}: {err}"[:500]}), flush=True)
                    if args.sweep:
                        break
                    raise
                record.update(ceilings_cache[key])
                record["load_average"] = load_average()
                if args.compare_torch:
                    ref = torch_record(meta_batch, order, args.iters, args.warmup)
                    record["torch_median_s_per_iter"] = ref.get("median_s_per_iter") if ref else None
                    if ref and ref.get("median_s_per_iter"):
                        record["speedup_vs_torch"] = ref["median_s_per_iter"] / record["median_s_per_iter"]
                    print(json.dumps(dict(ref, load_average=load_average())), flush=True)
                print(json.dumps(record), flush=True)
                if args.sweep and time.perf_counter() - start > args.budget_s:
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
