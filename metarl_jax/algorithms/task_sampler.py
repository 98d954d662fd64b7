"""Which tasks to train on next: uniform or Prioritized Level Replay over a fixed task pool.

A fixed pool of ``P`` tasks (one batched ``EnvParams``, see :func:`task_pool`)
is sampled from once; each meta-step draws a batch of pool indices, trains on
:func:`gather_tasks` of them, and feeds a per-task score back. The sampler
state is a pytree (:class:`SamplerState`) and every function is pure and
jittable with the config static, so sampling and updating live inside the
jitted meta-step with no host sync::

    sample = jax.jit(sample_indices, static_argnums=(0, 3))
    update = jax.jit(update_scores, static_argnums=0)
    idx = sample(config, state, key, batch_size)           # [B] int32
    tasks = gather_tasks(pool, idx)                        # EnvParams with leading axis B
    ... adapt, evaluate -> scores [B] (e.g. optimality_gap(opt, post)) ...
    state = update(config, state, idx, scores)

Prioritized Level Replay (Jiang, Grefenstette and Rocktaeschel 2021). Over the
*seen* tasks the replay distribution is::

    P_i   = (1 - rho) * P_S(i) + rho * P_C(i)
    P_S(i) = h(S_i)^(1/beta) / sum_j h(S_j)^(1/beta)
    P_C(i) = (c - C_i) / sum_j (c - C_j)

with ``rho = staleness_coef``, ``beta = temperature``, ``S_i`` the task's
latest score, and ``h`` either ``rank``: ``h(S_i) = 1 / rank(S_i)`` (rank 1 =
highest score among seen tasks; ties broken by lower pool index first) or
``proportional``: ``h(S_i) = max(S_i, 0)`` (so proportional needs
non-negative scores; prefer rank for signed scores such as
``negative_return``: ranks are invariant to shifts). ``c`` is the number of
:func:`update_scores` calls so far and ``C_i`` the call at which task ``i``
was last updated (PLR counts episodes; here one update = one meta-step).
When every ``h`` is zero ``P_S`` is uniform over seen tasks; likewise ``P_C``
when every seen task was updated in the latest call. Powers are taken in log
space, so small temperatures neither overflow nor underflow.

Unseen tasks are sampled first (the choice documented by PLR for a finite
level set: "unvisited levels are visited first"): while ``u > 0`` tasks have
never been scored, the first ``min(u, B)`` slots of a batch are distinct
unseen tasks in uniformly random order, and the remaining slots are drawn
i.i.d. (with replacement) from the replay distribution above. So the pool is
covered after ``ceil(P / B)`` meta-steps, and afterwards the draw is exactly
PLR. :func:`sampling_probabilities` returns the replay distribution (zero on
unseen tasks while any task has been seen; uniform before any update).

Scores. The caller computes a score per sampled task and passes it to
:func:`update_scores`; the pure helpers below compute the usual ones:
``optimality_gap`` (``R* - R_post``, for families with an exact optimum),
``negative_return`` (``-R_post``), ``td_error`` (mean ``|delta|``, the PLR
L1 value loss). For ``score="learning_progress"`` pass the raw *metric*
(e.g. the post-adaptation return) instead: the state keeps each task's
previous value and the score becomes ``|metric - previous|``; a task's first
visit has no previous value, so its score is 0 until its second visit
(staleness brings it back). Scores must be finite.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.tasks.base import TaskFamily, sample_tasks
from metarl_jax.validation import check_choice, check_int, check_probability, check_real

STRATEGIES = ("uniform", "prioritized")
SCORES = ("optimality_gap", "negative_return", "td_error", "learning_progress")
PRIORITIZATIONS = ("rank", "proportional")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSelectionConfig:
    """How tasks are drawn from the pool (static: hashable, one compile per config).

    Attributes:
      strategy: ``"uniform"`` (i.i.d. uniform over the pool) or ``"prioritized"`` (PLR).
      pool_size: number of tasks ``P`` in the fixed pool, >= 1.
      score: what the scores fed to :func:`update_scores` mean; only
        ``"learning_progress"`` changes the update (see the module docstring).
      prioritization: ``"rank"`` (h = 1/rank) or ``"proportional"`` (h = score).
      temperature: ``beta > 0``; ``h`` is raised to ``1/beta`` (small = greedy).
      staleness_coef: ``rho`` in ``[0, 1]``, weight of the staleness distribution.
    """

    strategy: str = "prioritized"
    pool_size: int
    score: str = "optimality_gap"
    prioritization: str = "rank"
    temperature: float = 0.1
    staleness_coef: float = 0.1

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        # A Python int (numpy's too is accepted): the config is static and recorded as JSON.
        object.__setattr__(self, "pool_size", check_int("pool_size", self.pool_size, minimum=1))
        check_choice("score", self.score, SCORES)
        check_choice("prioritization", self.prioritization, PRIORITIZATIONS)
        check_real("temperature", self.temperature, minimum=0.0, min_open=True)
        check_probability("staleness_coef", self.staleness_coef)


@struct.dataclass
class SamplerState:
    """Per-task bookkeeping of the sampler (a pytree; lives in the jitted train state).

    Attributes:
      scores: ``[P]`` float32, latest score of each task (0 while unseen).
      last_sampled: ``[P]`` int32, update call at which each task was last scored (``C_i``).
      seen: ``[P]`` bool, whether each task has been scored at least once.
      step: int32 scalar, number of :func:`update_scores` calls so far (``c``).
      metric: ``[P]`` float32, latest raw value fed for each task (the previous
        metric for ``learning_progress``; equals ``scores`` otherwise).
    """

    scores: jax.Array
    last_sampled: jax.Array
    seen: jax.Array
    step: jax.Array
    metric: jax.Array


def init_sampler(config: TaskSelectionConfig) -> SamplerState:
    """Fresh state: nothing seen, all scores 0, step 0."""
    p = config.pool_size
    return SamplerState(
        scores=jnp.zeros((p,), jnp.float32),
        last_sampled=jnp.zeros((p,), jnp.int32),
        seen=jnp.zeros((p,), bool),
        step=jnp.zeros((), jnp.int32),
        metric=jnp.zeros((p,), jnp.float32),
    )


def _check_state(config: TaskSelectionConfig, state: SamplerState) -> None:
    p = config.pool_size
    chex.assert_shape([state.scores, state.last_sampled, state.seen, state.metric], (p,))
    chex.assert_shape(state.step, ())


# --------------------------------------------------------------------------- distributions


def _masked_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax of ``logits`` over ``mask`` (entries with -inf get 0); uniform over ``mask``
    if no entry is finite; uniform over everything if ``mask`` is empty."""
    usable = mask & jnp.isfinite(logits)
    safe = jnp.where(usable, logits, -jnp.inf)
    top = jnp.where(jnp.any(usable), jnp.max(safe), 0.0)
    weights = jnp.where(usable, jnp.exp(safe - top), 0.0)
    fallback = jnp.where(jnp.any(mask), mask.astype(jnp.float32), jnp.ones_like(logits))
    weights = jnp.where(jnp.any(usable), weights, fallback)
    return weights / jnp.sum(weights)


