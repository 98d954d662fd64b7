"""Meta-training with task selection: uniform or prioritised draws from a fixed task pool.

:mod:`metarl_jax.algorithms.task_sampler` holds the pure sampler; this module puts it
*inside* the jitted meta-iteration. The training state carries the sampler
state ``s`` and a fixed pool of ``P`` tasks (one batched ``EnvParams``) with
their exact optimal returns ``R*_i`` (zeros for families without an exact
solver). One meta-iteration, a pure function ``state -> (state, metrics)``:

    idx      ~ sample_indices(s, key)                      [B] int32 pool indices
    tasks    = pool[idx]                                   B tasks
    g, m     = meta_gradient(theta, tasks, key')           m["per_task_post_adaptation_return"] = R_post [B]
    score_b  = R*_{idx_b} - R_post_b        ("optimality_gap")
             | -R_post_b                    ("negative_return")
             | R_post_b  (the raw metric; the sampler keeps |R_post - previous R_post|)   ("learning_progress")
    s        = update_scores(s, idx, score)
    theta    = theta + optax_update(g)

Everything above is traced once and compiled as one XLA program (a
``lax.scan`` of ``iterations_per_call`` of them); nothing syncs with the host.
``R_post`` is the mean undiscounted return of the adapted policy on the outer
batch, a Monte-Carlo estimate: scores are noisy, which PLR's rank
prioritisation tolerates (only the order matters).

:func:`with_task_selection` wraps any algorithm whose state is a
:class:`~metarl_jax.algorithms.base.MetaTrainState` (MAML, TRPO, ProMP, multi-task) and returns
one, like ``optax.chain``; :func:`metarl_jax.training.loop.run` runs it (``metrics.jsonl``,
checkpoints, resume); the checkpoint holds the whole :class:`SelectionTrainState` (parameters,
optimizer state, PRNG key, step, sampler state, pool and pool optima), so a
resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.algorithms.base import MetaAlgorithm, MetaTrainState, keep_if_finite
from metarl_jax.algorithms.task_sampler import (
    SamplerState,
    TaskSelectionConfig,
    gather_tasks,
    init_sampler,
    negative_return,
    optimality_gap,
    sample_indices,
    task_pool,
    update_scores,
)
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import check_int, check_real, require

#: ``fold_in`` stream of the training seed that draws the task pool.
POOL_STREAM = 0x7A5C


class SelectionTrainState(NamedTuple):
    """A meta-training run with task selection (a pytree; checkpointed whole).

    Attributes:
      meta_params, opt_state, key, step: as in :class:`metarl_jax.algorithms.maml.MetaTrainState`.
      sampler: the :class:`~metarl_jax.algorithms.task_sampler.SamplerState` over the pool.
      pool: the ``P`` training tasks, an ``EnvParams`` pytree with leading axis ``[P]``.
      pool_optimum: ``[P]`` float32 exact optimal returns ``R*_i`` (zeros if the family has none).
    """

    meta_params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array
    sampler: SamplerState
    pool: Any
    pool_optimum: jax.Array


def default_score(family) -> str:
    """``"optimality_gap"`` for families with an exact optimum, ``"negative_return"`` otherwise."""
    return "optimality_gap" if getattr(family, "has_optimum", False) else "negative_return"


def check_score(selection_config: TaskSelectionConfig, family) -> None:
    """Raise a ``ValueError`` naming ``score`` if the score cannot be computed for ``family``."""
    score = selection_config.score
    if score == "optimality_gap" and not getattr(family, "has_optimum", False):
        raise ValueError(
            f"score={score!r} is invalid for {type(family).__name__}: the family has no exact optimum; "
            "use 'negative_return' or 'learning_progress'"
        )
    if score == "td_error":
        raise ValueError(
            f"score={score!r} is invalid for meta-training: the meta-gradient reports returns, not TD errors; "
            "use 'optimality_gap', 'negative_return' or 'learning_progress'"
        )


def selection_scores(selection_config: TaskSelectionConfig, post_returns: jax.Array,
                     optimal_returns: jax.Array) -> jax.Array:
    """What :func:`~metarl_jax.algorithms.task_sampler.update_scores` is fed for a batch: ``[B], [B] -> [B]``.

    ``optimality_gap``: ``R* - R_post``; ``negative_return``: ``-R_post``;
    ``learning_progress``: ``R_post`` itself (the sampler turns it into ``|R_post - previous|``).
    """
    chex.assert_rank(post_returns, 1)
    chex.assert_equal_shape([post_returns, optimal_returns])
    score = selection_config.score
    if score == "optimality_gap":
        return optimality_gap(optimal_returns, post_returns)
    if score == "negative_return":
        return negative_return(post_returns)
    if score == "learning_progress":
        return post_returns
    raise ValueError(f"score={score!r} is invalid for meta-training")


def pool_optimal_returns(family, pool, horizon: int) -> jax.Array:
    """``[P]`` exact optimal returns of the pool's tasks (zeros when the family has no solver)."""
    p = num_tasks_in(pool)
    if not getattr(family, "has_optimum", False):
        return jnp.zeros((p,), jnp.float32)
    return jax.vmap(lambda t: family.optimal_return(t, horizon))(pool).astype(jnp.float32)


