"""MAML on Acrobot where a task is the (unobserved) tip height to swing to.

    python -m experiments.maml_acrobot_target --help
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class AcrobotTargetConfig(MAMLExperimentConfig):
    """Second-order MAML-PG on ``acrobot_target`` (``metarl_jax.tasks.acrobot_target_family``).

    The reward is a bump of width 0.5 around the target tip height ``h* ~ U[-1.5, 1.5]`` (the tip
    hangs at -2, upright is 2): low targets ask for small swings, high ones for pumping energy.
    """

    task: str = "acrobot_target"
    name: str = "maml_acrobot_target"
    num_iterations: int = 100
    meta_batch: int = 20
    num_episodes: int = 20
    horizon: int = 100
    gamma: float = 0.99
    estimator: str = "lvc"
    hidden_sizes: tuple[int, ...] = (64, 64)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) into a :class:`AcrobotTargetConfig` and run it; returns the exit status (metarl_jax.experiment.cli_main)."""
    return cli_main(AcrobotTargetConfig, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
