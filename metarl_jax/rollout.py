"""Rollouts: ``lax.scan`` over time, batched over episodes, ``vmap``-able over tasks.

A rollout of ``E`` episodes of ``T`` steps on one task produces a
:class:`Trajectory` whose arrays are shaped ``[E, T, ...]``. Episodes start
with ``reset_env`` and are stepped with the family's ``step_env`` (no gymnax
auto-reset): once an episode terminates, its later steps carry ``mask = 0``
and are ignored by every loss. Sampling is *not* differentiated: the policy
parameters are wrapped in ``stop_gradient`` and learners recompute
``log pi(a|s)`` from the stored observations and actions, which keeps the
estimators explicit (score-function terms are written out, not implied by
reparameterisation) and lets log-probs of the whole batch be computed in
one big matrix product instead of inside the scan.

All randomness of a rollout is drawn before the scan, in one batched call
per kind (the per-step keys, the environment keys and, for policies with a
``sample_noise`` method, the action noise): the numbers are exactly those of
splitting the key inside every step, but the loop body no longer runs
threefry (a small loop of its own on CPU) three times per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

@struct.dataclass
class Trajectory:
    """A batch of episodes of one task; every array has leading shape ``[E, T]``.

    ``obs[e, t]`` is the observation the action ``action[e, t]`` was taken in,
    ``reward[e, t]`` the reward that followed, ``done[e, t]`` whether the
    episode terminated at that step (natural termination), ``mask[e, t]``
    whether the step belongs to the episode (1 up to and including the
    terminating step), ``next_obs[e, t]`` the observation after the step and
    ``time[e, t] = t``. ``reward`` keeps the family's reward dtype widened to
    at least float32 (integer or bool rewards become float32; a family that
    computes in its task's dtype gives float64 rewards under ``jax_enable_x64``
    with float64 tasks), and ``mask`` has the same dtype.
    """

    obs: jax.Array  # [E, T, obs_dim]
    action: jax.Array  # [E, T, ...]
    reward: jax.Array  # [E, T]
    done: jax.Array  # [E, T] bool
    mask: jax.Array  # [E, T], the dtype of ``reward``
    next_obs: jax.Array  # [E, T, obs_dim]

    @property
    def num_episodes(self) -> int:
        return self.reward.shape[-2]

    @property
    def horizon(self) -> int:
        return self.reward.shape[-1]

    def episode_returns(self, gamma: float = 1.0) -> jax.Array:
        """``sum_t gamma^t r_t mask_t`` per episode: ``[..., E]``."""
        discounts = gamma ** jnp.arange(self.horizon, dtype=self.reward.dtype)
        return jnp.sum(self.reward * self.mask * discounts, axis=-1)


def rollout(key: jax.Array, env, policy, policy_params, task, num_episodes: int, horizon: int,
            unroll: int | bool = 1) -> Trajectory:
    """Sample ``num_episodes`` episodes of ``horizon`` steps of ``policy`` on one task.

    Args:
      key: PRNG key.
      env: a task family (gymnax Environment with ``reset_env`` / ``step_env``).
      policy: a policy from :mod:`metarl_jax.networks`.
      policy_params: its parameters (not differentiated through: stop_gradient).
      task: the task's ``EnvParams`` (unbatched).
      num_episodes, horizon: static sizes ``E`` and ``T``.
      unroll: ``unroll`` of the ``lax.scan`` over time (execution only: the same numbers;
        ``True`` or ``horizon`` unrolls it fully, which also lets XLA's cost analysis count
        every step).

    Returns:
      A :class:`Trajectory` with arrays ``[E, T, ...]``.
    """
    policy_params = jax.lax.stop_gradient(policy_params)
    key_reset, key_steps = jax.random.split(key)
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(
        jax.random.split(key_reset, num_episodes), task
    )
    step_env = jax.vmap(env.step_env, in_axes=(0, 0, 0, None))

    # Per step t: key_t -> (key_action, key_env); key_env -> one key per episode.
    # Drawn here for all t at once (vmap of the same calls gives the same numbers).
    step_keys = jax.vmap(jax.random.split)(jax.random.split(key_steps, horizon))  # [T, 2, ...]
    key_action, key_env = step_keys[:, 0], step_keys[:, 1]
    env_keys = jax.vmap(lambda k: jax.random.split(k, num_episodes))(key_env)
    if hasattr(policy, "sample_noise"):  # action noise up front: sample = f(params, obs, noise)
        action_rng = jax.vmap(lambda k: policy.sample_noise(k, policy_params, obs))(key_action)
        sample = lambda rng, o: policy.sample_with_noise(policy_params, o, rng)
    else:
        action_rng = key_action
        sample = lambda rng, o: policy.sample(rng, policy_params, o)

    def step(carry, xs):
        obs, state, alive = carry
        rng_t, env_keys_t = xs
        action = sample(rng_t, obs)
        next_obs, next_state, reward, terminated, _ = step_env(env_keys_t, state, action, task)
        terminated = jnp.asarray(terminated, bool)
        reward = jnp.asarray(reward)
        # At least float32 (integer / bool rewards become float32), never narrower than the family's.
        reward = reward.astype(jnp.promote_types(reward.dtype, jnp.float32))
        transition = (obs, action, reward, terminated, alive, next_obs)
        return (next_obs, next_state, alive & ~terminated), transition

    alive0 = jnp.ones((num_episodes,), bool)
    _, (obs_t, act_t, rew_t, done_t, alive_t, next_obs_t) = jax.lax.scan(
        step, (obs, state, alive0), (action_rng, env_keys), unroll=unroll
    )
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # [T, E, ...] -> [E, T, ...]
    return Trajectory(
        obs=swap(obs_t),
        action=swap(act_t),
        reward=swap(rew_t),
        done=swap(done_t),
        mask=swap(alive_t).astype(rew_t.dtype),
        next_obs=swap(next_obs_t),
    )
