"""Repository entry point: ``python -m experiments.maml_acrobot_target`` runs :mod:`metarl_jax.experiments.maml_acrobot_target`
(installed: ``python -m metarl_jax.experiments.maml_acrobot_target`` or ``metarl-maml-acrobot-target``)."""

from metarl_jax.experiments.maml_acrobot_target import *  # noqa: F401,F403
from metarl_jax.experiments.maml_acrobot_target import main

if __name__ == "__main__":
    raise SystemExit(main())
