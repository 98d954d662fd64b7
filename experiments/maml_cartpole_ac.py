"""Repository entry point: ``python -m experiments.maml_cartpole_ac`` runs :mod:`metarl_jax.experiments.maml_cartpole_ac`
(installed: ``python -m metarl_jax.experiments.maml_cartpole_ac`` or ``metarl-maml-cartpole-ac``)."""

from metarl_jax.experiments.maml_cartpole_ac import *  # noqa: F401,F403
from metarl_jax.experiments.maml_cartpole_ac import main

if __name__ == "__main__":
    raise SystemExit(main())
