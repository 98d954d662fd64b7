"""Q-learning inner learner: exact second-order meta-gradient, Bellman fixed point, meta-training.

* Finite differences. On a tabular MDP the sampled data are piecewise
  constant in ``theta`` (uniform behaviour: independent of it; Boltzmann
  behaviour: categorical samples by Gumbel-max do not move under a 1e-5
  perturbation), so the library's whole meta-loss (rollouts, ``K = 3`` TD inner
  steps whose targets are functions of ``phi_k``, outer loss) is a smooth
  function of ``theta`` with the data held fixed, and its reverse-mode gradient
  must equal central finite differences in float64. The same meta-gradient with
  ``stop_gradient``-ed targets (same loss value, same inner steps) must differ
  and must not match the finite differences.
* Fixed point. ``discounted_q_value_iteration`` documents ``Q* = R + gamma P max_a Q*``.
  The learner's own inner step (:meth:`QLearner.inner_grad`), fed every
  ``(s, a, s')`` with weight ``P(s' | s, a)`` in ``mask`` (the expected update),
  is ``g = -(TQ - Q) / (S A)``: SGD converges to ``Q*`` to float32 precision.
  With sampled transitions (every ``(s, a)`` each step, ``s'`` and the noisy
  reward from the family's own ``step_env``; a finite-horizon episode with a
  uniform initial state would also cover them, but sampling ``(s, a)`` directly
  makes the coverage exact) and a decaying step size it converges too.
* Meta-training on the maze improves the post-adaptation return clearly.

Compile time dominates on a shared 2-core CPU: each meta-gradient check is one
compiled function (``vmap`` of ``value_and_grad`` over the points of the finite
differences), compiled with XLA's backend optimisation off.
"""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax import maml
from metarl_jax.q_learning import (
    MLPQNetwork,
    QConfig,
    QLearner,
    QPolicy,
    TabularQNetwork,
    tie_target_network,
)
from metarl_jax.rollout import Trajectory
from metarl_jax.tasks import make_family
from metarl_jax.tasks.base import sample_tasks
from metarl_jax.tasks.tabular_mdp import TabularMDP, TabularState, discounted_q_value_iteration

FAST = {"xla_backend_optimization_level": 0}
ENV = TabularMDP(num_states=3, num_actions=2, horizon=4)


