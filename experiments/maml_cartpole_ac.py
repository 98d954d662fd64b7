"""Second-order MAML through an actor-critic inner loop on CartPole with random pole length and mass.

    python -m experiments.maml_cartpole_ac --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class CartPoleACConfig(MAMLExperimentConfig):
    """Actor and critic both adapted in the inner loop (GAE advantages, value loss)."""

    task: str = "cartpole"
    learner: str = "ac"
    name: str = "maml_cartpole_ac"
    num_iterations: int = 100
    meta_batch: int = 10
    num_episodes: int = 10
    horizon: int = 200
    gamma: float = 0.99
    normalize: str = "step"
    inner_lr: float = 0.1
    estimator: str = "lvc"
    outer_lr: float = 3e-3
    hidden_sizes: tuple[int, ...] = (64, 64)
    eval_tasks: int = 50


if __name__ == "__main__":
    cli_main(CartPoleACConfig, description=__doc__)
