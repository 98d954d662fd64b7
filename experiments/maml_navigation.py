"""Repository entry point: ``python -m experiments.maml_navigation`` runs :mod:`metarl_jax.experiments.maml_navigation`
(installed: ``python -m metarl_jax.experiments.maml_navigation`` or ``metarl-maml-navigation``)."""

from metarl_jax.experiments.maml_navigation import *  # noqa: F401,F403
from metarl_jax.experiments.maml_navigation import main

if __name__ == "__main__":
    raise SystemExit(main())
