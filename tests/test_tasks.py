"""Task families: the contract (shapes, dtypes, keys, vmap, gymnax auto-reset), task persistence
across episodes, and the exact optima checked against brute force.

Compile time dominates on CPU, so every family is exercised through one jitted
function (:func:`tasks_and_rollouts`: sample a batch of tasks, roll each out with
gymnax's auto-resetting ``env.step``, compute the optima) whose result the
generic tests share; the solver tests each jit one function.
"""

from __future__ import annotations

import itertools
from collections import deque
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment, spaces
from gymnax.environments.classic_control import cartpole
from gymnax.environments.misc.frozen_lake import FrozenLake

from metarl_jax.tasks import (
    FAMILY_NAMES,
    OPTIONAL_FAMILY_NAMES,
    SMALL_MAZE_LAYOUT,
    BanditParams,
    BernoulliBandit,
    GridMaze,
    LogUniform,
    Navigation2D,
    RandomizedParams,
    TabularMDP,
    TaskFamily,
    Uniform,
    cartpole_family,
    discounted_policy_q,
    discounted_q_value_iteration,
    finite_horizon_value_iteration,
    greedy_policy,
    index_tasks,
    make_family,
    num_tasks_in,
    policy_evaluation,
    sample_tasks,
)

HORIZON = 4
NUM_STEPS = 10  # crosses two episode boundaries (after steps 4 and 8)
NUM_TASKS = 64
SMALL_KWARGS = {
    "bandit": dict(num_arms=3, horizon=HORIZON),
    "tabular_mdp": dict(num_states=3, num_actions=2, horizon=HORIZON),
    "navigation": dict(horizon=HORIZON),
    "cartpole": dict(horizon=HORIZON),
    "cartpole_target": dict(horizon=HORIZON),
    "acrobot": dict(horizon=HORIZON),
    "acrobot_target": dict(horizon=HORIZON),
    "pendulum": dict(horizon=HORIZON),
    "maze": dict(size=3, horizon=HORIZON),
    "risk_control": dict(horizon=HORIZON),  # needs the finance extra (arch); skipped without it
}
#: Every registered family: the contract tests run on each.
CONTRACT_NAMES = FAMILY_NAMES + OPTIONAL_FAMILY_NAMES
#: Families whose first observation is the task's own (risk_control: the features of its window's first day).
TASK_DEPENDENT_RESET = ("risk_control",)
GYMNAX_WRAPPED = ("cartpole", "cartpole_target", "acrobot", "acrobot_target", "pendulum")
#: Families whose task is in the reward (output 2 of step_env), not in the dynamics.
REWARD_TASKS = ("cartpole_target", "acrobot_target")


# ----------------------------------------------------------------------------- shared helpers


class _Families(dict):
    """Families by name, each built on first use (an optional one skips the test without its extra)."""

    def __missing__(self, name: str) -> TaskFamily:
        if name == "risk_control":
            pytest.importorskip("arch")
        self[name] = family = make_family(name, **SMALL_KWARGS[name])
        return family


@pytest.fixture(scope="module")
def families() -> dict[str, TaskFamily]:
    return _Families()


def _scan_env_step(family, params, key, actions):
    """Run gymnax's auto-resetting ``env.step`` over an action sequence ``[T, ...]``."""
    key_reset, key_roll = jax.random.split(key)
    obs0, state0 = family.reset(key_reset, params)

    def step(carry, xs):
        obs, state = carry
        key_t, action = xs
        next_obs, next_state, reward, terminated, truncated, info = family.step(
            key_t, state, action, params
        )
        out = dict(
            state=state,
            action=action,
            key=key_t,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            next_obs=next_obs,
            final_obs=info["final_observation"],
            next_time=next_state.time,
        )
        return (next_obs, next_state), out

    keys = jax.random.split(key_roll, actions.shape[0])
    _, traj = jax.lax.scan(step, (obs0, state0), (keys, actions))
    return obs0, traj


action_rollout = jax.jit(_scan_env_step, static_argnums=0)


@partial(jax.jit, static_argnums=(0, 2, 3))
def tasks_and_rollouts(family, key, num_tasks, num_steps):
    """A batch of tasks, one ``env.step`` rollout per task, and the optima.

    All tasks share the rollout key (common random numbers): same reset key,
    same action sequence, so trajectories differ only through the task.
    """
    key_tasks, key_actions, key_roll = jax.random.split(key, 3)
    tasks = sample_tasks(family, key_tasks, num_tasks)

    def rollout(params):
        space = family.action_space(params)
        actions = jax.vmap(space.sample)(jax.random.split(key_actions, num_steps))
        return _scan_env_step(family, params, key_roll, actions)

    obs0, traj = jax.vmap(rollout)(tasks)
    optima = None
    if family.has_optimum:
        optima = jax.vmap(lambda p: family.optimal_return(p, HORIZON))(tasks)
    return dict(tasks=tasks, obs0=obs0, traj=traj, optima=optima)


@partial(jax.jit, static_argnums=(0, 4))
def policy_rollout(family, params, policy_probs, key, num_steps):
    """``env.step`` rollout of a tabular policy ``[H, S, A]`` (state = argmax of one-hot obs)."""
    key_reset, key_roll = jax.random.split(key)
    obs0, state0 = family.reset(key_reset, params)

    def step(carry, key_t):
        obs, state = carry
        key_a, key_s = jax.random.split(key_t)
        probs = policy_probs[state.time, jnp.argmax(obs)]
        action = jax.random.categorical(key_a, jnp.log(probs))
        next_obs, next_state, reward, _, truncated, _ = family.step(key_s, state, action, params)
        return (next_obs, next_state), (reward, truncated)

    _, (rewards, truncated) = jax.lax.scan(
        step, (obs0, state0), jax.random.split(key_roll, num_steps)
    )
    return rewards, truncated


