"""Repository entry point: ``python -m experiments.maml_tabular_mdp`` runs :mod:`metarl_jax.experiments.maml_tabular_mdp`
(installed: ``python -m metarl_jax.experiments.maml_tabular_mdp`` or ``metarl-maml-tabular-mdp``)."""

from metarl_jax.experiments.maml_tabular_mdp import *  # noqa: F401,F403
from metarl_jax.experiments.maml_tabular_mdp import main

if __name__ == "__main__":
    raise SystemExit(main())
