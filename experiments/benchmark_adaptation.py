"""Adaptation-speed benchmark: how fast each initialisation adapts to held-out tasks.

For every (task family, inner learner) pair this command

1. meta-trains (or, with ``--checkpoint-dir``, loads) two initialisations with the pair's
   experiment config (``experiments/maml_*.py`` defaults, ``--iterations`` overrides the count):
   (a) second-order MAML with the experiment's estimator (``dice`` or ``lvc``) and
   (b) first-order MAML (``estimator="first_order"``, same everything else);
2. adds (c) the random initialisation all runs started from (the seed's ``theta_0``) and
   (d) a multi-task pretrained initialisation (:func:`metarl_jax.algorithms.multitask.multitask`:
   the same iterations, meta-batch and optimizer maximising the return *without* adaptation);
3. measures on ``--eval-tasks`` held-out tasks (fixed seed, the same tasks and the same
   sampling keys for every initialisation) the mean return after ``k = 0..K`` inner steps
   (:func:`metarl_jax.evaluation.adaptation_returns`) with mean and 95% CI, beside
   (e) the exact optimum (``family.optimal_return``), or for a family without one an estimate
   (``--optimum-steps`` inner steps per task from the best initialisation);
4. times adaptation itself: one jitted, vmapped ``adapt`` with ``K = 1`` (first order, no
   meta-gradient: what deployment runs) on 1, 100 and 1,000 tasks at once, compile time
   apart, median of ``--timing-repeats`` calls.

Writes ``<out-dir>/benchmark_adaptation.json`` (one object per pair), one PNG per pair
(``adaptation_<task>_<learner>.png``), ``benchmark_adaptation.md`` (the tables) and the
training runs under ``<out-dir>/<task>_<learner>/{maml,fo_maml,multitask}/``; a rerun with
the same ``--out-dir`` reuses finished runs (checkpoints) instead of training again.

    python -m experiments.benchmark_adaptation
    python -m experiments.benchmark_adaptation --pairs "navigation:pg bandit:pg" --iterations 50
    python -m experiments.benchmark_adaptation --pairs cartpole_target:pg --optimum-steps 40
    python -m experiments.benchmark_adaptation --checkpoint-dir runs/benchmark_adaptation
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from experiments.maml_acrobot_target import AcrobotTargetConfig
from experiments.maml_bandit import BanditConfig
from experiments.maml_cartpole_ac import CartPoleACConfig
from experiments.maml_finance import FinanceConfig
from experiments.maml_cartpole_target import CartPoleTargetConfig
from experiments.maml_maze_q import MazeQConfig
from experiments.maml_navigation import NavigationConfig
from experiments.maml_tabular_mdp import TabularMDPConfig
from experiments.maml_tabular_q import TabularQConfig
from metarl_jax.training import checkpoint as ckpt
from metarl_jax import evaluation, plotting
from benchmarks.benchmarking import cpu_model, jax_device_name
from metarl_jax.experiment import MAMLExperimentConfig, build, write_json
from metarl_jax.algorithms.maml import init_meta_params, maml
from metarl_jax.algorithms.multitask import multitask
from metarl_jax.tasks import sample_tasks
from metarl_jax.training.loop import load_meta_params, make_optimizer, run
from metarl_jax.cli import OneLineArgumentParser, int_list
from metarl_jax.validation import (check_int, check_int_sequence, check_optional_int, check_real, check_writable_dir,
                                   require)

#: Experiment config giving the defaults of each (task, learner) pair; others use MAMLExperimentConfig.
PAIR_CONFIGS: dict[tuple[str, str], type[MAMLExperimentConfig]] = {
    ("navigation", "pg"): NavigationConfig,
    ("bandit", "pg"): BanditConfig,
    ("tabular_mdp", "pg"): TabularMDPConfig,
    ("maze", "q"): MazeQConfig,
    ("cartpole_target", "pg"): CartPoleTargetConfig,
    ("cartpole_target", "ac"): CartPoleACConfig,
    ("acrobot_target", "pg"): AcrobotTargetConfig,
    ("tabular_mdp", "q"): TabularQConfig,
    ("risk_control", "pg"): FinanceConfig,
}
#: One pair per shipped experiment (each family with headroom, each inner learner).
DEFAULT_PAIRS = ("navigation:pg", "bandit:pg", "tabular_mdp:pg", "tabular_mdp:q", "maze:q", "cartpole_target:pg",
                 "cartpole_target:ac", "acrobot_target:pg", "risk_control:pg")
#: Initialisations in the order of the tables; the second-order label gets its estimator appended.
VARIANTS = ("maml", "fo_maml", "random", "multitask")


@dataclasses.dataclass(frozen=True)
class AdaptationBenchmarkConfig:
    """Settings of one benchmark run (validated on construction).

    Attributes:
      pairs: ``"task:learner"`` names, e.g. ``("navigation:pg", "maze:q")``.
      iterations: meta-iterations of every training run (``None``: the experiment's default).
      eval_tasks: held-out tasks of the adaptation curves (>= 100).
      steps: inner steps ``K`` of the adaptation curves (>= 5).
      seed: seed of training (all runs of a pair start from the same ``theta_0``) and, offset,
        of the held-out tasks.
      out_dir: where JSON, PNGs, tables and training runs go.
      checkpoint_dir: a previous ``out_dir``: load its checkpoints instead of training.
      adapt_sizes: task counts of the adaptation timing (empty: no timing).
      timing_repeats: timed calls per size (the median is reported).
      max_adapt_memory_gb: skip a timing whose compiled program needs more temporary memory.
      optimum_steps: for a family without an exact solver, the per-task optimum is estimated by
        this many first-order inner steps from the best initialisation (a lower bound).
    """

    pairs: tuple[str, ...] = DEFAULT_PAIRS
    iterations: int | None = None
    eval_tasks: int = 100
    steps: int = 5
    seed: int = 0
    out_dir: str = "runs/benchmark_adaptation"
    checkpoint_dir: str | None = None
    adapt_sizes: tuple[int, ...] = (1, 100, 1000)
    timing_repeats: int = 5
    max_adapt_memory_gb: float = 8.0
    optimum_steps: int = 40

    def __post_init__(self):
        require(len(self.pairs) >= 1, "pairs", self.pairs, "name at least one task:learner pair")
        for pair in self.pairs:
            require(isinstance(pair, str) and pair.count(":") == 1, "pairs", pair,
                    "each pair is written task:learner, e.g. navigation:pg")
        check_optional_int("iterations", self.iterations, minimum=1)
        check_int("eval_tasks", self.eval_tasks, minimum=100)
        check_int("steps", self.steps, minimum=5)
        check_int("seed", self.seed, minimum=0)
        check_int_sequence("adapt_sizes", self.adapt_sizes, min_length=0)  # empty: no timing
        check_int("timing_repeats", self.timing_repeats, minimum=1)
        check_real("max_adapt_memory_gb", self.max_adapt_memory_gb, minimum=0.0, min_open=True)
        check_int("optimum_steps", self.optimum_steps, minimum=0)


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """Device, host CPU, core count, load average and versions, for the record."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"device": jax_device_name(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_average": load, "jax": jax.__version__, "python": platform.python_version()}


