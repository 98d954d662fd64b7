"""Repository entry points: ``python -m experiments.<name> --help``.

The user-facing experiments live in :mod:`metarl_jax.experiments` (installed with the package; the
modules here of the same names run them, and that package starts JAX's multi-process runtime when
asked). The ``benchmark_*`` modules are the repository's benchmarks.
"""