def tree_equal(a, b) -> bool:
    def data(x):
        is_key = isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(x) if is_key else x)

    a, b = jax.tree.map(data, a), jax.tree.map(data, b)
    return all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def as_numpy64(params):
    arrays = (params.transitions, params.rewards, params.init_dist)
    return (np.asarray(x, np.float64) for x in arrays)


# ----------------------------------------------------------------------------- registry


def test_registry_builds_every_family_and_rejects_unknown_names():
    assert set(FAMILY_NAMES) == {
        "bandit", "tabular_mdp", "navigation", "cartpole", "cartpole_target", "acrobot", "acrobot_target", "pendulum",
        "maze",
    }
    for name in FAMILY_NAMES:
        family = make_family(name)
        assert isinstance(family, TaskFamily)
        assert isinstance(family.name, str) and family.name
    expected_types = {
        "bandit": BernoulliBandit, "tabular_mdp": TabularMDP, "navigation": Navigation2D,
        "cartpole": RandomizedParams, "cartpole_target": RandomizedParams, "acrobot": RandomizedParams, "pendulum": RandomizedParams,
        "acrobot_target": RandomizedParams, "maze": GridMaze,
    }
    for name, cls in expected_types.items():
        assert isinstance(make_family(name), cls), name
    assert make_family("maze", size=3, horizon=7).horizon == 7  # kwargs are passed through
    with pytest.raises(ValueError, match="bogus") as err:
        make_family("bogus")
    assert all(name in str(err.value) for name in FAMILY_NAMES)
    assert OPTIONAL_FAMILY_NAMES == ("risk_control",) and "'risk_control'" in str(err.value)


