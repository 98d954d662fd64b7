"""The task axis is the scaling axis: shard it over every available device.

A meta-batch of tasks is an ``EnvParams`` pytree with a leading task axis, and
the meta-loss is a ``vmap`` over that axis followed by a mean. Placing the
task axis on a one-dimensional :class:`jax.sharding.Mesh` (axis name
``"tasks"``) and replicating the meta-parameters lets XLA's SPMD partitioner
run each device's share of the tasks locally and all-reduce only the mean loss
and the gradient: the same program runs on one CPU, one GPU, or many.

Two ways to use it:

* Inside a jitted program (what training does): :func:`metarl_jax.training.loop.run_loop`
  builds :func:`task_mesh` over ``TrainConfig.devices``, replicates the training state
  over it and traces the step under ``jax.set_mesh(mesh)``. Every algorithm maps its
  per-task work with :func:`metarl_jax.algorithms.maml.map_tasks`, which splits the task
  axis with :func:`split_task_axis` / :func:`merge_task_axis`
  (``jax.lax.with_sharding_constraint`` against that ambient mesh). Without a mesh, or
  with a one-device one, these are the identity. ``MAMLConfig.accumulate_chunks``
  differentiates its chunks outside ``map_tasks``: they are not split (every device
  computes every chunk; the results are the same).
* Around a function of ``(meta_params, tasks, key)``: :func:`make_sharded` jits it with
  the tasks placed by :func:`shard_tasks` and everything else replicated.

Several GPUs on one host: nothing to do (the mesh takes ``jax.devices()``). Several
hosts: call :func:`metarl_jax.training.distributed.initialize` on every host first, so
that ``jax.devices()`` lists every host's devices. On one CPU you can try it with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.

This module only depends on JAX, so every layer may import it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"


def task_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: all) with the automatic axis ``"tasks"``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (TASK_AXIS,), axis_types=(AxisType.Auto,))


def select_devices(devices: int | None) -> list[jax.Device]:
    """The devices of ``TrainConfig.devices``: ``None`` every device JAX sees (all hosts'), ``n`` the first ``n``.

    With several processes (``jax.process_count() > 1``) every device must take part
    (``None`` or ``jax.device_count()``): each process runs the program on its own devices.
    """
    available = jax.devices()
    if devices is None:
        return available
    count = len(available)
    if not (isinstance(devices, (int, np.integer)) and not isinstance(devices, bool) and 1 <= devices <= count):
        raise ValueError(f"devices={devices!r} is invalid: JAX sees {count} device(s) ({available[0].platform}); "
                         f"allowed values are None (all {count}) or an integer from 1 to {count}")
    if jax.process_count() > 1 and devices != count:
        raise ValueError(f"devices={devices!r} is invalid: with {jax.process_count()} processes every one of "
                         f"the {count} devices takes part (None or {count})")
    return available[: int(devices)]


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's task axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(num_tasks: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if num_tasks % n:
        raise ValueError(f"meta_batch={num_tasks!r} is invalid for {n} devices: must be a multiple of {n}")


def shard_tasks(tasks, mesh: Mesh):
    """Place a batched ``EnvParams`` pytree with its task axis split over ``mesh``."""
    leaves = [x for x in jax.tree.leaves(tasks) if np.ndim(x) > 0]
    check_divisible(int(leaves[0].shape[0]), mesh)
    sharding, rep = task_sharding(mesh), replicated(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, sharding if np.ndim(x) > 0 else rep), tasks)


def replicate(tree, mesh: Mesh):
    """Copy every leaf of ``tree`` to every device of ``mesh`` (with several processes: every process's copy)."""
    return jax.device_put(tree, replicated(mesh))


def local_copy(tree):
    """Each ``jax.Array`` leaf of ``tree`` as this process's first shard (one device; the whole value if replicated)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def make_sharded(fn: Callable, mesh: Mesh) -> Callable:
    """Jit ``fn(meta_params, tasks, key)`` with tasks sharded and everything else replicated.

    The outputs (loss, gradients, metrics) come back replicated. Per-task
    arrays in the metrics are gathered to every device.
    """
    rep, tasks_sharded = replicated(mesh), task_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, tasks_sharded, rep), out_shardings=rep)


# ------------------------------------------------------------ the task axis inside a jitted program


def task_shard_count() -> int:
    """``d``: devices on the ``"tasks"`` axis of the ambient mesh (``jax.set_mesh``), else 1.

    1 as well when the axis is not automatic: an ``Explicit`` axis carries its sharding in
    the array types, and a ``Manual`` one (inside ``shard_map``) means the code already runs
    per device.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or TASK_AXIS not in mesh.axis_names:
        return 1
    if mesh.axis_types[mesh.axis_names.index(TASK_AXIS)] != AxisType.Auto:
        return 1
    return int(mesh.shape[TASK_AXIS])


def constrain_tasks(tree):
    """Every leaf of ``tree`` (shape ``[d, ...]``) split along its leading axis over the ambient ``"tasks"`` axis.

    ``jax.lax.with_sharding_constraint(x, P("tasks"))`` per leaf of at least one
    dimension; the identity when :func:`task_shard_count` is 1 (no mesh, one device).
    """
    if task_shard_count() == 1:
        return tree
    spec = PartitionSpec(TASK_AXIS)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec) if jnp.ndim(x) > 0 else x, tree)


def constrain_replicated(tree):
    """Every array leaf of ``tree`` replicated over the ambient mesh (the identity when :func:`task_shard_count` is 1).

    What a program's outputs should be when every process reads them: with several
    processes a replicated array is readable on each (``np.asarray``), a split one is not.
    """
    if task_shard_count() == 1:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec()), tree)


def split_task_axis(tree, num_tasks: int):
    """``[N, ...] -> [d, ceil(N / d), ...]``: consecutive blocks of tasks, block ``i`` on device ``i``.

    ``d = task_shard_count()``. When ``d`` does not divide ``N`` the task axis is
    first padded with copies of its last entry up to ``d * ceil(N / d)``
    (:func:`merge_task_axis` drops their results). The block axis is constrained to
    the mesh (:func:`constrain_tasks`), so a ``vmap`` over it runs each block on its
    own device.
    """
    shards = task_shard_count()
    per_device = -(-int(num_tasks) // shards)
    pad = shards * per_device - int(num_tasks)

    def split(x):
        if pad:
            x = jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad,) + x.shape[1:])], axis=0)
        return x.reshape((shards, per_device) + x.shape[1:])

    return constrain_tasks(jax.tree.map(split, tree))


def merge_task_axis(tree, num_tasks: int):
    """The inverse of :func:`split_task_axis`: ``[d, ceil(N / d), ...] -> [N, ...]`` (padding dropped)."""
    tree = constrain_tasks(tree)
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[: int(num_tasks)], tree)
