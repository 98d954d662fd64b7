"""Preprocessing: running statistics against numpy, cleaning, and the wrapper on a broken family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax import preprocessing as pp
from metarl_jax.tasks.base import TaskFamily
from metarl_jax.tasks.navigation import Navigation2D

RTOL = 1e-5
ATOL = 1e-5


def _assert_stats(stats: pp.RunningMeanStd, data: np.ndarray) -> None:
    """``stats`` summarise ``data`` [N, ...] exactly as numpy does (population variance)."""
    np.testing.assert_allclose(float(stats.count), data.shape[0], rtol=0)
    np.testing.assert_allclose(np.asarray(stats.mean), data.mean(axis=0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(stats.variance), data.var(axis=0), rtol=1e-4, atol=ATOL)


def _data(seed: int, n: int, shape=(3,), loc=2.0, scale=3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, size=(n, *shape)).astype(np.float32)


# --------------------------------------------------------------------------- running statistics


def test_batched_updates_match_numpy_on_concatenated_data():
    parts = [_data(i, n, shape=(2, 3)) for i, n in enumerate([1, 7, 50, 3])]
    update = jax.jit(pp.running_stats_update)
    stats = pp.running_stats_init((2, 3))
    for part in parts:
        stats = update(stats, part)
    _assert_stats(stats, np.concatenate(parts))


def test_whole_batch_equals_sample_by_sample():
    data = _data(0, 64)

    def one(stats, x):
        return pp.running_stats_update(stats, x[None]), None

    sequential, _ = jax.lax.scan(one, pp.running_stats_init(3), data)
    batched = pp.running_stats_update(pp.running_stats_init(3), data)
    for a, b in zip(jax.tree.leaves(sequential), jax.tree.leaves(batched)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
    _assert_stats(sequential, data)


def test_masked_update_ignores_masked_rows_even_if_nan():
    data = _data(1, 40)
    mask = np.random.default_rng(2).random(40) < 0.6
    garbage = data.copy()
    garbage[~mask] = np.nan  # masked-out rows must never enter a sum
    stats = pp.running_stats_init(3)
    stats = pp.running_stats_update(stats, data[:5])  # some history first
    stats = jax.jit(pp.running_stats_update)(stats, garbage, mask)
    _assert_stats(stats, np.concatenate([data[:5], data[mask]]))


def test_empty_mask_leaves_stats_unchanged_and_empty_stats_normalize_is_identity():
    data = _data(3, 10)
    empty = pp.running_stats_init(3)
    same = pp.running_stats_update(empty, data, np.zeros(10, bool))
    for field in ("count", "mean", "m2"):  # unchanged: count 0, mean 0, m2 0 (no NaN from 0 / 0)
        np.testing.assert_array_equal(np.asarray(getattr(same, field)), np.asarray(getattr(empty, field)))
    history = pp.running_stats_update(empty, data[:4])  # and non-empty statistics stay exactly as they were
    after = pp.running_stats_update(history, data, np.zeros(10, bool))
    for field in ("count", "mean", "m2"):
        np.testing.assert_array_equal(np.asarray(getattr(after, field)), np.asarray(getattr(history, field)))
    x = jnp.asarray(data)
    np.testing.assert_allclose(np.asarray(pp.normalize(same, x)), data, rtol=1e-6)


def test_merge_of_vmapped_parts_equals_numpy():
    """Stats computed independently per task under vmap, then merged, equal the stats of all data."""
    data = _data(4, 5 * 30).reshape(5, 30, 3)
    masks = np.random.default_rng(5).random((5, 30)) < 0.7
    per_task = jax.vmap(lambda x, m: pp.running_stats_update(pp.running_stats_init(3), x, m))(
        data, masks
    )
    assert per_task.count.shape == (5,)
    expected = data[masks]
    _assert_stats(pp.merge_stacked(per_task), expected)
    # the pairwise merge agrees, folded left to right ...
    folded = pp.running_stats_init(3)
    for k in range(5):
        folded = pp.running_stats_merge(folded, jax.tree.map(lambda x: x[k], per_task))
    _assert_stats(folded, expected)
    # ... and is associative: ((0 1) 2) (3 4) == 0 (1 (2 (3 4)))
    part = [jax.tree.map(lambda x, k=k: x[k], per_task) for k in range(5)]
    m = pp.running_stats_merge
    left = m(m(m(part[0], part[1]), part[2]), m(part[3], part[4]))
    right = m(part[0], m(part[1], m(part[2], m(part[3], part[4]))))
    for a, b in zip(jax.tree.leaves(left), jax.tree.leaves(right)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)


def test_merge_across_named_vmap_axis():
    data = _data(6, 4 * 25, shape=(2,)).reshape(4, 25, 2)
    masks = np.random.default_rng(7).random((4, 25)) < 0.5
    prior = pp.running_stats_update(pp.running_stats_init(2), _data(8, 6, shape=(2,)))

    def per_task(x, m):
        local = pp.running_stats_update(pp.running_stats_init(2), x, m)
        return pp.running_stats_merge(prior, pp.merge_across_axis(local, "tasks"))

    merged = jax.jit(jax.vmap(per_task, axis_name="tasks"))(data, masks)
    expected = np.concatenate([_data(8, 6, shape=(2,)), data[masks]])
    for k in range(4):  # every member of the axis holds the same merged statistics
        _assert_stats(jax.tree.map(lambda x, k=k: x[k], merged), expected)


def test_normalize_and_zscore_clip():
    data = _data(9, 200)
    stats = pp.running_stats_update(pp.running_stats_init(3), data)
    z = np.asarray(pp.normalize(stats, jnp.asarray(data)))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-4)
    assert np.abs(np.asarray(pp.normalize(stats, jnp.asarray(data) * 100, clip=5.0))).max() <= 5.0
    back = pp.denormalize(stats, pp.normalize(stats, jnp.asarray(data)))
    np.testing.assert_allclose(np.asarray(back), data, rtol=1e-4, atol=1e-4)
    clipped = np.asarray(pp.clip_by_zscore(stats, jnp.asarray(data), 1.0))
    mean, std = data.mean(0), data.std(0)
    # exactly numpy's clip to mean +- 1 std (the data's mean is 2, so bounds built around 0 would differ)
    np.testing.assert_allclose(clipped, np.clip(data, mean - std, mean + std), rtol=1e-4, atol=1e-4)
    assert np.any(clipped != data)
    with pytest.raises(ValueError, match="trailing axes"):
        pp.normalize(stats, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\[N, \*\(3,\)\]"):
        pp.running_stats_update(stats, jnp.zeros((4, 2)))


# --------------------------------------------------------------------------- cleaning and features


def test_clean_replaces_and_counts_nan_and_inf():
    x = jnp.array([1.0, jnp.nan, -jnp.inf, 2.0, jnp.inf, jnp.nan], jnp.float32)
    cleaned, num_bad = jax.jit(pp.clean, static_argnums=1)(x, -1.0)
    np.testing.assert_array_equal(np.asarray(cleaned), [1.0, -1.0, -1.0, 2.0, -1.0, -1.0])
    assert cleaned.dtype == jnp.float32 and num_bad.dtype == jnp.int32 and int(num_bad) == 4
    ints, none = pp.clean(jnp.arange(3))
    np.testing.assert_array_equal(np.asarray(ints), [0, 1, 2])
    assert int(none) == 0
    np.testing.assert_array_equal(
        np.asarray(pp.clip_outliers(jnp.array([-5.0, 0.5, 5.0]), -1.0, 1.0)), [-1.0, 0.5, 1.0]
    )
    np.testing.assert_array_equal(np.asarray(pp.clip_outliers(jnp.array([-5.0, 5.0]), None, 1.0)), [-5.0, 1.0])


def test_feature_transforms():
    x = jnp.array([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_array_equal(
        np.asarray(pp.polynomial_features(x, 3)),
        [[1, 2, 1, 4, 1, 8], [3, -1, 9, 1, 27, -1]],
    )
    with_t = pp.concat_time_feature(x, jnp.array([5, 10]), horizon=10)
    np.testing.assert_allclose(np.asarray(with_t), [[1, 2, 0.5], [3, -1, 1.0]])
    with pytest.raises(ValueError, match="degree=0"):
        pp.polynomial_features(x, 0)


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"replacement": float("nan")}, "replacement=nan"),
        ({"replacement": float("inf")}, "replacement=inf"),
        ({"obs_low": 1.0, "obs_high": -1.0}, "obs_low=1.0 is invalid: must be < obs_high=-1.0"),
        ({"reward_low": 2.0, "reward_high": 2.0}, "reward_low=2.0 is invalid: must be < reward_high=2.0"),
        ({"reward_high": "big"}, "reward_high='big'"),
        ({"obs_polynomial_degree": 0}, "obs_polynomial_degree=0"),
        ({"obs_polynomial_degree": 2.5}, "obs_polynomial_degree=2.5"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError) as err:
        pp.PreprocessConfig(**kwargs)
    assert field in str(err.value) and "must be" in str(err.value)


def test_config_is_frozen_and_hashable():
    cfg = pp.PreprocessConfig(obs_low=-1.0, obs_high=1.0)
    assert hash(cfg) == hash(pp.PreprocessConfig(obs_low=-1.0, obs_high=1.0))
    with pytest.raises(Exception):
        cfg.obs_low = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------- wrapper


@struct.dataclass
class BrokenState(environment.EnvState):
    x: jax.Array  # [3]


@struct.dataclass
class BrokenParams(environment.EnvParams):
    scale: jax.Array = struct.field(default_factory=lambda: jnp.ones(()))
    max_steps_in_episode: int = 4


class BrokenFamily(TaskFamily):
    """Emits NaN / +inf / -inf in observations and rewards at random, and huge values."""

    @property
    def default_params(self) -> BrokenParams:
        return BrokenParams()

    def sample_params(self, key):
        return BrokenParams(scale=jax.random.uniform(key, (), minval=1.0, maxval=100.0))

    def _draw(self, key, scale):
        """One random draw per call (keeps compile time low): values, and which become NaN/+-inf."""
        u = jax.random.uniform(key, (3, 4))  # rows: value, is-bad, which poison
        value = (u[0] - 0.5) * 4.0 * scale
        poison = jnp.array([jnp.nan, jnp.inf, -jnp.inf], jnp.float32)[jnp.floor(u[2] * 3).astype(jnp.int32)]
        return jnp.where(u[1] < 0.3, poison, value)  # [4]: obs [3] and reward

    def reset_env(self, key, params):
        obs = self._draw(key, params.scale)[:3]
        return obs, BrokenState(time=0, x=obs)

    def step_env(self, key, state, action, params):
        raw = self._draw(key, params.scale) + action
        obs, reward = raw[:3], raw[3]
        info = {"raw_obs": obs, "raw_reward": reward}  # what the wrapper is given, for the test
        return obs, BrokenState(time=state.time + 1, x=obs), reward, jnp.zeros((), bool), info

    def is_terminated(self, state, params):
        return jnp.zeros((), bool)

    def action_space(self, params=None):
        return spaces.Box(-1.0, 1.0, (), jnp.float32)

    def observation_space(self, params=None):
        return spaces.Box(-jnp.inf, jnp.inf, (3,), jnp.float32)


CONFIG = pp.PreprocessConfig(replacement=0.0, obs_low=-5.0, obs_high=5.0, reward_low=-1.0, reward_high=1.0)
NUM_TASKS, NUM_EPISODES, HORIZON = 4, 3, 12


def _rollout(env, key, task):
    """reset once, then HORIZON step_env calls in a lax.scan; returns everything seen."""
    k_reset, k_steps = jax.random.split(key)
    obs0, state = env.reset_env(k_reset, task)

    def body(state, k):
        obs, state, reward, _, info = env.step_env(k, state, 0.5, task)
        return state, (obs, reward, info)

    final, (obs, reward, info) = jax.lax.scan(body, state, jax.random.split(k_steps, HORIZON))
    return obs0, state, final, obs, reward, info


def _batched_rollout(env):
    def per_task(key, task):
        return jax.vmap(lambda k: _rollout(env, k, task))(jax.random.split(key, NUM_EPISODES))

    return jax.jit(jax.vmap(per_task))


def test_wrapper_never_yields_nonfinite_and_counts_are_right():
    env = pp.PreprocessedFamily(BrokenFamily(), CONFIG)
    tasks = jax.vmap(env.sample_params)(jax.random.split(jax.random.key(0), NUM_TASKS))
    keys = jax.random.split(jax.random.key(1), NUM_TASKS)

    obs0, state0, final, obs, reward, info = _batched_rollout(env)(keys, tasks)
    # the raw values the wrapped family produced: its reset observation is kept in its
    # (untouched) state, its step outputs in its info
    raw_obs0, raw_obs, raw_reward = state0.env_state.x, info["raw_obs"], info["raw_reward"]

    assert obs.shape == (NUM_TASKS, NUM_EPISODES, HORIZON, 3)
    for x in (obs0, obs, reward):
        assert np.all(np.isfinite(np.asarray(x)))
    assert np.all(np.abs(np.asarray(obs)) <= 5.0) and np.all(np.abs(np.asarray(reward)) <= 1.0)

    # the toy really is broken, and every bad value is counted where it happened
    bad_reset = (~np.isfinite(np.asarray(raw_obs0))).sum(-1)
    bad_steps = (~np.isfinite(np.asarray(raw_obs))).sum(-1) + (~np.isfinite(np.asarray(raw_reward)))
    assert bad_reset.sum() > 0 and bad_steps.sum() > 0
    np.testing.assert_array_equal(np.asarray(state0.num_nonfinite), bad_reset)
    np.testing.assert_array_equal(np.asarray(info["num_nonfinite"]), bad_steps)
    np.testing.assert_array_equal(np.asarray(final.num_nonfinite), bad_reset + bad_steps.sum(-1))
    # finite raw values pass through untouched (up to clipping), bad ones become the replacement
    raw = np.asarray(raw_obs)
    np.testing.assert_array_equal(np.asarray(obs), np.where(np.isfinite(raw), np.clip(raw, -5, 5), 0.0))
    raw_r = np.asarray(raw_reward)
    np.testing.assert_array_equal(np.asarray(reward), np.where(np.isfinite(raw_r), np.clip(raw_r, -1, 1), 0.0))


def test_wrapper_with_gymnax_autoreset_step_and_delegation():
    env = pp.PreprocessedFamily(BrokenFamily(), pp.PreprocessConfig(obs_polynomial_degree=2))
    task = env.sample_params(jax.random.key(2))
    obs, state = env.reset(jax.random.key(3), task)

    def body(state, k):
        obs, state, reward, terminated, truncated, info = env.step(k, state, 0.1, task)
        return state, (obs, reward, truncated, info["num_nonfinite"])

    _, (obs, reward, truncated, counts) = jax.jit(lambda s: jax.lax.scan(body, s, jax.random.split(jax.random.key(4), 10)))(state)
    assert obs.shape == (10, 6) and env.obs_dim() == 6
    assert np.all(np.isfinite(np.asarray(obs))) and np.all(np.isfinite(np.asarray(reward)))
    assert np.asarray(truncated).sum() == 2  # max_steps_in_episode=4: auto-reset goes through the wrapper
    assert np.asarray(counts).sum() > 0
    assert env.name == "Preprocessed(BrokenFamily)"


def test_wrapper_on_navigation_is_transparent_without_bad_values():
    """With the default config and finite values the wrapper changes nothing: the observation and reward of
    a step equal the bare family's from the same state and action, and the reward is the hand-computed
    ``-||(0.1, -0.1) - goal||`` (one step from the origin)."""
    nav = Navigation2D(horizon=5)
    env = pp.PreprocessedFamily(nav)
    assert env.has_optimum and env.horizon == 5 and env.obs_dim() == 2
    task = env.sample_params(jax.random.key(0))
    np.testing.assert_allclose(float(env.optimal_return(task, 5)), float(nav.optimal_return(task, 5)))
    action = jnp.array([0.1, -0.1])
    obs, state = env.reset_env(jax.random.key(1), task)
    obs, state, reward, _, info = env.step_env(jax.random.key(2), state, action, task)
    _, raw_state = nav.reset_env(jax.random.key(1), task)
    raw_obs, _, raw_reward, _, _ = nav.step_env(jax.random.key(2), raw_state, action, task)
    np.testing.assert_allclose(np.asarray(obs), [0.1, -0.1])
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(raw_obs))
    assert int(info["num_nonfinite"]) == 0 and int(state.num_nonfinite) == 0
    assert float(reward) == float(raw_reward)
    goal = np.asarray(task.goal, np.float64)
    np.testing.assert_allclose(float(reward), -np.linalg.norm(np.array([0.1, -0.1]) - goal), rtol=1e-6)
    bounded = pp.PreprocessedFamily(nav, pp.PreprocessConfig(obs_low=-1.0, obs_high=1.0))
    space = bounded.observation_space(task)
    assert float(space.low) == -1.0 and float(space.high) == 1.0