def test_equal_configs_are_equal_static_arguments():
    # jit keys on (hash, eq) of the static family: a repeated config must not recompile.
    assert make_family("bandit", num_arms=3) == make_family("bandit", num_arms=3)
    assert hash(make_family("maze", size=4)) == hash(make_family("maze", size=4))
    assert make_family("tabular_mdp", num_states=3) != make_family("tabular_mdp", num_states=4)


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_shapes_and_dtypes(families, name):
    family = families[name]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    params = index_tasks(run["tasks"], 0)
    obs_dim = family.obs_dim(params)
    space = family.observation_space(params)
    assert isinstance(space, spaces.Box) and space.shape == (obs_dim,)
    assert isinstance(family.action_space(params), (spaces.Discrete, spaces.Box))

    obs0, traj = run["obs0"], run["traj"]
    assert obs0.shape == (NUM_TASKS, obs_dim) and obs0.dtype == jnp.float32
    assert traj["next_obs"].shape == (NUM_TASKS, NUM_STEPS, obs_dim)
    assert traj["next_obs"].dtype == jnp.float32
    assert traj["reward"].shape == (NUM_TASKS, NUM_STEPS) and traj["reward"].dtype == jnp.float32
    assert traj["terminated"].shape == (NUM_TASKS, NUM_STEPS)
    assert traj["terminated"].dtype == jnp.bool_
    assert np.all(np.isfinite(np.asarray(traj["next_obs"])))
    assert np.all(np.isfinite(np.asarray(traj["reward"])))


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_sampling_and_rollouts_are_deterministic_by_key(families, name):
    family = families[name]
    a = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    b = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    c = tasks_and_rollouts(family, jax.random.key(1), NUM_TASKS, NUM_STEPS)
    assert tree_equal(a, b)
    assert not tree_equal(a["tasks"], c["tasks"])
    assert not tree_equal(a["traj"], c["traj"])
    # sample_tasks is vmapped sample_params over split keys: task i is reproducible alone.
    key_tasks = jax.random.split(jax.random.key(0), 3)[0]
    task_5 = family.sample_params(jax.random.split(key_tasks, NUM_TASKS)[5])
    leaves = zip(jax.tree.leaves(index_tasks(a["tasks"], 5)), jax.tree.leaves(task_5), strict=True)
    for x, y in leaves:
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_gymnax_step_six_tuple_auto_resets_at_the_horizon(families, name):
    family = families[name]
    traj = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)["traj"]
    steps = np.arange(1, NUM_STEPS + 1)
    # None of these families terminates naturally within HORIZON steps of a reset.
    assert not np.any(np.asarray(traj["terminated"]))
    np.testing.assert_array_equal(
        np.asarray(traj["truncated"]), np.broadcast_to(steps % HORIZON == 0, (NUM_TASKS, NUM_STEPS))
    )
    np.testing.assert_array_equal(
        np.asarray(traj["next_time"]), np.broadcast_to(steps % HORIZON, (NUM_TASKS, NUM_STEPS))
    )
    not_done = ~np.asarray(traj["truncated"])
    np.testing.assert_array_equal(
        np.asarray(traj["next_obs"])[not_done], np.asarray(traj["final_obs"])[not_done]
    )


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_a_batch_of_tasks_is_one_vmap(families, name):
    family = families[name]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    tasks = run["tasks"]
    assert num_tasks_in(tasks) == NUM_TASKS
    varying = [x for x in jax.tree.leaves(tasks) if np.ndim(x) > 0 and np.ptp(np.asarray(x)) > 0]
    assert varying, "the tasks of a batch must differ"
    # Common random numbers: same reset and actions for every task; the task alone changes rewards
    # (and, where the task is where the episode starts, the first observation).
    obs0, actions = np.asarray(run["obs0"]), np.asarray(run["traj"]["action"])
    if name in TASK_DEPENDENT_RESET:
        assert np.ptp(obs0, axis=0).max() > 0
    else:
        np.testing.assert_array_equal(obs0, obs0[:1].repeat(NUM_TASKS, 0))
    np.testing.assert_array_equal(actions, actions[:1].repeat(NUM_TASKS, 0))
    if family.has_optimum:
        optima = np.asarray(run["optima"])
        assert optima.shape == (NUM_TASKS,) and np.ptp(optima) > 0
        single = family.optimal_return(index_tasks(tasks, 3), HORIZON)
        assert optima[3] == pytest.approx(float(single), rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- bandit


def test_bandit_task_persists_across_auto_resets():
    # Horizon 1: every step is a new episode; if a reset resampled the arms, means would be ~0.5.
    family = BernoulliBandit(num_arms=2, horizon=1)
    params = BanditParams(probs=jnp.array([0.8, 0.2], jnp.float32), max_steps_in_episode=1)
    n = 2000
    actions = jnp.repeat(jnp.arange(2, dtype=jnp.int32), n)
    _, traj = action_rollout(family, params, jax.random.key(0), actions)
    assert np.all(np.asarray(traj["truncated"]))
    rewards = np.asarray(traj["reward"]).reshape(2, n)
    assert set(np.unique(rewards)) <= {0.0, 1.0}
    for arm, p in enumerate([0.8, 0.2]):
        assert abs(rewards[arm].mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(family.expected_rewards(params), params.probs)


def test_bandit_optimum_is_the_max_over_all_action_sequences(families):
    family = families["bandit"]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    probs = np.asarray(run["tasks"].probs)
    assert probs.shape == (NUM_TASKS, 3) and np.all((probs >= 0) & (probs <= 1))
    assert abs(probs.mean() - 0.5) < 0.1  # U[0, 1]
    sequences = np.array(list(itertools.product(range(3), repeat=HORIZON)))  # all 81 of them
    brute = probs[:, sequences].sum(-1).max(-1)  # [tasks]
    np.testing.assert_allclose(run["optima"], brute, rtol=1e-6)
    # The observation of a bandit is the constant [1.0].
    np.testing.assert_array_equal(run["traj"]["next_obs"], 1.0)
    assert run["traj"]["next_obs"].shape[-1] == 1


# ----------------------------------------------------------------------------- tabular MDP


def brute_force_return(P, R, mu, actions, horizon):
    """Expected return of a deterministic time-dependent policy ``actions[t][s]`` by recursion."""

    def value(t, s):
        if t == horizon:
            return 0.0
        a = actions[t][s]
        return R[s, a] + sum(P[s, a, s2] * value(t + 1, s2) for s2 in range(P.shape[0]))

    return sum(mu[s] * value(0, s) for s in range(P.shape[0]))


@partial(jax.jit, static_argnums=(0, 3))
def _solve_tabular(family, key, policies, horizon):
    params = family.sample_params(key)
    q, v = finite_horizon_value_iteration(params, horizon)
    evaluated = jax.vmap(lambda pi: policy_evaluation(params, pi, horizon))(policies)
    greedy = policy_evaluation(params, greedy_policy(q), horizon)
    return params, q, v, family.optimal_return(params, horizon), evaluated, greedy


def test_tabular_value_iteration_equals_brute_force_over_all_deterministic_policies():
    num_states, num_actions, horizon = 2, 2, 3
    family = TabularMDP(num_states, num_actions, horizon)
    # All A^(H*S) = 64 deterministic time-dependent policies.
    policies = np.array(
        list(itertools.product(range(num_actions), repeat=horizon * num_states))
    ).reshape(-1, horizon, num_states)
    one_hot = jax.nn.one_hot(policies, num_actions)
    params, q, v, optimal, evaluated, greedy = _solve_tabular(
        family, jax.random.key(15), one_hot, horizon
    )
    P, R, mu = as_numpy64(params)
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(mu, 0.5)
    brute = np.array([brute_force_return(P, R, mu, pi, horizon) for pi in policies])

    assert q.shape == (horizon, num_states, num_actions) and v.shape == (horizon + 1, num_states)
    np.testing.assert_array_equal(v[-1], 0.0)
    assert float(optimal) == pytest.approx(brute.max(), abs=1e-5)
    np.testing.assert_allclose(evaluated, brute, atol=1e-5)
    assert float(greedy) == pytest.approx(brute.max(), abs=1e-5)


def test_tabular_policy_evaluation_matches_monte_carlo_and_the_task_persists(families):
    family = families["tabular_mdp"]  # 3 states, 2 actions, horizon 4, reward noise std 1
    episodes = 3000
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    params, other = index_tasks(run["tasks"], 0), index_tasks(run["tasks"], 1)
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(17), (HORIZON, 3, 2)))
    exact = float(policy_evaluation(params, pi, HORIZON))

    rewards, truncated = policy_rollout(family, params, pi, jax.random.key(18), HORIZON * episodes)
    assert int(truncated.sum()) == episodes  # every episode auto-reset, the task kept throughout
    returns = np.asarray(rewards).reshape(episodes, HORIZON).sum(-1)
    stderr = returns.std() / np.sqrt(episodes)
    assert abs(returns.mean() - exact) < 4 * stderr
    # ... and it is not the value of another task (the test can tell tasks apart).
    other_value = float(policy_evaluation(other, pi, HORIZON))
    assert abs(returns.mean() - other_value) > 4 * stderr


