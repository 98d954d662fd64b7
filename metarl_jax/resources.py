"""Memory a meta-iteration needs, against what the machine has: refuse a config far beyond it, before any work.

A config whose buffers cannot fit (``--horizon 10000000`` on navigation) otherwise runs for
seconds of tracing and compilation and then dies in an out-of-memory traceback from XLA.
:func:`check_experiment_memory` instead raises one line, before anything is compiled or written::

    memory=21.3 TiB is invalid: meta_batch=20, num_episodes=20, horizon=10000000, inner_steps=3 needs at
    least 21,785 GiB but the machine has 22.4 GiB available; reduce meta_batch, num_episodes, horizon or task_chunk

The estimate (:func:`estimate_meta_iteration_bytes`) is a *lower bound* of the bytes alive at once
in one meta-iteration, computed from shapes alone (``jax.eval_shape``: nothing is compiled or
allocated): the rollouts the backward pass needs, and the network values it keeps per unit and
step, counted no higher than XLA's compiled meta-gradient keeps them
(:data:`VALUES_KEPT`). So a config it refuses would not have fit, and since it stays within a
small factor of XLA's figure (``docs/benchmarks.md``, "Memory estimate against XLA's"), it
refuses the configs that matter.

:func:`available_memory_bytes` is what the machine has: the accelerator's free memory, or on a
CPU the smaller of the host's available memory and the headroom of this process's cgroup.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import numpy as np

from metarl_jax.learners.actor_critic import ActorCriticLearner
from metarl_jax.learners.pg import CustomLossLearner, PolicyGradientLearner
from metarl_jax.learners.q_learning import QLearner
from metarl_jax.tasks.base import sample_tasks

if TYPE_CHECKING:  # a higher layer: check_experiment_memory imports it when called
    from metarl_jax.experiment import MAMLExperimentConfig

#: cgroup limits at or above this many bytes mean "no limit" (cgroup v1 writes 2**63 rounded to a page).
_UNLIMITED = 2**60


# ----------------------------------------------------------------------------- what the machine has


def _read_int(path: str) -> int | None:
    """The integer in a one-line file (``None`` if missing, unreadable, ``"max"`` or not an integer)."""
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):  # ValueError: "max", or bytes that are not text
        return None


def meminfo_available_bytes(path: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where there is none)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dirs(root: str, relative: str) -> list[str]:
    """``root/relative`` and each of its ancestors up to ``root``, those that exist (innermost first).

    Inside a container's cgroup namespace the path in ``/proc/self/cgroup`` may be ``/`` or may not
    exist under the mount; the mount root is then the container's own cgroup.
    """
    parts = [p for p in relative.strip("/").split("/") if p and p != ".."]
    dirs = [os.path.join(root, *parts[:i]) for i in range(len(parts), -1, -1)]
    return [d for d in dirs if os.path.isdir(d)]


def cgroup_headroom_bytes(proc_cgroup: str = "/proc/self/cgroup", mount: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's cgroup may still allocate: ``min over it and its ancestors of (limit - usage)``.

    cgroup v2: ``memory.max - memory.current``; v1: ``memory.limit_in_bytes - memory.usage_in_bytes``
    under ``<mount>/memory``. ``None`` when no limit is set (``max``, or ``>= 2**60``) or nothing
    can be read.
    """
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except (OSError, ValueError):
        return None
    candidates = []  # (directory, limit file, usage file)
    for fields in lines:
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2 unified hierarchy
            for d in _cgroup_dirs(mount, path):
                candidates.append((d, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            for d in _cgroup_dirs(os.path.join(mount, "memory"), path):
                candidates.append((d, "memory.limit_in_bytes", "memory.usage_in_bytes"))
    headroom = None
    for d, limit_file, usage_file in candidates:
        limit, usage = _read_int(os.path.join(d, limit_file)), _read_int(os.path.join(d, usage_file))
        if limit is None or usage is None or limit >= _UNLIMITED:
            continue
        room = max(limit - usage, 0)
        headroom = room if headroom is None else min(headroom, room)
    return headroom


def available_memory_bytes(device: Any = None) -> int | None:
    """Bytes a program on ``device`` (default: JAX's first device) can still allocate, or ``None``.

    * GPU / TPU: ``memory_stats()["bytes_limit"] - memory_stats()["bytes_in_use"]`` of the device.
    * CPU: ``min(MemAvailable, cgroup headroom)`` (:func:`meminfo_available_bytes`,
      :func:`cgroup_headroom_bytes`), whichever of them is known.

    ``None`` when nothing is known; never raises.
    """
    try:
        device = jax.devices()[0] if device is None else device
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return max(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 0)
            return None
    except Exception:  # noqa: BLE001 - a backend without memory statistics: unknown, not an error
        return None
    known = [b for b in (meminfo_available_bytes(), cgroup_headroom_bytes()) if b is not None]
    return min(known) if known else None


# ----------------------------------------------------------------------------- what a meta-iteration needs


def tree_bytes(tree) -> int:
    """Total bytes of the arrays (or ``ShapeDtypeStruct``s) of a pytree."""
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def network_units(params) -> int:
    """Units of the network(s) whose parameters are ``params``: the total size of the 1-D leaves.

    Every layer of an MLP has a 1-D bias as long as its output, so this counts the values one
    forward pass computes per input row (hidden units, logits / means, a critic's value; a
    Gaussian policy's ``log_std`` adds its action dimension). A logit table has none.
    """
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params) if len(x.shape) == 1))


