"""Second-order MAML through tabular Q-learning on grid mazes whose goal is fixed per task.

    python -m experiments.maml_maze_q --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class MazeQConfig(MAMLExperimentConfig):
    """Q-learning inner loop (semi-gradient TD, Boltzmann behaviour) scored by the adapted policy's return."""

    task: str = "maze"
    learner: str = "q"
    name: str = "maml_maze_q"
    num_iterations: int = 100
    meta_batch: int = 16
    num_episodes: int = 10
    horizon: int = 10
    maze_size: int = 3
    normalize: str = "episode"
    gamma: float = 0.9
    tabular_policy: bool = True
    behaviour: str = "boltzmann"
    q_outer: str = "return"
    inner_lr: float = 1.0
    estimator: str = "dice"
    outer_lr: float = 0.1
    eval_tasks: int = 64


if __name__ == "__main__":
    cli_main(MazeQConfig, description=__doc__)