@partial(jax.jit, static_argnums=2)
def _policy_gradients(params, pi, horizon):
    grad = jax.grad(policy_evaluation, argnums=1)(params, pi, horizon)
    grad_stationary = jax.grad(policy_evaluation, argnums=1)(params, pi[0], horizon)
    manual = jax.grad(
        lambda p: policy_evaluation(params, jnp.broadcast_to(p, (horizon,) + p.shape), horizon)
    )(pi[0])
    return grad, grad_stationary, manual


def test_tabular_policy_evaluation_gradient_is_visitation_times_q(families):
    # dJ/dpi_t(a|s) = d_t(s) Q_t^pi(s, a): J is multilinear in the per-step probabilities.
    run = tasks_and_rollouts(families["tabular_mdp"], jax.random.key(0), NUM_TASKS, NUM_STEPS)
    params = index_tasks(run["tasks"], 2)
    num_states, num_actions = params.rewards.shape
    pi = jax.nn.softmax(jax.random.normal(jax.random.key(21), (HORIZON, num_states, num_actions)))
    grad, grad_stationary, manual = _policy_gradients(params, pi, HORIZON)

    P, R, mu = as_numpy64(params)

    def visitation_times_q(pi_t):  # [H, S, A] -> d_t(s) Q_t(s, a), [H, S, A]
        d = [mu]
        for t in range(HORIZON - 1):
            d.append(np.einsum("s,sa,sat->t", d[t], pi_t[t], P))
        v_next, q = np.zeros(num_states), [None] * HORIZON
        for t in reversed(range(HORIZON)):
            q[t] = R + P @ v_next
            v_next = (pi_t[t] * q[t]).sum(-1)
        return np.stack([d[t][:, None] * q[t] for t in range(HORIZON)])

    pi_np = np.asarray(pi, np.float64)
    np.testing.assert_allclose(grad, visitation_times_q(pi_np), rtol=1e-4, atol=1e-5)
    # A stationary policy's gradient sums the time-dependent one (taken at pi_t = pi) over time.
    stationary = np.broadcast_to(pi_np[0], pi_np.shape)
    np.testing.assert_allclose(grad_stationary, manual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        grad_stationary, visitation_times_q(stationary).sum(0), rtol=1e-4, atol=1e-5
    )


@partial(jax.jit, static_argnums=(0, 2))
def _discounted(family, key, gamma):
    params = family.sample_params(key)
    q = discounted_q_value_iteration(params, gamma, 400)
    q_short = discounted_q_value_iteration(params, gamma, 3)
    q_greedy = discounted_policy_q(params, greedy_policy(q), gamma)
    pi = jax.nn.softmax(jax.random.normal(jax.random.fold_in(key, 1), q.shape, q.dtype))
    return params, q, q_short, q_greedy, pi, discounted_policy_q(params, pi, gamma)


def test_discounted_q_value_iteration_satisfies_bellman_optimality():
    # float32 throughout; the residual is measured in float64 numpy (about 3e-6 at gamma 0.9).
    gamma, atol = 0.9, 1e-5
    family = TabularMDP(num_states=4, num_actions=3)
    params, q, q_short, q_greedy, pi, q_pi = _discounted(family, jax.random.key(22), gamma)
    assert q.dtype == jnp.float32
    P, R, _ = as_numpy64(params)
    arrays = (q, q_short, q_greedy, pi, q_pi)
    q, q_short, q_greedy, pi, q_pi = (np.asarray(x, np.float64) for x in arrays)
    assert q.shape == (4, 3)
    np.testing.assert_allclose(q, R + gamma * P @ q.max(-1), atol=atol)
    # Too few iterations are visibly not the fixed point (the check has teeth).
    assert np.max(np.abs(q_short - (R + gamma * P @ q_short.max(-1)))) > 1e-2
    # Q^pi of the greedy policy is Q*; any other policy is dominated and solves its own equation.
    np.testing.assert_allclose(q_greedy, q, atol=10 * atol)
    np.testing.assert_allclose(q_pi, R + gamma * P @ (pi * q_pi).sum(-1), atol=10 * atol)
    assert np.all(q_pi <= q + 10 * atol) and np.max(q - q_pi) > 1e-3


def test_tabular_solver_arguments_are_validated():
    params = TabularMDP(2, 2, 3).default_params
    with pytest.raises(ValueError, match="horizon=0"):
        finite_horizon_value_iteration(params, 0)
    with pytest.raises(ValueError, match="horizon=0"):
        policy_evaluation(params, jnp.full((2, 2), 0.5), 0)
    with pytest.raises(ValueError, match="gamma=1.0"):
        discounted_q_value_iteration(params, 1.0, 10)
    with pytest.raises(ValueError, match="num_iterations=-1"):
        discounted_q_value_iteration(params, 0.9, -1)
    with pytest.raises(AssertionError):  # a time-dependent policy of the wrong length
        policy_evaluation(params, jnp.full((2, 2, 2), 0.5), 3)


# ----------------------------------------------------------------------------- navigation


