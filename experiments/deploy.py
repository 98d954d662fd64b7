"""Repository entry point: ``python -m experiments.deploy`` runs :mod:`metarl_jax.experiments.deploy`
(installed: ``python -m metarl_jax.experiments.deploy`` or ``metarl-deploy``)."""

from metarl_jax.experiments.deploy import *  # noqa: F401,F403
from metarl_jax.experiments.deploy import main

if __name__ == "__main__":
    raise SystemExit(main())
