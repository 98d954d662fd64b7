"""Several hosts on JAX's own runtime: ``jax.distributed.initialize`` from arguments or the environment.

A multi-host run starts the same program once per host (process). Each process
calls :func:`initialize` before anything starts JAX's backend, which includes
importing the rest of :mod:`metarl_jax` (gymnax computes at import): this module
imports nothing but JAX. Afterwards ``jax.devices()`` lists every process's devices,
:func:`metarl_jax.training.loop.run_loop` builds its task mesh over all of them,
each process runs its share of the tasks on its own devices, and process 0 alone
writes metrics and checkpoints. ``python -m experiments.<name>`` calls
:func:`initialize` when the :mod:`metarl_jax.experiments` package is imported.

Three settings, each an explicit argument or else an environment variable:

==================  =============================  ==========================================
argument            environment variable           meaning
==================  =============================  ==========================================
coordinator_address ``JAX_COORDINATOR_ADDRESS``    ``host:port`` of process 0, reachable from
                                                   every host (the port must be free there)
num_processes       ``JAX_NUM_PROCESSES``          number of processes (hosts)
process_id          ``JAX_PROCESS_ID``             this process, ``0 .. num_processes - 1``
==================  =============================  ==========================================

(``JAX_COORDINATOR_ADDRESS`` is also JAX's own name.) None of the three set: a
single-process run, nothing to do. Some but not all: an error naming the missing ones.
On CPUs the processes talk through gloo (``jax_cpu_collectives_implementation``,
set here unless already chosen); GPUs use NCCL as usual.

Per host, for two hosts with process 0 at ``10.0.0.1``::

    JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m experiments.maml
    JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 python -m experiments.maml

or the same with ``--coordinator-address``, ``--num-processes``, ``--process-id``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Sequence

import jax

ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where this process sits in a multi-process run (validated)."""

    coordinator_address: str
    num_processes: int
    process_id: int

    def __post_init__(self):
        host, sep, port = str(self.coordinator_address).rpartition(":")
        if not (isinstance(self.coordinator_address, str) and sep and host and port.isdigit()
                and 0 < int(port) < 65536):
            raise ValueError(f"coordinator_address={self.coordinator_address!r} is invalid: "
                             "must be 'host:port' (process 0's address and a free port, e.g. '10.0.0.1:1234')")
        if not (isinstance(self.num_processes, int) and not isinstance(self.num_processes, bool)
                and self.num_processes >= 1):
            raise ValueError(f"num_processes={self.num_processes!r} is invalid: must be an integer >= 1")
        if not (isinstance(self.process_id, int) and not isinstance(self.process_id, bool)
                and 0 <= self.process_id < self.num_processes):
            raise ValueError(f"process_id={self.process_id!r} is invalid: must be an integer from 0 to "
                             f"num_processes - 1 = {self.num_processes - 1}")


def _as_int(field: str, env_name: str, value):
    if value is None or isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{field}={value!r} is invalid: must be an integer (argument or {env_name})") from None


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributedConfig | None:
    """The settings of a multi-process run: each argument, else its environment variable; ``None`` if none is set.

    ``environ`` defaults to ``os.environ``. Raises ``ValueError`` naming the fields that
    are missing when only some are set, or the field whose value is invalid.
    """
    environ = os.environ if environ is None else environ
    address = coordinator_address if coordinator_address is not None else environ.get(ENV_COORDINATOR_ADDRESS) or None
    count = num_processes if num_processes is not None else environ.get(ENV_NUM_PROCESSES) or None
    index = process_id if process_id is not None else environ.get(ENV_PROCESS_ID) or None
    values = {"coordinator_address": (address, ENV_COORDINATOR_ADDRESS), "num_processes": (count, ENV_NUM_PROCESSES),
              "process_id": (index, ENV_PROCESS_ID)}
    missing = [f"{field} ({env})" for field, (value, env) in values.items() if value is None]
    if len(missing) == 3:
        return None
    if missing:
        given = {field: value for field, (value, _) in values.items() if value is not None}
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())} is invalid: a multi-process run needs "
                         f"all three settings; missing {', '.join(missing)}")
    return DistributedConfig(str(address), _as_int("num_processes", ENV_NUM_PROCESSES, count),
                             _as_int("process_id", ENV_PROCESS_ID, index))


def from_command_line(argv: Sequence[str]) -> dict:
    """``{"coordinator_address", "num_processes", "process_id"}`` as given by ``--coordinator-address``,
    ``--num-processes``, ``--process-id`` in ``argv`` (other arguments ignored; absent ones ``None``).

    For entry points that must start the runtime before they parse (and validate)
    their whole command line, since validation may already touch JAX.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("coordinator_address", "num_processes", "process_id"):
        parser.add_argument("--" + name.replace("_", "-"), "--" + name, dest=name, default=None)
    known, _ = parser.parse_known_args(list(argv))
    return vars(known)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | str | None = None,
    process_id: int | str | None = None,
) -> DistributedConfig | None:
    """Start JAX's multi-process runtime for the settings :func:`resolve` finds; ``None`` (nothing done) if none.

    Must run in every process before anything initialises a JAX backend (computing,
    ``jax.devices()``, ...). Calling it again with the same settings is a no-op; with
    other settings, or after the backend has started, it raises ``RuntimeError``.
    """
    config = resolve(coordinator_address, num_processes, process_id)
    if config is None:
        return None
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (config.num_processes, config.process_id):
            raise RuntimeError(f"process_id={config.process_id!r} is invalid: this process already runs as process "
                               f"{jax.process_index()} of {jax.process_count()}")
        return config
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes, process_id=config.process_id)
    except RuntimeError as err:
        raise RuntimeError(f"coordinator_address={config.coordinator_address!r}: {err} Start the runtime first thing: "
                           "call metarl_jax.training.distributed.initialize before importing the rest of metarl_jax "
                           "(importing gymnax starts JAX's backend); `python -m experiments.<name>` does this "
                           "when its package is imported.") from err
    return config
