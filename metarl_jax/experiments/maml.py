"""Generic MAML experiment: any inner learner on any task family.

    python -m experiments.maml --learner pg --task navigation
    python -m experiments.maml --learner ac --task cartpole --horizon 200
    python -m experiments.maml --learner q --task maze --tabular-policy --horizon 20
    python -m experiments.maml --help
"""

from metarl_jax.experiment import MAMLExperimentConfig, cli_main


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) into a :class:`MAMLExperimentConfig` and run it; returns the exit status (metarl_jax.experiment.cli_main)."""
    return cli_main(MAMLExperimentConfig, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