def device_name() -> str:
    """The device for a table caption: the JAX device, or on a CPU its model and core count."""
    if jax.devices()[0].platform != "cpu":
        return jax_device_name()
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores"


# ----------------------------------------------------------------------------- one pair


def experiment_config(pair: str, bench: AdaptationBenchmarkConfig) -> MAMLExperimentConfig:
    """The pair's experiment config with the benchmark's seed, iterations and evaluation settings."""
    task, learner = pair.split(":")
    overrides: dict[str, Any] = {"seed": bench.seed, "eval_tasks": bench.eval_tasks, "eval_steps": bench.steps}
    if bench.iterations is not None:
        overrides["num_iterations"] = int(bench.iterations)
    cls = PAIR_CONFIGS.get((task, learner))
    if cls is None:
        return MAMLExperimentConfig(task=task, learner=learner, **overrides)
    return cls(**overrides)


def slug(pair: str) -> str:
    return pair.replace(":", "_")


def labels(estimator: str) -> dict[str, str]:
    return {"maml": f"MAML ({estimator}, 2nd order)", "fo_maml": "first-order MAML",
            "random": "random init", "multitask": "multi-task pretrained"}


def _require_checkpoint(directory: str) -> str:
    if ckpt.latest_checkpoint(directory) is None:
        raise FileNotFoundError(f"checkpoint_dir: no checkpoint in {directory!r}")
    return directory


