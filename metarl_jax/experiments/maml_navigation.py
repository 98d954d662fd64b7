"""Second-order MAML on 2D point navigation (Finn et al. 2017), the main job of ``make run``.

    python -m experiments.maml_navigation --help
    python -m experiments.maml_navigation --num-iterations 300 --estimator lvc
"""

import dataclasses

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


@dataclasses.dataclass(frozen=True)
class NavigationConfig(MAMLExperimentConfig):
    """Second-order MAML-PG on Navigation2D; defaults finish in a few minutes on a 2-core CPU.

    The default estimator is ProMP's ``lvc`` (second order, low variance); ``dice`` is the unbiased
    one and learns more slowly here because of its variance (see docs/benchmarks.md).
    """

    task: str = "navigation"
    name: str = "maml_navigation"
    num_iterations: int = 150
    meta_batch: int = 20
    num_episodes: int = 20
    horizon: int = 100
    estimator: str = "lvc"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) into a :class:`NavigationConfig` and run it; returns the exit status (metarl_jax.experiment.cli_main)."""
    return cli_main(NavigationConfig, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
