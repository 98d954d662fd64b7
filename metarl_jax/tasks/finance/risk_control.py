r"""Financial risk control on real market data: a gymnax task family where a task is a window.

A task (:class:`RiskControlParams`) is a window of ``H = horizon`` trading days of one asset,
``start .. start + H - 1``, with a risk-aversion level ``lambda``, a transaction cost ``c`` per unit
of position traded and a daily loss limit ``L``. On day ``t`` of the window (``d = start + t``) the
agent observes the asset's features at the close of day ``d``, its current position ``p_{t-1}`` and
the elapsed fraction ``t / H`` of the window, and sets a position ``p_t \in [-1, 1]`` (the action,
clipped; ``-1`` is fully short, ``1`` fully invested) held until the close of day ``d + 1``. With
``R_t`` the asset's log-return from day ``d`` to ``d + 1`` (``Features.next_returns[d]``) and
``p_{-1} = 0``,

    reward_t = p_t R_t - c |p_t - p_{t-1}| - lambda (p_t R_t)^2 - k max(0, -p_t R_t - L)

(``k = k_tail`` a family constant). The task's ``lambda``, ``c``, ``L`` and asset are not observed:
they show in the rewards only, so a policy has to adapt to them.

Why this risk penalty. The P&L of day ``t`` is ``X_t = p_t R_t`` and the loss ``l_t = -X_t``.

* ``-lambda X_t^2`` is mean-variance utility: summed over the window,
  ``sum_t X_t - lambda sum_t X_t^2 = H (mean(X) - lambda (var(X) + mean(X)^2))``, Markowitz's
  trade-off of the mean against the second moment of the daily P&L. It prices all fluctuations,
  up and down alike.
* ``-k max(0, l_t - L)`` is the Rockafellar-Uryasev tail term. For any level ``zeta``,
  ``CVaR_alpha(l) = min_zeta zeta + E[(l - zeta)^+] / (1 - alpha)`` (Rockafellar and Uryasev 2000),
  so with ``zeta = L`` and ``k = 1 / (1 - alpha)``,

      L + k E[(l - L)^+] >= CVaR_alpha(l),   with equality when L = VaR_alpha(l).

  With ``E`` the mean over the window's days (the sum of the rewards is ``H`` times it), keeping
  ``k E[(l - L)^+]`` small therefore keeps the expected loss in the worst ``1 - alpha`` of the
  days near or below the limit ``L``: a CVaR control of the losses beyond the limit, the quantity a
  risk desk bounds. The default ``k = 10`` is ``alpha = 0.9``. A *breach* is a day with ``l_t > L``.

Both terms are per day, so the reward needs no state beyond the position; a drawdown penalty
would depend on the whole path. Both penalties are convex in the position (and ``c|p|`` too), so
for a constant position the window's total reward is concave and piecewise quadratic, which makes
the hindsight optimum exact (:func:`hindsight_best_fixed_position`).

No look-ahead. The observation at step ``t`` reads the features of day ``start + t`` (functions of
prices up to that day, :mod:`.data`); ``R_t`` (the price of day ``start + t + 1``) enters the
reward of step ``t`` only. A family built on ``period = (lo, hi)`` samples windows with
``start >= lo`` and ``start + H <= hi - 1``: every price a task reads, for an observation (the
last, after step ``H - 1``, is day ``start + H``) or a reward, is on a day ``< hi``. Families on
``(lo, s)`` and ``(s, hi)`` therefore form a walk-forward split (the later one's features use
earlier prices, which is the past).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax.tasks.base import TaskFamily
from metarl_jax.tasks.finance.data import (
    Features,
    clean_prices,
    fit_normalizer,
    load_arch,
    market_features,
    normalize_features,
)
from metarl_jax.validation import check_int, check_interval, check_real, is_real, require


@struct.dataclass
class RiskControlState(environment.EnvState):
    """The position held into the next day and running totals of the window so far.

    ``position`` is ``p_{t-1}`` (float32 scalar), ``pnl`` the sum of ``p_s R_s``, ``cost`` the sum of
    transaction costs (float32 scalars), ``breaches`` the number of days with loss ``> L`` (int32),
    ``time`` the step ``t``.
    """

    position: jax.Array
    pnl: jax.Array
    cost: jax.Array
    breaches: jax.Array
    time: int


@struct.dataclass
class RiskControlParams(environment.EnvParams):
    """One task: window start day, asset index, risk aversion, cost per unit traded, daily loss limit."""

    start: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))
    asset: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.int32))
    risk_aversion: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    cost: jax.Array = struct.field(default_factory=lambda: jnp.zeros((), jnp.float32))
    risk_limit: jax.Array = struct.field(default_factory=lambda: jnp.full((), 0.02, jnp.float32))
    max_steps_in_episode: int = 60


def _sampling_range(field: str, value: Any, minimum: float) -> tuple[float, float]:
    """``(v, v)`` for a number ``v`` (a fixed value), else :func:`check_interval` of the pair."""
    if is_real(value):
        v = check_real(field, value, minimum=minimum)
        return v, v
    return check_interval(field, value, minimum=minimum)


class RiskControl(TaskFamily):
    """Daily position sizing on one asset's window under costs, mean-variance and CVaR-style penalties.

    Args:
      features: :class:`~metarl_jax.tasks.finance.data.Features` (normalised, usually): ``values``
        are observed, ``next_returns`` pay, ``volatility`` serves volatility targeting.
      horizon: ``H``, days per window (one episode).
      period: ``(lo, hi)`` day indices; every price a task reads is on a day ``< hi`` and windows
        start on or after ``max(lo, features.first_valid)``. Default: all days.
      risk_aversion, cost, risk_limit: ``(lo, hi)`` ranges sampled uniformly per task, or one
        number (fixed).
      k_tail: slope of the tail penalty beyond the loss limit (``1 / (1 - alpha)``).
      assets: names or indices of the assets a task may trade (uniformly); default all.

    Observation (float32 ``[F + 2]``): the ``F`` features of (asset, day ``start + t``), the position
    ``p_{t-1}``, and ``t / H``. ``step_env``'s ``info`` holds the day's ``position``, ``return``
    (``R_t``), ``pnl`` (``p_t R_t``), ``cost``, ``breach`` and the two penalties.
    """

    def __init__(
        self,
        features: Features,
        horizon: int = 60,
        period: tuple[int, int] | None = None,
        risk_aversion: float | tuple[float, float] = (1.0, 20.0),
        cost: float | tuple[float, float] = (1e-4, 1e-3),
        risk_limit: float | tuple[float, float] = (0.01, 0.03),
        k_tail: float = 10.0,
        assets: Sequence[str | int] | None = None,
    ):
        super().__init__()
        require(isinstance(features, Features), "features", type(features).__name__, "must be a Features instance")
        self.features = features
        self.horizon = check_int("horizon", horizon, minimum=1)
        num_days = features.num_days
        if period is None:
            period = (0, num_days)
        require(isinstance(period, (tuple, list)) and len(period) == 2, "period", period,
                "must be a pair (lo, hi) of day indices")
        lo = check_int("period[0]", period[0], minimum=0, maximum=num_days - 1)
        hi = check_int("period[1]", period[1], minimum=lo + 1, maximum=num_days)
        self.period = (lo, hi)
        self.first_start = max(lo, features.first_valid)
        self.last_start = hi - self.horizon - 1
        require(self.first_start <= self.last_start, "period", period,
                f"must hold a window: starts from max(lo, first_valid={features.first_valid}) to "
                f"hi - horizon - 1 = {self.last_start} (horizon={self.horizon})")
        self.risk_aversion = _sampling_range("risk_aversion", risk_aversion, 0.0)
        self.cost = _sampling_range("cost", cost, 0.0)
        self.risk_limit = _sampling_range("risk_limit", risk_limit, 0.0)
        self.k_tail = check_real("k_tail", k_tail, minimum=0.0)
        if assets is None:
            assets = range(len(features.assets))
        else:
            require(isinstance(assets, (tuple, list)) and len(assets) >= 1, "assets", assets,
                    "must be None or a non-empty sequence of asset names or indices")
        self.asset_ids = tuple(sorted({features.asset_index(a) for a in assets}))
        self.num_features = len(features.feature_names)
        # Constants of every compiled step (host arrays -> float32 device arrays, once).
        self._values = jnp.asarray(features.values, jnp.float32)  # [T, A, F]
        self._next_returns = jnp.asarray(features.next_returns, jnp.float32)  # [T, A]
        self._volatility = jnp.asarray(features.volatility, jnp.float32)  # [T, A]
        self._asset_ids = jnp.asarray(self.asset_ids, jnp.int32)
        self._fingerprint = features.fingerprint()

    # Equal configs on equal data compare and hash equal, so jit caches keyed on the family are shared.
    def _config(self) -> tuple:
        return (type(self), self._fingerprint, self.horizon, self.period, self.risk_aversion, self.cost,
                self.risk_limit, self.k_tail, self.asset_ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RiskControl) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    @property
    def name(self) -> str:
        return "RiskControl"

    @property
    def default_params(self) -> RiskControlParams:
        """The first window of the first allowed asset, each parameter at the middle of its range."""
        def mid(r):
            return jnp.asarray((r[0] + r[1]) / 2, jnp.float32)

        return RiskControlParams(
            start=jnp.asarray(self.first_start, jnp.int32), asset=jnp.asarray(self.asset_ids[0], jnp.int32),
            risk_aversion=mid(self.risk_aversion), cost=mid(self.cost), risk_limit=mid(self.risk_limit),
            max_steps_in_episode=self.horizon,
        )

    def sample_params(self, key: jax.Array) -> RiskControlParams:
        """``start ~ U{first_start..last_start}``, the asset uniform among ``asset_ids``, the rest uniform
        in their ranges."""
        k_start, k_asset, k_ra, k_cost, k_limit = jax.random.split(key, 5)

        def uniform(k, r):
            return jax.random.uniform(k, (), jnp.float32, r[0], r[1])

        start = jax.random.randint(k_start, (), self.first_start, self.last_start + 1, jnp.int32)
        asset = self._asset_ids[jax.random.randint(k_asset, (), 0, len(self.asset_ids), jnp.int32)]
        return RiskControlParams(
            start=start, asset=asset, risk_aversion=uniform(k_ra, self.risk_aversion),
            cost=uniform(k_cost, self.cost), risk_limit=uniform(k_limit, self.risk_limit),
            max_steps_in_episode=self.horizon,
        )

    def day(self, state: RiskControlState, params: RiskControlParams) -> jax.Array:
        """The day index ``start + t`` of step ``t``."""
        return params.start + state.time

    def volatility_at(self, state: RiskControlState, params: RiskControlParams) -> jax.Array:
        """The raw rolling volatility of the task's asset at the close of day ``start + t``."""
        return self._volatility[self.day(state, params), params.asset]

    def window_returns(self, params: RiskControlParams) -> jax.Array:
        """``[H]``: ``R_t = next_returns[start + t, asset]`` for ``t = 0..H-1``."""
        column = jnp.take(self._next_returns, params.asset, axis=1)
        return jax.lax.dynamic_slice_in_dim(column, params.start, self.horizon)

    def get_obs(self, state: RiskControlState, params: RiskControlParams, key=None) -> jax.Array:
        """``[F + 2]``: features of (asset, day ``start + t``), position ``p_{t-1}``, ``t / H`` (float32)."""
        feats = self._values[self.day(state, params), params.asset]
        extra = jnp.stack([jnp.asarray(state.position, jnp.float32),
                           jnp.asarray(state.time, jnp.float32) / self.horizon])
        return jnp.concatenate([feats, extra])

    def reset_env(self, key: jax.Array, params: RiskControlParams):
        """Start of the window, flat (position 0)."""
        del key
        zero = jnp.zeros((), jnp.float32)
        state = RiskControlState(position=zero, pnl=zero, cost=zero, breaches=jnp.zeros((), jnp.int32), time=0)
        return self.get_obs(state, params), state

    def step_env(
        self, key: jax.Array, state: RiskControlState, action: jax.Array, params: RiskControlParams
    ) -> tuple[jax.Array, RiskControlState, jax.Array, jax.Array, dict[str, Any]]:
        """Set ``p_t = clip(action, -1, 1)``; reward of the module docstring; move to day ``start + t + 1``.

        The state keeps the dtypes :meth:`reset_env` gave it (a float64 action or task does not
        promote it); the reward is computed in the task's dtype.
        """
        del key
        position = jnp.clip(jnp.reshape(action, (-1,))[0], -1.0, 1.0).astype(state.position.dtype)
        ret = self._next_returns[self.day(state, params), params.asset]
        pnl = position * ret
        cost = params.cost * jnp.abs(position - state.position)
        loss = -pnl
        variance_penalty = params.risk_aversion * jnp.square(pnl)
        tail_penalty = self.k_tail * jnp.maximum(loss - params.risk_limit, 0.0)
        reward = pnl - cost - variance_penalty - tail_penalty
        breach = loss > params.risk_limit
        state = RiskControlState(
            position=position,
            pnl=(state.pnl + pnl).astype(state.pnl.dtype),
            cost=(state.cost + cost).astype(state.cost.dtype),
            breaches=state.breaches + breach.astype(state.breaches.dtype),
            time=state.time + 1,
        )
        info = {"position": position, "return": ret, "pnl": pnl, "cost": cost, "breach": breach,
                "variance_penalty": variance_penalty, "tail_penalty": tail_penalty}
        return self.get_obs(state, params), state, reward, jnp.zeros((), dtype=bool), info

    def is_terminated(self, state: RiskControlState, params: RiskControlParams) -> jax.Array:
        return jnp.zeros((), dtype=bool)

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.num_features + 2,), jnp.float32)


