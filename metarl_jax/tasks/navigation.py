"""2D point navigation (Finn et al. 2017, "Model-Agnostic Meta-Learning", section 5.3).

The agent starts at the origin; an action is a velocity, clipped to
``[-max_speed, max_speed]`` per axis; the reward after each move is minus the
Euclidean distance to the task's goal. A task is a goal drawn uniformly from
``[-goal_range, goal_range]^2``; it lives in ``EnvParams.goal`` and never
changes inside an episode or across episodes of the same task.

Exact optimum. Each axis moves independently, so the policy that moves each
coordinate toward the goal at full speed minimises every coordinate gap at
every step simultaneously, hence the distance at every step. After ``t + 1``
steps the gap on axis ``i`` is ``max(|g_i| - (t + 1) v, 0)`` and the optimal
return over ``H`` steps is

    R*(g) = - sum_{t=0}^{H-1} || max(|g| - (t + 1) v, 0) ||_2 .
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from metarl_jax.tasks.base import TaskFamily
from metarl_jax.validation import check_int, check_real


@struct.dataclass
class NavigationState(environment.EnvState):
    """Position of the point and the step counter."""

    position: jax.Array  # [2]
    time: int


@struct.dataclass
class NavigationParams(environment.EnvParams):
    """One navigation task: the goal position (plus static episode limits)."""

    goal: jax.Array = struct.field(default_factory=lambda: jnp.zeros(2))  # [2]
    max_steps_in_episode: int = 100


class Navigation2D(TaskFamily):
    """Point navigation to a per-task goal; continuous 2D actions.

    Headroom: the goal is not observed, so a single policy cannot head for it: the multi-task policy
    gets about -41 per 100-step episode on held-out goals, the exact optimum -0.56
    (``docs/benchmarks.md``, "Adaptation speed").
    """

    has_optimum = True

    def __init__(self, goal_range: float = 0.5, max_speed: float = 0.1, horizon: int = 100):
        super().__init__()
        self.goal_range = check_real("goal_range", goal_range, minimum=0.0, min_open=True)
        self.max_speed = check_real("max_speed", max_speed, minimum=0.0, min_open=True)
        self.horizon = check_int("horizon", horizon, minimum=1)

    @property
    def default_params(self) -> NavigationParams:
        return NavigationParams(goal=jnp.zeros(2), max_steps_in_episode=self.horizon)

    def sample_params(self, key: jax.Array) -> NavigationParams:
        """Goal ~ U[-goal_range, goal_range]^2."""
        goal = jax.random.uniform(key, (2,), minval=-self.goal_range, maxval=self.goal_range)
        return NavigationParams(goal=goal, max_steps_in_episode=self.horizon)

    def step_env(
        self, key: jax.Array, state: NavigationState, action: jax.Array, params: NavigationParams
    ) -> tuple[jax.Array, NavigationState, jax.Array, jax.Array, dict[str, Any]]:
        """Move by the clipped velocity; reward = -||position' - goal||.

        The position keeps its dtype (set by :meth:`reset_env`): a float64 action
        does not promote a float32 state, so the state is a fixed-dtype loop carry.
        """
        del key
        velocity = jnp.clip(action, -self.max_speed, self.max_speed)
        position = (state.position + velocity).astype(state.position.dtype)
        reward = -jnp.sqrt(jnp.sum(jnp.square(position - params.goal)))
        state = NavigationState(position=position, time=state.time + 1)
        terminated = jnp.zeros((), dtype=bool)
        return position, state, reward, terminated, {}

    def reset_env(self, key: jax.Array, params: NavigationParams):
        """Start at the origin (deterministic; the goal comes from ``params``).

        The position has the goal's floating dtype (float32 for float32 or integer
        goals, float64 for a float64 goal under ``jax_enable_x64``).
        """
        del key
        position = jnp.zeros(2, dtype=jnp.promote_types(jnp.result_type(params.goal), jnp.float32))
        return position, NavigationState(position=position, time=0)

    def get_obs(self, state: NavigationState, params=None, key=None) -> jax.Array:
        return state.position

    def is_terminated(self, state: NavigationState, params: NavigationParams) -> jax.Array:
        return jnp.zeros((), dtype=bool)

    def optimal_return(self, params: NavigationParams, horizon: int | None = None) -> jax.Array:
        """Closed-form optimal return ``R*(goal)`` (see the module docstring)."""
        horizon = self.horizon if horizon is None else int(horizon)
        steps = jnp.arange(1, horizon + 1, dtype=jnp.float32)[:, None] * self.max_speed
        gaps = jnp.maximum(jnp.abs(params.goal)[None, :] - steps, 0.0)
        return -jnp.sum(jnp.sqrt(jnp.sum(jnp.square(gaps), axis=-1)))

    @property
    def name(self) -> str:
        return "Navigation2D"

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-self.max_speed, self.max_speed, (2,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (2,), jnp.float32)
