"""Repository entry point: ``python -m experiments.maml_cartpole_target`` runs :mod:`metarl_jax.experiments.maml_cartpole_target`
(installed: ``python -m metarl_jax.experiments.maml_cartpole_target`` or ``metarl-maml-cartpole-target``)."""

from metarl_jax.experiments.maml_cartpole_target import *  # noqa: F401,F403
from metarl_jax.experiments.maml_cartpole_target import main

if __name__ == "__main__":
    raise SystemExit(main())
