"""The experiment entry points, installed with the package.

``python -m metarl_jax.experiments.<name>`` (or the console script ``metarl-<name>``, e.g.
``metarl-maml-navigation``) runs one; in a clone of the repository ``python -m experiments.<name>``
runs the same module. Each module defines a config dataclass and ``main(argv=None)``.
"""