def _no_tasks(key):
    raise ValueError("with_task_selection: the wrapped algorithm's init must not sample tasks")


def with_task_selection(
    algorithm: Callable[[Callable[[jax.Array], Any]], MetaAlgorithm],
    family,
    selection_config: TaskSelectionConfig,
    meta_batch: int,
    horizon: int,
    pool=None,
) -> MetaAlgorithm:
    """Task selection around an algorithm: ``algorithm(sample_tasks) -> MetaAlgorithm`` (e.g.
    ``lambda sample: maml(learner, config, outer_tx, sample)``) whose state is a
    :class:`~metarl_jax.algorithms.base.MetaTrainState`.

    ``init(key)``: the wrapped algorithm's state for ``key``, an empty sampler and a pool of
    ``selection_config.pool_size`` tasks drawn from ``family`` with ``fold_in(key, POOL_STREAM)``
    (or the given ``pool``), with their exact optimal returns over ``horizon`` steps.
    ``step``: draw ``meta_batch`` pool indices with the sampler, run the wrapped algorithm's step on
    exactly those tasks (so the update, the non-finite guard and the metrics are the wrapped
    algorithm's), then record the tasks' scores (module docstring). Extra metrics: ``task_indices
    [B]`` and ``task_scores [B]``. A batch whose scores are not all finite leaves the sampler unchanged.
    """
    check_score(selection_config, family)
    meta_batch = check_int("meta_batch", meta_batch, minimum=1)

    def init(key: jax.Array) -> SelectionTrainState:
        tasks = pool
        if tasks is None:
            tasks = task_pool(family, jax.random.fold_in(key, POOL_STREAM), selection_config.pool_size)
        if num_tasks_in(tasks) != selection_config.pool_size:
            raise ValueError(f"pool_size={selection_config.pool_size!r} does not match the given pool of "
                             f"{num_tasks_in(tasks)} tasks")
        base = algorithm(_no_tasks).init(key)
        return SelectionTrainState(base.meta_params, base.opt_state, base.key, base.step,
                                   init_sampler(selection_config), tasks,
                                   pool_optimal_returns(family, tasks, horizon))

    def step(state: SelectionTrainState):
        chex.assert_shape(state.pool_optimum, (selection_config.pool_size,))
        key, key_select = jax.random.split(state.key)
        indices = sample_indices(selection_config, state.sampler, key_select, meta_batch)
        tasks = gather_tasks(state.pool, indices)
        base, metrics = algorithm(lambda _: tasks).step(
            MetaTrainState(state.meta_params, state.opt_state, key, state.step))
        post = metrics["per_task_post_adaptation_return"]
        chex.assert_shape(post, (meta_batch,))
        scores = selection_scores(selection_config, post, state.pool_optimum[indices])
        updated = update_scores(selection_config, state.sampler, indices, scores)
        finite = jnp.all(jnp.isfinite(scores))
        sampler = keep_if_finite(finite, updated, state.sampler)
        metrics = dict(metrics, task_indices=indices, task_scores=scores)
        new_state = SelectionTrainState(base.meta_params, base.opt_state, base.key, base.step, sampler,
                                        state.pool, state.pool_optimum)
        return new_state, metrics

    return MetaAlgorithm(init, step)


def tail_mean(values, fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction * N)`` of ``values [N]`` (the lower-tail CVaR; worst decile at 0.1)."""
    check_real("fraction", fraction, minimum=0.0, maximum=1.0, min_open=True)
    values = np.sort(np.asarray(values, np.float64).ravel())
    require(values.size > 0, "values", values, "must hold at least one value")
    return float(values[: max(1, int(np.ceil(fraction * values.size)))].mean())
