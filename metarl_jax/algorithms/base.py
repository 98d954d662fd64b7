"""The meta-algorithm interface, optax's shape: a pair of pure functions.

    alg = maml(learner, config, outer_tx, sample_tasks)     # any factory in metarl_jax.algorithms
    state = alg.init(key)                                    # a pytree with a scalar int `step`
    state, metrics = alg.step(state)                         # one meta-iteration, pure, jittable

:func:`metarl_jax.training.loop.run` is the one loop (``lax.scan`` of ``step``, the one ``jit``,
metrics, checkpoints, resume); a wrapper such as
:func:`metarl_jax.algorithms.task_selection.with_task_selection` takes an algorithm and returns one.
``metrics`` is a dict of arrays; ``metrics["grad_finite"]`` (a scalar bool) says whether every
gradient of the iteration was finite, and an algorithm built with ``skip_nonfinite=True`` leaves its
parameters unchanged on an iteration where it was not.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class MetaAlgorithm(NamedTuple):
    """``init(key) -> state`` and ``step(state) -> (state, metrics)``; ``step`` adds 1 to ``state.step``."""

    init: Callable[[jax.Array], Any]
    step: Callable[[Any], tuple[Any, dict]]


class MetaTrainState(NamedTuple):
    """What a meta-training run carries between iterations (a pytree).

    ``meta_params``: ``{"policy": theta}`` (plus ``{"inner_lr": alpha}`` for Meta-SGD);
    ``opt_state``: the outer rule's state; ``key``: the run's PRNG key; ``step``: finished iterations.
    """

    meta_params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array


def tree_all_finite(tree) -> jax.Array:
    """``True`` iff every entry of every leaf of ``tree`` is finite (a scalar bool)."""
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def keep_if_finite(finite: jax.Array, new, old):
    """``new`` where the scalar ``finite`` is true, else ``old`` (two pytrees of one structure).

    How a training step skips a non-finite update inside jit: ``on_nonfinite="skip"``.
    """
    return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
