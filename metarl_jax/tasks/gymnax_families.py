"""Any gymnax environment becomes a task family by giving its parameters a distribution.

``RandomizedParams(env, {"field": Uniform(lo, hi), ...})`` is a
:class:`~metarl_jax.tasks.base.TaskFamily` whose task is the wrapped env's
``EnvParams`` with the named fields replaced by independent draws:

    theta = derived(replace(env.default_params, f_1 = x_1, ..., f_n = x_n)),
    x_i ~ D_i independently.

``derived`` (optional, ``params -> params``, jittable) recomputes fields that
are functions of others, e.g. CartPole's ``total_mass = masscart + masspole``.
Everything else (reset, step, termination, spaces) is the wrapped env's own,
called with the task's params, so the task stays fixed across episodes: the
wrapped env's ``reset_env`` only draws an initial state.

Observations are made float32 vectors of shape ``(obs_dim,)``: a ``Box``
observation of any shape/dtype is flattened and cast; a ``Discrete(n)``
observation (an integer index) is one-hot encoded into ``n`` floats.
Rewards are cast to float32 and termination flags to bool.

Ready-made families: :func:`cartpole_family`, :func:`acrobot_family`,
:func:`pendulum_family`, and two whose task changes the best behaviour:
:func:`cartpole_target_family` (where to balance the pole) and :func:`acrobot_target_family` (how
high to swing the tip).

Headroom: little. Physics parameters barely change the best behaviour (balance the pole, swing the
tip up), so one policy serves every task: measured, Acrobot with random link masses (PG and
actor-critic, 30-50 iterations) never improves after adapting, and CartPole with random pole
length and mass reaches the 200-step cap before and after adapting. These families test that the
machinery runs on gymnax physics; for adaptation benchmarks use a family whose task changes what
to do: :func:`cartpole_target_family`, :func:`acrobot_target_family`, bandit, tabular MDP, navigation, maze.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces
from gymnax.environments.classic_control import acrobot, cartpole, pendulum

from metarl_jax.tasks.base import TaskFamily
from metarl_jax.validation import check_bool, check_interval, check_optional_int, check_real, require

# ----------------------------------------------------------------------------- distributions


class Distribution(Protocol):
    """A scalar distribution: ``sample(key) -> float32 scalar``."""

    def sample(self, key: jax.Array) -> jax.Array: ...


def _check_bounds(cls: str, low: Any, high: Any, positive: bool) -> None:
    """``low`` and ``high`` finite numbers (``> 0`` if ``positive``) with ``low <= high``; fields named ``cls.low``..."""
    for field, value in (("low", low), ("high", high)):
        check_real(f"{cls}.{field}", value, minimum=0.0 if positive else None, min_open=positive)
    require(low <= high, f"{cls}.low", low, f"must be <= high={high!r}")


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``x ~ U[low, high]`` (float32 scalar)."""

    low: float
    high: float

    def __post_init__(self):
        _check_bounds("Uniform", self.low, self.high, positive=False)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.uniform(key, (), jnp.float32, self.low, self.high)


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """``log x ~ U[log low, log high]`` (float32 scalar); requires ``0 < low <= high``."""

    low: float
    high: float

    def __post_init__(self):
        _check_bounds("LogUniform", self.low, self.high, positive=True)

    def sample(self, key: jax.Array) -> jax.Array:
        log_x = jax.random.uniform(key, (), jnp.float32, math.log(self.low), math.log(self.high))
        return jnp.exp(log_x)


# ----------------------------------------------------------------------------- the wrapper


def _sampleable_fields(params: environment.EnvParams) -> list[str]:
    """Scalar numeric fields of an ``EnvParams`` (``max_steps_in_episode`` excluded)."""
    names = []
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if field.name == "max_steps_in_episode" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float, np.number)) or (
            isinstance(value, jax.Array | np.ndarray)
            and value.ndim == 0
            and jnp.issubdtype(value.dtype, jnp.number)
        ):
            names.append(field.name)
    return sorted(names)


def _floats_to_float32(params: environment.EnvParams) -> environment.EnvParams:
    """Python-float leaves -> float32 arrays, so sampled and fixed fields share one dtype."""
    return jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float32) if isinstance(x, float) else x, params
    )


