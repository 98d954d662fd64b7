"""Task selection: uniform and PLR sampling against closed forms, staleness, updates, jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.algorithms import task_sampler as ts
from metarl_jax.tasks.navigation import Navigation2D

sample = jax.jit(ts.sample_indices, static_argnums=(0, 3))
update = jax.jit(ts.update_scores, static_argnums=0)
probabilities = jax.jit(ts.sampling_probabilities, static_argnums=0)

SCORES = np.array([3.0, 1.0, 2.0, 0.5, 5.0, 2.5], np.float32)
LAST = np.array([0, 3, 1, 4, 2, 6], np.int32)
STEP = 7


def _state(config, scores=SCORES, last=LAST, step=STEP, seen=None):
    p = config.pool_size
    return ts.SamplerState(
        scores=jnp.asarray(scores, jnp.float32),
        last_sampled=jnp.asarray(last, jnp.int32),
        seen=jnp.ones((p,), bool) if seen is None else jnp.asarray(seen),
        step=jnp.asarray(step, jnp.int32),
        metric=jnp.asarray(scores, jnp.float32),
    )


def _plr_numpy(scores, last, step, prioritization, temperature, rho):
    """The closed-form PLR replay distribution, all tasks seen."""
    scores = np.asarray(scores, np.float64)
    if prioritization == "rank":
        ranks = np.empty(len(scores))
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
        h = 1.0 / ranks
    else:
        h = np.maximum(scores, 0.0)
    w = h ** (1.0 / temperature)
    p_score = w / w.sum()
    stale = step - np.asarray(last, np.float64)
    return (1 - rho) * p_score + rho * stale / stale.sum()


def _counts(indices, p):
    return np.bincount(np.asarray(indices).ravel(), minlength=p)


def test_uniform_frequencies_are_uniform():
    cfg = ts.TaskSelectionConfig(strategy="uniform", pool_size=10)
    state = ts.init_sampler(cfg)
    keys = jax.random.split(jax.random.key(0), 400)
    draws = jax.vmap(lambda k: sample(cfg, state, k, 250))(keys)  # 100k draws
    assert draws.shape == (400, 250) and draws.dtype == jnp.int32
    counts = _counts(draws, 10)
    expected = draws.size / 10
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 27.88  # chi-square(9 dof) 99.9% quantile
    np.testing.assert_allclose(np.asarray(probabilities(cfg, state)), 0.1)


@pytest.mark.parametrize(
    "prioritization, temperature, rho",
    [("rank", 0.1, 0.1), ("rank", 1.0, 0.0), ("rank", 0.5, 0.3), ("proportional", 1.0, 0.1), ("proportional", 0.3, 1.0)],
)
def test_prioritized_probabilities_match_closed_form(prioritization, temperature, rho):
    cfg = ts.TaskSelectionConfig(
        pool_size=6, prioritization=prioritization, temperature=temperature, staleness_coef=rho
    )
    got = np.asarray(probabilities(cfg, _state(cfg)))
    want = _plr_numpy(SCORES, LAST, STEP, prioritization, temperature, rho)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert abs(got.sum() - 1.0) < 1e-6


def test_prioritized_empirical_frequencies_match_probabilities():
    cfg = ts.TaskSelectionConfig(pool_size=6, prioritization="rank", temperature=0.5, staleness_coef=0.3)
    state = _state(cfg)
    keys = jax.random.split(jax.random.key(1), 500)
    draws = jax.vmap(lambda k: sample(cfg, state, k, 400))(keys)  # 200k draws
    freq = _counts(draws, 6) / draws.size
    want = _plr_numpy(SCORES, LAST, STEP, "rank", 0.5, 0.3)
    sigma = np.sqrt(want * (1 - want) / draws.size)
    assert np.all(np.abs(freq - want) < 5 * sigma), (freq, want)


def test_rank_ties_small_temperature_and_zero_scores():
    # rank: ties broken by lower index first
    cfg = ts.TaskSelectionConfig(pool_size=3, temperature=1.0, staleness_coef=0.0)
    got = np.asarray(probabilities(cfg, _state(cfg, scores=[1.0, 1.0, 0.0], last=[0, 0, 0], step=1)))
    np.testing.assert_allclose(got, np.array([1, 1 / 2, 1 / 3]) / (1 + 1 / 2 + 1 / 3), rtol=1e-6)
    # tiny temperature: greedy on the best score, no overflow
    cfg = ts.TaskSelectionConfig(pool_size=3, temperature=1e-4, staleness_coef=0.0, prioritization="proportional")
    got = np.asarray(probabilities(cfg, _state(cfg, scores=[1e3, 2e3, 1.0], last=[0, 0, 0], step=1)))
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0], atol=1e-6)
    # proportional with all scores <= 0: P_S falls back to uniform over seen tasks
    got = np.asarray(probabilities(cfg, _state(cfg, scores=[0.0, -1.0, 0.0], last=[0, 0, 0], step=1)))
    np.testing.assert_allclose(got, [1 / 3] * 3, rtol=1e-6)


def test_staleness_raises_probability_of_long_unseen_tasks():
    scores = np.ones(4, np.float32)  # equal scores, equal P_S ...
    last = np.array([5, 5, 5, 5])
    for prioritization in ("proportional", "rank"):
        cfg = ts.TaskSelectionConfig(pool_size=4, staleness_coef=0.5, temperature=1.0, prioritization=prioritization)
        fresh = np.asarray(probabilities(cfg, _state(cfg, scores=scores, last=last, step=6)))
        stale_last = last.copy()
        stale_last[2] = 0  # ... but task 2 was last scored long ago
        stale = np.asarray(probabilities(cfg, _state(cfg, scores=scores, last=stale_last, step=6)))
        assert stale[2] > fresh[2] and stale[2] == stale.max()
    # through the update: the probability of a task that is never re-scored keeps growing
    # while the others are re-scored in turn (P_C is normalised, so staleness is relative)
    cfg = ts.TaskSelectionConfig(pool_size=4, staleness_coef=0.5, temperature=1.0, prioritization="proportional")
    state = update(cfg, ts.init_sampler(cfg), jnp.arange(4), jnp.ones(4))
    p_task3 = []
    for step in range(6):
        state = update(cfg, state, jnp.array([step % 3]), jnp.ones(1))
        p_task3.append(float(probabilities(cfg, state)[3]))
    assert np.all(np.diff(p_task3) > 0), p_task3
    # c = 7; task 3 last scored at 1, tasks 0, 1, 2 at 5, 6, 7: P_C(3) = 6 / (6 + 2 + 1 + 0)
    np.testing.assert_allclose(p_task3[-1], 0.5 * 0.25 + 0.5 * 6 / 9, rtol=1e-6)
    # with rho = 0 staleness plays no part
    cfg0 = ts.TaskSelectionConfig(pool_size=4, staleness_coef=0.0, temperature=1.0, prioritization="proportional")
    np.testing.assert_allclose(np.asarray(probabilities(cfg0, state)), 0.25, rtol=1e-6)


def test_update_puts_scores_at_the_right_indices():
    cfg = ts.TaskSelectionConfig(pool_size=6)
    state = ts.init_sampler(cfg)
    state = update(cfg, state, jnp.array([4, 1]), jnp.array([2.5, -1.0]))
    np.testing.assert_array_equal(np.asarray(state.scores), [0, -1.0, 0, 0, 2.5, 0])
    np.testing.assert_array_equal(np.asarray(state.seen), [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(np.asarray(state.last_sampled), [0, 1, 0, 0, 1, 0])
    assert int(state.step) == 1
    # duplicates in a batch are averaged; untouched tasks keep their scores
    state = update(cfg, state, jnp.array([2, 4, 2, 2]), jnp.array([1.0, 7.0, 2.0, 6.0]))
    np.testing.assert_allclose(np.asarray(state.scores), [0, -1.0, 3.0, 0, 7.0, 0])
    np.testing.assert_array_equal(np.asarray(state.last_sampled), [0, 1, 2, 0, 2, 0])
    assert int(state.step) == 2 and int(state.seen.sum()) == 3


def test_learning_progress_is_the_change_between_visits():
    cfg = ts.TaskSelectionConfig(pool_size=3, score="learning_progress")
    state = ts.init_sampler(cfg)
    state = update(cfg, state, jnp.array([0, 1]), jnp.array([-10.0, -4.0]))  # first visits
    np.testing.assert_array_equal(np.asarray(state.scores), [0, 0, 0])
    state = update(cfg, state, jnp.array([0, 2]), jnp.array([-7.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(state.scores), [3.0, 0, 0])  # |-7 - -10|; task 2 first visit
    state = update(cfg, state, jnp.array([0, 1, 2]), jnp.array([-7.5, -6.0, 3.0]))
    np.testing.assert_allclose(np.asarray(state.scores), [0.5, 2.0, 2.0])
    np.testing.assert_allclose(np.asarray(state.metric), [-7.5, -6.0, 3.0])


def test_unseen_tasks_are_sampled_first():
    cfg = ts.TaskSelectionConfig(pool_size=8, temperature=0.1, staleness_coef=0.1)
    state = ts.init_sampler(cfg)
    key = jax.random.key(3)
    covered = set()
    for _ in range(2):  # 8 tasks, batches of 4: two steps cover the pool, without repeats
        key, k = jax.random.split(key)
        idx = np.asarray(sample(cfg, state, k, 4))
        assert len(set(idx)) == 4 and not covered & set(idx)
        covered |= set(idx)
        state = update(cfg, state, jnp.asarray(idx), jnp.asarray(idx, jnp.float32))
    assert covered == set(range(8))
    # a batch larger than the unseen set: the unseen ones first, the rest from the replay distribution
    state = update(cfg, ts.init_sampler(cfg), jnp.array([0, 1, 2, 3, 4, 5]), jnp.array([0, 0, 0, 0, 0, 9.0]))
    idx = np.asarray(sample(cfg, state, jax.random.key(4), 64))
    assert set(idx[:2]) == {6, 7} and not {6, 7} & set(idx[2:])
    assert np.mean(idx[2:] == 5) > 0.5  # the high-score task dominates the replay draws
    # before anything is seen, sampling_probabilities is uniform
    np.testing.assert_allclose(np.asarray(probabilities(cfg, ts.init_sampler(cfg))), 1 / 8)


def test_jitted_meta_loop_without_host_sync():
    """Sampling and updating inside one jitted lax.scan; a repeated config never recompiles."""
    cfg = ts.TaskSelectionConfig(pool_size=16, prioritization="rank", staleness_coef=0.2)
    hardness = jnp.linspace(0.0, 1.0, 16)  # task i has optimality gap hardness[i]

    @jax.jit
    def run(state, key):
        def meta_step(state, k):
            idx = ts.sample_indices(cfg, state, k, 4)
            gap = ts.optimality_gap(jnp.ones(4), 1.0 - hardness[idx])
            return ts.update_scores(cfg, state, idx, gap), idx

        return jax.lax.scan(meta_step, state, jax.random.split(key, 200))

    state, idx = run(ts.init_sampler(cfg), jax.random.key(5))
    assert idx.shape == (200, 4) and bool(state.seen.all()) and int(state.step) == 200
    np.testing.assert_allclose(np.asarray(state.scores), np.asarray(hardness), atol=1e-6)
    counts = _counts(idx[10:], 16)
    assert counts[-4:].sum() > counts[:4].sum() * 3  # hard tasks are replayed more often

    sample(cfg, state, jax.random.key(6), 8)
    before = sample._cache_size()
    sample(ts.TaskSelectionConfig(pool_size=16, prioritization="rank", staleness_coef=0.2), state, jax.random.key(7), 8)
    assert sample._cache_size() == before  # equal config -> same compiled function


def test_score_functions():
    np.testing.assert_allclose(np.asarray(ts.optimality_gap(jnp.array([5.0, 2.0]), jnp.array([3.0, 2.5]))), [2.0, -0.5])
    np.testing.assert_allclose(np.asarray(ts.negative_return(jnp.array([3.0, -1.0]))), [-3.0, 1.0])
    np.testing.assert_allclose(np.asarray(ts.learning_progress(jnp.array([1.0, 4.0]), jnp.array([3.0, 1.0]))), [2.0, 3.0])
    deltas = jnp.array([[1.0, -3.0, jnp.nan], [2.0, 2.0, -2.0]])
    mask = jnp.array([[True, True, False], [True, True, True]])
    np.testing.assert_allclose(np.asarray(ts.td_error(deltas, mask)), [2.0, 2.0])
    np.testing.assert_allclose(np.asarray(ts.td_error(deltas[1:])), [2.0])


def test_task_pool_and_gather():
    family = Navigation2D(goal_range=0.5)
    pool = ts.task_pool(family, jax.random.key(0), 10)
    assert pool.goal.shape == (10, 2)
    idx = jnp.array([3, 3, 7], jnp.int32)
    tasks = ts.gather_tasks(pool, idx)
    assert tasks.goal.shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(tasks.goal), np.asarray(pool.goal)[[3, 3, 7]])
    np.testing.assert_array_equal(np.asarray(tasks.max_steps_in_episode), np.asarray(pool.max_steps_in_episode)[[3, 3, 7]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "greedy"}, "strategy='greedy' is invalid: must be one of 'uniform', 'prioritized'"),
        ({"pool_size": 0}, "pool_size=0 is invalid"),
        ({"pool_size": 2.0}, "pool_size=2.0 is invalid"),
        ({"score": "regret"}, "score='regret' is invalid: must be one of 'optimality_gap'"),
        ({"prioritization": "softmax"}, "prioritization='softmax' is invalid: must be one of 'rank', 'proportional'"),
        ({"temperature": 0.0}, "temperature=0.0 is invalid: must be a finite number > 0"),
        ({"temperature": float("inf")}, "temperature=inf is invalid"),
        ({"staleness_coef": 1.5}, r"staleness_coef=1.5 is invalid: must be a number in \[0, 1\]"),
        ({"staleness_coef": -0.1}, "staleness_coef=-0.1 is invalid"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ts.TaskSelectionConfig(**{"pool_size": 4, **kwargs})


def test_bad_shapes_and_batch_size_are_rejected():
    cfg = ts.TaskSelectionConfig(pool_size=4)
    state = ts.init_sampler(cfg)
    with pytest.raises(ValueError, match="batch_size=0"):
        ts.sample_indices(cfg, state, jax.random.key(0), 0)
    with pytest.raises(AssertionError):
        ts.update_scores(cfg, state, jnp.array([0, 1]), jnp.ones(3))
    with pytest.raises(AssertionError):
        ts.sampling_probabilities(ts.TaskSelectionConfig(pool_size=5), state)