def train_or_load(cfg: MAMLExperimentConfig, bench: AdaptationBenchmarkConfig, pair: str):
    """``(family, learner, maml_config, {variant: meta_params}, {variant: training record})``."""
    family, learner, maml_so, train_config = build(cfg)
    maml_fo = dataclasses.replace(maml_so, estimator="first_order")
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    skip = train_config.on_nonfinite == "skip"
    pretraining = multitask(learner, maml_so, make_optimizer(train_config), sample, skip)
    pair_dir = os.path.join(bench.out_dir, slug(pair))
    params: dict[str, Any] = {}
    records: dict[str, dict] = {}
    for variant, maml_config in (("maml", maml_so), ("fo_maml", maml_fo)):
        t0 = time.perf_counter()
        algorithm = maml(learner, maml_config, make_optimizer(train_config), sample, skip_nonfinite=skip)
        if bench.checkpoint_dir is not None:
            directory = _require_checkpoint(os.path.join(bench.checkpoint_dir, slug(pair), variant, "checkpoints"))
            params[variant] = load_meta_params(directory, algorithm)
            records[variant] = {"loaded_from": directory}
        else:
            state, history = run(algorithm, train_config, os.path.join(pair_dir, variant), progress=False)
            params[variant] = state.meta_params
            last = history[-10:]
            records[variant] = {
                "iterations": int(state.step), "estimator": maml_config.estimator,
                "seconds": round(time.perf_counter() - t0, 2),
                "median_s_per_iteration": float(np.median([h["seconds"] for h in history[1:] if "seconds" in h] or [0.0])),
                "final_train_post_adaptation_return": float(np.mean([h["post_adaptation_return"] for h in last])),
            }
        print(f"  {variant}: {records[variant]}", flush=True)
    t0 = time.perf_counter()
    if bench.checkpoint_dir is not None:
        source = os.path.join(bench.checkpoint_dir, slug(pair), "multitask")
        _require_checkpoint(os.path.join(source, "checkpoints"))
        state, _ = run(pretraining, train_config, source, progress=False, desc="multi-task iterations",
                       metadata={"kind": "multitask"})
        params["multitask"] = state.meta_params
        records["multitask"] = {"loaded_from": source}
    else:
        state, history = run(pretraining, train_config, os.path.join(pair_dir, "multitask"), progress=False,
                             desc="multi-task iterations", metadata={"kind": "multitask"})
        params["multitask"] = state.meta_params
        records["multitask"] = {
            "iterations": int(train_config.num_iterations),  # run_loop runs exactly num_iterations
            "seconds": round(time.perf_counter() - t0, 2),
            "median_s_per_iteration": float(np.median([h["seconds"] for h in history[1:] if "seconds" in h] or [0.0])),
            "final_train_return": float(np.mean([h["return"] for h in history[-10:]])) if history else None,
        }
    print(f"  multitask: {records['multitask']}", flush=True)
    # theta_0 of every run above: each algorithm's init splits PRNGKey(seed) into (key_init, key_run).
    key_init = jax.random.split(jax.random.PRNGKey(train_config.seed))[0]
    params["random"] = init_meta_params(key_init, learner, maml_so)
    records["random"] = {"note": "theta_0 the trained runs started from"}
    return family, learner, maml_so, params, records


