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

:func:`meta_train_with_selection` runs it in :func:`metarl_jax.training.loop.run_loop`, the loop
of :func:`metarl_jax.training.loop.meta_train` (``metrics.jsonl``, checkpoints, resume);
the checkpoint holds the whole :class:`SelectionTrainState` (parameters,
optimizer state, PRNG key, step, sampler state, pool and pool optima), so a
resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.training import loop as train_lib
from metarl_jax.algorithms.maml import MAMLConfig, MetaTrainState, init_train_state, keep_if_finite, make_meta_train_step
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


def _horizon(learner) -> int:
    return int(learner.config.horizon)


def pool_optimal_returns(family, pool, horizon: int) -> jax.Array:
    """``[P]`` exact optimal returns of the pool's tasks (zeros when the family has no solver)."""
    p = num_tasks_in(pool)
    if not getattr(family, "has_optimum", False):
        return jnp.zeros((p,), jnp.float32)
    return jax.vmap(lambda t: family.optimal_return(t, horizon))(pool).astype(jnp.float32)


def init_selection_state(key: jax.Array, learner, maml_config: MAMLConfig, optimizer,
                         selection_config: TaskSelectionConfig, pool=None) -> SelectionTrainState:
    """Fresh state: meta-parameters as :func:`metarl_jax.algorithms.maml.init_train_state` with the same
    ``key``, an empty sampler and a pool of ``selection_config.pool_size`` tasks drawn from
    ``learner.env`` with ``fold_in(key, POOL_STREAM)`` (or the given ``pool``)."""
    family = learner.env
    check_score(selection_config, family)
    if pool is None:
        pool = task_pool(family, jax.random.fold_in(key, POOL_STREAM), selection_config.pool_size)
    if num_tasks_in(pool) != selection_config.pool_size:
        raise ValueError(
            f"pool_size={selection_config.pool_size!r} does not match the given pool of {num_tasks_in(pool)} tasks"
        )
    base = init_train_state(key, learner, maml_config, optimizer)
    return SelectionTrainState(base.meta_params, base.opt_state, base.key, base.step,
                               init_sampler(selection_config), pool,
                               pool_optimal_returns(family, pool, _horizon(learner)))


def make_selection_train_step(
    learner,
    maml_config: MAMLConfig,
    optimizer,
    selection_config: TaskSelectionConfig,
    meta_batch: int,
    inner_optimizer=None,
    skip_nonfinite: bool = False,
):
    """One meta-iteration with task selection, ``state -> (state, metrics)``: pure and jittable.

    The meta-gradient step is :func:`metarl_jax.algorithms.maml.make_meta_train_step` on the gathered
    tasks (so the update, the non-finite guard and the metrics are exactly those of
    uniform meta-training); around it the sampler draws ``meta_batch`` pool indices and
    records their scores. Extra metrics: ``task_indices [B]`` and ``task_scores [B]``.
    A batch whose scores are not all finite leaves the sampler unchanged.
    """
    meta_batch = check_int("meta_batch", meta_batch, minimum=1)

    def step(state: SelectionTrainState):
        chex.assert_shape(state.pool_optimum, (selection_config.pool_size,))
        key, key_select = jax.random.split(state.key)
        indices = sample_indices(selection_config, state.sampler, key_select, meta_batch)
        tasks = gather_tasks(state.pool, indices)
        base_step = make_meta_train_step(learner, maml_config, optimizer, lambda _: tasks, inner_optimizer,
                                         skip_nonfinite=skip_nonfinite)
        base, metrics = base_step(MetaTrainState(state.meta_params, state.opt_state, key, state.step))
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

    return step


def _build_step(learner, maml_config, train_config, selection_config, inner_optimizer):
    optimizer = train_lib.make_optimizer(train_config)
    return make_selection_train_step(learner, maml_config, optimizer, selection_config, train_config.meta_batch,
                                     inner_optimizer, skip_nonfinite=train_config.on_nonfinite == "skip")


_cached_step = functools.lru_cache(maxsize=8)(_build_step)


def selection_train_step(learner, maml_config, train_config, selection_config, inner_optimizer=None):
    """The meta-iteration :func:`meta_train_with_selection` runs: :func:`make_selection_train_step`
    with :func:`metarl_jax.training.loop.make_optimizer` and ``train_config``'s ``meta_batch`` and
    non-finite policy.

    Equal (hashable) arguments return the same function, so repeated runs (seeds,
    resumes, tests) compile once; ``num_iterations``, ``seed`` and the checkpoint
    settings do not matter.
    """
    if inner_optimizer is None:
        key_config = dataclasses.replace(train_config, num_iterations=1, seed=0, iterations_per_call=1,
                                         checkpoint_every=1, keep_checkpoints=1)
        try:
            return _cached_step(learner, maml_config, key_config, selection_config, None)
        except TypeError:  # an unhashable learner: no cache
            pass
    return _build_step(learner, maml_config, train_config, selection_config, inner_optimizer)


def compiled_multi_step(learner, maml_config, train_config, selection_config, inner_optimizer=None):
    """The jitted ``lax.scan`` of ``iterations_per_call`` selection meta-iterations, ``state -> (state, metrics)``.

    Equal (hashable) arguments return the same jitted function (the one
    :func:`meta_train_with_selection` runs), so repeated runs compile once.
    """
    step = selection_train_step(learner, maml_config, train_config, selection_config, inner_optimizer)
    return train_lib.jit_multi_step(step, int(train_config.iterations_per_call))


def meta_train_with_selection(
    learner,
    maml_config: MAMLConfig,
    train_config: train_lib.TrainConfig,
    selection_config: TaskSelectionConfig,
    run_dir: str | None = None,
    *,
    pool=None,
    progress: bool = True,
    stop_after: int | None = None,
    inner_optimizer=None,
) -> tuple[SelectionTrainState, list[dict]]:
    """Meta-train ``learner`` on tasks selected from a fixed pool; return ``(final state, history)``.

    :func:`metarl_jax.training.loop.run_loop` (``metrics.jsonl``, crash-safe checkpoints of
    the whole :class:`SelectionTrainState` every ``checkpoint_every`` iterations with
    the selection config in their metadata, resume from the latest checkpoint in
    ``run_dir/checkpoints``, ``stop_after`` to simulate an interruption, non-finite
    policy) over :func:`selection_train_step` from :func:`init_selection_state` with
    ``PRNGKey(train_config.seed)``. The pool is drawn from ``learner.env`` with the
    training seed unless ``pool`` is given.
    """
    check_score(selection_config, learner.env)
    optimizer = train_lib.make_optimizer(train_config)
    state = init_selection_state(jax.random.PRNGKey(train_config.seed), learner, maml_config, optimizer,
                                 selection_config, pool)
    step = selection_train_step(learner, maml_config, train_config, selection_config, inner_optimizer)
    return train_lib.run_loop(step, state, train_config, run_dir, progress=progress, stop_after=stop_after,
                              desc=f"meta-iterations ({selection_config.strategy})",
                              metadata={"selection": dataclasses.asdict(selection_config)})


def tail_mean(values, fraction: float = 0.1) -> float:
    """Mean of the lowest ``ceil(fraction * N)`` of ``values [N]`` (the lower-tail CVaR; worst decile at 0.1)."""
    check_real("fraction", fraction, minimum=0.0, maximum=1.0, min_open=True)
    values = np.sort(np.asarray(values, np.float64).ravel())
    require(values.size > 0, "values", values, "must hold at least one value")
    return float(values[: max(1, int(np.ceil(fraction * values.size)))].mean())