class ValuesKept(NamedTuple):
    """Values per unit (:func:`network_units`) and per step of a batch that a meta-gradient keeps for its
    backward pass: for one inner step run on its own, for each inner step of a loop, for the outer loss.

    ``K = 1`` (and, per step, ``remat`` and ``first_order``): the one inner step and the outer loss
    form one program, which XLA fuses; the learner's passes over the batch share values. ``K >= 2``:
    the inner steps run in a loop (``lax.scan``) that XLA cannot fuse across, so every step's saved
    values go to buffers stacked over the ``K`` steps: what the learner's step saves, at least.
    """

    step: float
    looped_step: float
    outer: float


#: :class:`ValuesKept` by learner. What a second-order inner step keeps:
#:
#: * policy gradient: its forward pass (the log-probabilities, shared with DiCE's score) and its
#:   backward pass, 2 values per unit and step, alone or in a loop (XLA keeps 2 per looped step with
#:   ReLU, 6 with tanh); the outer loss's forward pass, 1.
#: * Q-learning: the forward pass on the observations and its backward pass, and the forward pass on
#:   the next observations that makes the TD targets (which the outer derivative differentiates): 3
#:   (XLA keeps 5 per looped step); the outer TD loss's two forward passes: 2.
#: * actor-critic: in a loop, the forward and backward passes of the actor and of the critic, for the
#:   inner objective and again for the advantages and targets the outer derivative flows through: 4
#:   (XLA keeps 5 with a ReLU actor, 10 to 11 with tanh networks); alone, XLA shares those passes
#:   and keeps about 2 with a ReLU actor beside a tanh critic (navigation), so 1.5; the outer loss's
#:   actor pass: 1.
#:
#: Each is at most what XLA's compiled meta-gradient kept on the calibration grid of
#: ``experiments/benchmark_memory.py --check-estimate`` (``docs/benchmarks.md``, "Memory estimate
#: against XLA's"), with ReLU and tanh networks: counts from the learners' code, checked against
#: XLA, not a guarantee for every XLA version. A learner not listed counts as the policy-gradient
#: one (any second-order step keeps a forward and a backward pass); a
#: :class:`~metarl_jax.learners.pg.CustomLossLearner` as the learner it wraps.
VALUES_KEPT: dict[type, ValuesKept] = {
    PolicyGradientLearner: ValuesKept(step=2.0, looped_step=2.0, outer=1.0),
    QLearner: ValuesKept(step=3.0, looped_step=3.0, outer=2.0),
    ActorCriticLearner: ValuesKept(step=1.5, looped_step=4.0, outer=1.0),
}


