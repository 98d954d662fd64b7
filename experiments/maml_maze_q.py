"""Second-order MAML through tabular Q-learning on grid mazes whose goal is fixed per task.

    python -m experiments.maml_maze_q --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class MazeQConfig(MAMLExperimentConfig):
    """Q-learning inner loop (semi-gradient TD, Boltzmann behaviour) scored by the adapted policy's return.

    Outer Adam 0.01: with K=3 inner steps, 0.1 learned a start that adapts worse than a random one
    (held-out k=3 3.92 against 4.94) and 0.03 too (4.45 against 4.73); at 0.01 the meta-learned
    start adapts like the random one (4.78 against 4.73). MAML does not yet beat the random start
    here (docs/benchmarks.md).
    """

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
    outer_lr: float = 0.01
    eval_tasks: int = 64


if __name__ == "__main__":
    cli_main(MazeQConfig, description=__doc__)
