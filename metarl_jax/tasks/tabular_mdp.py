"""Random tabular MDPs (Duan et al. 2016, "RL^2", section 4.2) and their exact solvers.

A task is a finite MDP with ``S`` states and ``A`` actions:

* transitions ``P[s, a, :] ~ Dirichlet(1, ..., 1)`` (uniform on the simplex),
  shape ``[S, A, S]``;
* mean rewards ``R[s, a] ~ Normal(1, 1)``, shape ``[S, A]``;
* initial state distribution ``mu`` uniform, shape ``[S]``.

The observed reward is ``R[s, a] + sigma * eps`` with ``eps ~ N(0, 1)``; its
expectation is ``R[s, a]``, so every solver below works with ``R`` only. The
observation is the one-hot encoding of the current state (float32, ``[S]``).
An episode lasts ``horizon`` steps and never terminates naturally.

Solvers (pure, jittable, vmappable over a task axis; a single task inside):

* :func:`finite_horizon_value_iteration` -- backward induction,
  ``Q_t = R + P V_{t+1}``, ``V_t = max_a Q_t``, ``V_H = 0``; the optimal
  expected return over ``H`` steps is ``mu . V_0``.
* :func:`policy_evaluation` -- the exact expected return of a (stationary or
  time-dependent) stochastic policy, differentiable in the policy.
* :func:`discounted_q_value_iteration` -- the fixed point of the discounted
  Bellman optimality operator ``Q = R + gamma P max_a Q``.
* :func:`discounted_policy_q` -- ``Q^pi`` of a stationary policy by one linear
  solve.

Functions that take a horizon or iteration count need it as a static Python
int (it sets a ``lax.scan`` / ``lax.fori_loop`` length).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax.tasks.base import TaskFamily
from metarl_jax.validation import check_int, check_real


@struct.dataclass
class TabularMDPParams(environment.EnvParams):
    """One tabular MDP: ``P [S, A, S]``, rewards ``R [S, A]``, start distribution ``mu [S]``."""

    transitions: jax.Array = struct.field(
        default_factory=lambda: jnp.full((1, 1, 1), 1.0, jnp.float32)
    )  # [S, A, S], rows sum to 1
    rewards: jax.Array = struct.field(
        default_factory=lambda: jnp.zeros((1, 1), jnp.float32)
    )  # [S, A]
    init_dist: jax.Array = struct.field(default_factory=lambda: jnp.ones((1,), jnp.float32))  # [S]
    max_steps_in_episode: int = 10


@struct.dataclass
class TabularState(environment.EnvState):
    """Index of the current state and the step counter."""

    index: jax.Array  # int32 scalar in [0, S)
    time: int


def _check_params(params: TabularMDPParams) -> tuple[int, int]:
    """Assert the shapes of one (unbatched) task; return ``(S, A)``."""
    chex.assert_rank(params.transitions, 3)
    num_states, num_actions = params.transitions.shape[:2]
    chex.assert_shape(params.transitions, (num_states, num_actions, num_states))
    chex.assert_shape(params.rewards, (num_states, num_actions))
    chex.assert_shape(params.init_dist, (num_states,))
    return num_states, num_actions


def _check_gamma(gamma: Any) -> None:
    """A number ``gamma`` must lie in ``[0, 1)``; an array (a traced discount too) is not checked."""
    if not isinstance(gamma, (jax.Array, np.ndarray)):
        check_real("gamma", gamma, minimum=0.0, maximum=1.0, max_open=True)


def finite_horizon_value_iteration(
    params: TabularMDPParams, horizon: int
) -> tuple[jax.Array, jax.Array]:
    """Optimal finite-horizon values by backward induction.

    ``V_H(s) = 0`` and for ``t = H-1, ..., 0``:

        Q_t(s, a) = R(s, a) + sum_s' P(s' | s, a) V_{t+1}(s'),
        V_t(s)    = max_a Q_t(s, a).

    ``V_t(s)`` is the optimal expected return of the remaining ``H - t`` steps
    from ``s``; the optimal return of an episode is ``mu . V_0``.

    Args:
      params: one task.
      horizon: ``H >= 1`` (static).

    Returns:
      ``(q, v)`` with ``q`` of shape ``[H, S, A]`` and ``v`` of shape ``[H+1, S]``.
    """
    check_int("horizon", horizon, minimum=1)
    num_states, _ = _check_params(params)

    def backup(v_next, _):
        q = params.rewards + params.transitions @ v_next  # [S, A]
        v = jnp.max(q, axis=-1)
        return v, (q, v)

    v_end = jnp.zeros((num_states,), params.rewards.dtype)
    _, (q, v) = jax.lax.scan(backup, v_end, None, length=horizon, reverse=True)
    return q, jnp.concatenate([v, v_end[None]], axis=0)


def optimal_return(params: TabularMDPParams, horizon: int) -> jax.Array:
    """Optimal expected undiscounted return over ``horizon`` steps: ``mu . V_0`` (scalar)."""
    _, v = finite_horizon_value_iteration(params, horizon)
    return params.init_dist @ v[0]


def policy_evaluation(params: TabularMDPParams, policy_probs: jax.Array, horizon: int) -> jax.Array:
    """Exact expected undiscounted return of a stochastic policy over ``horizon`` steps.

    With ``pi_t(a | s)`` given as ``policy_probs`` of shape ``[S, A]``
    (stationary, used at every step) or ``[H, S, A]`` (time-dependent):

        V_H = 0,
        V_t(s) = sum_a pi_t(a | s) (R(s, a) + sum_s' P(s' | s, a) V_{t+1}(s')),
        J(pi) = mu . V_0 .

    ``J`` is a polynomial in the probabilities and differentiable in them (this
    is the exact oracle for policy-gradient tests).

    Returns:
      the scalar ``J(pi)``.
    """
    check_int("horizon", horizon, minimum=1)
    num_states, num_actions = _check_params(params)
    if jnp.ndim(policy_probs) == 2:
        chex.assert_shape(policy_probs, (num_states, num_actions))
        policy_probs = jnp.broadcast_to(policy_probs, (horizon, num_states, num_actions))
    chex.assert_shape(policy_probs, (horizon, num_states, num_actions))

    def backup(v_next, pi_t):
        q = params.rewards + params.transitions @ v_next  # [S, A]
        return jnp.sum(pi_t * q, axis=-1), None

    v_end = jnp.zeros((num_states,), jnp.result_type(params.rewards, policy_probs))
    v0, _ = jax.lax.scan(backup, v_end, policy_probs, reverse=True)
    return params.init_dist @ v0


def discounted_q_value_iteration(
    params: TabularMDPParams, gamma: float, num_iterations: int
) -> jax.Array:
    """Discounted optimal action values by value iteration from ``Q = 0``.

    Iterates the Bellman optimality operator

        (T Q)(s, a) = R(s, a) + gamma sum_s' P(s' | s, a) max_a' Q(s', a'),

    a ``gamma``-contraction in the sup norm, so after ``n`` iterations
    ``||Q_n - Q*||_inf <= gamma^n ||R||_inf / (1 - gamma)``.

    Args:
      params: one task.
      gamma: discount in ``[0, 1)``.
      num_iterations: number of applications of ``T`` (static).

    Returns:
      ``Q`` of shape ``[S, A]``.
    """
    _check_gamma(gamma)
    check_int("num_iterations", num_iterations, minimum=0)
    _check_params(params)

    def bellman(_, q):
        return params.rewards + gamma * (params.transitions @ jnp.max(q, axis=-1))

    return jax.lax.fori_loop(0, num_iterations, bellman, jnp.zeros_like(params.rewards))


def discounted_policy_q(
    params: TabularMDPParams, policy_probs: jax.Array, gamma: float
) -> jax.Array:
    """Discounted action values ``Q^pi`` of a stationary policy by one linear solve.

    With ``P_pi(s, s') = sum_a pi(a | s) P(s' | s, a)`` and
    ``r_pi(s) = sum_a pi(a | s) R(s, a)``:

        V^pi = (I - gamma P_pi)^{-1} r_pi,
        Q^pi(s, a) = R(s, a) + gamma sum_s' P(s' | s, a) V^pi(s').

    Args:
      params: one task.
      policy_probs: ``pi``, shape ``[S, A]``.
      gamma: discount in ``[0, 1)``.

    Returns:
      ``Q^pi`` of shape ``[S, A]``.
    """
    _check_gamma(gamma)
    num_states, num_actions = _check_params(params)
    chex.assert_shape(policy_probs, (num_states, num_actions))
    p_pi = jnp.einsum("sa,sat->st", policy_probs, params.transitions)
    r_pi = jnp.sum(policy_probs * params.rewards, axis=-1)
    v = jnp.linalg.solve(jnp.eye(num_states, dtype=p_pi.dtype) - gamma * p_pi, r_pi)
    return params.rewards + gamma * (params.transitions @ v)


def greedy_policy(q: jax.Array) -> jax.Array:
    """Greedy policy as probabilities, ``one_hot(argmax_a q[..., a])``; same shape as ``q``."""
    return jax.nn.one_hot(jnp.argmax(q, axis=-1), q.shape[-1], dtype=q.dtype)


class TabularMDP(TaskFamily):
    """Random tabular MDPs with Dirichlet transitions and Gaussian mean rewards (RL^2).

    Headroom (10 states, 5 actions, ``H=10``, 100 held-out tasks): finite-horizon value iteration
    gets 22.07, the best single (multi-task) policy about 9.9 (``docs/benchmarks.md``).
    """

    has_optimum = True

    def __init__(
        self,
        num_states: int = 10,
        num_actions: int = 5,
        horizon: int = 10,
        reward_noise_std: float = 1.0,
    ):
        super().__init__()
        self.num_states = check_int("num_states", num_states, minimum=1)
        self._num_actions = check_int("num_actions", num_actions, minimum=1)
        self.horizon = check_int("horizon", horizon, minimum=1)
        self.reward_noise_std = check_real("reward_noise_std", reward_noise_std, minimum=0.0)

    # Equal configs compare and hash equal, so jit caches keyed on the family are shared.
    def _config(self) -> tuple:
        return (type(self), self.num_states, self._num_actions, self.horizon, self.reward_noise_std)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TabularMDP) and self._config() == other._config()

    def __hash__(self) -> int:
        return hash(self._config())

    @property
    def default_params(self) -> TabularMDPParams:
        """Uniform transitions, unit mean rewards (the prior mean), uniform start."""
        s, a = self.num_states, self._num_actions
        return TabularMDPParams(
            transitions=jnp.full((s, a, s), 1.0 / s, jnp.float32),
            rewards=jnp.ones((s, a), jnp.float32),
            init_dist=jnp.full((s,), 1.0 / s, jnp.float32),
            max_steps_in_episode=self.horizon,
        )

    def sample_params(self, key: jax.Array) -> TabularMDPParams:
        """``P[s, a] ~ Dirichlet(1)``, ``R[s, a] ~ N(1, 1)``, ``mu`` uniform.

        ``Dirichlet(1, ..., 1)`` is drawn as normalised i.i.d. ``Exp(1)`` draws,
        ``P[s, a, s'] = E[s, a, s'] / sum_s'' E[s, a, s'']`` -- the same
        distribution as ``jax.random.dirichlet`` with unit concentrations, without
        its gamma rejection sampler (which is several times slower to compile).
        """
        s, a = self.num_states, self._num_actions
        key_p, key_r = jax.random.split(key)
        e = jax.random.exponential(key_p, (s, a, s), jnp.float32)
        transitions = e / jnp.sum(e, axis=-1, keepdims=True)
        rewards = 1.0 + jax.random.normal(key_r, (s, a), jnp.float32)
        return TabularMDPParams(
            transitions=transitions,
            rewards=rewards,
            init_dist=jnp.full((s,), 1.0 / s, jnp.float32),
            max_steps_in_episode=self.horizon,
        )

    def optimal_return(self, params: TabularMDPParams, horizon: int | None = None) -> jax.Array:
        """``mu . V_0`` from :func:`finite_horizon_value_iteration`."""
        return optimal_return(params, self.horizon if horizon is None else horizon)

    def step_env(
        self, key: jax.Array, state: TabularState, action: jax.Array, params: TabularMDPParams
    ) -> tuple[jax.Array, TabularState, jax.Array, jax.Array, dict[str, Any]]:
        """``s' ~ P(. | s, a)``; reward ``R(s, a) + sigma * N(0, 1)`` (float32)."""
        key_next, key_noise = jax.random.split(key)
        next_index = jax.random.choice(
            key_next, self.num_states, p=params.transitions[state.index, action]
        ).astype(jnp.int32)
        noise = jax.random.normal(key_noise, (), jnp.float32)
        reward = (params.rewards[state.index, action] + self.reward_noise_std * noise).astype(
            jnp.float32
        )
        state = TabularState(index=next_index, time=state.time + 1)
        terminated = jnp.zeros((), dtype=bool)
        return self.get_obs(state, params), state, reward, terminated, {}

    def reset_env(self, key: jax.Array, params: TabularMDPParams) -> tuple[jax.Array, TabularState]:
        """``s_0 ~ mu``."""
        index = jax.random.choice(key, self.num_states, p=params.init_dist).astype(jnp.int32)
        state = TabularState(index=index, time=0)
        return self.get_obs(state, params), state

    def get_obs(self, state: TabularState, params=None, key=None) -> jax.Array:
        """One-hot of the current state, float32 ``[S]``."""
        return jax.nn.one_hot(state.index, self.num_states, dtype=jnp.float32)

    def is_terminated(self, state: TabularState, params: TabularMDPParams) -> jax.Array:
        return jnp.zeros((), dtype=bool)

    @property
    def name(self) -> str:
        return f"TabularMDP-S{self.num_states}-A{self._num_actions}"

    @property
    def num_actions(self) -> int:
        return self._num_actions

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self._num_actions)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(0.0, 1.0, (self.num_states,), jnp.float32)