def test_navigation_optimum_is_attained_by_the_greedy_rollout_and_not_beaten(families):
    family = families["navigation"]
    v = family.max_speed
    grid = np.linspace(-v, v, 11)
    constant = np.array([[a, b] for a in grid for b in grid], np.float32)
    constant = np.broadcast_to(constant[:, None, :], (len(constant), HORIZON, 2))
    rand = jax.random.uniform(jax.random.key(40), (512, HORIZON, 2), minval=-v, maxval=v)
    candidates = jnp.concatenate([jnp.asarray(constant), rand])

    @jax.jit
    def returns(tasks, actions):  # -> greedy [tasks], others [tasks, candidates]
        def of_sequence(params, acts):
            def step(state, a):
                _, state, r, _, _ = family.step_env(jax.random.key(0), state, a, params)
                return state, r

            _, state0 = family.reset_env(jax.random.key(0), params)
            return jax.lax.scan(step, state0, acts)[1].sum()

        def greedy(params):  # "goal - position", clipped by the env to full speed, via env.step
            def step(carry, key):
                obs, state = carry
                obs, state, r, _, _, _ = family.step(key, state, params.goal - obs, params)
                return (obs, state), r

            carry = family.reset(jax.random.key(0), params)
            return jax.lax.scan(step, carry, jax.random.split(jax.random.key(1), HORIZON))[1].sum()

        others = jax.vmap(lambda p: jax.vmap(lambda a: of_sequence(p, a))(actions))(tasks)
        return jax.vmap(greedy)(tasks), others

    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    tasks = index_tasks(run["tasks"], slice(0, 8))
    greedy, others = returns(tasks, candidates)
    best = np.asarray(run["optima"][:8])
    np.testing.assert_allclose(greedy, best, atol=1e-5)
    assert np.all(np.asarray(others).max(-1) <= best + 1e-5)
    assert np.all(np.asarray(others).max(-1) >= best - 0.5)  # the candidates are sensible


def test_navigation_goal_persists_across_episodes(families):
    family = families["navigation"]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    params = index_tasks(run["tasks"], 0)
    action = jnp.array([0.05, -0.03], jnp.float32)
    _, traj = action_rollout(family, params, jax.random.key(51), jnp.tile(action, (2 * HORIZON, 1)))
    rewards = np.asarray(traj["reward"])
    positions = np.arange(1, HORIZON + 1)[:, None] * np.asarray(action)
    expected = -np.linalg.norm(positions - np.asarray(params.goal), axis=-1)
    np.testing.assert_allclose(rewards[:HORIZON], expected, rtol=1e-5)
    np.testing.assert_allclose(rewards[HORIZON:], expected, rtol=1e-5)


# ----------------------------------------------------------------------------- maze