def _compile(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` without backend optimisation (tiny graphs: compile time dominates)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


def _random_like(key, tree, scale=0.5):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])


# --------------------------------------------------------------------------- meta-gradient vs finite differences

FD_CASES = {
    # Tabular Q, uniform behaviour (data independent of theta), TD outer loss.
    "tabular-uniform-td": (TabularQNetwork(3, 2), dict(behaviour="uniform", outer="td")),
    # MLP Q, Boltzmann behaviour, return outer loss, double Q with the target-network leaf.
    "mlp-boltzmann-return-double": (
        MLPQNetwork(2, (8,), "tanh"), dict(behaviour="boltzmann", outer="return", double_q=True)
    ),
}


@pytest.fixture(scope="module", params=sorted(FD_CASES))
def fd_result(request):
    """Reverse-mode meta-gradients (semi-gradient and stopped targets) and central differences."""
    network, overrides = FD_CASES[request.param]
    with jax.enable_x64(True):
        config = QConfig(num_inner_episodes=3, num_outer_episodes=3, horizon=4, gamma=0.9, temperature=0.7,
                         **overrides)
        learner = QLearner(ENV, network, config)
        stopped = QLearner(ENV, network, dataclasses.replace(config, target="stop_gradient"))
        # "naive": the meta-loss value is the path term only (dice adds a zero-valued score term whose
        # gradient finite differences of the value cannot see; it is tested in test_estimators).
        mcfg = maml.MAMLConfig(inner_steps=3, inner_lr=0.5, estimator="naive")
        meta_params = _random_like(jax.random.PRNGKey(3), maml.init_meta_params(jax.random.PRNGKey(0), learner, mcfg))
        flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 2)
        key = jax.random.PRNGKey(2)
        eps = 1e-5
        directions = jax.random.normal(jax.random.PRNGKey(4), (4, flat.shape[0]), jnp.float64)
        points = jnp.concatenate([flat[None], flat + eps * directions, flat - eps * directions])

        def loss_of(lrn):
            return lambda x: maml.make_meta_loss(lrn, mcfg)(unravel(x), tasks, key)[0]

        def everything(points):
            values, grads = jax.vmap(jax.value_and_grad(loss_of(learner)))(points)
            stop_value, stop_grad = jax.value_and_grad(loss_of(stopped))(points[0])
            return values, grads[0], stop_value, stop_grad

        values, grad, stop_value, stop_grad = _compile(everything, points)(points)
        n = directions.shape[0]
        fd = (values[1:1 + n] - values[1 + n:]) / (2 * eps)
        return dict(name=request.param, fd=np.asarray(fd), analytic=np.asarray(directions @ grad),
                    stopped=np.asarray(directions @ stop_grad), grad=np.asarray(grad),
                    stop_grad=np.asarray(stop_grad), value=float(values[0]), stop_value=float(stop_value))


def test_meta_gradient_through_three_td_steps_matches_finite_differences(fd_result):
    fd, analytic = fd_result["fd"], fd_result["analytic"]
    rel = np.max(np.abs(fd - analytic)) / np.max(np.abs(analytic))
    print(f"{fd_result['name']}: max relative FD error {rel:.2e}")
    np.testing.assert_allclose(fd, analytic, rtol=1e-6, atol=1e-9)


def test_target_dependence_matters(fd_result):
    """Stopped targets: same loss value, a different meta-gradient that finite differences reject."""
    np.testing.assert_allclose(fd_result["stop_value"], fd_result["value"], rtol=1e-7)
    grad, stop_grad = fd_result["grad"], fd_result["stop_grad"]
    assert np.linalg.norm(grad - stop_grad) > 0.1 * np.linalg.norm(grad)
    fd, stopped = fd_result["fd"], fd_result["stopped"]
    assert np.max(np.abs(fd - stopped)) > 0.05 * np.max(np.abs(fd))


# --------------------------------------------------------------------------- unit semantics


def _tiny_traj(num_states=3):
    """Two episodes of three steps on one-hot states; the last step of episode 1 is terminal."""
    s = jnp.array([[0, 1, 2], [2, 0, 1]])
    s_next = jnp.array([[1, 2, 0], [0, 1, 1]])
    one_hot = lambda i: jax.nn.one_hot(i, num_states, dtype=jnp.float32)
    return Trajectory(
        obs=one_hot(s), action=jnp.array([[0, 1, 1], [1, 0, 0]], jnp.int32),
        reward=jnp.array([[1.0, -0.5, 2.0], [0.0, 0.3, 1.0]]),
        done=jnp.array([[False, False, False], [False, False, True]]),
        mask=jnp.ones((2, 3), jnp.float32), next_obs=one_hot(s_next),
    )


def test_targets_and_inner_step_follow_the_documented_formulas():
    traj = _tiny_traj()
    table = jnp.array([[0.1, 0.4], [-0.2, 0.3], [0.5, -0.1]])
    target_table = jnp.array([[1.0, -1.0], [0.0, 2.0], [3.0, 1.0]])
    s, a, s2 = jnp.argmax(traj.obs, -1), traj.action, jnp.argmax(traj.next_obs, -1)
    cont = 1.0 - traj.done

    def learner(**kw):
        return QLearner(ENV, TabularQNetwork(3, 2), QConfig(gamma=0.9, **kw))

    plain = learner()
    params = {"online": {"q": table}}
    y = traj.reward + 0.9 * cont * jnp.max(table[s2], -1)
    np.testing.assert_allclose(plain.td_targets(params, traj), y, rtol=1e-6)
    # Semi-gradient step: g[s, a] = -1/Z sum_{t: (s_t, a_t) = (s, a)} delta_t, Z = number of valid steps.
    delta = y - table[s, a]
    expected = -jnp.zeros_like(table).at[s.ravel(), a.ravel()].add(delta.ravel()) / 6.0
    loss, grads = plain.inner_grad(params, traj)
    np.testing.assert_allclose(grads["online"]["q"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss, 0.5 * jnp.mean(delta**2), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(plain.inner_loss)(params, traj)["online"]["q"], expected, rtol=1e-5, atol=1e-7)
    # "episode" normalisation: Z = E.
    _, grads_ep = learner(normalize="episode").inner_grad(params, traj)
    np.testing.assert_allclose(grads_ep["online"]["q"], expected * 6.0 / 2.0, rtol=1e-5, atol=1e-7)

    # Double Q: argmax by the online table, value by the target table.
    both = {"online": {"q": table}, "target": {"q": target_table}}
    double = learner(double_q=True)
    a_star = jnp.argmax(table[s2], -1)
    y_double = traj.reward + 0.9 * cont * jnp.take_along_axis(target_table[s2], a_star[..., None], -1)[..., 0]
    np.testing.assert_allclose(double.td_targets(both, traj), y_double, rtol=1e-6)
    frozen = learner(target="frozen")
    np.testing.assert_allclose(frozen.td_targets(both, traj), traj.reward + 0.9 * cont * jnp.max(target_table[s2], -1),
                               rtol=1e-6)
    assert set(double.init(jax.random.PRNGKey(0))) == {"online", "target"}
    assert set(plain.init(jax.random.PRNGKey(0))) == {"online"}

    # Which parameters the targets depend on (what the meta-gradient sees).
    def dep(lrn, p):
        jac = jax.jacobian(lambda q: lrn.td_targets(q, traj))(p)
        return {name: float(jnp.max(jnp.abs(j["q"]))) for name, j in jac.items()}

    assert dep(plain, params)["online"] > 0.0
    assert dep(learner(target="stop_gradient"), params)["online"] == 0.0
    assert dep(frozen, both) == {"online": 0.0, "target": 0.0}
    d = dep(double, both)
    assert d["online"] == 0.0 and d["target"] > 0.0
    # The inner gradient of the target leaf is zero: the inner steps never move it.
    _, g = double.inner_grad(both, traj)
    assert float(jnp.max(jnp.abs(g["target"]["q"]))) == 0.0


def test_behaviour_policies_and_log_prob_of_data():
    traj = _tiny_traj()
    params = {"online": {"q": jnp.array([[0.1, 0.4], [-0.2, 0.3], [0.5, -0.1]])}}

    def lp(behaviour):
        lrn = QLearner(ENV, TabularQNetwork(3, 2), QConfig(behaviour=behaviour, temperature=0.5))
        return lrn.log_prob_of_data(params, traj), jax.grad(lrn.log_prob_of_data)(params, traj)

    value, grad = lp("boltzmann")
    q = params["online"]["q"][jnp.argmax(traj.obs, -1)]
    expected = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(q / 0.5, -1), traj.action[..., None], -1))
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert float(jnp.max(jnp.abs(grad["online"]["q"]))) > 0.0
    for behaviour in ("epsilon_greedy", "uniform"):
        value, grad = lp(behaviour)
        assert float(value) == 0.0 and float(jnp.max(jnp.abs(grad["online"]["q"]))) == 0.0
    # Epsilon-greedy probabilities.
    policy = QPolicy(TabularQNetwork(3, 2), "epsilon_greedy", epsilon=0.2)
    np.testing.assert_allclose(policy.probs(params["online"], jnp.eye(3)), [[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]],
                               rtol=1e-6)


def test_tie_target_network_keeps_target_equal_to_online():
    online = {"q": jnp.array([[0.1, 0.2], [0.3, 0.4]])}
    meta_params = {"policy": {"online": online, "target": online}}
    grads = {"policy": {"online": {"q": jnp.array([[1.0, -2.0], [0.5, 0.0]])},
                        "target": {"q": jnp.array([[0.5, 1.0], [-0.5, 3.0]])}}}
    opt = tie_target_network(optax.adam(0.1))
    state = opt.init(meta_params)
    for _ in range(3):
        updates, state = opt.update(grads, state, meta_params)
        meta_params = optax.apply_updates(meta_params, updates)
        np.testing.assert_array_equal(meta_params["policy"]["online"]["q"], meta_params["policy"]["target"]["q"])
    # The online update is adam on the summed gradient d_online + d_target.
    plain = optax.adam(0.1)
    p, s = online, plain.init(online)
    summed = jax.tree.map(jnp.add, grads["policy"]["online"], grads["policy"]["target"])
    for _ in range(3):
        u, s = plain.update(summed, s, p)
        p = optax.apply_updates(p, u)
    np.testing.assert_allclose(meta_params["policy"]["online"]["q"], p["q"], rtol=1e-6)


# --------------------------------------------------------------------------- Bellman fixed point

MDP = TabularMDP(num_states=4, num_actions=2, horizon=10, reward_noise_std=0.5)
GAMMA = 0.9


@pytest.fixture(scope="module")
def mdp_and_q_star():
    task = MDP.sample_params(jax.random.PRNGKey(11))
    return task, discounted_q_value_iteration(task, GAMMA, 400)


def _q_table_learner(**kw):
    return QLearner(MDP, TabularQNetwork(4, 2), QConfig(gamma=GAMMA, **kw))


def test_expected_td_updates_converge_to_q_star(mdp_and_q_star):
    """Every ``(s, a, s')`` once with weight ``P(s'|s,a)``: the inner step is ``-(TQ - Q) / (S A)``."""
    task, q_star = mdp_and_q_star
    S, A = 4, 2
    s, a, s2 = jnp.meshgrid(jnp.arange(S), jnp.arange(A), jnp.arange(S), indexing="ij")  # [S, A, S]
    s, a, s2 = (x.reshape(S * A, S) for x in (s, a, s2))  # episodes = (s, a) pairs, time = s'
    traj = Trajectory(
        obs=jax.nn.one_hot(s, S), action=a, reward=task.rewards[s, a], done=jnp.zeros_like(s, bool),
        mask=task.transitions[s, a, s2], next_obs=jax.nn.one_hot(s2, S),
    )
    learner = _q_table_learner()
    lr = 0.5 * S * A  # Q <- Q + 0.5 (TQ - Q): damped value iteration

    def step(params, _):
        _, grads = learner.inner_grad(params, traj)
        return maml.sgd_inner_update(params, grads, lr), None

    params = {"online": {"q": jnp.zeros((S, A))}}
    params, _ = jax.jit(lambda p: jax.lax.scan(step, p, None, length=400))(params)
    err = float(jnp.max(jnp.abs(params["online"]["q"] - q_star)))
    print(f"expected updates: max |Q - Q*| = {err:.2e} (|Q*|max = {float(jnp.max(jnp.abs(q_star))):.2f})")
    assert err < 1e-4


def test_sampled_q_learning_converges_to_q_star(mdp_and_q_star):
    """Each step: 32 transitions of every ``(s, a)`` from ``step_env``; rescaled-linear step sizes."""
    task, q_star = mdp_and_q_star
    S, A, B, steps = 4, 2, 32, 3000
    s = jnp.repeat(jnp.arange(S), A * B).reshape(S * A, B)
    a = jnp.tile(jnp.repeat(jnp.arange(A), B), S).reshape(S * A, B)
    learner = _q_table_learner()
    step_env = jax.vmap(jax.vmap(MDP.step_env, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, None))

    def step(params, inputs):
        key, n = inputs
        keys = jax.random.split(key, S * A * B).reshape(S * A, B, -1)
        next_obs, _, reward, done, _ = step_env(keys, TabularState(index=s, time=jnp.zeros_like(s)), a, task)
        traj = Trajectory(obs=jax.nn.one_hot(s, S), action=a, reward=reward, done=done,
                          mask=jnp.ones(s.shape), next_obs=next_obs)
        _, grads = learner.inner_grad(params, traj)
        alpha = 1.0 / (1.0 + (1.0 - GAMMA) * n)  # per-entry step size (Wainwright 2019)
        return maml.sgd_inner_update(params, grads, alpha * S * A), None

    inputs = (jax.random.split(jax.random.PRNGKey(12), steps), jnp.arange(steps, dtype=jnp.float32))
    params = {"online": {"q": jnp.zeros((S, A))}}
    params, _ = jax.jit(lambda p, x: jax.lax.scan(step, p, x))(params, inputs)
    err = float(jnp.max(jnp.abs(params["online"]["q"] - q_star)))
    print(f"sampled updates: max |Q - Q*| = {err:.3f}")
    assert err < 0.1


# --------------------------------------------------------------------------- meta-training


def test_meta_training_improves_post_adaptation_return():
    """Maze 3x3 (goal one of 8 cells): tabular Q, Boltzmann behaviour, return outer, DiCE."""
    env = make_family("maze", size=3, horizon=10)
    learner = QLearner(env, TabularQNetwork(env.num_cells, 4),
                       QConfig(num_inner_episodes=10, num_outer_episodes=10, horizon=10, gamma=0.9,
                               behaviour="boltzmann", outer="return", normalize="episode"))
    mcfg = maml.MAMLConfig(inner_steps=1, inner_lr=1.0, estimator="dice")
    optimizer = optax.adam(0.1)
    train_step = maml.make_meta_train_step(learner, mcfg, optimizer, lambda k: sample_tasks(env, k, 16))
    state0 = maml.init_train_state(jax.random.PRNGKey(0), learner, mcfg, optimizer)
    held_out = sample_tasks(env, jax.random.PRNGKey(99), 64)

    def train_and_evaluate(state):
        final, _ = jax.lax.scan(lambda s, _: train_step(s), state, None, length=100)
        evaluate = lambda mp: maml.meta_loss(learner, mcfg, mp, held_out, jax.random.PRNGKey(7))[1]
        before, after = evaluate(state.meta_params), evaluate(final.meta_params)
        return before, after

    before, after = jax.jit(train_and_evaluate)(state0)
    pre0, post0 = float(before["pre_adaptation_return"]), float(before["post_adaptation_return"])
    pre1, post1 = float(after["pre_adaptation_return"]), float(after["post_adaptation_return"])
    print(f"post-adaptation return {post0:.2f} -> {post1:.2f} (pre-adaptation {pre0:.2f} -> {pre1:.2f})")
    assert post1 > 2.0 * post0 and post1 > post0 + 1.0
    assert post1 > pre1 + 1.0  # the adaptation itself pays


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(behaviour="greedy"), "behaviour='greedy'"),
        (dict(epsilon=1.5), "epsilon=1.5"),
        (dict(temperature=0.0), "temperature=0.0"),
        (dict(double_q=1), "double_q=1"),
        (dict(target="residual"), "target='residual'"),
        (dict(outer="value"), "outer='value'"),
        (dict(normalize="batch"), "normalize='batch'"),
        (dict(horizon=0), "horizon=0"),
        (dict(num_inner_episodes=2.5), "num_inner_episodes=2.5"),
        (dict(gamma=1.2), "gamma=1.2"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QConfig(**kwargs)


def test_q_network_validation():
    with pytest.raises(ValueError, match="obs_dim=5"):
        TabularQNetwork(3, 2).init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match="activation='gelu'"):
        MLPQNetwork(2, (8,), "gelu")
