"""Observation and reward preprocessing: pure, jittable, with explicit state.

Two kinds of preprocessing live here, and they are kept apart on purpose.

**Stateless** (a function of the current value only): :func:`clean` replaces
NaN and +-inf and counts them, :func:`clip_outliers` clips to fixed bounds,
:func:`polynomial_features` and :func:`concat_time_feature` add features.
:class:`PreprocessedFamily` applies the stateless part inside any task family,
so a rollout over the wrapped family never sees a non-finite observation or
reward, and ``info["num_nonfinite"]`` says how many values were replaced.

**Stateful** (running normalisation): the statistics are state, and state is
explicit in this library, so they are *not* kept inside the environment. The
caller owns a :class:`RunningMeanStd` and threads it through its jitted step::

    stats = running_stats_init((obs_dim,))
    # inside the jitted meta-step, after a rollout with obs [E, T, obs_dim], mask [E, T]:
    stats = running_stats_update(stats, obs.reshape(-1, obs_dim), mask.reshape(-1))
    obs_n = normalize(stats, obs, clip=10.0)

Statistics are merged with Chan et al.'s parallel formula, which is exact and
associative: stats computed per task under ``jax.vmap`` (or per device under
``pmap`` / ``shard_map``) and merged with :func:`merge_across_axis` or
:func:`merge_stacked` equal the stats of the concatenated data. So the update
is the same whether the data is seen sample by sample, as one batch, or split
over tasks and devices.

Maths (Chan, Golub and LeVeque 1979). For parts ``a`` and ``b`` with counts
``n``, means ``m`` and sums of squared deviations ``M2``::

    n    = n_a + n_b
    d    = m_b - m_a
    m    = m_a + d * n_b / n
    M2   = M2_a + M2_b + d^2 * n_a * n_b / n
    var  = M2 / n            (population variance, numpy's ``np.var``)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces

from metarl_jax.tasks.base import TaskFamily
from metarl_jax.validation import check_int, check_optional_real, check_real, require

# --------------------------------------------------------------------------- running statistics


@struct.dataclass
class RunningMeanStd:
    """Running mean / variance of a stream of arrays of shape ``shape``.

    Attributes:
      count: scalar, number (or total weight) of samples seen so far.
      mean: ``[*shape]``, their mean.
      m2: ``[*shape]``, sum of squared deviations from the mean (``count * var``).
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @property
    def variance(self) -> jax.Array:
        """Population variance ``m2 / count``; 1 while empty (so :func:`normalize` is the identity)."""
        safe = jnp.where(self.count > 0, self.count, 1.0)
        return jnp.where(self.count > 0, self.m2 / safe, jnp.ones_like(self.m2))

    @property
    def std(self) -> jax.Array:
        """Population standard deviation ``sqrt(variance)``."""
        return jnp.sqrt(self.variance)


def running_stats_init(shape: tuple[int, ...] | int, dtype=jnp.float32) -> RunningMeanStd:
    """Empty statistics for samples of shape ``shape`` (count 0, mean 0, m2 0)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return RunningMeanStd(
        count=jnp.zeros((), dtype), mean=jnp.zeros(shape, dtype), m2=jnp.zeros(shape, dtype)
    )


def _merge_moments(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's pairwise merge of ``(count, mean, m2)`` triples (see the module docstring)."""
    n = n_a + n_b
    safe_n = jnp.where(n > 0, n, 1.0)
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / safe_n)
    m2 = m2_a + m2_b + jnp.square(delta) * (n_a * n_b / safe_n)
    return n, mean, m2


def running_stats_merge(a: RunningMeanStd, b: RunningMeanStd) -> RunningMeanStd:
    """Statistics of the union of the data summarised by ``a`` and ``b``.

    Exact and associative (up to float rounding): merging per-part statistics in
    any grouping gives the statistics of the concatenated data.
    """
    chex.assert_equal_shape([a.mean, b.mean])
    count, mean, m2 = _merge_moments(a.count, a.mean, a.m2, b.count, b.mean, b.m2)
    return RunningMeanStd(count=count, mean=mean, m2=m2)