# --------------------------------------------------------------------------- the hindsight optimum


def fixed_position_reward(family: RiskControl, params: RiskControlParams, position: jax.Array) -> jax.Array:
    """Total reward of the window for the constant position(s) ``position [...]`` (clipped to [-1, 1]).

    ``J(p) = p sum R - c |p| - lambda p^2 sum R^2 - k sum_t max(0, -p R_t - L)``: the one trade is
    from ``p_{-1} = 0`` to ``p`` on day 0.
    """
    p = jnp.clip(jnp.asarray(position), -1.0, 1.0)
    returns = family.window_returns(params)
    pnl = p[..., None] * returns
    tail = jnp.maximum(-pnl - params.risk_limit, 0.0)
    return (jnp.sum(pnl - params.risk_aversion * jnp.square(pnl) - family.k_tail * tail, axis=-1)
            - params.cost * jnp.abs(p))


def hindsight_best_fixed_position(family: RiskControl, params: RiskControlParams) -> tuple[jax.Array, jax.Array]:
    """``(p*, J(p*))``: the exact maximiser of :func:`fixed_position_reward` over ``p in [-1, 1]``.

    ``J`` is concave (linear, minus ``c|p|``, minus a convex quadratic, minus convex hinges), and
    quadratic between its breakpoints ``{-1, 0, 1} U {-L / R_t}``. On a piece ``[a, b]`` with
    ``s = sign`` of ``p`` and active hinges ``A = {t : -p R_t > L}`` (both fixed inside the piece),
    ``J(p) = g p - q p^2 + const`` with ``g = sum R - c s + k sum_{t in A} R_t`` and
    ``q = lambda sum R^2``, maximised on the piece at ``clip(g / (2q), a, b)`` (an endpoint if
    ``q = 0``). The global maximum of a concave function is the best of these candidates and the
    breakpoints: exact, ``O(H^2)``, jittable and vmappable over ``params``.
    """
    returns = family.window_returns(params)
    limit = params.risk_limit
    kinks = jnp.where(returns != 0, -limit / jnp.where(returns != 0, returns, 1.0), 0.0)
    points = jnp.sort(jnp.concatenate([jnp.array([-1.0, 0.0, 1.0], returns.dtype), jnp.clip(kinks, -1.0, 1.0)]))
    lo, hi = points[:-1], points[1:]
    mid = (lo + hi) / 2
    active = (-mid[:, None] * returns[None, :] - limit) > 0  # [pieces, H]
    slope = (jnp.sum(returns) - params.cost * jnp.sign(mid)
             + family.k_tail * jnp.sum(jnp.where(active, returns[None, :], 0.0), axis=-1))
    curvature = params.risk_aversion * jnp.sum(jnp.square(returns))
    stationary = jnp.where(curvature > 0, slope / (2 * jnp.where(curvature > 0, curvature, 1.0)),
                           jnp.where(slope > 0, hi, lo))
    candidates = jnp.concatenate([points, jnp.clip(stationary, lo, hi)])
    values = fixed_position_reward(family, params, candidates)
    best = jnp.argmax(values)
    return candidates[best], values[best]


