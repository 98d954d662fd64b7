"""Rollout semantics checked against independent answers: ``mask`` after termination, ``next_obs`` alignment.

* A tiny deterministic counter environment (defined here) and a fixed policy give every array of
  the :class:`~metarl_jax.rollout.Trajectory` by hand: observations, actions, rewards, ``done``,
  ``mask`` and ``next_obs``.
* CartPole (gymnax, randomised physics) with a uniform random policy: the episodes end at
  different steps, and ``mask`` must be the numpy replay of the ``done`` flags (1 up to and
  including the first terminating step, 0 after). Returns cannot see a mask that is never zeroed
  (CartPole pays 0 after termination), so the mask itself is checked.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.networks import CategoricalPolicy
from metarl_jax.rollout import rollout
from metarl_jax.tasks import make_family
from metarl_jax.tasks.base import sample_tasks


class CounterEnv:
    """Deterministic: state ``(pos, time)``, observation ``[pos, time]``, start at ``[0, 0]``.

    Action ``a`` in {0, 1}: ``pos' = pos + 1 + a``, ``time' = time + 1``; reward ``pos'``;
    terminated when ``pos' >= threshold`` (the task). Like every family, it keeps stepping after
    termination (the rollout does not reset): only ``mask`` says the episode is over.
    """

    def reset_env(self, key, threshold):
        del key
        state = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        return jnp.stack(state), state

    def step_env(self, key, state, action, threshold):
        del key
        pos, time = state
        pos = pos + 1.0 + action.astype(jnp.float32)
        time = time + 1.0
        return jnp.stack([pos, time]), (pos, time), pos, pos >= threshold, {}


class ParityPolicy:
    """Deterministic: action 1 at even ``time`` (observation entry 1), 0 at odd ``time``."""

    def sample(self, key, params, obs):
        del key, params
        return (jnp.mod(obs[..., 1], 2.0) == 0.0).astype(jnp.int32)


def test_counter_env_trajectory_equals_the_hand_computed_arrays():
    """Every array of a rollout of the counter env under the parity policy, written out by hand.

    Threshold 6, horizon 6, actions 1, 0, 1, 0, ... so ``pos`` goes 0 -> 2 -> 3 -> 5 -> 6 -> 8 -> 9:
    the episode terminates at step 3 (``pos' = 6``), so ``mask = 1, 1, 1, 1, 0, 0``; the env keeps
    stepping afterwards and ``done`` stays true. ``next_obs[t]`` is the observation after step
    ``t``, i.e. ``obs[t + 1]``.
    """
    traj = jax.jit(lambda k: rollout(k, CounterEnv(), ParityPolicy(), {}, jnp.float32(6.0), 2, 6))(
        jax.random.PRNGKey(0))
    pos = np.array([0, 2, 3, 5, 6, 8, 9], np.float32)  # positions before step 0..5 and after step 5
    obs = np.stack([pos, np.arange(7, dtype=np.float32)], axis=-1)  # [7, 2]
    expected = {
        "obs": obs[:6],
        "action": np.array([1, 0, 1, 0, 1, 0]),
        "reward": np.array([2, 3, 5, 6, 8, 9], np.float32),
        "done": np.array([False, False, False, True, True, True]),
        "mask": np.array([1, 1, 1, 1, 0, 0], np.float32),
        "next_obs": obs[1:],
    }
    for name, want in expected.items():
        got = np.asarray(getattr(traj, name))
        assert got.shape == (2,) + want.shape, (name, got.shape)
        for episode in range(2):
            np.testing.assert_array_equal(got[episode], want, err_msg=name)
    # Returns only count the masked steps: 2 + 3 + 5 + 6 undiscounted, and with gamma = 0.5
    # 2 + 3/2 + 5/4 + 6/8.
    np.testing.assert_allclose(np.asarray(traj.episode_returns(1.0)), [16.0, 16.0])
    np.testing.assert_allclose(np.asarray(traj.episode_returns(0.5)), [5.5, 5.5])


def test_cartpole_mask_is_zero_after_the_first_termination():
    """CartPole (horizon 50), uniform random policy, 16 episodes: ``mask`` equals the numpy replay of ``done``.

    Per episode with first terminating step ``d`` (``done[d]`` true for the first time):
    ``mask[t] = 1`` for ``t <= d`` and 0 after, so ``sum(mask) = d + 1``; an episode that never
    terminates has ``mask = 1`` everywhere. The random policy drops the pole long before step 50
    (at least half the episodes end by step 40), so a mask that is never zeroed sums to 50 and fails.
    ``next_obs[t] = obs[t + 1]`` at every step (the rollout carries the observation on after
    termination too).
    """
    family = make_family("cartpole", horizon=50)
    policy = CategoricalPolicy(num_actions=2, hidden_sizes=(4,))  # zero output layer: uniform actions
    params = policy.init(jax.random.PRNGKey(0), family.obs_dim())
    task = jax.tree.map(lambda x: x[0], sample_tasks(family, jax.random.PRNGKey(1), 1))
    traj = jax.jit(lambda k: rollout(k, family, policy, params, task, 16, 50))(jax.random.PRNGKey(2))
    done, mask = np.asarray(traj.done), np.asarray(traj.mask)
    assert done.shape == mask.shape == (16, 50)

    # Replay: alive before step t iff no earlier step terminated.
    terminated_before = np.concatenate([np.zeros((16, 1), bool), np.cumsum(done, axis=1)[:, :-1] > 0], axis=1)
    np.testing.assert_array_equal(mask, (~terminated_before).astype(np.float32))
    first_done = np.where(done.any(axis=1), done.argmax(axis=1), 49)
    np.testing.assert_array_equal(mask.sum(axis=1), first_done + 1)
    for e in range(16):  # 1 up to and including the terminating step, 0 after
        assert np.all(mask[e, : first_done[e] + 1] == 1.0) and np.all(mask[e, first_done[e] + 1:] == 0.0)
    assert np.sum(first_done < 40) >= 8, first_done  # the check is not between all-ones masks
    # CartPole pays 1 per step while the pole is up: the masked return is the episode's length.
    np.testing.assert_allclose(np.asarray(traj.episode_returns(1.0)), first_done + 1)
    np.testing.assert_array_equal(np.asarray(traj.next_obs)[:, :-1], np.asarray(traj.obs)[:, 1:])


def test_episode_returns_and_sizes_of_a_batch_of_trajectories():
    """``Trajectory.episode_returns(gamma)`` is ``sum_t gamma^t r_t mask_t`` per episode (numpy), undiscounted by
    default; on a ``[N, E, T]`` batch (a vmap over tasks) ``horizon`` and ``num_episodes`` are the last two axes."""
    family = make_family("cartpole", horizon=12)
    policy = CategoricalPolicy(num_actions=2, hidden_sizes=(4,))
    params = policy.init(jax.random.PRNGKey(0), family.obs_dim())
    tasks = sample_tasks(family, jax.random.PRNGKey(1), 3)
    traj = jax.jit(jax.vmap(lambda t, k: rollout(k, family, policy, params, t, 5, 12)))(
        tasks, jax.random.split(jax.random.PRNGKey(2), 3))
    assert (traj.horizon, traj.num_episodes) == (12, 5) and traj.reward.shape == (3, 5, 12)
    reward, mask = np.asarray(traj.reward, np.float64), np.asarray(traj.mask, np.float64)
    np.testing.assert_allclose(np.asarray(traj.episode_returns()), (reward * mask).sum(-1), rtol=1e-6)
    discounts = 0.5 ** np.arange(12)
    np.testing.assert_allclose(np.asarray(traj.episode_returns(0.5)), (reward * mask * discounts).sum(-1), rtol=1e-6)
    assert np.ptp((reward * mask).sum(-1)) > 0  # episodes of different lengths: the mask matters


def test_actions_and_environment_noise_use_the_documented_independent_keys():
    """The rollout's random streams, replayed here from its documented derivation: ``key -> (key_reset,
    key_steps)``; per step ``t``, ``split(split(key_steps, T)[t]) -> (key_action_t, key_env_t)``; the action of
    step ``t`` is ``policy.sample(key_action_t, params, obs_t)`` and episode ``e``'s environment step uses
    ``split(key_env_t, E)[e]``. A 3-armed Bernoulli bandit (arm probabilities 0.5, so every reward is a coin
    flip of the environment key) and a uniform tabular policy: actions and rewards must both be replayed
    exactly, so a rollout that drew actions and environment noise from the same key fails."""
    from metarl_jax.networks import TabularPolicy

    num_episodes, horizon = 6, 8
    family = make_family("bandit", num_arms=3, horizon=horizon)
    task = family.default_params.replace(probs=jnp.full((3,), 0.5))
    policy = TabularPolicy(1, 3)
    params = policy.init(jax.random.PRNGKey(0), family.obs_dim())
    key = jax.random.PRNGKey(11)
    traj = rollout(key, family, policy, params, task, num_episodes, horizon)
    _, key_steps = jax.random.split(key)
    step_keys = jax.vmap(jax.random.split)(jax.random.split(key_steps, horizon))
    for t in range(horizon):
        key_action, key_env = step_keys[t, 0], step_keys[t, 1]
        expected_action = policy.sample(key_action, params, traj.obs[:, t])
        np.testing.assert_array_equal(np.asarray(traj.action[:, t]), np.asarray(expected_action))
        env_keys = jax.random.split(key_env, num_episodes)
        expected_reward = jax.vmap(lambda k, a: jax.random.bernoulli(k, 0.5).astype(jnp.float32))(env_keys,
                                                                                               expected_action)
        np.testing.assert_array_equal(np.asarray(traj.reward[:, t]), np.asarray(expected_reward))
    assert len(np.unique(np.asarray(traj.action))) == 3 and 0 < float(np.asarray(traj.reward).mean()) < 1