def values_kept(learner) -> ValuesKept:
    """:data:`VALUES_KEPT` of ``learner``'s class (of the learner it wraps, for a custom-loss learner)."""
    while isinstance(learner, CustomLossLearner):
        learner = learner.base
    for cls in type(learner).__mro__:
        if cls in VALUES_KEPT:
            return VALUES_KEPT[cls]
    return VALUES_KEPT[PolicyGradientLearner]


def _per_task_shapes(learner):
    """``(params, inner trajectory, outer batch)`` of one task, as ``ShapeDtypeStruct``s (nothing runs)."""

    def shapes(key):
        params = learner.init(key)
        task = jax.tree.map(lambda x: x[0], sample_tasks(learner.env, key, 1))
        return params, learner.collect(key, params, task), learner.collect_outer(key, params, task)

    return jax.eval_shape(shapes, jax.random.PRNGKey(0))


def meta_iteration_bytes(learner, maml_config, meta_batch: int, num_devices: int = 1,
                         adaptation: bool = True) -> dict:
    """The terms of :func:`estimate_meta_iteration_bytes`, per device: ``{name: bytes}`` plus ``"tasks"``.

    With ``n`` tasks differentiated at once on a device, ``K`` inner steps, ``D_in`` / ``D_out``
    the bytes of one inner trajectory / outer batch of one task (``E x T`` steps: observations,
    next observations, actions, rewards, dones, masks...), ``S_in = E_in T`` / ``S_out = E_out T``
    their steps, ``U`` the network's units (:func:`network_units`), ``b`` the bytes of a
    parameter entry and ``v`` the learner's :class:`ValuesKept`:

    * ``data = n (K D_in + D_out)``: every rollout is an input of the backward pass;
    * ``activations = n b U (K v_K S_in + v.outer S_out)`` with ``v_K = v.step`` for ``K = 1``,
      ``v.looped_step`` for ``K >= 2``: the values the backward pass of a second-order
      meta-gradient keeps of every inner step and of the outer loss;
    * ``parameters``: the meta-parameters (the program's argument).

    ``remat`` recomputes each inner step, its rollout included, in the backward pass: one step's
    data and values at a time (``K`` counts as 1). ``first_order`` stops the inner gradients, so
    nothing of the inner steps waits for the backward pass: the larger of one inner step
    (``n (D_in + v.step b U S_in)``) and the outer loss (``n (D_out + v.outer b U S_out)``).

    ``n`` is ``maml_config.task_chunk`` with ``accumulate_chunks`` (one chunk's residuals at a
    time), else the whole per-device meta-batch ``ceil(meta_batch / num_devices)`` (chunks run one
    after the other, but each one's residuals wait for the backward pass). ``adaptation=False``
    (the multi-task baseline): the outer batch alone, without values: every task runs the same
    parameters, and where the observation is constant (the bandit's) XLA computes the network once
    for the whole batch instead of once per step.
    """
    per_device = -(-int(meta_batch) // max(int(num_devices), 1))
    tasks = per_device
    if maml_config.accumulate_chunks and maml_config.task_chunk is not None:
        tasks = min(int(maml_config.task_chunk), per_device)
    params, inner, outer = _per_task_shapes(learner)
    itemsize = max(np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
    unit_step = network_units(params) * itemsize  # bytes of one value per unit, per step
    kept = values_kept(learner)
    steps_in, steps_out = math.prod(inner.reward.shape), math.prod(outer.traj.reward.shape)
    outer_loss = (tree_bytes(outer), kept.outer * unit_step * steps_out)
    k = int(maml_config.inner_steps) if adaptation else 0
    if k == 0:
        data, values = outer_loss[0], 0
    elif maml_config.estimator == "first_order":
        data, values = max((tree_bytes(inner), kept.step * unit_step * steps_in), outer_loss, key=sum)
    else:
        k = 1 if maml_config.remat else k
        per_step = kept.step if k == 1 else kept.looped_step
        data = k * tree_bytes(inner) + outer_loss[0]
        values = k * per_step * unit_step * steps_in + outer_loss[1]
    return {"tasks": tasks, "data": tasks * data, "activations": int(tasks * values),
            "parameters": tree_bytes(params)}


def estimate_meta_iteration_bytes(learner, maml_config, meta_batch: int, num_devices: int = 1,
                                  adaptation: bool = True) -> int:
    """A lower bound of the bytes alive at once on each device in one meta-iteration (no compilation).

    The sum of :func:`meta_iteration_bytes`'s terms: ``n (K D_in + D_out) + n b U (K v_K S_in +
    v.outer S_out) + |theta|``, from shapes alone (``jax.eval_shape``). Linear in the horizon, the
    episodes and the tasks differentiated at once. Against ``compiled.memory_analysis()`` of
    :func:`metarl_jax.algorithms.maml.make_meta_gradient` (``docs/benchmarks.md``): always below it,
    by a small factor.
    """
    terms = meta_iteration_bytes(learner, maml_config, meta_batch, num_devices, adaptation)
    return int(terms["data"] + terms["activations"] + terms["parameters"])


# ----------------------------------------------------------------------------- the check


def format_bytes(n: float) -> str:
    """``n`` bytes with a binary unit: ``"512 B"``, ``"3.2 MiB"``, ``"23.4 TiB"``."""
    n, units, i = float(n), ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def _gib(n: float) -> str:
    """``n`` bytes in GiB, three significant digits at least (``"0.00012"``, ``"22.9"``, ``"23,923"``)."""
    g = n / 2**30
    if g >= 100:
        return f"{g:,.0f}"
    if g >= 1:
        return f"{g:.1f}"
    return f"{g:.3g}"


def check_memory_fits(need_bytes: int, have_bytes: int | None, description: str) -> None:
    """Raise a one-line ``ValueError`` naming both numbers when ``need_bytes > have_bytes``.

    ``have_bytes=None`` (nothing known about the machine): no check.
    """
    if have_bytes is None or need_bytes <= have_bytes:
        return
    raise ValueError(f"memory={format_bytes(need_bytes)} is invalid: {description} needs at least "
                     f"{_gib(need_bytes)} GiB but the machine has {_gib(have_bytes)} GiB available; "
                     "reduce meta_batch, num_episodes, horizon or task_chunk")


def check_experiment_memory(config: MAMLExperimentConfig) -> int:
    """Refuse an experiment config whose meta-iteration cannot fit in memory; returns the estimate.

    Builds the learner (:func:`metarl_jax.experiment.build`: shapes only, nothing compiled), takes
    :func:`estimate_meta_iteration_bytes` for the config's devices and compares it with
    :func:`available_memory_bytes`: on accelerators each device's share of the meta-batch against the
    free memory of this process's first device; on CPUs, which share the host's memory, the sum over
    this host's devices against the host's.
    Raises :func:`check_memory_fits`'s one-line ``ValueError``.
    """
    from metarl_jax import experiment  # a higher layer: imported when called

    _, learner, maml_config, train_config = experiment.build(config)
    count, local = jax.device_count(), jax.local_devices()
    num_devices = count if train_config.devices is None else min(int(train_config.devices), count)
    need = estimate_meta_iteration_bytes(learner, maml_config, train_config.meta_batch, num_devices,
                                         adaptation=config.algorithm != "multitask")
    device = local[0]
    if device.platform == "cpu":  # this host's devices share its memory
        need *= min(num_devices, len(local))
    description = (f"meta_batch={config.meta_batch}, num_episodes={config.num_episodes}, horizon={config.horizon}, "
                   f"inner_steps={config.inner_steps}")
    if maml_config.accumulate_chunks:
        description += f", task_chunk={maml_config.task_chunk}"
    check_memory_fits(need, available_memory_bytes(device), description)
    return need