# --------------------------------------------------------------------------- baselines and episodes

#: ``policy(params, state, obs, key) -> action [1]``: what :func:`run_episode` calls each day.
Policy = Callable[[RiskControlParams, RiskControlState, jax.Array, jax.Array], jax.Array]


def cash_policy(params: RiskControlParams, state: RiskControlState, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Stay flat: ``p_t = 0``."""
    return jnp.zeros((1,), jnp.float32)


def buy_and_hold_policy(params: RiskControlParams, state: RiskControlState, obs: jax.Array,
                        key: jax.Array) -> jax.Array:
    """Fully invested all window: ``p_t = 1`` (one trade, on day 0)."""
    return jnp.ones((1,), jnp.float32)


def volatility_targeting_policy(family: RiskControl, target_vol: float = 0.01) -> Policy:
    """``p_t = min(1, target_vol / sigma_t)`` (long only), ``sigma_t`` the raw rolling volatility of day ``start + t``.

    ``target_vol`` is daily (0.01 is about 16% a year). A zero volatility gives ``p_t = 1``.
    """
    target_vol = check_real("target_vol", target_vol, minimum=0.0, min_open=True)

    def policy(params, state, obs, key):
        vol = family.volatility_at(state, params)
        ratio = jnp.where(vol > 0, target_vol / jnp.where(vol > 0, vol, 1.0), 1.0)
        return jnp.minimum(ratio, 1.0).reshape((1,)).astype(jnp.float32)

    return policy


def baseline_policies(family: RiskControl, target_vol: float = 0.01) -> dict[str, Policy]:
    """``{"cash", "buy_and_hold", "volatility_targeting"}`` policies for ``family``."""
    return {"cash": cash_policy, "buy_and_hold": buy_and_hold_policy,
            "volatility_targeting": volatility_targeting_policy(family, target_vol)}


def run_episode(family: RiskControl, params: RiskControlParams, policy: Policy, key: jax.Array) -> dict[str, jax.Array]:
    """One window under ``policy``: ``{"obs" [H, F+2], "reward", "position", "return", "pnl", "cost",
    "breach", "variance_penalty", "tail_penalty"}`` (each ``[H]``), by ``lax.scan`` over the days.

    Pure and jittable; ``jax.vmap`` over ``(params, key)`` runs a batch of tasks. The log-equity of
    the window after day ``t`` is ``cumsum(pnl - cost)[t]``.
    """
    obs, state = family.reset_env(key, params)

    def step(carry, key_t):
        obs, state = carry
        key_policy, key_step = jax.random.split(key_t)
        action = policy(params, state, obs, key_policy)
        next_obs, next_state, reward, _, info = family.step_env(key_step, state, action, params)
        return (next_obs, next_state), {"obs": obs, "reward": reward, **info}

    _, record = jax.lax.scan(step, (obs, state), jax.random.split(key, family.horizon))
    return record


# --------------------------------------------------------------------------- built from the shipped data


def risk_control_family(
    assets: Sequence[str] = ("sp500", "nasdaq", "wti"),
    horizon: int = 60,
    period: tuple[int, int] | None = None,
    train_end: int | None = None,
    vol_window: int = 20,
    momentum_window: int = 50,
    statistics_assets: Sequence[str] | None = None,
    tradable: Sequence[str] | None = None,
    **kwargs,
) -> RiskControl:
    """:class:`RiskControl` on the ``arch`` series (``make_family("risk_control", ...)``).

    :func:`~metarl_jax.tasks.finance.data.load_arch` -> :func:`clean_prices` -> :func:`market_features`
    -> features normalised with statistics of the days ``< train_end`` of ``statistics_assets``
    (default: all loaded ``assets``; a cross-asset split passes the training assets). ``train_end``
    defaults to the end of ``period`` (the family's own days); a held-out family must pass the
    training period's end. ``tradable``: the assets tasks draw from (:class:`RiskControl`'s
    ``assets``; default all). ``kwargs`` go to :class:`RiskControl`. Needs the ``finance`` extra.
    """
    features = _arch_features(tuple(assets) if isinstance(assets, list) else assets, vol_window, momentum_window)
    if train_end is None:
        require(period is None or (isinstance(period, (tuple, list)) and len(period) == 2), "period", period,
                "must be a pair (lo, hi) of day indices")
        train_end = features.num_days if period is None else period[1]
    stats_assets = None if statistics_assets is None else tuple(statistics_assets)
    normalized = _normalized(features, train_end, stats_assets)
    return RiskControl(normalized, horizon=horizon, period=period, assets=tradable, **kwargs)


@functools.lru_cache(maxsize=8)
def _arch_features(assets: tuple[str, ...], vol_window: int, momentum_window: int) -> Features:
    """Raw features of the cleaned arch series (cached: the arrays are read-only)."""
    data, _ = clean_prices(load_arch(assets))
    return market_features(data, vol_window=vol_window, momentum_window=momentum_window)


@functools.lru_cache(maxsize=16)
def _normalized(features: Features, train_end: int, assets: tuple[str, ...] | None = None) -> Features:
    """``features`` normalised with the statistics of the days ``< train_end`` of ``assets`` (all: ``None``;
    cached per object)."""
    return normalize_features(features, fit_normalizer(features, train_end, assets=assets))
