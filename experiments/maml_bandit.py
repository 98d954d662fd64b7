"""MAML on K-armed Bernoulli bandits: arm probabilities ~ U[0, 1]^K per task.

    python -m experiments.maml_bandit --help
    python -m experiments.maml_bandit --num-arms 5 --estimator dice --num-iterations 200
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class BanditConfig(MAMLExperimentConfig):
    """Meta-SGD (learned per-parameter inner rates) on BernoulliBandit with a small MLP softmax policy.

    With i.i.d. uniform arm probabilities the uniform policy is already the best start, so what
    meta-learning can add is *faster adaptation*: Meta-SGD learns the inner step sizes.
    """

    task: str = "bandit"
    name: str = "maml_bandit"
    num_iterations: int = 100
    meta_batch: int = 20
    num_episodes: int = 10
    horizon: int = 10
    gamma: float = 1.0
    baseline: str = "mean"
    inner_lr: float = 0.05
    learn_inner_lr: bool = True
    estimator: str = "lvc"
    outer_lr: float = 3e-2
    hidden_sizes: tuple[int, ...] = (32,)


if __name__ == "__main__":
    cli_main(BanditConfig, description=__doc__)
