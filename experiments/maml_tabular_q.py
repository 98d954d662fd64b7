"""Second-order MAML through Q-learning on random tabular MDPs; the outer loss is the adapted Q's TD loss.

    python -m experiments.maml_tabular_q --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class TabularQConfig(MAMLExperimentConfig):
    """Tabular Q-learning inner loop (semi-gradient TD with differentiable targets) on TabularMDP."""

    task: str = "tabular_mdp"
    learner: str = "q"
    name: str = "maml_tabular_q"
    num_iterations: int = 100
    meta_batch: int = 20
    num_episodes: int = 10
    horizon: int = 10
    gamma: float = 0.9
    tabular_policy: bool = True
    behaviour: str = "boltzmann"
    q_outer: str = "return"
    inner_lr: float = 0.5
    estimator: str = "dice"
    outer_lr: float = 3e-2
    eval_tasks: int = 100


if __name__ == "__main__":
    cli_main(TabularQConfig, description=__doc__)