def score_probabilities(config: TaskSelectionConfig, scores: jax.Array, seen: jax.Array) -> jax.Array:
    """``P_S [P]``: ``h(S_i)^(1/beta)`` normalised over the seen tasks.

    ``rank``: ``h = 1 / rank`` with rank 1 the highest score among seen tasks
    (ties: lower index first). ``proportional``: ``h = max(S, 0)``.
    """
    chex.assert_shape([scores, seen], (config.pool_size,))
    if config.prioritization == "rank":
        keyed = jnp.where(seen, -scores, jnp.inf)  # unseen sort last
        order = jnp.argsort(keyed, stable=True)
        ranks = jnp.zeros_like(order).at[order].set(jnp.arange(1, scores.shape[0] + 1, dtype=order.dtype))
        log_h = -jnp.log(ranks.astype(jnp.float32))
    else:
        positive = jnp.maximum(scores, 0.0)
        log_h = jnp.where(positive > 0, jnp.log(jnp.where(positive > 0, positive, 1.0)), -jnp.inf)
    return _masked_softmax(log_h / config.temperature, seen)


def staleness_probabilities(config: TaskSelectionConfig, state: SamplerState) -> jax.Array:
    """``P_C [P]``: ``(c - C_i) / sum_j (c - C_j)`` over seen tasks (uniform over them if all 0)."""
    _check_state(config, state)
    staleness = jnp.where(state.seen, (state.step - state.last_sampled).astype(jnp.float32), 0.0)
    total = jnp.sum(staleness)
    seen = state.seen.astype(jnp.float32)
    uniform_seen = jnp.where(jnp.any(state.seen), seen / jnp.maximum(jnp.sum(seen), 1.0), 1.0 / seen.shape[0])
    return jnp.where(total > 0, staleness / jnp.where(total > 0, total, 1.0), uniform_seen)


def sampling_probabilities(config: TaskSelectionConfig, state: SamplerState) -> jax.Array:
    """The replay distribution ``[P]`` (see the module docstring); uniform for ``"uniform"``.

    Unseen tasks get probability 0 here once any task has been seen:
    :func:`sample_indices` takes them first, before drawing from this.
    """
    _check_state(config, state)
    p = config.pool_size
    if config.strategy == "uniform":
        return jnp.full((p,), 1.0 / p, jnp.float32)
    rho = config.staleness_coef
    p_score = score_probabilities(config, state.scores, state.seen)
    p_stale = staleness_probabilities(config, state)
    return (1.0 - rho) * p_score + rho * p_stale


