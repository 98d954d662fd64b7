"""Repository entry point: ``python -m experiments.maml`` runs :mod:`metarl_jax.experiments.maml`
(installed: ``python -m metarl_jax.experiments.maml`` or ``metarl-maml``)."""

from metarl_jax.experiments.maml import *  # noqa: F401,F403
from metarl_jax.experiments.maml import main

if __name__ == "__main__":
    raise SystemExit(main())
