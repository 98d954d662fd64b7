"""Rollouts with float64 policy parameters and float64 tasks (``jax_enable_x64``).

A family's state is a ``lax.scan`` carry in :func:`metarl_jax.rollout.rollout`, so ``step_env``
must return the state in the dtypes ``reset_env`` gave it: a float64 action or task must not
promote a float32 state, or the scan refuses the carry. x64 is switched on only inside each test
(``jax.enable_x64`` restores the previous setting on exit).

``rollout`` stores rewards in the family's reward dtype widened to at least float32, and the
mask in the same dtype; the discrete families return float32 rewards and observations by design
(their docstrings say so). These tests check that every family runs and stays finite in float64,
that the stored rewards keep the family's dtype, and that Navigation2D's float64 path (state,
observations, rewards) agrees with its float32 path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.networks import make_policy_for
from metarl_jax.rollout import rollout
from metarl_jax.tasks import FAMILY_NAMES, make_family
from metarl_jax.tasks.hard_tasks import RareBestArmBandit

EPISODES, HORIZON = 2, 6


def _cast(tree, dtype):
    """Cast every floating leaf of ``tree`` to ``dtype`` (integer / bool leaves unchanged)."""

    def cast(x):
        if isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


def _family(name):
    return RareBestArmBandit() if name == "rare_best_arm_bandit" else make_family(name)


def _obs_dim(family):
    return int(family.observation_space(family.default_params).shape[0])


def _policy(family):
    return make_policy_for(family, hidden_sizes=(16,))  # small: the test is about dtypes


@pytest.mark.parametrize("name", [*FAMILY_NAMES, "rare_best_arm_bandit"])
def test_float64_rollout_runs_and_is_finite(name):
    family = _family(name)
    policy = _policy(family)

    def setup(key):
        key_task, key_init, key_roll = jax.random.split(key, 3)
        task = _cast(family.sample_params(key_task), jnp.float64)
        params = _cast(policy.init(key_init, _obs_dim(family)), jnp.float64)
        return key_roll, params, task

    def run(key):  # jitted: one compilation per family instead of op-by-op dispatch
        key_roll, params, task = setup(key)
        return params, rollout(key_roll, family, policy, params, task, EPISODES, HORIZON)

    def one_step(key):  # only traced (eval_shape): the dtypes of a reset and of one step
        key_roll, params, task = setup(key)
        obs, state = family.reset_env(key_roll, task)
        action = policy.sample(key_roll, params, obs)
        next_obs, next_state, reward, _, _ = family.step_env(key_roll, state, action, task)
        return obs, state, next_obs, next_state, reward

    with jax.enable_x64(True):
        params, traj = jax.jit(run)(jax.random.PRNGKey(0))
        obs, state, next_obs, next_state, reward = jax.eval_shape(one_step, jax.random.PRNGKey(0))
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(params))
    assert traj.reward.shape == (EPISODES, HORIZON)
    assert jnp.issubdtype(traj.reward.dtype, jnp.floating)
    assert bool(jnp.all(jnp.isfinite(traj.reward)))
    assert bool(jnp.all(jnp.isfinite(traj.obs))) and bool(jnp.all(jnp.isfinite(traj.next_obs)))
    # step_env keeps the dtypes reset_env gave the state (it is the rollout's scan carry).
    assert next_obs.dtype == obs.dtype
    assert [x.dtype for x in jax.tree_util.tree_leaves(next_state)] == [
        x.dtype for x in jax.tree_util.tree_leaves(state)
    ]
    # The trajectory keeps the family's reward dtype (at least float32) and the mask matches it.
    assert traj.reward.dtype == jnp.promote_types(reward.dtype, jnp.float32)
    assert traj.mask.dtype == traj.reward.dtype
    if name == "navigation":  # continuous state and reward follow the task's float64 goal
        assert next_obs.dtype == jnp.float64 and reward.dtype == jnp.float64
        assert traj.reward.dtype == jnp.float64


def test_navigation_float64_matches_float32():
    """Same goals, same (near-deterministic) policy: float64 rewards equal float32 ones to ~1e-6."""
    family = make_family("navigation")
    with jax.enable_x64(False):
        policy = _policy(family)
        setup = jax.jit(lambda key_task, key_init: (
            jax.vmap(family.sample_params)(jax.random.split(key_task, 3)),
            policy.init(key_init, _obs_dim(family)),
        ))
        tasks, params = setup(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
        rng = np.random.default_rng(0)
        # Non-zero mean actions (the output layer starts at zero) and a negligible std
        # (exp(-30) ~ 1e-13), so the different float32 / float64 noise draws do not matter.
        params = jax.tree_util.tree_map(lambda x: np.asarray(x) + rng.standard_normal(x.shape).astype(np.float32), params)
        params["log_std"] = np.full(params["log_std"].shape, -30.0, np.float32)
        keys = jax.random.split(jax.random.PRNGKey(2), 3)
        run = jax.jit(jax.vmap(lambda k, t, p: rollout(k, family, policy, p, t, EPISODES, HORIZON), in_axes=(0, 0, None)))
        traj32 = run(keys, tasks, params)
        assert traj32.next_obs.dtype == jnp.float32
    with jax.enable_x64(True):
        tasks64, params64 = _cast(tasks, jnp.float64), _cast(params, jnp.float64)
        traj64 = run(keys, tasks64, params64)
        assert traj64.obs.dtype == jnp.float64 and traj64.next_obs.dtype == jnp.float64
        assert traj64.reward.dtype == jnp.float64 and traj64.mask.dtype == jnp.float64
        # The rewards step_env computed, in float64: -||position' - goal||.
        reward64 = -jnp.linalg.norm(traj64.next_obs - tasks64.goal[:, None, None, :], axis=-1)
        assert reward64.dtype == jnp.float64
        # A float64 policy on a float32 task: the float32 position is not promoted by the action.
        traj_mixed = run(keys, tasks, params64)
        assert traj_mixed.next_obs.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(reward64)))
    np.testing.assert_allclose(np.asarray(reward64), np.asarray(traj32.reward), rtol=0, atol=1e-6)
    # The stored float64 rewards are exactly the ones step_env computed (no float32 round trip).
    np.testing.assert_allclose(np.asarray(traj64.reward), np.asarray(reward64), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(np.asarray(traj64.reward), np.asarray(traj32.reward), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(traj_mixed.reward), np.asarray(traj32.reward), rtol=0, atol=1e-6)
    # The policy moved: the comparison is not between constant rewards.
    assert float(jnp.std(traj32.reward)) > 1e-2
