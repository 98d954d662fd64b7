"""The task-family contract.

A *task family* is a gymnax :class:`~gymnax.environments.environment.Environment`
whose tasks are its ``EnvParams``: ``sample_params(key) -> EnvParams`` draws one
task, and a batch of tasks is the same pytree with a leading axis, obtained with
one ``jax.vmap``. The task never changes inside ``reset_env``: every episode of
a task sees the same ``EnvParams`` (unlike gymnax's own meta environments,
which resample the task at reset into the state).

Conventions every family follows (the rollout relies on them):

* observations are float32 vectors of shape ``(obs_dim,)``;
* ``step_env(key, state, action, params)`` returns
  ``(obs, state, reward, terminated, info)`` with ``terminated`` a *natural*
  termination flag (time limits are the rollout's business);
* ``action_space(params)`` is ``gymnax.environments.spaces.Discrete`` or
  ``Box``;
* families with an exact solver set ``has_optimum = True`` and implement
  ``optimal_return(params, horizon)`` (expected undiscounted return of the
  optimal policy over one episode of ``horizon`` steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from gymnax.environments import environment

from metarl_jax.validation import check_int


class TaskFamily(environment.Environment):
    """Base class of every task family (a gymnax Environment + a task distribution)."""

    #: Whether :meth:`optimal_return` is available.
    has_optimum: bool = False

    def sample_params(self, key: jax.Array):
        """Draw one task: an ``EnvParams`` pytree."""
        raise NotImplementedError  # abstract

    def optimal_return(self, params, horizon: int) -> jax.Array:
        """Expected return of the optimal policy over ``horizon`` steps for task ``params``."""
        raise NotImplementedError  # abstract

    def obs_dim(self, params=None) -> int:
        """Length of the flat observation vector."""
        params = self.default_params if params is None else params
        return int(self.observation_space(params).shape[0])


def sample_tasks(family: TaskFamily, key: jax.Array, num_tasks: int):
    """A batch of ``num_tasks`` tasks: the ``EnvParams`` pytree with a leading task axis."""
    num_tasks = check_int("num_tasks", num_tasks, minimum=1)
    return jax.vmap(family.sample_params)(jax.random.split(key, num_tasks))


def index_tasks(tasks, index):
    """Select task(s) ``index`` from a batched ``EnvParams`` pytree."""
    return jax.tree.map(lambda x: x[index], tasks)


def num_tasks_in(tasks) -> int:
    """Size of the leading task axis of a batched ``EnvParams`` pytree."""
    leaves = [x for x in jax.tree.leaves(tasks) if jnp.ndim(x) > 0]
    if not leaves:
        raise ValueError("tasks has no batched leaves: expected a leading task axis")
    return int(leaves[0].shape[0])