def batch_stats(batch: jax.Array, mask: jax.Array | None = None, dtype=jnp.float32) -> RunningMeanStd:
    """Statistics of one batch ``[N, *shape]`` (two-pass, so numerically stable).

    ``mask`` is ``[N]``: bool (valid rows) or non-negative frequency weights.
    Masked-out rows may hold anything, NaN included: they never enter a sum.
    """
    chex.assert_rank(batch, {*range(1, 8)})
    batch = jnp.asarray(batch, dtype)
    n_rows = batch.shape[0]
    if mask is None:
        weights = jnp.ones((n_rows,), dtype)
    else:
        chex.assert_shape(mask, (n_rows,))
        weights = jnp.asarray(mask, dtype)
    w = weights.reshape((n_rows,) + (1,) * (batch.ndim - 1))
    valid = w > 0
    count = jnp.sum(weights)
    safe = jnp.where(count > 0, count, 1.0)
    mean = jnp.sum(jnp.where(valid, w * batch, 0.0), axis=0) / safe
    m2 = jnp.sum(jnp.where(valid, w * jnp.square(batch - mean), 0.0), axis=0)
    return RunningMeanStd(count=count, mean=mean, m2=m2)


def running_stats_update(
    stats: RunningMeanStd, batch: jax.Array, mask: jax.Array | None = None
) -> RunningMeanStd:
    """Fold a batch ``[N, *shape]`` (optionally masked by ``mask [N]``) into ``stats``.

    Equals updating with the valid rows one at a time (Welford), because the
    batch's own moments are merged with Chan's exact formula.
    """
    if tuple(batch.shape[1:]) != tuple(stats.mean.shape):
        raise ValueError(
            f"batch has shape {tuple(batch.shape)}, expected [N, *{tuple(stats.mean.shape)}] "
            "(a leading sample axis, then the shape the statistics were initialised with)"
        )
    return running_stats_merge(stats, batch_stats(batch, mask, dtype=stats.mean.dtype))


def merge_stacked(stats: RunningMeanStd) -> RunningMeanStd:
    """Fold a leading axis: stats ``[K]`` of K parts -> stats of their concatenated data.

    Uses the K-way form of Chan's formula: ``n = sum n_k``,
    ``m = sum n_k m_k / n``, ``M2 = sum (M2_k + n_k (m_k - m)^2)``.
    """
    chex.assert_rank(stats.count, 1)
    k = stats.count.shape[0]
    counts = stats.count.reshape((k,) + (1,) * (stats.mean.ndim - 1))
    count = jnp.sum(stats.count)
    safe = jnp.where(count > 0, count, 1.0)
    mean = jnp.sum(counts * stats.mean, axis=0) / safe
    m2 = jnp.sum(stats.m2 + counts * jnp.square(stats.mean - mean), axis=0)
    return RunningMeanStd(count=count, mean=mean, m2=m2)


def merge_across_axis(stats: RunningMeanStd, axis_name: Any) -> RunningMeanStd:
    """Merge the statistics held along a named mapped axis (vmap / pmap / shard_map).

    Every member of the axis gets the merged statistics of all members' data
    (the same K-way formula as :func:`merge_stacked`, with ``jax.lax.psum``).
    """
    count = jax.lax.psum(stats.count, axis_name)
    safe = jnp.where(count > 0, count, 1.0)
    mean = jax.lax.psum(stats.count * stats.mean, axis_name) / safe
    m2 = jax.lax.psum(stats.m2 + stats.count * jnp.square(stats.mean - mean), axis_name)
    return RunningMeanStd(count=count, mean=mean, m2=m2)


def normalize(
    stats: RunningMeanStd,
    x: jax.Array,
    clip: float | None = None,
    center: bool = True,
    eps: float = 1e-8,
) -> jax.Array:
    """``(x - mean) / sqrt(var + eps)``, then clipped to ``[-clip, clip]``.

    ``x`` is ``[..., *shape]``; the statistics broadcast over leading axes.
    ``center=False`` only scales (``x / sqrt(var + eps)``), the usual choice for
    rewards. Before any data is seen the mean is 0 and the variance 1.
    """
    shape = stats.mean.shape
    if shape and tuple(x.shape[x.ndim - len(shape):]) != tuple(shape):
        raise ValueError(f"x has shape {tuple(x.shape)}; its trailing axes must be {tuple(shape)}")
    y = x - stats.mean if center else x
    y = y / jnp.sqrt(stats.variance + eps)
    if clip is not None:
        y = jnp.clip(y, -clip, clip)
    return y


def denormalize(stats: RunningMeanStd, y: jax.Array, center: bool = True, eps: float = 1e-8) -> jax.Array:
    """Inverse of :func:`normalize` (without clipping): ``y * sqrt(var + eps) + mean``."""
    x = y * jnp.sqrt(stats.variance + eps)
    return x + stats.mean if center else x


