"""Q-learning inner learner: exact second-order meta-gradient, Bellman fixed point, meta-training.

* Finite differences. On a tabular MDP the sampled data are piecewise
  constant in ``theta`` (uniform behaviour: independent of it; Boltzmann
  behaviour: categorical samples by Gumbel-max do not move under a 1e-5
  perturbation), so the library's whole meta-loss (rollouts, ``K = 3`` TD inner
  steps whose targets are functions of ``phi_k``, outer loss) is a smooth
  function of ``theta`` with the data held fixed, and its reverse-mode gradient
  must equal central finite differences in float64. The same meta-gradient with
  ``stop_gradient``-ed targets (same loss value, same inner steps) must differ
  and must not match the finite differences (checked in the tabular case: one
  more compile per case is the price). Cases: tabular Q with uniform
  behaviour and the TD outer loss; an MLP Q with Boltzmann behaviour and the
  return outer loss; tabular double Q (target values from the target-network
  leaf) with epsilon-greedy behaviour.
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

from metarl_jax.algorithms import inner, maml
from metarl_jax.learners.q_learning import QConfig, QLearner, tie_target_network
from metarl_jax.networks import MLPQNetwork, QPolicy, TabularQNetwork
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
    # name: (Q-network, config overrides, also compare with stopped targets)
    # Tabular Q, uniform behaviour (data independent of theta), TD outer loss.
    "tabular-uniform-td": (TabularQNetwork(3, 2), dict(behaviour="uniform", outer="td"), True),
    # MLP Q, Boltzmann behaviour, return outer loss.
    "mlp-boltzmann-return": (MLPQNetwork(2, (8,), "tanh"), dict(behaviour="boltzmann", outer="return"), False),
    # Tabular Q, epsilon-greedy behaviour, double Q: the target values come from the target-network leaf.
    "tabular-egreedy-td-double": (
        TabularQNetwork(3, 2), dict(behaviour="epsilon_greedy", epsilon=0.3, outer="td", double_q=True), False
    ),
}


@pytest.fixture(scope="module")
def fd_result(request):
    """Reverse-mode meta-gradients (semi-gradient and stopped targets) and central differences."""
    network, overrides, compare_stopped = FD_CASES[request.param]
    with jax.enable_x64(True):
        config = QConfig(num_inner_episodes=3, num_outer_episodes=3, horizon=4, gamma=0.9, temperature=0.7,
                         **overrides)
        learner = QLearner(ENV, network, config)
        stopped = QLearner(ENV, network, dataclasses.replace(config, target="stop_gradient"))
        # "naive": the meta-loss value is the path term only (dice adds a zero-valued score term whose
        # gradient finite differences of the value cannot see; it is tested in test_estimators).
        mcfg = maml.MAMLConfig(inner_steps=3, inner_lr=0.5, estimator="naive")
        eps = 1e-5

        def everything():
            """Parameters, tasks, directions, losses and gradients: one compiled call (no eager dispatch)."""
            meta_params = _random_like(jax.random.PRNGKey(3),
                                       maml.init_meta_params(jax.random.PRNGKey(0), learner, mcfg))
            flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
            tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 2)
            directions = jax.random.normal(jax.random.PRNGKey(4), (4, flat.shape[0]), jnp.float64)
            points = jnp.concatenate([flat[None], flat + eps * directions, flat - eps * directions])

            def loss_of(lrn):
                return lambda x: maml.make_meta_loss(lrn, mcfg)(unravel(x), tasks, jax.random.PRNGKey(2))[0]

            values, grads = jax.vmap(jax.value_and_grad(loss_of(learner)))(points)
            if not compare_stopped:
                return directions, values, grads[0], None, None
            stop_value, stop_grad = jax.value_and_grad(loss_of(stopped))(flat)
            return directions, values, grads[0], stop_value, stop_grad

        directions, values, grad, stop_value, stop_grad = _compile(everything)()
        n = directions.shape[0]
        fd = (values[1:1 + n] - values[1 + n:]) / (2 * eps)
        result = dict(name=request.param, fd=np.asarray(fd), analytic=np.asarray(directions @ grad),
                      grad=np.asarray(grad), value=float(values[0]), compare_stopped=compare_stopped)
        if compare_stopped:
            result.update(stopped=np.asarray(directions @ stop_grad), stop_grad=np.asarray(stop_grad),
                          stop_value=float(stop_value))
        return result


@pytest.mark.parametrize("fd_result", sorted(FD_CASES), indirect=True)
def test_meta_gradient_through_three_td_steps_matches_finite_differences(fd_result):
    fd, analytic = fd_result["fd"], fd_result["analytic"]
    rel = np.max(np.abs(fd - analytic)) / np.max(np.abs(analytic))
    print(f"{fd_result['name']}: max relative FD error {rel:.2e}")
    np.testing.assert_allclose(fd, analytic, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("fd_result", sorted(name for name, case in FD_CASES.items() if case[2]), indirect=True)
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
    table = np.array([[0.1, 0.4], [-0.2, 0.3], [0.5, -0.1]], np.float32)
    target_table = np.array([[1.0, -1.0], [0.0, 2.0], [3.0, 1.0]], np.float32)

    def learner(**kw):
        return QLearner(ENV, TabularQNetwork(3, 2), QConfig(gamma=0.9, **kw))

    plain, double, frozen = learner(), learner(double_q=True), learner(target="frozen")
    stopped, per_episode = learner(target="stop_gradient"), learner(normalize="episode")
    assert set(double.init(jax.random.PRNGKey(0))) == {"online", "target"}
    assert set(plain.init(jax.random.PRNGKey(0))) == {"online"}

    @jax.jit
    def library(table, target_table):
        """Everything from the library in one compiled call (eager tiny ops are slow to dispatch)."""
        params = {"online": {"q": table}}
        both = {"online": {"q": table}, "target": {"q": target_table}}

        def dependence(lrn, p):  # max |d y / d leaf| per leaf: what the meta-gradient sees of the targets
            jac = jax.jacobian(lambda q: lrn.td_targets(q, traj))(p)
            return {name: jnp.max(jnp.abs(j["q"])) for name, j in jac.items()}

        loss, grads = plain.inner_grad(params, traj)
        return dict(
            y=plain.td_targets(params, traj), loss=loss, grad=grads["online"]["q"],
            loss_grad=jax.grad(plain.inner_loss)(params, traj)["online"]["q"],
            grad_episode=per_episode.inner_grad(params, traj)[1]["online"]["q"],
            y_double=double.td_targets(both, traj), y_frozen=frozen.td_targets(both, traj),
            grad_double_target=double.inner_grad(both, traj)[1]["target"]["q"],
            dep_plain=dependence(plain, params), dep_stopped=dependence(stopped, params),
            dep_frozen=dependence(frozen, both), dep_double=dependence(double, both),
        )

    got = jax.tree.map(np.asarray, library(table, target_table))
    s, a = np.argmax(traj.obs, -1), np.asarray(traj.action)
    s2, r, cont = np.argmax(traj.next_obs, -1), np.asarray(traj.reward), 1.0 - np.asarray(traj.done)
    # y = r + gamma (1 - d) max_a' Q(s', a')
    y = r + 0.9 * cont * table[s2].max(-1)
    np.testing.assert_allclose(got["y"], y, rtol=1e-6)
    # Semi-gradient step: g[s, a] = -1/Z sum_{t: (s_t, a_t) = (s, a)} delta_t, Z = 6 valid steps.
    delta = y - table[s, a]
    expected = np.zeros_like(table)
    np.add.at(expected, (s.ravel(), a.ravel()), -delta.ravel() / 6.0)
    np.testing.assert_allclose(got["grad"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["loss"], 0.5 * np.mean(delta**2), rtol=1e-6)
    np.testing.assert_allclose(got["loss_grad"], expected, rtol=1e-5, atol=1e-7)  # same first-order step
    np.testing.assert_allclose(got["grad_episode"], expected * 6.0 / 2.0, rtol=1e-5, atol=1e-7)  # Z = E = 2
    # Double Q: argmax by the online table, value by the target table; frozen: max of the target table.
    a_star = table[s2].argmax(-1)
    np.testing.assert_allclose(got["y_double"], r + 0.9 * cont * target_table[s2, a_star], rtol=1e-6)
    np.testing.assert_allclose(got["y_frozen"], r + 0.9 * cont * target_table[s2].max(-1), rtol=1e-6)
    # Which parameters the targets depend on.
    assert got["dep_plain"]["online"] > 0.0
    assert got["dep_stopped"]["online"] == 0.0
    assert got["dep_frozen"]["online"] == 0.0 and got["dep_frozen"]["target"] == 0.0
    assert got["dep_double"]["online"] == 0.0 and got["dep_double"]["target"] > 0.0
    # The inner gradient of the target leaf is zero: the inner steps never move it.
    assert np.max(np.abs(got["grad_double_target"])) == 0.0


def test_behaviour_policies_and_log_prob_of_data():
    traj = _tiny_traj()
    table = np.array([[0.1, 0.4], [-0.2, 0.3], [0.5, -0.1]], np.float32)
    kinds = ("boltzmann", "epsilon_greedy", "uniform")
    learners = {k: QLearner(ENV, TabularQNetwork(3, 2), QConfig(behaviour=k, epsilon=0.2, temperature=0.5))
                for k in kinds}

    @jax.jit
    def library(table):
        params = {"online": {"q": table}}
        out = {}
        for kind, lrn in learners.items():
            policy = lrn.behaviour_policy
            samples = policy.sample(jax.random.PRNGKey(5), params["online"], jnp.broadcast_to(jnp.eye(3), (20_000, 3, 3)))
            out[kind] = dict(
                value=lrn.log_prob_of_data(params, traj),
                grad=jax.grad(lrn.log_prob_of_data)(params, traj)["online"]["q"],
                probs=policy.probs(params["online"], jnp.eye(3)),
                freq=jnp.mean(jax.nn.one_hot(samples, 2), axis=0),
            )
        return out

    got = jax.tree.map(np.asarray, library(table))
    q = table[np.argmax(traj.obs, -1)] / 0.5
    log_softmax = q - np.log(np.exp(q).sum(-1, keepdims=True))
    expected = np.take_along_axis(log_softmax, np.asarray(traj.action)[..., None], -1).sum()
    np.testing.assert_allclose(got["boltzmann"]["value"], expected, rtol=1e-6)
    assert np.max(np.abs(got["boltzmann"]["grad"])) > 0.0
    for kind in ("epsilon_greedy", "uniform"):  # the data density is not differentiated
        assert got[kind]["value"] == 0.0 and np.max(np.abs(got[kind]["grad"])) == 0.0
    np.testing.assert_allclose(got["epsilon_greedy"]["probs"], [[0.1, 0.9], [0.1, 0.9], [0.9, 0.1]], rtol=1e-6)
    np.testing.assert_allclose(got["uniform"]["probs"], np.full((3, 2), 0.5), rtol=1e-6)
    np.testing.assert_allclose(got["boltzmann"]["probs"], np.exp(table / 0.5) / np.exp(table / 0.5).sum(-1, keepdims=True),
                               rtol=1e-5)
    for kind in kinds:  # sampling follows the documented probabilities
        np.testing.assert_allclose(got[kind]["freq"], got[kind]["probs"], atol=0.015)


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


def _sgd_step(params, grads, lr):
    """``params - lr * grads``: one step of the inner rule :func:`metarl_jax.algorithms.inner.sgd`."""
    rule = inner.sgd(lr)
    updates, _ = rule.update(grads, rule.init(params), params)
    return optax.apply_updates(params, updates)


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
        return _sgd_step(params, grads, lr), None

    params = {"online": {"q": jnp.zeros((S, A))}}
    params, _ = _compile(lambda p: jax.lax.scan(step, p, None, length=400), params)(params)
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
        return _sgd_step(params, grads, alpha * S * A), None

    inputs = (jax.random.split(jax.random.PRNGKey(12), steps), jnp.arange(steps, dtype=jnp.float32))
    params = {"online": {"q": jnp.zeros((S, A))}}
    params, _ = _compile(lambda p, x: jax.lax.scan(step, p, x), params, inputs)(params, inputs)
    err = float(jnp.max(jnp.abs(params["online"]["q"] - q_star)))
    print(f"sampled updates: max |Q - Q*| = {err:.3f}")
    assert err < 0.1


# --------------------------------------------------------------------------- meta-training


def test_meta_training_improves_post_adaptation_return():
    """Maze 3x3 (goal one of 8 cells): tabular Q from N(0, 0.1^2), Boltzmann behaviour, return outer, DiCE.

    100 meta-iterations of 16 tasks; both parameter sets are evaluated on the same 64 held-out tasks.
    """
    env = make_family("maze", size=3, horizon=10)
    learner = QLearner(env, TabularQNetwork(env.num_cells, 4, init_std=0.1),
                       QConfig(num_inner_episodes=10, num_outer_episodes=10, horizon=10, gamma=0.9,
                               behaviour="boltzmann", outer="return", normalize="episode"))
    mcfg = maml.MAMLConfig(inner_steps=1, inner_lr=1.0, estimator="dice")
    optimizer = optax.adam(0.1)
    algorithm = maml.maml(learner, mcfg, optimizer, lambda k: sample_tasks(env, k, 16))
    train_step = algorithm.step

    def train_and_evaluate():
        state = algorithm.init(jax.random.PRNGKey(0))
        held_out = sample_tasks(env, jax.random.PRNGKey(99), 64)
        final, _ = jax.lax.scan(lambda s, _: train_step(s), state, None, length=100)
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), state.meta_params, final.meta_params)
        evaluate = lambda mp: maml.meta_loss(learner, mcfg, mp, held_out, jax.random.PRNGKey(7))[1]
        return jax.vmap(evaluate)(both)  # one compiled copy of the evaluation for both parameter sets

    metrics = _compile(train_and_evaluate)()
    before, after = (jax.tree.map(lambda x: x[i], metrics) for i in (0, 1))
    pre0, post0 = float(before["pre_adaptation_return"]), float(before["post_adaptation_return"])
    pre1, post1 = float(after["pre_adaptation_return"]), float(after["post_adaptation_return"])
    print(f"post-adaptation return {post0:.2f} -> {post1:.2f} (pre-adaptation {pre0:.2f} -> {pre1:.2f})")
    assert post1 > 1.8 * post0 and post1 > post0 + 1.0
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


def test_q_policies_on_batched_states_match_numpy_and_config_bounds_are_inclusive():
    """On a ``[2, 5, S]`` batch of one-hot states (leading axes kept), from a Q-table ``q`` written here:
    Boltzmann ``log softmax(q[s] / tau)``, epsilon-greedy ``log((1 - eps) 1[a = argmax] + eps / A)``, uniform
    ``-log A``, and the entropy ``-sum p log p`` per state. ``epsilon`` may be 0 (greedy) or 1 (uniform):
    the bounds are inclusive; outside them the field is named."""
    from metarl_jax.learners.q_learning import QConfig
    from metarl_jax.networks import QPolicy, TabularQNetwork

    num_states, num_actions = 4, 3
    q_table = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 1.0, 0.2]], np.float32)
    states = np.array([[0, 1, 2, 3, 0], [3, 2, 1, 1, 2]])                  # leading axes differ from A = 3
    obs = jnp.asarray(np.eye(num_states, dtype=np.float32)[states])
    params = {"q": jnp.asarray(q_table)}
    network = TabularQNetwork(num_states, num_actions)
    q = q_table[states].astype(np.float64)                                  # [2, 5, A]
    boltzmann = q / 0.5 - np.log(np.exp(q / 0.5).sum(-1, keepdims=True))
    greedy = (q == q.max(-1, keepdims=True)).astype(np.float64)
    eps_greedy = np.log((1 - 0.2) * greedy + 0.2 / num_actions)
    cases = [(QPolicy(network, "boltzmann", temperature=0.5), boltzmann),
             (QPolicy(network, "epsilon_greedy", epsilon=0.2), eps_greedy),
             (QPolicy(network, "uniform"), np.full(q.shape, -np.log(num_actions)))]
    for policy, expected in cases:
        got = np.asarray(policy.log_probs_all(params, obs))
        assert got.shape == (2, 5, num_actions)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(policy.entropy(params, obs)), -(np.exp(expected) * expected).sum(-1),
                                   rtol=1e-5, atol=1e-6)
    for epsilon in (0.0, 1.0):
        assert QConfig(epsilon=epsilon).epsilon == epsilon
    with pytest.raises(ValueError, match="epsilon"):
        QConfig(epsilon=1.5)