def sample_indices(
    config: TaskSelectionConfig, state: SamplerState, key: jax.Array, batch_size: int
) -> jax.Array:
    """Draw ``batch_size`` pool indices ``[B]`` int32.

    ``"uniform"``: i.i.d. uniform. ``"prioritized"``: the ``u`` unseen tasks
    first (``min(u, B)`` distinct ones, random order), then i.i.d. draws from
    :func:`sampling_probabilities`. Jit with ``static_argnums=(0, 3)``.
    """
    b = check_int("batch_size", batch_size, minimum=1)
    _check_state(config, state)
    p = config.pool_size
    if config.strategy == "uniform":
        return jax.random.randint(key, (b,), 0, p, dtype=jnp.int32)
    key_unseen, key_replay = jax.random.split(key)
    replay = jax.random.choice(key_replay, p, (b,), replace=True, p=sampling_probabilities(config, state))
    # a random permutation that lists the unseen tasks first
    unseen = ~state.seen
    order = jnp.argsort(jnp.where(unseen, jax.random.uniform(key_unseen, (p,)), 2.0))
    slots = jnp.arange(b)
    first = order[jnp.minimum(slots, p - 1)]
    return jnp.where(slots < jnp.sum(unseen), first, replay).astype(jnp.int32)


def update_scores(
    config: TaskSelectionConfig, state: SamplerState, indices: jax.Array, new_scores: jax.Array
) -> SamplerState:
    """Record the scores ``[B]`` of the tasks ``indices [B]`` just trained on.

    Sets ``S_i`` (the mean over duplicates of ``i`` in the batch), ``C_i = c + 1``,
    ``seen_i = True`` for every ``i`` in ``indices`` and increments ``c``.
    For ``"learning_progress"`` ``new_scores`` are raw metrics and
    ``S_i = |metric_i - previous metric_i|`` (0 on a first visit).
    Jit with ``static_argnums=0``.
    """
    _check_state(config, state)
    chex.assert_rank(indices, 1)
    chex.assert_shape(new_scores, indices.shape)
    chex.assert_type(indices, int)
    p = config.pool_size
    counts = jnp.zeros((p,), jnp.float32).at[indices].add(1.0)
    sums = jnp.zeros((p,), jnp.float32).at[indices].add(new_scores.astype(jnp.float32))
    hit = counts > 0
    value = sums / jnp.maximum(counts, 1.0)
    if config.score == "learning_progress":
        score = jnp.where(state.seen, learning_progress(state.metric, value), 0.0)
    else:
        score = value
    step = state.step + 1
    return SamplerState(
        scores=jnp.where(hit, score, state.scores),
        last_sampled=jnp.where(hit, step, state.last_sampled),
        seen=state.seen | hit,
        step=step,
        metric=jnp.where(hit, value, state.metric),
    )


# --------------------------------------------------------------------------- scores


def optimality_gap(optimal_return: jax.Array, post_adaptation_return: jax.Array) -> jax.Array:
    """``R* - R_post``: how far the adapted policy is from the optimum (element-wise)."""
    return jnp.asarray(optimal_return) - jnp.asarray(post_adaptation_return)


def negative_return(post_return: jax.Array) -> jax.Array:
    """``-R_post``: low-return tasks get high scores (element-wise)."""
    return -jnp.asarray(post_return)


def learning_progress(previous: jax.Array, current: jax.Array) -> jax.Array:
    """``|current - previous|``: absolute change of a metric between two visits (element-wise)."""
    return jnp.abs(jnp.asarray(current) - jnp.asarray(previous))


def td_error(td_errors: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PLR's L1 value loss: mean ``|delta_t|`` over the last axis ``[..., T] -> [...]``.

    ``mask [..., T]`` marks valid steps (masked steps may hold anything).
    """
    td_errors = jnp.asarray(td_errors)
    chex.assert_rank(td_errors, {*range(1, 8)})
    if mask is None:
        return jnp.mean(jnp.abs(td_errors), axis=-1)
    chex.assert_equal_shape([td_errors, mask])
    valid = jnp.asarray(mask, bool)
    total = jnp.sum(jnp.where(valid, jnp.abs(td_errors), 0.0), axis=-1)
    return total / jnp.maximum(jnp.sum(valid, axis=-1), 1)


# --------------------------------------------------------------------------- the pool


def task_pool(family: TaskFamily, key: jax.Array, pool_size: int):
    """A fixed pool of ``pool_size`` tasks: ``EnvParams`` with a leading axis ``[P]``."""
    return sample_tasks(family, key, pool_size)


def gather_tasks(pool, indices: jax.Array):
    """The tasks ``indices [B]`` of ``pool``: ``EnvParams`` with a leading axis ``[B]``."""
    chex.assert_rank(indices, 1)
    chex.assert_type(indices, int)
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), pool)