def best_column(curves: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """The per-task returns ``[tasks]`` of the step with the highest mean return over every curve.

    ``curves`` maps a name to returns ``[tasks, steps]``. Every column is the return of a policy
    obtained per task, so the best one is a lower bound on the mean per-task optimum (up to the
    selection among ``sum(steps)`` noisy means); a path that diverges late (too large a step for
    many steps) does not drag the estimate down. Returns ``(column, "name at k=j")``.
    """
    name, k = max(((n, k) for n, c in curves.items() for k in range(c.shape[1])),
                  key=lambda nk: curves[nk[0]][:, nk[1]].mean())
    return curves[name][:, k], f"{name} at k={k}"


def adaptation_curves(cfg: MAMLExperimentConfig, family, learner, maml_config, params: dict,
                      optimum_steps: int = 0) -> dict:
    """Curves ``{variant: {"mean", "ci95"}}`` on the held-out tasks, the optimum and the headroom closed.

    The optimum is exact where the family has a solver, else (``optimum_steps > 0``) estimated by
    ``optimum_steps`` inner steps per task from the initialisation with the best final return
    (:func:`best_column` of that path and the curves).
    """
    key_tasks, key_eval = jax.random.split(jax.random.PRNGKey(cfg.seed + 1_000_003))
    tasks = sample_tasks(family, key_tasks, cfg.eval_tasks)
    curve_fn = jax.jit(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks, key_eval,
                                                               cfg.eval_steps))
    raw = {variant: np.asarray(curve_fn(params[variant])) for variant in VARIANTS}
    curves = {variant: evaluation.summarize_curve(raw[variant]) for variant in VARIANTS}
    result: dict[str, Any] = {"curves": curves}
    optimum = evaluation.optimal_returns(family, tasks, cfg.horizon)
    if optimum is not None:
        mean, half = evaluation.mean_and_ci95(np.asarray(optimum))
        result["optimum"] = {"mean": float(mean), "ci95": float(half), "kind": "exact"}
    elif optimum_steps:
        # No exact solver: fine-tune each task from the initialisation that adapts best, for many steps,
        # and take the column (any step of that path or of any curve) with the best mean return.
        best = max(VARIANTS, key=lambda v: raw[v][:, -1].mean())
        long_fn = jax.jit(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks, key_eval,
                                                                  optimum_steps))
        optimum, source = best_column({f"{best}, {optimum_steps} steps": np.asarray(long_fn(params[best])),
                                       **raw})
        mean, half = evaluation.mean_and_ci95(optimum)
        result["optimum"] = {"mean": float(mean), "ci95": float(half),
                             "kind": f"estimate: best mean over inner steps, {source} (a lower bound)"}
    if optimum is not None:
        # Headroom: the per-task optimum over the best single policy (multi-task, not adapted).
        reference = raw["multitask"][:, 0]
        result["headroom"] = {variant: evaluation.headroom_closed(raw[variant], reference, np.asarray(optimum))
                              for variant in VARIANTS}
    return result


def time_adaptation(family, learner, maml_config, meta_params, sizes, repeats: int, max_memory_gb: float,
                    seed: int) -> list[dict]:
    """Wall-clock time of one jitted, vmapped ``K = 1`` adaptation of ``n`` tasks, for each ``n`` in ``sizes``.

    ``compile_s`` is lowering + compilation (apart); ``median_s`` the median of ``repeats``
    calls after one warm-up call, each waited for with ``block_until_ready``.
    """
    out = []
    adapt_fn = jax.jit(lambda mp, tasks, key: evaluation.adapted_params(learner, maml_config, mp, tasks, key, 1))
    for n in sizes:
        tasks = sample_tasks(family, jax.random.PRNGKey(seed + 17), int(n))
        key = jax.random.PRNGKey(seed + 23)
        t0 = time.perf_counter()
        compiled = adapt_fn.lower(meta_params, tasks, key).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp_gb = None if mem is None else mem.temp_size_in_bytes / 2**30
        record = {"tasks": int(n), "compile_s": round(compile_s, 3),
                  "temp_memory_gb": None if temp_gb is None else round(temp_gb, 3), "device": device_name()}
        if temp_gb is not None and temp_gb > max_memory_gb:
            record["skipped"] = f"needs {temp_gb:.1f} GB > max_adapt_memory_gb={max_memory_gb}"
            out.append(record)
            continue
        jax.block_until_ready(compiled(meta_params, tasks, key))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(meta_params, tasks, key))
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        record.update({"median_s": median, "min_s": min(times), "repeats": len(times),
                       "ms_per_task": 1e3 * median / n, "tasks_per_s": n / median})
        out.append(record)
    return out


