"""Repository entry point: ``python -m experiments.maml_tabular_q`` runs :mod:`metarl_jax.experiments.maml_tabular_q`
(installed: ``python -m metarl_jax.experiments.maml_tabular_q`` or ``metarl-maml-tabular-q``)."""

from metarl_jax.experiments.maml_tabular_q import *  # noqa: F401,F403
from metarl_jax.experiments.maml_tabular_q import main

if __name__ == "__main__":
    raise SystemExit(main())