def layout_bfs(layout, start, goal):
    """Shortest path length between two (row, col) cells of a layout (test-side reference)."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        i, j = queue.popleft()
        for di, dj in ((-1, 0), (0, 1), (1, 0), (0, -1)):
            n = (i + di, j + dj)
            inside = 0 <= n[0] < len(layout) and 0 <= n[1] < len(layout[0])
            if inside and layout[n[0]][n[1]] != "#" and n not in dist:
                dist[n] = dist[(i, j)] + 1
                queue.append(n)
    return dist[goal]


MAZE_HORIZON, MAZE_EPISODES = 9, 3


@partial(jax.jit, static_argnums=0)
def _maze_optimal_play(family, key):
    tasks = sample_tasks(family, key, 8)

    def run(params, key):
        q, _ = finite_horizon_value_iteration(family.as_tabular(params), MAZE_HORIZON)
        rewards, truncated = policy_rollout(
            family, params, greedy_policy(q), key, MAZE_HORIZON * MAZE_EPISODES
        )
        return family.optimal_return(params), rewards, truncated

    keys = jax.random.split(jax.random.fold_in(key, 1), 8)
    return (tasks,) + jax.vmap(run)(tasks, keys)


def test_maze_optimum_equals_bfs_and_is_achieved_in_every_episode():
    family = GridMaze(layout=SMALL_MAZE_LAYOUT, horizon=MAZE_HORIZON)
    tasks, optima, rewards, truncated = _maze_optimal_play(family, jax.random.key(60))
    goals = np.asarray(tasks.goal)
    assert np.all(goals != family.start) and np.all((goals >= 0) & (goals < family.num_cells))
    assert len(set(goals.tolist())) > 1

    coords = [tuple(c) for c in family.cell_coords.tolist()]
    start = coords[family.start]
    bfs = np.array([MAZE_HORIZON // layout_bfs(SMALL_MAZE_LAYOUT, start, coords[g]) for g in goals])
    np.testing.assert_array_equal(np.asarray(optima), bfs)
    assert np.all(np.asarray(truncated).sum(-1) == MAZE_EPISODES)
    per_episode = np.asarray(rewards).reshape(8, MAZE_EPISODES, MAZE_HORIZON).sum(-1)
    np.testing.assert_array_equal(per_episode, np.repeat(bfs[:, None], MAZE_EPISODES, axis=1))


def test_maze_walls_block_and_goal_teleports_to_start():
    family = GridMaze(layout=SMALL_MAZE_LAYOUT, horizon=20)
    coords = [tuple(c) for c in family.cell_coords.tolist()]
    params = family.default_params.replace(goal=jnp.array(coords.index((0, 4)), jnp.int32))
    # up: off-grid; right; right: into '#'; down: into '#'; left; then the 8-step path to (0, 4).
    actions = jnp.array([0, 1, 1, 2, 3, 2, 2, 1, 1, 1, 0, 0, 1], jnp.int32)
    obs0, traj = action_rollout(family, params, jax.random.key(0), actions)
    cells = [coords[int(i)] for i in np.argmax(np.asarray(traj["next_obs"]), axis=-1)]
    assert coords[int(np.argmax(obs0))] == (0, 0)
    assert cells == [
        (0, 0), (0, 1), (0, 1), (0, 1), (0, 0), (1, 0), (2, 0),
        (2, 1), (2, 2), (2, 3), (1, 3), (0, 3), (0, 0),  # reached (0, 4): back to the start
    ]
    np.testing.assert_array_equal(traj["reward"], [0] * 12 + [1])
    # The induced tabular MDP: reward exactly for the moves that land on the goal (from (0, 3)
    # going right, or bumping from the goal cell itself: up / right / down hit the edge or a wall),
    # and those moves lead to the start.
    tabular = family.as_tabular(params)
    transitions, rewards = np.asarray(tabular.transitions), np.asarray(tabular.rewards)
    np.testing.assert_allclose(transitions.sum(-1), 1.0)
    rewarded = {(coords[s], a) for s, a in zip(*np.nonzero(rewards))}
    assert rewarded == {((0, 3), 1), ((0, 4), 0), ((0, 4), 1), ((0, 4), 2)}
    assert np.argmax(transitions[coords.index((0, 3)), 1]) == family.start
    np.testing.assert_array_equal(tabular.init_dist, np.eye(family.num_cells)[family.start])


# ------------------------------------------------------------------------ gymnax-wrapped families


@pytest.mark.parametrize("name", GYMNAX_WRAPPED)
def test_wrapped_params_change_the_dynamics(families, name):
    family = families[name]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    obs0, traj = np.asarray(run["obs0"]), run["traj"]
    np.testing.assert_array_equal(obs0[0], obs0[1])  # same reset key, same initial state
    np.testing.assert_array_equal(traj["action"][0], traj["action"][1])  # same action sequence
    first_episode = np.asarray(traj["final_obs"][:2, :HORIZON])
    if name in REWARD_TASKS:  # the task moves the rewarded position, not the dynamics
        np.testing.assert_array_equal(first_episode[0], first_episode[1])
        rewards = np.asarray(traj["reward"][:2, :HORIZON])
        assert np.abs(rewards[0] - rewards[1]).max() > 1e-4
        return
    assert np.abs(first_episode[0] - first_episode[1]).max() > 1e-4


@pytest.mark.parametrize("name", GYMNAX_WRAPPED)
def test_wrapped_task_persists_across_auto_resets(families, name):
    # After the auto-reset, transitions are still the task's (not the defaults' or another task's).
    family = families[name]
    run = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)
    task, other = index_tasks(run["tasks"], 0), index_tasks(run["tasks"], 1)
    traj = jax.tree.map(lambda x: x[0, HORIZON : 2 * HORIZON], run["traj"])  # second episode
    assert bool(run["traj"]["truncated"][0, HORIZON - 1])

    # REWARD_TASKS' task is in the reward (output 2 of step_env), the others' in the dynamics.
    out, recorded = (2, "reward") if name in REWARD_TASKS else (0, "final_obs")

    @jax.jit
    def replay(params):
        step_keys = jax.vmap(lambda k: jax.random.split(k)[0])(traj["key"])  # as env.step does
        return jax.vmap(lambda k, s, a: family.step_env(k, s, a, params)[out])(
            step_keys, traj["state"], traj["action"]
        )

    final_obs = np.asarray(traj[recorded])
    np.testing.assert_allclose(replay(task), final_obs, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(replay(other)) - final_obs).max() > 1e-4
    defaults = family.default_params
    dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(defaults)]
    assert dtypes == [jnp.asarray(x).dtype for x in jax.tree.leaves(task)]
    assert np.abs(np.asarray(replay(defaults)) - final_obs).max() > 1e-4


def test_cartpole_derived_fields_are_consistent_and_ranges_hold(families):
    run = tasks_and_rollouts(families["cartpole"], jax.random.key(0), NUM_TASKS, NUM_STEPS)
    tasks = run["tasks"]
    length, masspole = np.asarray(tasks.length), np.asarray(tasks.masspole)
    assert np.all((length >= 0.25) & (length <= 1.0)) and length.std() > 0.1
    assert np.all((masspole >= 0.05) & (masspole <= 0.5)) and masspole.std() > 0.05
    np.testing.assert_allclose(tasks.total_mass, np.asarray(tasks.masscart) + masspole, rtol=1e-6)
    np.testing.assert_allclose(tasks.polemass_length, masspole * length, rtol=1e-6)
    np.testing.assert_allclose(tasks.gravity, 9.8, rtol=1e-6)  # untouched fields keep defaults
    assert tasks.length.dtype == jnp.float32 and tasks.gravity.dtype == jnp.float32
    defaults = cartpole_family().default_params
    assert defaults.total_mass == pytest.approx(defaults.masscart + defaults.masspole)
    assert defaults.max_steps_in_episode == 500  # gymnax's own limit unless a horizon is given


@pytest.mark.parametrize(
    "name, ranges",
    [
        ("acrobot", {"link_mass_1": (0.5, 1.5), "link_mass_2": (0.5, 1.5)}),
        ("pendulum", {"m": (0.5, 1.5), "l": (0.5, 1.5), "g": (8.0, 12.0)}),
    ],
)
def test_wrapped_parameter_ranges(families, name, ranges):
    family = families[name]
    tasks = tasks_and_rollouts(family, jax.random.key(0), NUM_TASKS, NUM_STEPS)["tasks"]
    for field, (low, high) in ranges.items():
        x = np.asarray(getattr(tasks, field))
        assert np.all((x >= low) & (x <= high)) and x.std() > 0.1 * (high - low), field
    assert np.asarray(tasks.max_steps_in_episode).tolist() == [HORIZON] * NUM_TASKS
    for field in ("max_torque", "dt") if name == "pendulum" else ("dt", "link_length_1"):
        np.testing.assert_allclose(getattr(tasks, field), getattr(family.env.default_params, field))


class _IntObsEnv(environment.Environment):
    """A counter whose observation is an int32 ``[1, 2]`` array (to check the float32 cast)."""

    @property
    def default_params(self):
        return environment.EnvParams(max_steps_in_episode=5)

    def reset_env(self, key, params):
        state = environment.EnvState(time=0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        state = environment.EnvState(time=state.time + 1)
        return self.get_obs(state), state, jnp.array(1, jnp.int32), jnp.array(False), {}

    def get_obs(self, state, params=None, key=None):
        return jnp.array([[state.time, 2 * state.time]], jnp.int32)

    def is_terminated(self, state, params):
        return jnp.array(False)

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0, 10, (1, 2), jnp.int32)


def test_wrapper_casts_observations_to_float32_vectors():
    boxed = RandomizedParams(_IntObsEnv(), {})
    params = boxed.sample_params(jax.random.key(0))
    obs0, traj = action_rollout(boxed, params, jax.random.key(1), jnp.zeros(3, jnp.int32))
    assert obs0.dtype == jnp.float32 and obs0.shape == (2,) == boxed.observation_space(params).shape
    np.testing.assert_array_equal(traj["next_obs"], [[1, 2], [2, 4], [3, 6]])
    assert traj["reward"].dtype == jnp.float32

    lake = RandomizedParams(FrozenLake(is_slippery=False), {})
    params = lake.sample_params(jax.random.key(0))
    obs0, traj = action_rollout(lake, params, jax.random.key(1), jnp.array([2, 2, 1], jnp.int32))
    assert obs0.dtype == jnp.float32 and obs0.shape == (16,) == lake.observation_space(params).shape
    np.testing.assert_array_equal(obs0, np.eye(16)[0])  # start tile, one-hot
    np.testing.assert_array_equal(traj["next_obs"], np.eye(16)[[1, 2, 6]])  # right, right, down


def test_wrapper_validation_names_the_problem():
    env = cartpole.CartPole()
    with pytest.raises(ValueError, match="lenght") as err:
        RandomizedParams(env, {"lenght": Uniform(0.1, 1.0)})
    assert "masspole" in str(err.value) and "'length'" in str(err.value)
    with pytest.raises(ValueError, match="max_steps_in_episode"):
        RandomizedParams(env, {"max_steps_in_episode": Uniform(1, 5)})
    with pytest.raises(ValueError, match="length"):
        RandomizedParams(env, {"length": (0.1, 1.0)})
    with pytest.raises(ValueError, match="low"):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="low"):
        LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="horizon"):
        RandomizedParams(env, {}, horizon=0)


def test_distributions_sample_in_range():
    keys = jax.random.split(jax.random.key(90), 4000)
    u = jax.vmap(Uniform(-1.0, 3.0).sample)(keys)
    assert u.dtype == jnp.float32 and u.shape == (4000,)
    assert float(u.min()) >= -1.0 and float(u.max()) <= 3.0 and abs(float(u.mean()) - 1.0) < 0.1
    lu = np.asarray(jax.vmap(LogUniform(0.1, 10.0).sample)(keys))
    assert lu.dtype == np.float32
    assert lu.min() >= 0.1 * (1 - 1e-6) and lu.max() <= 10.0 * (1 + 1e-6)
    assert abs(np.log(lu).mean()) < 0.1  # log-uniform on [log 0.1, log 10]: mean 0
    assert np.median(lu) == pytest.approx(1.0, abs=0.15)


# ------------------------------------------------------------------------ constructor validation


@pytest.mark.parametrize(
    "name, kwargs, field",
    [
        ("bandit", {"num_arms": 1}, "num_arms"),
        ("bandit", {"horizon": 0}, "horizon"),
        ("bandit", {"num_arms": 2.5}, "num_arms"),
        ("tabular_mdp", {"num_states": 0}, "num_states"),
        ("tabular_mdp", {"num_actions": 0}, "num_actions"),
        ("tabular_mdp", {"horizon": 0}, "horizon"),
        ("tabular_mdp", {"reward_noise_std": -1.0}, "reward_noise_std"),
        ("navigation", {"goal_range": 0.0}, "goal_range"),
        ("navigation", {"max_speed": -1.0}, "max_speed"),
        ("maze", {"size": 1}, "size"),
        ("maze", {"horizon": 0}, "horizon"),
        ("maze", {"layout": ("S#", "#.")}, "layout"),  # (1, 1) unreachable
        ("maze", {"layout": ("S..", "..")}, "layout"),  # ragged
        ("maze", {"layout": ("S.x",)}, "layout"),  # unknown character
        ("cartpole", {"horizon": 0}, "horizon"),
        ("pendulum", {"horizon": -3}, "horizon"),
    ],
)
def test_bad_constructor_arguments_name_the_field(name, kwargs, field):
    with pytest.raises(ValueError) as err:
        make_family(name, **kwargs)
    message = str(err.value)
    assert message.startswith(f"{field}="), message
    assert "invalid" in message and "must" in message


# ----------------------------------------------------------------------------- CartPole with a target


def test_cartpole_target_is_gymnax_cartpole_with_a_reward_bump_at_the_target():
    """Same dynamics, observations and termination as gymnax CartPole-v1 step by step; the reward is
    gymnax's times exp(-(x' - x*)^2 / (2 w^2)), recomputed here in numpy."""
    from gymnax.environments.classic_control import cartpole as gx_cartpole

    from metarl_jax.tasks import cartpole_target_family

    family = cartpole_target_family(horizon=50)
    task = family.sample_params(jax.random.PRNGKey(3))
    assert -1.0 <= float(task.target_x) <= 1.0 and float(task.length) == pytest.approx(0.5)
    reference = gx_cartpole.CartPole()
    ref_params = reference.default_params.replace(max_steps_in_episode=50)
    _, state = family.reset_env(jax.random.PRNGKey(4), task)
    _, ref_state = reference.reset_env(jax.random.PRNGKey(4), ref_params)
    actions = np.asarray(jax.random.bernoulli(jax.random.PRNGKey(5), 0.5, (40,)), np.int32)
    for t, a in enumerate(actions):
        obs, state, reward, done, _ = family.step_env(jax.random.PRNGKey(t), state, a, task)
        ref_obs, ref_state, ref_reward, ref_done, _ = reference.step_env(jax.random.PRNGKey(t), ref_state, a,
                                                                         ref_params)
        np.testing.assert_allclose(np.asarray(obs), np.asarray(ref_obs), rtol=1e-5, atol=1e-6)
        assert bool(done) == bool(ref_done)
        x_next = float(np.asarray(ref_obs)[0])
        expected = float(ref_reward) * np.exp(-0.5 * ((x_next - float(task.target_x)) / 0.25) ** 2)
        assert float(reward) == pytest.approx(expected, rel=1e-5, abs=1e-7), t
    tasks = sample_tasks(family, jax.random.PRNGKey(6), 256)
    targets = np.asarray(tasks.target_x)
    assert targets.min() < -0.8 and targets.max() > 0.8 and np.all(np.abs(targets) <= 1.0)
    physics = cartpole_target_family(physics=True).sample_params(jax.random.PRNGKey(7))
    assert float(physics.length) != pytest.approx(0.5)
    with pytest.raises(ValueError, match="target_range=3.0 is invalid"):
        cartpole_target_family(target_range=3.0)


# ----------------------------------------------------------------------------- Acrobot with a target


def test_acrobot_target_is_gymnax_acrobot_with_a_height_bump_and_no_early_termination():
    """Same dynamics and observations as gymnax Acrobot-v1 step by step; the reward is
    exp(-(h' - h*)^2 / (2 w^2)) with the tip height h' = -cos(th1) - cos(th1 + th2) recomputed here in
    numpy from the reference's state; the episode does not end when the tip passes 1 (gymnax's goal)."""
    from gymnax.environments.classic_control import acrobot as gx_acrobot

    from metarl_jax.tasks import acrobot_target_family

    family = acrobot_target_family(horizon=100)
    task = family.sample_params(jax.random.PRNGKey(3))
    assert -1.5 <= float(task.target_height) <= 1.5 and float(task.link_mass_1) == pytest.approx(1.0)
    reference = gx_acrobot.Acrobot()
    ref_params = reference.default_params.replace(max_steps_in_episode=100)
    _, state = family.reset_env(jax.random.PRNGKey(4), task)
    _, ref_state = reference.reset_env(jax.random.PRNGKey(4), ref_params)
    step, ref_step = jax.jit(family.step_env), jax.jit(reference.step_env)
    # energy pumping (torque against the first link's velocity) swings the tip above gymnax's goal line
    heights = []
    for t in range(100):
        action = 0 if float(ref_state.velocity_1) > 0 else 2
        obs, state, reward, done, _ = step(jax.random.PRNGKey(t), state, action, task)
        ref_obs, ref_state, _, _, _ = ref_step(jax.random.PRNGKey(t), ref_state, action, ref_params)
        np.testing.assert_allclose(np.asarray(obs), np.asarray(ref_obs), rtol=1e-5, atol=1e-5)
        th1, th2 = float(ref_state.joint_angle1), float(ref_state.joint_angle2)
        height = -np.cos(th1) - np.cos(th1 + th2)
        heights.append(height)
        expected = np.exp(-0.5 * ((height - float(task.target_height)) / 0.5) ** 2)
        assert float(reward) == pytest.approx(expected, rel=1e-4, abs=1e-6), t
        assert not bool(done), t
    assert max(heights) > 1.0  # gymnax's Acrobot would have terminated
    tasks = sample_tasks(family, jax.random.PRNGKey(6), 256)
    targets = np.asarray(tasks.target_height)
    assert targets.min() < -1.2 and targets.max() > 1.2 and np.all(np.abs(targets) <= 1.5)
    physics = acrobot_target_family(physics=True).sample_params(jax.random.PRNGKey(7))
    assert float(physics.link_mass_1) != pytest.approx(1.0)
    with pytest.raises(ValueError, match="height_range=.* is invalid"):
        acrobot_target_family(height_range=(0.5, 3.0))
