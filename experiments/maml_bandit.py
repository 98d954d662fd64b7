"""Repository entry point: ``python -m experiments.maml_bandit`` runs :mod:`metarl_jax.experiments.maml_bandit`
(installed: ``python -m metarl_jax.experiments.maml_bandit`` or ``metarl-maml-bandit``)."""

from metarl_jax.experiments.maml_bandit import *  # noqa: F401,F403
from metarl_jax.experiments.maml_bandit import main

if __name__ == "__main__":
    raise SystemExit(main())
