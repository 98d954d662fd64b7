"""The task axis is the scaling axis: shard it over every available device.

A meta-batch of tasks is an ``EnvParams`` pytree with a leading task axis, and
the meta-loss is a ``vmap`` over that axis followed by a mean. Placing the
task axis on a one-dimensional :class:`jax.sharding.Mesh` (axis name
``"tasks"``) with :class:`~jax.sharding.NamedSharding` and replicating the
meta-parameters lets XLA's SPMD partitioner run each device's share of the
tasks locally and all-reduce only the mean loss and the gradient: the same
program runs on one CPU, one GPU, or many.

Several GPUs on one host: nothing to do beyond calling :func:`task_mesh` (it
takes ``jax.devices()``). Several hosts: call ``jax.distributed.initialize()``
on every host first (coordinator address, number of processes, process id;
automatic on Cloud TPU and SLURM), then build the mesh from ``jax.devices()``
(all hosts' devices) and feed each host's slice of the task batch with
``jax.make_array_from_process_local_data``; the meta-batch must be divisible by
the total device count. On one CPU you can try it with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TASK_AXIS = "tasks"


def task_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: all) with axis ``"tasks"``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (TASK_AXIS,))


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
    """Copy every leaf of ``tree`` to every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def make_sharded(fn: Callable, mesh: Mesh) -> Callable:
    """Jit ``fn(meta_params, tasks, key)`` with tasks sharded and everything else replicated.

    The outputs (loss, gradients, metrics) come back replicated. Per-task
    arrays in the metrics are gathered to every device.
    """
    rep, tasks_sharded = replicated(mesh), task_sharding(mesh)
    return jax.jit(fn, in_shardings=(rep, tasks_sharded, rep), out_shardings=rep)
