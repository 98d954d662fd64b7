"""Repository entry point: ``python -m experiments.maml_finance`` runs :mod:`metarl_jax.experiments.maml_finance`
(installed: ``python -m metarl_jax.experiments.maml_finance`` or ``metarl-maml-finance``)."""

from metarl_jax.experiments.maml_finance import *  # noqa: F401,F403
from metarl_jax.experiments.maml_finance import main

if __name__ == "__main__":
    raise SystemExit(main())
