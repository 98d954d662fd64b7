"""The loop around the jitted meta-iteration: progress bar, metrics on disk, checkpoints, resume.

:func:`run` is the one loop: it runs any :class:`~metarl_jax.algorithms.base.MetaAlgorithm`
(``init(key) -> state``, ``step(state) -> (state, metrics)``: MAML, TRPO, ProMP, multi-task, task
selection around any of them) from ``algorithm.init(PRNGKey(seed))``; :func:`run_loop` is the same
loop for a bare step function and initial state. The only ``jit`` of training is here
(:func:`jit_multi_step`).

The compiled unit is a ``lax.scan`` over ``iterations_per_call`` meta-iterations
(each: sample tasks, adapt, meta-gradient, optimizer step); nothing inside it
talks to the host. Between calls the loop appends one JSON line per
iteration to ``metrics.jsonl`` (flushed, so a crash loses no finished
iteration) and saves a crash-safe checkpoint of the whole training state
(parameters, optimizer state, PRNG key, step, and whatever else the state
carries) every ``checkpoint_every`` iterations. Restarting with the same run
directory resumes from the latest checkpoint and produces the same metrics as
an uninterrupted run with the same seed: the PRNG key is part of the
checkpointed state and ``metrics.jsonl`` is cut back to the checkpointed iteration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from metarl_jax import sharding
from metarl_jax.algorithms.base import MetaAlgorithm
from metarl_jax.records import json_line
from metarl_jax.training import checkpoint as ckpt
from metarl_jax.training.interrupts import InterruptRequest, TrainingInterrupted, deferred_interrupts
from metarl_jax.validation import check_choice, check_int, check_optional_int, check_optional_real, check_real, require

NONFINITE_POLICIES = ("stop", "skip")
LR_SCHEDULES = ("constant", "cosine")


class NonFiniteGradientError(RuntimeError):
    """Raised when a meta-gradient contains NaN or inf and the policy is ``"stop"``.

    ``last_good_state``: the training state after the last scan call whose every iteration was
    finite (what the latest checkpoint would hold had it been written then); ``history``: the
    per-iteration records up to that state. Callers that keep training state in memory (e.g.
    :meth:`metarl_jax.api.MetaRL.train`) keep this progress instead of losing the whole call.
    """

    def __init__(self, message: str, last_good_state: Any = None, history: list | None = None):
        super().__init__(message)
        self.last_good_state = last_good_state
        self.history = [] if history is None else history


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Meta-training loop settings.

    Attributes:
      num_iterations: meta-iterations to run in total.
      meta_batch: tasks per meta-iteration.
      outer_lr: Adam step size of the meta-optimizer.
      seed: PRNG seed (parameters, tasks, rollouts).
      iterations_per_call: meta-iterations compiled into one ``lax.scan`` call.
      checkpoint_every: iterations between checkpoints (rounded up to whole calls).
      keep_checkpoints: how many checkpoints to keep.
      on_nonfinite: ``"stop"`` raises (keeping the last good checkpoint) or ``"skip"``
        leaves the parameters unchanged for that iteration.
      max_grad_norm: clip the meta-gradient's global norm (``None``: no clipping).
      lr_schedule: ``"constant"`` or ``"cosine"``: the outer step size decays from ``outer_lr`` to
        ``final_lr_fraction * outer_lr`` over ``num_iterations`` (``optax.cosine_decay_schedule``),
        so the end of a run is not caught in one of the occasional large-gradient excursions of
        the meta-objective (docs/benchmarks.md, "Training that does not decay"). The schedule's
        step count is part of the optimizer state: a resumed run continues it.
      final_lr_fraction: the cosine schedule's last step size as a fraction of ``outer_lr``.
      decay_iterations: iterations over which the cosine schedule decays (``None``: ``num_iterations``);
        after them the step size stays at its final value. A run extended beyond its original
        ``num_iterations`` keeps that original schedule, so its first iterations are the ones the
        original run computes, and it continues at the final step size.
      devices: devices the task axis is split over (:func:`run_loop`): ``None`` every device JAX
        sees (with ``jax.distributed``, every host's), an integer ``n`` the first ``n``
        (``jax.devices()[:n]``; checked against the device count when the run starts). Execution
        only: results equal a one-device run's up to float rounding.
    """

    num_iterations: int = 100
    meta_batch: int = 20
    outer_lr: float = 1e-3
    seed: int = 0
    iterations_per_call: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    on_nonfinite: str = "stop"
    max_grad_norm: float | None = None
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.1
    devices: int | None = None
    decay_iterations: int | None = None

    def __post_init__(self):
        for name in ("num_iterations", "meta_batch", "iterations_per_call", "checkpoint_every", "keep_checkpoints"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_real("outer_lr", self.outer_lr, minimum=0.0, min_open=True)
        check_choice("on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        check_optional_real("max_grad_norm", self.max_grad_norm, minimum=0.0, min_open=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_real("final_lr_fraction", self.final_lr_fraction, minimum=0.0, maximum=1.0)
        check_optional_int("devices", self.devices, minimum=1)
        check_optional_int("decay_iterations", self.decay_iterations, minimum=1)


def outer_learning_rate(config: TrainConfig):
    """``outer_lr``, or the cosine schedule ``step -> lr`` of ``config.lr_schedule="cosine"``."""
    if config.lr_schedule == "cosine":
        decay = config.num_iterations if config.decay_iterations is None else config.decay_iterations
        return optax.cosine_decay_schedule(config.outer_lr, int(decay), config.final_lr_fraction)
    return config.outer_lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam on the meta-parameters (step size :func:`outer_learning_rate`), with optional global-norm clipping."""
    adam = optax.adam(outer_learning_rate(config))
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def make_multi_step(step_fn: Callable, num_steps: int) -> Callable:
    """``state -> (state, metrics stacked over num_steps)``: a ``lax.scan`` of the meta-iteration.

    Under a task mesh (:func:`run_loop` with several devices) both outputs are replicated
    (:func:`metarl_jax.sharding.constrain_replicated`), so every process can read them.
    """

    def multi_step(state):
        return sharding.constrain_replicated(jax.lax.scan(lambda s, _: step_fn(s), state, None, length=num_steps))

    return multi_step


@functools.lru_cache(maxsize=8)
def _cached_jit_multi_step(step_fn: Callable, num_steps: int) -> Callable:
    return jax.jit(make_multi_step(step_fn, num_steps))


def jit_multi_step(step_fn: Callable, num_steps: int) -> Callable:
    """``jax.jit(make_multi_step(step_fn, num_steps))``, the same object for the same ``(step_fn, num_steps)``.

    The last few pairs are kept, so repeated runs with the *same* step function
    (seeds, resumes, tests) reuse one compilation; an unhashable ``step_fn`` gets a fresh jit.
    """
    try:
        return _cached_jit_multi_step(step_fn, int(num_steps))
    except TypeError:  # unhashable step function: no cache
        return jax.jit(make_multi_step(step_fn, int(num_steps)))


def _scalar_metrics(metrics: dict, index: int) -> dict:
    out = {}
    for name, value in metrics.items():
        value = np.asarray(value[index])
        if value.ndim == 0:
            out[name] = value.item() if value.dtype != np.bool_ else bool(value)
        elif value.size <= 32:
            out[name] = value.tolist()
    return out


def _truncate_metrics(path: str, num_iterations: int) -> int:
    """Keep the records of iterations ``< num_iterations`` in the JSON-lines file ``path`` (drop
    work recorded after the checkpoint); returns how many records were dropped."""
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] < num_iterations]
    if len(kept) == len(lines):
        return 0
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(lines) - len(kept)


def _set_aside(path: str) -> str | None:
    """Rename ``path`` to ``path.discarded-<YYYYmmdd-HHMMSS>`` (kept, out of the way); the new name,
    or ``None`` when there is no such file."""
    if not os.path.exists(path):
        return None
    target = f"{path}.discarded-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{target.rsplit('~', 1)[0]}~{n}"
    os.replace(path, target)
    return target


def _note(message: str) -> None:
    """A line for the user on stderr (outside any progress bar)."""
    tqdm.write(message, file=sys.stderr)


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_metrics(run_dir: str) -> list[dict]:
    """All iterations recorded in ``run_dir/metrics.jsonl``, each with its ``seconds`` from
    ``run_dir/timings.jsonl`` where recorded (wall-clock times live apart, so two runs with the same
    seed write byte-identical ``metrics.jsonl`` files)."""
    seconds = {t["iteration"]: t["seconds"] for t in _read_jsonl(os.path.join(run_dir, "timings.jsonl"))}
    records = _read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    return [dict(r, seconds=seconds[r["iteration"]]) if r["iteration"] in seconds else r for r in records]


def _state_step(state) -> int:
    """``int(state.step)``, or a ``ValueError`` naming ``init_state`` if there is no scalar integer ``step``."""
    step = getattr(state, "step", None)
    shape = getattr(step, "shape", None)
    dtype = getattr(step, "dtype", None)
    ok = (isinstance(step, int) and not isinstance(step, bool)) or (
        shape == () and dtype is not None and np.issubdtype(dtype, np.integer))
    require(ok, "init_state", type(state).__name__,
            "must be a pytree with a scalar integer field `step` counting finished iterations "
            "(e.g. maml.MetaTrainState, curriculum.SelectionTrainState)")
    return int(step)


def _broadcast_path(path: str | None) -> str | None:
    """Process 0's ``path`` (``None`` stays ``None``) on every process of a multi-process run."""
    data = np.zeros(4096, np.uint8)
    if path is not None:
        raw = os.fsencode(os.path.abspath(path))
        require(len(raw) < data.size, "run_dir", path, f"must be shorter than {data.size} bytes")
        data[0] = 1
        data[1:1 + len(raw)] = np.frombuffer(raw, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    if data[0] == 0:
        return None
    return os.fsdecode(data[1:].tobytes().rstrip(b"\0"))


def _reconcile_records(run_dir: str, metrics_path: str, timings_path: str, restored: bool, step: int,
                       restart: bool) -> None:
    """Make the run's records agree with the state training continues from, saying what changes.

    Restored from a checkpoint at ``step``: records of later iterations (work done after it, lost
    with the process) are dropped, with a note; the resumed run recomputes them identically.
    Nothing restorable but records on disk: a ``ValueError`` (a resume would silently start
    over), unless ``restart``, which sets the old records aside as ``*.discarded-<time>``.
    """
    recorded = _read_jsonl(metrics_path)
    if not restored and recorded:
        if not restart:
            raise ValueError(
                f"run_dir={run_dir!r} is invalid: it records {len(recorded)} iterations in metrics.jsonl but holds "
                "no restorable checkpoint; to start this run over from iteration 0 pass restart=True "
                "(--restart), which keeps the old records aside as metrics.jsonl.discarded-<time>")
        kept = [_set_aside(metrics_path), _set_aside(timings_path)]
        _note(f"starting over at iteration 0 (restart): the {len(recorded)} recorded iterations were set aside as "
              + ", ".join(os.path.basename(k) for k in kept if k))
        return
    dropped = _truncate_metrics(metrics_path, step)
    _truncate_metrics(timings_path, step)
    if restored:
        _note(f"resuming at iteration {step} from its checkpoint"
              + (f"; {dropped} iterations recorded after it are run again" if dropped else ""))


def _requested_signal(request: InterruptRequest) -> int | None:
    """The stop signal ``request`` holds, agreed over all processes (any process's counts)."""
    signum = request.signum
    if jax.process_count() > 1:
        every = np.asarray(multihost_utils.process_allgather(np.int32(signum or 0)))
        signum = int(every.max()) or None
    return signum


def _commit(tree):
    """``tree`` with every ``jax.Array`` leaf committed to the device(s) it is on (values unchanged).

    A restored checkpoint's leaves are committed (``device_put`` to the target's
    sharding); committing the initial state as well gives a fresh and a resumed
    run the same argument shardings, hence one compiled program for both.
    """
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding) if isinstance(x, jax.Array) else x, tree)


def run_loop(
    step_fn: Callable[[Any], tuple[Any, dict]],
    init_state: Any,
    train_config: TrainConfig,
    run_dir: str | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    desc: str = "meta-iterations",
    metadata: dict | None = None,
    interrupt: InterruptRequest | None = None,
    restart: bool = False,
) -> tuple[Any, list[dict]]:
    """Run ``step_fn`` from ``init_state`` to ``train_config.num_iterations``; return ``(final state, history)``.

    ``step_fn`` is one meta-iteration, a pure jittable ``state -> (state, metrics)``
    that adds 1 to ``state.step``; ``metrics`` is a dict of arrays. The loop
    runs :func:`jit_multi_step` scans of ``iterations_per_call`` iterations (a
    shorter last scan, so it never runs past ``num_iterations``) and, per
    iteration, records ``{"iteration", <every scalar metric and every array
    metric of at most 32 entries>, "seconds"}`` in ``history``; with ``run_dir``, the record
    without ``seconds`` in ``run_dir/metrics.jsonl`` and ``{"iteration", "seconds"}`` in
    ``run_dir/timings.jsonl``, so two runs with the same seed write byte-identical metrics.

    From ``train_config`` it reads ``num_iterations``, ``iterations_per_call``,
    ``checkpoint_every``, ``keep_checkpoints`` and ``on_nonfinite``; the other
    fields belong to whoever built ``step_fn`` and ``init_state``. With
    ``on_nonfinite="stop"`` the metrics must hold ``grad_finite`` (a bool per
    iteration) and the first ``False`` raises :class:`NonFiniteGradientError`
    before that scan's state or metrics are kept; with ``"skip"`` the step
    function itself must leave the parameters unchanged on such an iteration.

    With ``run_dir``: ``metrics.jsonl`` and ``checkpoints/`` are written there
    (a checkpoint of the whole state, with ``{"iteration": i, **metadata}`` as
    its metadata, every ``checkpoint_every`` iterations and at the end), and if
    a checkpoint exists the run resumes from it (``init_state`` then only gives
    the structure) with ``metrics.jsonl`` cut back to its iteration; ``history``
    then holds the recorded iterations too (a note on stderr says how many recorded
    iterations after the checkpoint are run again). Records on disk without any restorable
    checkpoint raise ``ValueError`` rather than start over silently, unless ``restart``
    (the old records are then kept as ``metrics.jsonl.discarded-<time>``). ``stop_after``
    ends this call after that many iterations (to simulate an interruption).

    Interrupts: SIGINT and SIGTERM (:mod:`metarl_jax.training.interrupts`) stop the loop after
    the current compiled call: it writes a checkpoint of that iteration (with ``run_dir``) and
    raises :class:`~metarl_jax.training.interrupts.TrainingInterrupted` (a ``KeyboardInterrupt``
    carrying the iteration, the checkpoint, the state and the history). ``interrupt``: a request
    a caller already listens with (:func:`~metarl_jax.training.interrupts.deferred_interrupts`, so
    a signal before the loop starts counts too); ``None``: the loop listens while it runs.
    Metrics lines are valid JSON: a non-finite value is ``null``, its key listed under ``nonfinite``.

    Devices: ``train_config.devices`` (:func:`metarl_jax.sharding.select_devices`) form a
    :func:`metarl_jax.sharding.task_mesh`; with more than one, the state is replicated over it
    and the scan is traced and run under ``jax.set_mesh(mesh)``, so
    :func:`metarl_jax.algorithms.maml.map_tasks` splits every algorithm's task axis over the
    devices; the returned state (and a :class:`NonFiniteGradientError`'s) is this process's
    one-device copy, as in a one-device run. With one device nothing changes. Several
    processes (``jax.distributed``, :mod:`metarl_jax.training.distributed`): each calls
    ``run_loop`` with the same arguments. Process 0's ``run_dir`` is the run's (the others may
    pass any ``run_dir`` or ``None``; it must be on a file system every process sees): every
    process takes part in restoring and saving its checkpoints (the multi-host protocol of
    :mod:`metarl_jax.training.checkpoint` lets process 0 alone write the files), process 0
    alone writes ``metrics.jsonl`` and shows a progress bar, and its state, a restored
    checkpoint included, is broadcast to the others before the first iteration. The others'
    ``history`` holds only the iterations they ran.
    """
    require(callable(step_fn), "step_fn", step_fn, "must be a callable state -> (state, metrics)")
    require(isinstance(train_config, TrainConfig), "train_config", train_config, "must be a TrainConfig")
    check_optional_int("stop_after", stop_after, minimum=0)
    require(metadata is None or isinstance(metadata, dict), "metadata", metadata,
            "must be None or a JSON-serialisable dict")
    require(interrupt is None or isinstance(interrupt, InterruptRequest), "interrupt", interrupt,
            "must be None or an InterruptRequest (metarl_jax.training.interrupts.deferred_interrupts)")
    metadata = {} if metadata is None else metadata
    _state_step(init_state)
    state = _commit(init_state)
    mesh = sharding.task_mesh(sharding.select_devices(train_config.devices))
    spread = mesh.devices.size > 1
    writer = jax.process_index() == 0  # with several processes, only process 0 writes metrics
    if jax.process_count() > 1:  # every process takes part in checkpoint saves and restores: process 0's run_dir
        run_dir = _broadcast_path(run_dir if writer else None)

    metrics_path = timings_path = ckpt_dir = None
    restored = None
    if run_dir is not None:
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        if writer:
            os.makedirs(run_dir, exist_ok=True)
            metrics_path = os.path.join(run_dir, "metrics.jsonl")
            timings_path = os.path.join(run_dir, "timings.jsonl")
        restored = ckpt.restore_latest(ckpt_dir, state)
        if restored is not None:
            _, state, _ = restored
        if writer:
            _reconcile_records(run_dir, metrics_path, timings_path, restored is not None, _state_step(state), restart)
    history = read_metrics(run_dir) if metrics_path is not None else []
    if jax.process_count() > 1:  # every process continues from process 0's (possibly restored) state
        state = multihost_utils.broadcast_one_to_all(state)
    if spread:
        state = sharding.replicate(state, mesh)
    on_mesh = functools.partial(jax.set_mesh, mesh) if spread else contextlib.nullcontext  # set on entry, undone on exit
    local = lambda s: sharding.local_copy(s) if spread else s

    start = _state_step(state)
    total = int(train_config.num_iterations)
    end = total if stop_after is None else min(total, start + int(stop_after))
    last_saved = start  # the periodic schedule counts from here
    saved_at = start if restored is not None else None  # the iteration the newest checkpoint holds
    iteration = start

    def save(iteration_done: int) -> None:
        nonlocal last_saved, saved_at
        if ckpt_dir is not None and saved_at != iteration_done:
            ckpt.save_checkpoint(ckpt_dir, iteration_done, local(state), {"iteration": iteration_done, **metadata},
                                 keep=train_config.keep_checkpoints)
        last_saved = saved_at = iteration_done

    def stop_if_requested(request: InterruptRequest) -> None:
        signum = _requested_signal(request)
        if signum is not None:
            save(iteration)
            raise TrainingInterrupted(signum, iteration, ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None,
                                      state=local(state), history=list(history))

    signals = contextlib.nullcontext(interrupt) if interrupt is not None else deferred_interrupts()
    bar = tqdm(total=total, initial=start, desc=desc, disable=not progress or not writer, dynamic_ncols=True)
    with signals as request, contextlib.closing(bar):
        stop_if_requested(request)
        while iteration < end:
            chunk = min(int(train_config.iterations_per_call), end - iteration)  # never run past the end
            t0 = time.perf_counter()
            with on_mesh():
                new_state, metrics = jit_multi_step(step_fn, chunk)(state)
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - t0
            if train_config.on_nonfinite == "stop":
                require("grad_finite" in metrics, "step_fn", step_fn,
                        f"its metrics {sorted(metrics)} lack 'grad_finite' (a bool per iteration), "
                        "which on_nonfinite='stop' needs")
                finite = np.asarray(metrics["grad_finite"])
                if not finite.all():
                    bad = iteration + int(np.argmin(finite))
                    where = ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None
                    raise NonFiniteGradientError(
                        f"non-finite meta-gradient at iteration {bad}: training stopped; "
                        f"last good checkpoint: {where or 'none saved'} (set on_nonfinite='skip' to skip such updates)",
                        last_good_state=local(state), history=list(history),
                    )
            new_step = _state_step(new_state)
            require(new_step == iteration + chunk, "step_fn", step_fn,
                    f"must add 1 to state.step per iteration: {chunk} iterations took it from {iteration} to {new_step}")
            state = new_state
            lines, timing_lines = [], []
            for j in range(chunk):
                record = {"iteration": iteration, **_scalar_metrics(metrics, j)}
                timing = {"iteration": iteration, "seconds": elapsed / chunk}
                history.append({**record, "seconds": timing["seconds"]})
                lines.append(json_line(record))
                timing_lines.append(json_line(timing))
                iteration += 1
            if metrics_path is not None:
                with open(metrics_path, "a") as f:
                    f.writelines(lines)
                    f.flush()
                with open(timings_path, "a") as f:
                    f.writelines(timing_lines)
                    f.flush()
            bar.update(len(lines))
            bar.set_postfix({name: f"{history[-1][key]:.3g}" for name, key in
                             (("post", "post_adaptation_return"), ("pre", "pre_adaptation_return"))
                             if isinstance(history[-1].get(key), (int, float))})
            if iteration - last_saved >= train_config.checkpoint_every or iteration >= end:
                save(iteration)
            stop_if_requested(request)
    return local(state), history


def run(
    algorithm: MetaAlgorithm,
    train_config: TrainConfig,
    run_dir: str | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    desc: str = "meta-iterations",
    metadata: dict | None = None,
    interrupt: InterruptRequest | None = None,
    restart: bool = False,
) -> tuple[Any, list[dict]]:
    """Run ``algorithm`` from ``algorithm.init(PRNGKey(train_config.seed))``; return ``(final state, history)``.

    :func:`run_loop` over ``algorithm.step`` (see there: ``metrics.jsonl``, checkpoints, resume from
    the latest checkpoint in ``run_dir/checkpoints``, ``restart``, ``stop_after``, interrupts, the
    non-finite policy). The
    algorithm decides what one iteration is (MAML, TRPO, ProMP, multi-task, any wrapper); the loop
    knows none of them.
    """
    require(isinstance(algorithm, MetaAlgorithm), "algorithm", algorithm,
             "must be a MetaAlgorithm(init, step) (metarl_jax.algorithms)")
    require(isinstance(train_config, TrainConfig), "train_config", train_config, "must be a TrainConfig")
    state = algorithm.init(jax.random.PRNGKey(train_config.seed))
    return run_loop(algorithm.step, state, train_config, run_dir, progress=progress, stop_after=stop_after,
                    desc=desc, metadata=metadata, interrupt=interrupt, restart=restart)


def load_meta_params(checkpoint_dir: str, algorithm: MetaAlgorithm):
    """Meta-parameters from the latest checkpoint in ``checkpoint_dir`` (a run's ``checkpoints/``).

    Only the ``meta_params`` part of the saved state is read (``algorithm.init``'s gives its
    structure, a learned inner rate included), so the outer rule's optimizer state (Adam, ProMP's,
    none for TRPO) and any wrapper's state need not match.
    """
    target = algorithm.init(jax.random.PRNGKey(0)).meta_params
    restored = ckpt.restore_latest(checkpoint_dir, target, subtree=".meta_params")
    if restored is None:
        raise FileNotFoundError(f"checkpoint_dir={checkpoint_dir!r} holds no checkpoint")
    return restored[1]