def run_pair(pair: str, bench: AdaptationBenchmarkConfig) -> dict:
    """Train/load, evaluate, time and plot one pair; returns its JSON object."""
    cfg = experiment_config(pair, bench)
    t0 = time.perf_counter()
    print(f"[{pair}] {type(cfg).__name__}: {cfg.num_iterations} iterations, estimator {cfg.estimator}", flush=True)
    family, learner, maml_config, params, records = train_or_load(cfg, bench, pair)
    # Held-out tasks come from the config's test family: new draws of the same family, or, for tasks that
    # are periods of time (risk_control), the period after the training one.
    result = adaptation_curves(cfg, cfg.make_family("test"), learner, maml_config, params, bench.optimum_steps)
    print(f"  curves done at {time.perf_counter() - t0:.1f}s", flush=True)
    names = labels(maml_config.estimator)
    figure = os.path.join(bench.out_dir, f"adaptation_{slug(pair)}.png")
    plotting.plot_adaptation_curves({names[v]: result["curves"][v] for v in VARIANTS}, figure,
                                    result.get("optimum", {}).get("mean"),
                                    title=f"{pair}: {cfg.eval_tasks} held-out tasks")
    timing = time_adaptation(family, learner, maml_config, params["maml"], bench.adapt_sizes,
                             bench.timing_repeats, bench.max_adapt_memory_gb, bench.seed)
    return {
        "pair": pair, "task": cfg.task, "learner": cfg.learner, "estimator": maml_config.estimator,
        "labels": names, "experiment_config": dataclasses.asdict(cfg), "training": records,
        "eval_tasks": cfg.eval_tasks, "steps": cfg.eval_steps, **result, "adapt_timing": timing,
        "figure": figure, "seconds": round(time.perf_counter() - t0, 2),
    }


# ----------------------------------------------------------------------------- tables


def adaptation_table(results: list[dict]) -> str:
    """Markdown: one row per (pair, initialisation), one column per inner step ``k``."""
    steps = max(r["steps"] for r in results)
    head = "| pair | initialisation | " + " | ".join(f"k={k}" for k in range(steps + 1)) + " |"
    lines = [head, "|" + "---|" * (steps + 3)]
    for r in results:
        for variant in VARIANTS:
            s = r["curves"][variant]
            cells = [f"{m:.3f} ± {c:.3f}" for m, c in zip(s["mean"], s["ci95"])]
            lines.append(f"| {r['pair']} | {r['labels'][variant]} | " + " | ".join(cells) + " |")
        if "optimum" in r:
            opt = f"{r['optimum']['mean']:.3f}"
            kind = "exact optimum" if r["optimum"].get("kind", "exact") == "exact" else "optimum (estimate)"
            lines.append(f"| {r['pair']} | {kind} | " + " | ".join([opt] * (steps + 1)) + " |")
    return "\n".join(lines)


