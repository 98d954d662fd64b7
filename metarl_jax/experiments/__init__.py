"""The experiment entry points, installed with the package.

``python -m metarl_jax.experiments.<name>`` (or the console script ``metarl-<name>``, e.g.
``metarl-maml-navigation``) runs one; in a clone of the repository ``python -m experiments.<name>``
runs the same module. Each module defines a config dataclass and ``main(argv=None)``.

Several hosts: importing this package starts JAX's multi-process runtime when
``--coordinator-address``, ``--num-processes`` and ``--process-id`` (or the
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``
environment variables) are given (:mod:`metarl_jax.training.distributed`). It has
to happen here, before an entry point imports the rest of the library: importing gymnax
already starts JAX's backend, after which the runtime can no longer join.
"""

import sys

from metarl_jax.training import distributed as _distributed

try:
    _distributed.initialize(**_distributed.from_command_line(sys.argv[1:]))
except ValueError as _err:
    print(f"error: {_err}", file=sys.stderr)
    raise SystemExit(2) from None