class RandomizedParams(TaskFamily):
    """A gymnax env whose ``EnvParams`` fields are drawn from distributions, one draw per task.

    Args:
      env: any gymnax ``Environment``.
      distributions: ``{field name: distribution}``; each distribution has
        ``sample(key) -> scalar``. Fields must be scalar numeric fields of
        ``env.default_params`` other than ``max_steps_in_episode``.
      derived: optional jittable ``params -> params`` applied after sampling
        (keeps dependent fields consistent).
      name: the family's name (default ``"<env.name>-randomized"``).
      horizon: optional episode length overriding the env's
        ``max_steps_in_episode``.
    """

    def __init__(
        self,
        env: environment.Environment,
        distributions: Mapping[str, Distribution],
        derived: Callable[[Any], Any] | None = None,
        name: str | None = None,
        horizon: int | None = None,
    ):
        super().__init__()
        if not isinstance(env, environment.Environment):
            raise ValueError(f"env={env!r} is invalid: must be a gymnax Environment")
        if not isinstance(distributions, Mapping):
            raise ValueError(
                f"distributions={distributions!r} is invalid: "
                "must be a mapping field -> distribution"
            )
        allowed = _sampleable_fields(env.default_params)
        for field, dist in distributions.items():
            if field not in allowed:
                raise ValueError(
                    f"distributions[{field!r}] is invalid: {field!r} is not a sampleable "
                    f"field of {type(env).__name__} params; allowed fields: {allowed}"
                )
            if not callable(getattr(dist, "sample", None)):
                raise ValueError(
                    f"distributions[{field!r}]={dist!r} is invalid: must have sample(key)"
                )
        if derived is not None and not callable(derived):
            raise ValueError(f"derived={derived!r} is invalid: must be a function params -> params")
        self.horizon = check_optional_int("horizon", horizon, minimum=1)
        self.env = env
        self.distributions = dict(sorted(distributions.items()))
        self.derived = derived
        self._name = name

    # --- the task distribution

    @property
    def default_params(self):
        """The wrapped env's defaults (``horizon`` applied, through ``derived``, floats as float32).

        Same structure and leaf dtypes as a sampled task, so the two mix in ``vmap``/``select``.
        """
        params = self.env.default_params
        if self.horizon is not None:
            params = params.replace(max_steps_in_episode=self.horizon)
        if self.derived is not None:
            params = self.derived(params)
        return _floats_to_float32(params)

    def sample_params(self, key: jax.Array):
        """Defaults with every named field replaced by an independent draw, then ``derived``."""
        params = self.env.default_params
        if self.horizon is not None:
            params = params.replace(max_steps_in_episode=self.horizon)
        if self.distributions:
            keys = jax.random.split(key, len(self.distributions))
            draws = {
                field: dist.sample(k)
                for (field, dist), k in zip(self.distributions.items(), keys, strict=True)
            }
            params = params.replace(**draws)
        if self.derived is not None:
            params = self.derived(params)
        return _floats_to_float32(params)

    # --- observation encoding

    def _to_vector(self, obs: jax.Array, params) -> jax.Array:
        """Box obs -> flat float32; Discrete(n) obs -> one-hot float32 ``[n]``."""
        space = self.env.observation_space(params)
        if isinstance(space, spaces.Discrete):
            return jax.nn.one_hot(obs, space.n, dtype=jnp.float32).reshape(-1)
        return jnp.reshape(obs, (-1,)).astype(jnp.float32)

    # --- delegation to the wrapped env

    def reset_env(self, key: jax.Array, params):
        obs, state = self.env.reset_env(key, params)
        return self._to_vector(obs, params), state

    def step_env(self, key: jax.Array, state, action, params):
        obs, state, reward, terminated, info = self.env.step_env(key, state, action, params)
        reward = jnp.asarray(reward, jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        return self._to_vector(obs, params), state, reward, terminated, info

    def observe(self, key, state, action, params):
        return self._to_vector(self.env.observe(key, state, action, params), params)

    def get_obs(self, state, params=None, key=None):
        params = self.default_params if params is None else params
        return self._to_vector(self.env.observe(key, state, None, params), params)

    def is_terminated(self, state, params):
        return self.env.is_terminated(state, params)

    def is_truncated(self, state, params):
        return self.env.is_truncated(state, params)

    def discount(self, state, params):
        return self.env.discount(state, params)

    @property
    def num_actions(self) -> int:
        return self.env.num_actions

    def action_space(self, params=None):
        return self.env.action_space(self.default_params if params is None else params)

    def observation_space(self, params=None) -> spaces.Box:
        """The wrapped space, flattened (Box) or one-hot (Discrete): float32 ``Box((obs_dim,))``."""
        params = self.default_params if params is None else params
        space = self.env.observation_space(params)
        if isinstance(space, spaces.Discrete):
            return spaces.Box(0.0, 1.0, (space.n,), jnp.float32)
        if isinstance(space, spaces.Box):
            size = int(np.prod(space.shape))
            low = jnp.broadcast_to(jnp.asarray(space.low, jnp.float32), space.shape).reshape(size)
            high = jnp.broadcast_to(jnp.asarray(space.high, jnp.float32), space.shape).reshape(size)
            return spaces.Box(low, high, (size,), jnp.float32)
        raise ValueError(
            f"{type(self.env).__name__} has a {type(space).__name__} observation space; "
            "only Box and Discrete can be made flat vectors"
        )

    def state_space(self, params):
        return self.env.state_space(params)

    @property
    def supports_transition_gradients(self) -> bool:
        return self.env.supports_transition_gradients

    @property
    def transition_gradients_enabled(self) -> bool:
        return self.env.transition_gradients_enabled

    def with_transition_gradients(self) -> RandomizedParams:
        """A copy whose wrapped env keeps transition gradients (if it supports them)."""
        configured = copy.copy(self)
        configured.env = self.env.with_transition_gradients()
        return configured

    @property
    def name(self) -> str:
        return self._name if self._name is not None else f"{self.env.name}-randomized"


# ----------------------------------------------------------------------------- ready-made families


def cartpole_derived(params: cartpole.EnvParams) -> cartpole.EnvParams:
    """CartPole's dependent fields.

    ``total_mass = masscart + masspole`` and ``polemass_length = masspole * length``.
    """
    return params.replace(
        total_mass=params.masscart + params.masspole,
        polemass_length=params.masspole * params.length,
    )


def cartpole_family(horizon: int | None = None) -> RandomizedParams:
    """CartPole-v1 with pole ``length ~ U[0.25, 1.0]`` and ``masspole ~ U[0.05, 0.5]``.

    gymnax's ``length`` is the half-length of the pole (0.5 by default), as in gym.
    """
    return RandomizedParams(
        cartpole.CartPole(),
        {"length": Uniform(0.25, 1.0), "masspole": Uniform(0.05, 0.5)},
        derived=cartpole_derived,
        name="CartPole-v1-randomized",
        horizon=horizon,
    )


def acrobot_family(horizon: int | None = None) -> RandomizedParams:
    """Acrobot-v1 with ``link_mass_1, link_mass_2 ~ U[0.5, 1.5]``."""
    return RandomizedParams(
        acrobot.Acrobot(),
        {"link_mass_1": Uniform(0.5, 1.5), "link_mass_2": Uniform(0.5, 1.5)},
        name="Acrobot-v1-randomized",
        horizon=horizon,
    )


def pendulum_family(horizon: int | None = None) -> RandomizedParams:
    """Pendulum-v1 with ``m ~ U[0.5, 1.5]``, ``l ~ U[0.5, 1.5]`` and gravity ``g ~ U[8, 12]``."""
    return RandomizedParams(
        pendulum.Pendulum(),
        {"m": Uniform(0.5, 1.5), "l": Uniform(0.5, 1.5), "g": Uniform(8.0, 12.0)},
        name="Pendulum-v1-randomized",
        horizon=horizon,
    )


# ----------------------------------------------------------------------------- CartPole with a target


@struct.dataclass
class CartPoleTargetParams(cartpole.EnvParams):
    """CartPole's parameters plus the task: the cart position ``target_x`` to balance the pole at.

    ``target_width`` (``w``) sets how sharply the reward falls off away from the target.
    """

    target_x: float = 0.0
    target_width: float = 0.25


class TargetCartPole(cartpole.CartPole):
    """gymnax CartPole-v1 whose reward asks for the pole balanced at ``params.target_x``.

    Dynamics, observations (``[x, x_dot, theta, theta_dot]``: the target is *not* observed) and
    termination are gymnax's, unchanged. The reward of the transition ``s_t -> s_{t+1}`` is
    gymnax's (1 while the episode had not terminated) times a Gaussian bump around the target:

        r_t = (1 - done_t) * exp(-(x_{t+1} - x*)^2 / (2 w^2)).
    """

    @property
    def default_params(self) -> CartPoleTargetParams:
        return CartPoleTargetParams()

    def step_env(self, key, state, action, params):
        obs, next_state, reward, done, info = super().step_env(key, state, action, params)
        closeness = jnp.exp(-0.5 * jnp.square((next_state.x - params.target_x) / params.target_width))
        return obs, next_state, reward * closeness, done, info

    @property
    def name(self) -> str:
        return "CartPole-v1-target"


def cartpole_target_family(horizon: int | None = None, target_range: float = 1.0,
                           physics: bool = False) -> RandomizedParams:
    """CartPole where a task is the cart position to balance at: ``target_x ~ U[-r, r]``, ``r = 1.0``.

    ``physics=True`` also draws the pole ``length ~ U[0.25, 1.0]`` and ``masspole ~ U[0.05, 0.5]``
    (:func:`cartpole_family`'s distribution). The reward is :class:`TargetCartPole`'s, at most 1
    per step.

    Headroom. A policy that balances at the target gets close to 1 per step once there (about
    ``H`` minus the travel, which takes well under a second, 50 steps, for ``|x*| <= 1``); a single
    policy cannot know where the target is, and one that balances at the centre gets
    ``E[exp(-x*^2 / 2w^2)] = w sqrt(2 pi) erf(r / (w sqrt 2)) / (2 r) = 0.31`` per step
    (``w = 0.25``, ``r = 1``): about two thirds of the return is there to adapt for.
    """
    # Inside the track: |x| < x_threshold = 2.4.
    check_real("target_range", target_range, minimum=0.0, maximum=cartpole.EnvParams().x_threshold,
               min_open=True, max_open=True)
    check_bool("physics", physics)
    distributions = {"target_x": Uniform(-float(target_range), float(target_range))}
    if physics:
        distributions.update({"length": Uniform(0.25, 1.0), "masspole": Uniform(0.05, 0.5)})
    return RandomizedParams(
        TargetCartPole(),
        distributions,
        derived=cartpole_derived,
        name="CartPole-v1-target" + ("-randomized" if physics else ""),
        horizon=horizon,
    )


# ----------------------------------------------------------------------------- Acrobot with a target height


@struct.dataclass
class AcrobotTargetParams(acrobot.EnvParams):
    """Acrobot's parameters plus the task: the tip height ``target_height`` to swing the tip to.

    The tip height is ``h = -cos(theta_1) - cos(theta_1 + theta_2)`` in ``[-2, 2]`` (link lengths
    1): ``-2`` hanging at rest, ``2`` upright. ``target_width`` (``w``) sets how sharply the reward
    falls off away from the target.
    """

    target_height: float = 0.0
    target_width: float = 0.5


def acrobot_tip_height(state: acrobot.EnvState, params: acrobot.EnvParams) -> jax.Array:
    """``h = -l_1 cos(theta_1) - l_2 cos(theta_1 + theta_2)``: the tip's height above the pivot."""
    return (-params.link_length_1 * jnp.cos(state.joint_angle1)
            - params.link_length_2 * jnp.cos(state.joint_angle1 + state.joint_angle2))


class TargetAcrobot(acrobot.Acrobot):
    """gymnax Acrobot-v1 whose reward asks for the tip at the height ``params.target_height``.

    Dynamics and observations (``[cos th1, sin th1, cos th2, sin th2, dth1, dth2]``: the target is
    *not* observed) are gymnax's, unchanged. Episodes never terminate early (reaching the top is
    not the goal here); they end at the horizon. The reward of ``s_t -> s_{t+1}`` is a Gaussian
    bump around the target height:

        r_t = exp(-(h(s_{t+1}) - h*)^2 / (2 w^2)),   0 < r_t <= 1.
    """

    @property
    def default_params(self) -> AcrobotTargetParams:
        return AcrobotTargetParams(available_torque=jnp.array([-1.0, 0.0, +1.0]))

    def step_env(self, key, state, action, params):
        # gymnax's step asks ``self.is_terminated`` (overridden below), so ``done`` is never set early.
        obs, next_state, _, done, info = super().step_env(key, state, action, params)
        closeness = jnp.exp(-0.5 * jnp.square(
            (acrobot_tip_height(next_state, params) - params.target_height) / params.target_width))
        return obs, next_state, closeness, done, info

    def is_terminated(self, state, params) -> jax.Array:
        """Never: the episode runs to the horizon (``is_truncated``)."""
        return jnp.zeros((), dtype=bool)

    @property
    def name(self) -> str:
        return "Acrobot-v1-target"


def acrobot_target_family(horizon: int | None = None, height_range: tuple[float, float] = (-1.5, 1.5),
                          physics: bool = False) -> RandomizedParams:
    """Acrobot where a task is the tip height to hold: ``target_height ~ U[lo, hi]``, ``(-1.5, 1.5)``.

    ``physics=True`` also draws ``link_mass_1, link_mass_2 ~ U[0.5, 1.5]``
    (:func:`acrobot_family`'s distribution). The reward is :class:`TargetAcrobot`'s, at most 1 per
    step; ``horizon=None`` keeps gymnax's 500 steps (100 s at ``dt = 0.2``).

    Headroom. The tip hangs at ``h = -2``; a low target asks for small swings, a high one for
    pumping energy into large ones, and the target is not observed, so one policy cannot serve
    every task: measured figures are in ``docs/benchmarks.md`` (the ``acrobot_target`` rows).
    """
    check_interval("height_range", height_range, minimum=-2.0, maximum=2.0)  # the reachable tip heights
    check_bool("physics", physics)
    distributions = {"target_height": Uniform(float(height_range[0]), float(height_range[1]))}
    if physics:
        distributions.update({"link_mass_1": Uniform(0.5, 1.5), "link_mass_2": Uniform(0.5, 1.5)})
    return RandomizedParams(
        TargetAcrobot(),
        distributions,
        name="Acrobot-v1-target" + ("-randomized" if physics else ""),
        horizon=horizon,
    )