def headroom_table(results: list[dict], steps: tuple[int, ...] = (1, 2, 3)) -> str:
    """Markdown: fraction of the headroom (optimum - multi-task policy) closed after k steps, 95% CI."""
    lines = ["| pair | headroom | initialisation | " + " | ".join(f"k={k}" for k in steps) + " |",
             "|" + "---|" * (len(steps) + 3)]
    for r in results:
        if "headroom" not in r:
            lines.append(f"| {r['pair']} | no exact optimum | | " + " | ".join([""] * len(steps)) + " |")
            continue
        for variant in VARIANTS:
            h = r["headroom"][variant]
            cells = [f"{h['fraction'][k]:.2f} [{h['ci_low'][k]:.2f}, {h['ci_high'][k]:.2f}]"
                     for k in steps if k < len(h["fraction"])]
            lines.append(f"| {r['pair']} | {h['headroom']:.3f} | {r['labels'][variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(results: list[dict]) -> str:
    """Markdown: adaptation wall-clock per pair and task count."""
    lines = ["| pair | tasks | compile s | median s | ms per task | tasks/s | temp memory GB |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for t in r["adapt_timing"]:
            if "skipped" in t:
                lines.append(f"| {r['pair']} | {t['tasks']} | {t['compile_s']:.2f} | skipped: {t['skipped']} | | | |")
                continue
            lines.append(f"| {r['pair']} | {t['tasks']} | {t['compile_s']:.2f} | {t['median_s']:.4f} | "
                         f"{t['ms_per_task']:.3f} | {t['tasks_per_s']:.0f} | {t['temp_memory_gb']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def _split(values: list[str]) -> list[str]:
    return [x for v in values for x in str(v).replace(",", " ").split()]


def parse_args(argv: list[str] | None) -> AdaptationBenchmarkConfig:
    """The benchmark config of a command line; any bad value (a pair that cannot be built, an output
    directory that cannot be written, a missing ``--checkpoint-dir``) exits in one line, status 2."""
    defaults = AdaptationBenchmarkConfig()
    parser = OneLineArgumentParser(prog="python -m experiments.benchmark_adaptation",
                                   description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(defaults.pairs),
                        help='task:learner pairs, e.g. "navigation:pg bandit:pg tabular_mdp:pg maze:q"')
    parser.add_argument("--iterations", type=int, default=None,
                        help="meta-iterations of every training run (default: each experiment's default)")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks, help="held-out tasks (>= 100)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="inner steps K of the curves (>= 5)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="a previous --out-dir: load its checkpoints instead of training")
    parser.add_argument("--adapt-sizes", nargs="*", default=[str(n) for n in defaults.adapt_sizes],
                        help="task counts of the adaptation timing (none: skip the timing)")
    parser.add_argument("--timing-repeats", type=int, default=defaults.timing_repeats)
    parser.add_argument("--max-adapt-memory-gb", type=float, default=defaults.max_adapt_memory_gb)
    parser.add_argument("--optimum-steps", type=int, default=defaults.optimum_steps,
                        help="families without an exact optimum: inner steps of the per-task estimate (0: none)")
    args = parser.parse_args(argv)
    try:
        sizes = _split(args.adapt_sizes)
        bench = AdaptationBenchmarkConfig(
            pairs=tuple(_split(args.pairs)), iterations=args.iterations, eval_tasks=args.eval_tasks,
            steps=args.steps, seed=args.seed, out_dir=args.out_dir, checkpoint_dir=args.checkpoint_dir,
            adapt_sizes=tuple(int_list("adapt_sizes", sizes)) if sizes else (), timing_repeats=args.timing_repeats,
            max_adapt_memory_gb=args.max_adapt_memory_gb, optimum_steps=args.optimum_steps)
        check_writable_dir("out_dir", bench.out_dir)
        require(bench.checkpoint_dir is None or os.path.isdir(bench.checkpoint_dir), "checkpoint_dir",
                bench.checkpoint_dir, "must be an existing directory (a previous --out-dir)")
    except ValueError as err:
        parser.error(str(err))
    for pair in bench.pairs:  # every pair is built (no compilation) before the first one trains
        try:
            build(experiment_config(pair, bench))
        except ValueError as err:
            parser.error(f"pairs={pair!r} is invalid: {err}")
    return bench


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON payload it writes."""
    bench = parse_args(argv)
    command = "python -m experiments.benchmark_adaptation " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(bench.out_dir, exist_ok=True)
    machine = machine_info()
    print(f"{command}\n{json.dumps(machine)}", flush=True)
    t0 = time.perf_counter()
    results = [run_pair(pair, bench) for pair in bench.pairs]
    payload = {"command": command, "machine": machine, "config": dataclasses.asdict(bench), "pairs": results,
               "load_average_end": machine_info()["load_average"], "total_seconds": round(time.perf_counter() - t0, 1)}
    write_json(os.path.join(bench.out_dir, "benchmark_adaptation.json"), payload)
    tables = (f"Return after k inner steps on {bench.eval_tasks} held-out tasks (mean ± 95% CI):\n\n"
              f"{adaptation_table(results)}\n\nFraction of the headroom closed after k inner steps "
              f"(headroom = exact optimum - multi-task policy without adaptation; 1 = optimum; "
              f"[95% paired-bootstrap CI]):\n\n{headroom_table(results)}\n\nWall-clock of one jitted vmapped K=1 adaptation "
              f"({device_name()}):\n\n{timing_table(results)}\n")
    with open(os.path.join(bench.out_dir, "benchmark_adaptation.md"), "w", encoding="utf-8") as f:
        f.write(f"`{command}`\n\n{tables}")
    print(tables)
    print(f"wrote {bench.out_dir}/benchmark_adaptation.{{json,md}} and adaptation_*.png "
          f"({payload['total_seconds']} s)", flush=True)
    return payload


if __name__ == "__main__":
    main()
