"""MAML on CartPole where a task is the (unobserved) cart position to balance the pole at.

    python -m experiments.maml_cartpole_target --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class CartPoleTargetConfig(MAMLExperimentConfig):
    """Second-order MAML-PG on ``cartpole_target`` (``metarl_jax.tasks.cartpole_target_family``).

    The reward is a bump of width 0.25 around the target ``x* ~ U[-1, 1]``: a policy balancing at the
    centre gets about 0.31 per step, one balancing at the target close to 1 (the family's docstring).
    The inner step size is the family's default, 1.0 (``DEFAULT_INNER_LR``): at 0.1 a two-action
    softmax barely moves in 3 steps (40 iterations: 30.7 -> 31.6 against 31.2 -> 46.5 at 1.0).
    """

    task: str = "cartpole_target"
    name: str = "maml_cartpole_target"
    num_iterations: int = 100
    meta_batch: int = 20
    num_episodes: int = 20
    horizon: int = 100
    gamma: float = 0.99
    estimator: str = "lvc"
    hidden_sizes: tuple[int, ...] = (64, 64)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) into a :class:`CartPoleTargetConfig` and run it; returns the exit status (metarl_jax.experiment.cli_main)."""
    return cli_main(CartPoleTargetConfig, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
