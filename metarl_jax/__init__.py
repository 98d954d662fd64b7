"""metarl-jax: meta-reinforcement learning where every task is an ``EnvParams`` pytree."""

__version__ = "0.1.0"