# --------------------------------------------------------------------------- stateless cleaning


def clean(x: jax.Array, replacement: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Replace NaN, +inf and -inf by ``replacement``.

    Returns ``(cleaned, num_bad)``: ``cleaned`` has the shape and dtype of ``x``;
    ``num_bad`` is an int32 scalar, the number of entries replaced. Integer and
    bool arrays are returned unchanged with ``num_bad = 0``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x, jnp.zeros((), jnp.int32)
    bad = ~jnp.isfinite(x)
    cleaned = jnp.where(bad, jnp.asarray(replacement, x.dtype), x)
    return cleaned, jnp.sum(bad, dtype=jnp.int32)


def clip_outliers(x: jax.Array, low: float | None = None, high: float | None = None) -> jax.Array:
    """Clip ``x`` to ``[low, high]`` (``None`` = unbounded on that side)."""
    if low is None and high is None:
        return x
    return jnp.clip(x, low, high)


def clip_by_zscore(stats: RunningMeanStd, x: jax.Array, max_z: float) -> jax.Array:
    """Clip ``x [..., *shape]`` to ``mean +- max_z * std`` of the running statistics.

    Before any data is seen (count 0) this clips to ``[-max_z, max_z]``.
    """
    check_real("max_z", max_z, minimum=0.0, min_open=True)
    half_width = max_z * stats.std
    return jnp.clip(x, stats.mean - half_width, stats.mean + half_width)


# --------------------------------------------------------------------------- feature transforms


def polynomial_features(x: jax.Array, degree: int) -> jax.Array:
    """Element-wise powers ``[x, x^2, ..., x^degree]`` concatenated on the last axis.

    ``x [..., n] -> [..., n * degree]``; no cross terms. ``degree=1`` is the identity.
    """
    degree = check_int("degree", degree, minimum=1)
    chex.assert_rank(x, {*range(1, 8)})
    return jnp.concatenate([x**p for p in range(1, degree + 1)], axis=-1)


def concat_time_feature(obs: jax.Array, time: jax.Array, horizon: int) -> jax.Array:
    """Append the normalised time ``time / horizon`` as one more feature.

    ``obs [..., n]`` and ``time [...]`` (broadcastable) ``-> [..., n + 1]``.
    """
    check_int("horizon", horizon, minimum=1)
    t = (jnp.asarray(time, obs.dtype) / horizon)[..., None]
    t = jnp.broadcast_to(t, obs.shape[:-1] + (1,))
    return jnp.concatenate([obs, t], axis=-1)


# --------------------------------------------------------------------------- wrapper


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """What :class:`PreprocessedFamily` does to every observation and reward.

    Order: replace non-finite values by ``replacement``, then clip to
    ``[low, high]``, then (observations only) add polynomial features.

    Attributes:
      replacement: value written in place of NaN / +inf / -inf (finite).
      obs_low, obs_high: observation clipping bounds; ``None`` = unbounded.
      reward_low, reward_high: reward clipping bounds; ``None`` = unbounded.
      obs_polynomial_degree: observations become ``[o, o^2, ..., o^d]`` (1 = unchanged).
    """

    replacement: float = 0.0
    obs_low: float | None = None
    obs_high: float | None = None
    reward_low: float | None = None
    reward_high: float | None = None
    obs_polynomial_degree: int = 1

    def __post_init__(self):
        check_real("replacement", self.replacement)
        for prefix in ("obs", "reward"):
            low, high = getattr(self, f"{prefix}_low"), getattr(self, f"{prefix}_high")
            check_optional_real(f"{prefix}_low", low)
            check_optional_real(f"{prefix}_high", high)
            require(low is None or high is None or low < high, f"{prefix}_low", low,
                    f"must be < {prefix}_high={high!r}")
        check_int("obs_polynomial_degree", self.obs_polynomial_degree, minimum=1)


@struct.dataclass
class PreprocessedState:
    """State of a :class:`PreprocessedFamily`: the wrapped family's state plus a counter.

    Attributes:
      env_state: the inner family's state (untouched).
      num_nonfinite: int32 scalar, values replaced since the last reset
        (the reset observation included).
    """

    env_state: Any
    num_nonfinite: jax.Array


class PreprocessedFamily(TaskFamily):
    """A task family whose observations and rewards are cleaned and clipped.

    ``reset_env`` / ``step_env`` return what the wrapped family returns, with
    NaN / +-inf replaced by ``config.replacement``, clipped to the configured
    bounds and (observations) expanded to polynomial features.
    ``step_env``'s ``info["num_nonfinite"]`` (int32) is the number of values
    replaced in that transition's observation and reward; reset observations
    have no ``info`` in gymnax, so the count of a reset is the initial
    ``state.num_nonfinite``, which then accumulates over the episode.

    Tasks are the wrapped family's ``EnvParams`` (``sample_params`` and
    ``default_params`` are delegated). ``optimal_return`` is the wrapped
    family's, i.e. for unclipped rewards.
    """

    def __init__(self, family: TaskFamily, config: PreprocessConfig | None = None):
        super().__init__()
        config = PreprocessConfig() if config is None else config
        if not isinstance(config, PreprocessConfig):
            raise TypeError(f"config={config!r} is invalid: must be a PreprocessConfig")
        self.family = family
        self.config = config
        self.has_optimum = family.has_optimum

    def __getattr__(self, name: str):
        # Only reached for attributes the wrapper lacks: delegate to the wrapped family.
        if name in ("family", "config"):
            raise AttributeError(name)
        return getattr(self.family, name)

    # -- processing
    def process_obs(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(processed observation, number replaced)`` for one raw observation."""
        cfg = self.config
        obs, num_bad = clean(obs, cfg.replacement)
        obs = clip_outliers(obs, cfg.obs_low, cfg.obs_high)
        if cfg.obs_polynomial_degree > 1:
            obs = polynomial_features(obs, cfg.obs_polynomial_degree)
        return obs, num_bad

    def process_reward(self, reward: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(processed reward, number replaced)`` for one raw reward."""
        cfg = self.config
        reward, num_bad = clean(reward, cfg.replacement)
        return clip_outliers(reward, cfg.reward_low, cfg.reward_high), num_bad

    # -- gymnax API
    @property
    def default_params(self):
        return self.family.default_params

    def sample_params(self, key: jax.Array):
        return self.family.sample_params(key)

    def optimal_return(self, params, horizon: int) -> jax.Array:
        return self.family.optimal_return(params, horizon)

    def reset_env(self, key: jax.Array, params) -> tuple[jax.Array, PreprocessedState]:
        obs, env_state = self.family.reset_env(key, params)
        obs, num_bad = self.process_obs(obs)
        return obs, PreprocessedState(env_state=env_state, num_nonfinite=num_bad)

    def step_env(self, key: jax.Array, state: PreprocessedState, action, params):
        obs, env_state, reward, terminated, info = self.family.step_env(
            key, state.env_state, action, params
        )
        obs, bad_obs = self.process_obs(obs)
        reward, bad_reward = self.process_reward(reward)
        num_bad = bad_obs + bad_reward
        state = PreprocessedState(env_state=env_state, num_nonfinite=state.num_nonfinite + num_bad)
        return obs, state, reward, terminated, {**info, "num_nonfinite": num_bad}

    def get_obs(self, state: PreprocessedState, params=None, key=None) -> jax.Array:
        return self.process_obs(self.family.get_obs(state.env_state, params=params, key=key))[0]

    def is_terminated(self, state: PreprocessedState, params) -> jax.Array:
        return self.family.is_terminated(state.env_state, params)

    def is_terminal(self, state: PreprocessedState, params) -> jax.Array:
        return self.family.is_terminal(state.env_state, params)

    def is_truncated(self, state: PreprocessedState, params) -> jax.Array:
        return self.family.is_truncated(state.env_state, params)

    def discount(self, state: PreprocessedState, params) -> jax.Array:
        return self.family.discount(state.env_state, params)

    @property
    def name(self) -> str:
        return f"Preprocessed({self.family.name})"

    @property
    def num_actions(self) -> int:
        return self.family.num_actions

    def action_space(self, params=None):
        return self.family.action_space(params)

    def observation_space(self, params=None):
        space = self.family.observation_space(params)
        cfg = self.config
        if not isinstance(space, spaces.Box):
            return space
        if cfg.obs_polynomial_degree > 1:
            shape = space.shape[:-1] + (space.shape[-1] * cfg.obs_polynomial_degree,)
            return spaces.Box(-jnp.inf, jnp.inf, shape, jnp.float32)
        low = space.low if cfg.obs_low is None else jnp.maximum(space.low, cfg.obs_low)
        high = space.high if cfg.obs_high is None else jnp.minimum(space.high, cfg.obs_high)
        return spaces.Box(low, high, space.shape, space.dtype)
