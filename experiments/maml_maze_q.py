"""Repository entry point: ``python -m experiments.maml_maze_q`` runs :mod:`metarl_jax.experiments.maml_maze_q`
(installed: ``python -m metarl_jax.experiments.maml_maze_q`` or ``metarl-maml-maze-q``)."""

from metarl_jax.experiments.maml_maze_q import *  # noqa: F401,F403
from metarl_jax.experiments.maml_maze_q import main

if __name__ == "__main__":
    raise SystemExit(main())
