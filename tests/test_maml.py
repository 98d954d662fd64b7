"""Second-order MAML through the policy-gradient inner update: finite differences and structure.

A tabular MDP with a categorical policy makes the sampled data piecewise
constant in ``theta``: a perturbation of 1e-5 does not change any sampled
action, so the library's whole meta-loss (rollouts, linear baseline,
standardised advantages, K inner steps) is a smooth function of ``theta``
with the data held fixed, and its autodiff gradient must equal central finite
differences in float64.

Finite differences differentiate the code they check, so a wrong forward formula passes them;
the bandit sections at the end check the inner update rules (SGD, Meta-SGD, optax inner
optimizers), the Meta-SGD meta-gradient and the DiCE score weight against hand computations
in numpy instead.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, adapt, init_meta_params, make_meta_gradient, make_meta_loss
from metarl_jax.networks import CategoricalPolicy, TabularPolicy
from metarl_jax.tasks.bandit import BanditParams, BernoulliBandit
from metarl_jax.tasks.base import sample_tasks
from metarl_jax.tasks.tabular_mdp import TabularMDP

ENV = TabularMDP(num_states=3, num_actions=2, horizon=4)
POLICY = CategoricalPolicy(num_actions=2, hidden_sizes=(8,), activation="tanh")
LEARNER = PolicyGradientLearner(
    ENV, POLICY, PGConfig(num_inner_episodes=4, num_outer_episodes=4, horizon=4, gamma=0.95,
                          baseline="linear", standardize_advantages=True)
)


def _random_init(key, meta_params):
    """Non-degenerate parameters (the categorical head is zero-initialised)."""
    leaves, treedef = jax.tree.flatten(meta_params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _float64_init(seed: int, config: MAMLConfig):
    """Random non-degenerate meta-parameters in float64 (call inside ``jax.enable_x64``)."""
    meta_params = _random_init(jax.random.PRNGKey(seed), init_meta_params(jax.random.PRNGKey(0), LEARNER, config))
    return jax.tree.map(lambda x: x.astype(jnp.float64), meta_params)


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(inner_steps):
    with jax.enable_x64(True):
        config = MAMLConfig(inner_steps=inner_steps, inner_lr=0.7, estimator="naive")
        meta_params = _float64_init(3, config)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 2)
        key = jax.random.PRNGKey(2)
        loss_fn = lambda mp: make_meta_loss(LEARNER, config)(mp, tasks, key)[0]
        grad = jax.jit(jax.grad(loss_fn))(meta_params)

        flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
        flat_grad, _ = jax.flatten_util.ravel_pytree(grad)
        directions = jax.random.normal(jax.random.PRNGKey(4), (6, flat.shape[0]), jnp.float64)
        eps = 1e-5
        flat_loss = jax.jit(jax.vmap(lambda x: make_meta_loss(LEARNER, config)(unravel(x), tasks, key)[0]))
        fd = (flat_loss(flat + eps * directions) - flat_loss(flat - eps * directions)) / (2 * eps)
        analytic = directions @ flat_grad
        np.testing.assert_allclose(np.asarray(fd), np.asarray(analytic), rtol=1e-6, atol=1e-9)
        # The inner update matters: the first-order gradient is measurably different.
        fo_config = MAMLConfig(inner_steps=inner_steps, inner_lr=0.7, estimator="first_order")
        fo_grad = jax.jit(jax.grad(lambda mp: make_meta_loss(LEARNER, fo_config)(mp, tasks, key)[0]))(meta_params)
        fo_flat, _ = jax.flatten_util.ravel_pytree(fo_grad)
        assert float(jnp.linalg.norm(fo_flat - flat_grad)) > 1e-3 * float(jnp.linalg.norm(flat_grad))


def test_first_order_is_second_order_without_the_inner_hessian():
    """K = 1: second order = (I - alpha H)^T v, first order = v, with v = grad_phi outer_loss(phi)."""
    with jax.enable_x64(True):
        alpha = 0.7
        so_config = MAMLConfig(inner_steps=1, inner_lr=alpha, estimator="naive")
        fo_config = MAMLConfig(inner_steps=1, inner_lr=alpha, estimator="first_order")
        meta_params = _float64_init(5, so_config)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 1)
        task = jax.tree.map(lambda x: x[0], tasks)
        key = jax.random.PRNGKey(6)

        # Re-derive the library's data with its documented key plumbing.
        key_task = jax.random.split(key, 1)[0]
        key_inner, key_outer = jax.random.split(key_task)
        phi, _ = jax.jit(lambda mp: adapt(LEARNER, so_config, mp, task, key_inner))(meta_params)
        outer_data = jax.jit(LEARNER.collect_outer)(key_outer, phi, task)
        v = jax.jit(jax.grad(LEARNER.outer_loss))(phi, outer_data)
        theta = meta_params["policy"]
        inner_data = jax.jit(LEARNER.collect)(jax.random.split(key_inner, 1)[0], theta, task)
        inner_grad = lambda p: jax.grad(LEARNER.inner_loss)(p, inner_data, "naive")
        _, hv = jax.jit(lambda t, w: jax.jvp(inner_grad, (t,), (w,)))(theta, v)  # H v (H symmetric)
        expected_so = jax.tree.map(lambda a, b: a - alpha * b, v, hv)

        _, fo_grad, _ = jax.jit(make_meta_gradient(LEARNER, fo_config))(meta_params, tasks, key)
        _, so_grad, _ = jax.jit(make_meta_gradient(LEARNER, so_config))(meta_params, tasks, key)
        for got, want in [(fo_grad["policy"], v), (so_grad["policy"], expected_so)]:
            g, _ = jax.flatten_util.ravel_pytree(got)
            w, _ = jax.flatten_util.ravel_pytree(want)
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # the update and its meta-gradient by hand: test_meta_sgd_inner_steps_are_theta_minus_rate_...
def test_meta_sgd_learns_per_parameter_rates_and_jit_agrees():
    config = MAMLConfig(inner_steps=1, inner_lr=0.3, learn_inner_lr=True, estimator="dice")
    meta_params = _random_init(jax.random.PRNGKey(7), init_meta_params(jax.random.PRNGKey(0), LEARNER, config))
    assert jax.tree.structure(meta_params["inner_lr"]) == jax.tree.structure(meta_params["policy"])
    tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 2)
    fn = make_meta_gradient(LEARNER, config)
    loss, grads, metrics = fn(meta_params, tasks, jax.random.PRNGKey(8))
    jloss, jgrads, jmetrics = jax.jit(fn)(meta_params, tasks, jax.random.PRNGKey(8))
    np.testing.assert_allclose(loss, jloss, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(jgrads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(metrics["post_adaptation_return"], jmetrics["post_adaptation_return"], rtol=1e-5)
    # The learned rates receive a non-zero meta-gradient.
    lr_norm = sum(float(jnp.sum(jnp.square(g))) for g in jax.tree.leaves(grads["inner_lr"]))
    assert lr_norm > 0.0
    assert metrics["returns_per_step"].shape == (2,)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="estimator='maml'"):
        MAMLConfig(estimator="maml")
    with pytest.raises(ValueError, match="inner_lr=-0.1"):
        MAMLConfig(inner_lr=-0.1)
    with pytest.raises(ValueError, match="inner_lr=0.0"):  # a zero step would never adapt
        MAMLConfig(inner_lr=0.0)
    with pytest.raises(ValueError, match="inner_steps=0"):
        MAMLConfig(inner_steps=0)
    with pytest.raises(ValueError, match="horizon=0"):
        PGConfig(horizon=0)
    with pytest.raises(ValueError, match="baseline='value'"):
        PGConfig(baseline="value")


def test_remat_gives_identical_meta_gradients():
    base = MAMLConfig(inner_steps=2, inner_lr=0.5, estimator="dice")
    remat = MAMLConfig(inner_steps=2, inner_lr=0.5, estimator="dice", remat=True)
    meta_params = _random_init(jax.random.PRNGKey(3), init_meta_params(jax.random.PRNGKey(0), LEARNER, base))
    tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 2)
    _, g1, _ = jax.jit(make_meta_gradient(LEARNER, base))(meta_params, tasks, jax.random.PRNGKey(9))
    _, g2, _ = jax.jit(make_meta_gradient(LEARNER, remat))(meta_params, tasks, jax.random.PRNGKey(9))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("inner_steps", [1, pytest.param(2, marks=pytest.mark.slow)])  # K > 1 sums: FD test [3]
def test_shared_forward_dice_equals_separate_passes(inner_steps):
    """``inner_grad_and_log_prob`` (one forward pass) gives the meta-gradient of the three separate passes.

    A ``CustomLossLearner`` whose inner loss is the base one has the hook of a new inner loss,
    ``value_and_grad(inner_loss)`` and ``log_prob_of_data`` separately, so :func:`adapt` takes
    the three separate passes there.
    Float64, so agreement is to rounding; the meta-loss *Hessian-vector product* is
    compared too (one order more than the meta-gradient) because the hook must stay
    differentiable to any order.
    """
    from metarl_jax.learners.base import LearnerDefaults
    from metarl_jax.learners.pg import CustomLossLearner, PolicyGradientLearner

    separate = CustomLossLearner(LEARNER, inner=lambda base, p, d, e: base.inner_loss(p, d, e))
    # The PG learner's own one-pass hook, not the defaults' separate passes; the custom learner's hook
    # (with ``inner`` given) is the separate passes.
    assert PolicyGradientLearner.inner_grad_and_log_prob is not LearnerDefaults.inner_grad_and_log_prob
    assert separate.inner is not None
    with jax.enable_x64(True):
        config = MAMLConfig(inner_steps=inner_steps, inner_lr=0.7, estimator="dice")
        meta_params = _float64_init(5, config)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 3)
        key = jax.random.PRNGKey(6)
        flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
        direction = jax.random.normal(jax.random.PRNGKey(7), flat.shape, jnp.float64)

        def grad_and_hvp(learner):
            loss = lambda x: make_meta_loss(learner, config)(unravel(x), tasks, key)[0]
            return jax.jit(lambda x: jax.jvp(jax.grad(loss), (x,), (direction,)))(flat)

        (g_shared, hv_shared), (g_sep, hv_sep) = grad_and_hvp(LEARNER), grad_and_hvp(separate)
        np.testing.assert_allclose(np.asarray(g_shared), np.asarray(g_sep), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(hv_shared), np.asarray(hv_sep), rtol=1e-9, atol=1e-11)
        # The score term is in both: without it (naive) the gradient is different.
        naive = MAMLConfig(inner_steps=inner_steps, inner_lr=0.7, estimator="naive")
        g_naive = jax.jit(jax.grad(lambda x: make_meta_loss(LEARNER, naive)(unravel(x), tasks, key)[0]))(flat)
        assert float(jnp.max(jnp.abs(g_naive - g_shared))) > 1e-3


@pytest.mark.parametrize("estimator, score_baseline", [
    ("dice", "leave_one_out"),
    pytest.param("dice", "none", marks=pytest.mark.slow),  # chunking is the same sum as with leave_one_out
    ("first_order", "leave_one_out"),
])
def test_accumulated_chunks_equal_the_whole_batch_gradient(estimator, score_baseline):
    """``accumulate_chunks``: 5 tasks in chunks of 2 (a scan of 2 chunks plus a last chunk of 1)
    give the meta-gradient, loss and metrics of one vmapped batch (float64, to rounding),
    the leave-one-out DiCE baseline (which couples all tasks) included."""
    with jax.enable_x64(True):
        whole = MAMLConfig(inner_steps=2, inner_lr=0.7, estimator=estimator, score_baseline=score_baseline)
        accumulated = MAMLConfig(inner_steps=2, inner_lr=0.7, estimator=estimator, score_baseline=score_baseline,
                                 task_chunk=2, accumulate_chunks=True)
        meta_params = _float64_init(5, whole)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 5)
        key = jax.random.PRNGKey(8)
        l1, g1, m1 = jax.jit(make_meta_gradient(LEARNER, whole))(meta_params, tasks, key)
        l2, g2, m2 = jax.jit(make_meta_gradient(LEARNER, accumulated))(meta_params, tasks, key)
        # The tabular MDP's rewards are float32 by design, and so are the advantages computed from
        # them: agreement is to float32 rounding.
        np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(a))))
        assert set(m1) == set(m2)
        for name in m1:
            np.testing.assert_allclose(np.asarray(m1[name]), np.asarray(m2[name]), rtol=1e-5, atol=1e-8)
        assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)) > 1e-3
        if estimator == "dice":  # the tolerance is far below what the baseline changes
            other = "none" if score_baseline == "leave_one_out" else "leave_one_out"
            g3 = jax.jit(make_meta_gradient(LEARNER, MAMLConfig(inner_steps=2, inner_lr=0.7, estimator="dice",
                                                                score_baseline=other)))(meta_params, tasks, key)[1]
            gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g3)))
            assert gap > 1e-3, gap


def test_accumulated_chunks_use_one_chunks_memory():
    """The point of accumulating: the compiled program's temporary memory is that of one chunk,
    not of the meta-batch (16 navigation tasks in chunks of 2: under a third of the vmapped size)."""
    from metarl_jax.networks import GaussianPolicy
    from metarl_jax.tasks.navigation import Navigation2D

    family = Navigation2D(horizon=20)
    learner = PolicyGradientLearner(family, GaussianPolicy(2, (32, 32)),
                                    PGConfig(num_inner_episodes=8, num_outer_episodes=8, horizon=20))
    tasks = sample_tasks(family, jax.random.PRNGKey(1), 16)
    sizes = {}
    for name, config in {"vmap": MAMLConfig(estimator="dice"),
                         "accumulate": MAMLConfig(estimator="dice", task_chunk=2, accumulate_chunks=True)}.items():
        meta_params = init_meta_params(jax.random.PRNGKey(0), learner, config)
        compiled = jax.jit(make_meta_gradient(learner, config)).lower(meta_params, tasks, jax.random.PRNGKey(2)).compile()
        memory = compiled.memory_analysis()
        if memory is None:
            pytest.skip("this backend reports no memory analysis")
        sizes[name] = memory.temp_size_in_bytes
    assert sizes["accumulate"] < sizes["vmap"] / 3, sizes


def test_accumulate_chunks_needs_task_chunk():
    with pytest.raises(ValueError, match="accumulate_chunks=True is invalid: needs task_chunk"):
        MAMLConfig(accumulate_chunks=True)


def test_init_entropy_bonus_is_minus_beta_times_the_initial_policys_entropy_on_the_outer_states():
    """``init_entropy_coef=beta``: meta-loss and gradient shift by ``-beta H(pi_theta)``, computed independently.

    ``H`` is recomputed here from the categorical probabilities in numpy on the outer batch's
    observations (same keys as :func:`meta_loss`), and its gradient by finite differences.
    """
    from metarl_jax.algorithms.maml import task_meta_objective

    beta = 0.3
    plain = MAMLConfig(inner_steps=2, inner_lr=0.5, estimator="dice")
    regularised = MAMLConfig(inner_steps=2, inner_lr=0.5, estimator="dice", init_entropy_coef=beta)
    with jax.enable_x64(True):
        meta_params = _float64_init(3, plain)
        tasks = sample_tasks(ENV, jax.random.PRNGKey(1), 3)
        key = jax.random.PRNGKey(4)
        flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
        loss = lambda cfg: jax.jit(lambda x: make_meta_loss(LEARNER, cfg)(unravel(x), tasks, key)[0])
        keys = jax.random.split(key, 3)

        @jax.jit
        def outer_logits_and_mask(x):  # the outer batch of every task, as meta_loss samples it
            def one(task, task_key):
                k_inner, k_outer = jax.random.split(task_key)
                phi, _ = adapt(LEARNER, plain, unravel(x), task, k_inner)
                traj = LEARNER.collect_outer(k_outer, phi, task).traj
                return POLICY.logits(unravel(x)["policy"], traj.obs), traj.mask
            return jax.vmap(one)(tasks, keys)

        def entropy(x):  # mean over tasks of H(pi_theta) on the outer states, in numpy
            logits, mask = (np.asarray(a, np.float64) for a in outer_logits_and_mask(x))
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            h = -np.sum(p * np.log(p), -1)
            return float(np.mean(np.sum(h * mask, axis=(1, 2)) / mask.sum(axis=(1, 2))))

        h = entropy(flat)
        np.testing.assert_allclose(float(loss(regularised)(flat)), float(loss(plain)(flat)) - beta * h, rtol=1e-10)
        direction = jax.random.normal(jax.random.PRNGKey(8), flat.shape, jnp.float64)
        eps = 1e-5
        dh = (entropy(flat + eps * direction) - entropy(flat - eps * direction)) / (2 * eps)
        g_reg = jax.jit(jax.grad(lambda x: make_meta_loss(LEARNER, regularised)(unravel(x), tasks, key)[0]))(flat)
        g_plain = jax.jit(jax.grad(lambda x: make_meta_loss(LEARNER, plain)(unravel(x), tasks, key)[0]))(flat)
        np.testing.assert_allclose(float(direction @ (g_reg - g_plain)), -beta * dh, rtol=1e-6, atol=1e-9)
        _, _, _, metrics = task_meta_objective(LEARNER, regularised, unravel(flat), jax.tree.map(lambda t: t[0], tasks),
                                               keys[0])
        assert float(metrics["init_policy_entropy"]) > 0.0
    with pytest.raises(ValueError, match="init_entropy_coef=-0.1"):
        MAMLConfig(init_entropy_coef=-0.1)


# ----------------------------------------------------------------------------- hand-computed inner steps (bandit)
#
# A Bernoulli bandit (horizon 3) with a tabular softmax policy ``pi = softmax(theta)`` and REINFORCE
# without baseline or standardisation (``normalize="episode"``): the inner loss is
# ``L(theta) = -1/E sum_{e,t} G[e,t] log pi(a[e,t])`` with ``G`` the discounted reward-to-go, so
#
#     grad L = -1/E sum_{e,t} G[e,t] (e_{a[e,t]} - pi),   hess L = (1/E sum_{e,t} G[e,t]) (diag(pi) - pi pi^T),
#
# computed below in float64 numpy from the sampled actions and rewards. The data comes from the
# learner's ``collect`` with the keys ``adapt`` uses (``jax.random.split(key, K)``), so only the
# update rule is under test.

BANDIT = BernoulliBandit(num_arms=3, horizon=3)
BANDIT_TASK = BanditParams(probs=jnp.asarray([0.8, 0.3, 0.55]), max_steps_in_episode=3)
BANDIT_THETA = np.array([0.2, -0.4, 0.1], np.float32)
BANDIT_GAMMA = 0.9
BANDIT_LEARNER = PolicyGradientLearner(
    BANDIT, TabularPolicy(1, 3),
    PGConfig(num_inner_episodes=4, num_outer_episodes=4, horizon=3, gamma=BANDIT_GAMMA, baseline="none",
             standardize_advantages=False, normalize="episode"))


def _np_returns(reward, gamma):
    """Reward-to-go ``G[e, t] = sum_{s >= t} gamma^(s-t) r[e, s]`` by the backward recursion."""
    reward = np.asarray(reward, np.float64)
    out = np.zeros_like(reward)
    running = np.zeros(reward.shape[0])
    for t in reversed(range(reward.shape[1])):
        running = reward[:, t] + gamma * running
        out[:, t] = running
    return out


def _np_softmax(theta):
    e = np.exp(theta - theta.max())
    return e / e.sum()


def _np_scores(theta, action):
    """``e_{a[e,t]} - pi_theta`` for every step: ``[E, T, A]``."""
    return np.eye(theta.shape[0])[np.asarray(action)] - _np_softmax(theta)


def _np_inner_grad(theta, traj, gamma=BANDIT_GAMMA):
    """``grad L = -1/E sum_{e,t} G[e,t] (e_{a[e,t]} - pi_theta)`` (the module section's formula)."""
    g = _np_returns(traj.reward, gamma)
    return -np.einsum("et,eta->a", g, _np_scores(theta, traj.action)) / g.shape[0]


_bandit_collect = jax.jit(lambda key, logits, outer=False: (
    (lambda *a: BANDIT_LEARNER.collect_outer(*a).traj) if outer else BANDIT_LEARNER.collect)(
    key, {"logits": logits[None]}, BANDIT_TASK), static_argnums=2)


def _np_adapt(update, key, num_steps):
    """``phi_{k+1} = update(phi_k, g_k, k)`` with ``g_k`` the numpy gradient on the data of ``phi_k``."""
    phi = BANDIT_THETA.astype(np.float64)
    for k, step_key in enumerate(jax.random.split(key, num_steps)):
        traj = _bandit_collect(step_key, np.asarray(phi, np.float32))
        phi = update(phi, _np_inner_grad(phi, traj), k)
    return phi


def _adapted_logits(config, meta_params, key, inner_optimizer=None):
    phi, _ = jax.jit(lambda mp, k: adapt(BANDIT_LEARNER, config, mp, BANDIT_TASK, k, inner_optimizer))(meta_params, key)
    return np.asarray(phi["logits"][0], np.float64)


def test_meta_sgd_inner_steps_are_theta_minus_rate_times_gradient():
    """Meta-SGD, K = 2: ``phi_{k+1} = phi_k - a * g_k`` elementwise with the learned rates ``a``.

    ``a = (0.3, 0.7, 1.6)`` (no rate is 1, so ``a * a * g`` or ``a / g``-style slips differ) and ``g_k``
    is the hand-computed REINFORCE gradient (module section above). (A scalar ``inner_lr``: see
    :func:`test_optax_sgd_inner_optimizer_equals_plain_sgd_by_hand`.)
    """
    rates = np.array([0.3, 0.7, 1.6], np.float32)
    key = jax.random.PRNGKey(11)
    config = MAMLConfig(inner_steps=2, inner_lr=0.3, learn_inner_lr=True, estimator="dice")
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}, "inner_lr": {"logits": jnp.asarray(rates)[None]}}
    expected = _np_adapt(lambda phi, g, k: phi - rates * g, key, 2)
    np.testing.assert_allclose(_adapted_logits(config, meta_params, key), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected - BANDIT_THETA).min() > 1e-2  # every logit moved


def test_meta_sgd_meta_gradient_matches_the_hand_computed_chain_rule():
    """K = 1, ``"naive"``, one task: the meta-gradient of ``outer(theta - a * g(theta))``, by hand.

    With ``v = grad outer(phi)`` (outer REINFORCE gradient at ``phi`` on the outer data, same formula),
    ``d/da = -g * v`` and ``d/dtheta = v - H (a * v)`` with ``H`` the inner loss Hessian (module
    section). The data are re-derived with :func:`meta_loss`'s key plumbing.
    """
    rates = np.array([0.3, 0.7, 1.6], np.float32)
    config = MAMLConfig(inner_steps=1, inner_lr=0.3, learn_inner_lr=True, estimator="naive")
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}, "inner_lr": {"logits": jnp.asarray(rates)[None]}}
    tasks = jax.tree.map(lambda x: jnp.asarray(x)[None], BANDIT_TASK)
    key = jax.random.PRNGKey(12)
    key_inner, key_outer = jax.random.split(jax.random.split(key, 1)[0])

    grads = jax.jit(lambda mp: make_meta_gradient(BANDIT_LEARNER, config)(mp, tasks, key)[1])(meta_params)
    inner = _bandit_collect(jax.random.split(key_inner, 1)[0], BANDIT_THETA)
    theta = BANDIT_THETA.astype(np.float64)
    g = _np_inner_grad(theta, inner)
    phi_np = theta - rates * g
    outer = _bandit_collect(key_outer, phi_np.astype(np.float32), True)  # the data the meta-loss scored
    v = _np_inner_grad(phi_np, outer)  # the outer loss is the same surrogate on the outer data
    pi = _np_softmax(theta)
    hess = np.mean(np.sum(_np_returns(inner.reward, BANDIT_GAMMA), axis=1)) * (np.diag(pi) - np.outer(pi, pi))
    np.testing.assert_allclose(np.asarray(grads["inner_lr"]["logits"][0]), -g * v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grads["policy"]["logits"][0]), v - hess @ (rates * v), rtol=1e-4, atol=1e-6)
    assert np.abs(g * v).max() > 1e-3


def test_optax_sgd_inner_optimizer_equals_plain_sgd_by_hand():
    """``adapt(..., inner_optimizer=optax.sgd(lr))``, K = 2, and plain SGD with ``inner_lr = lr`` both step
    ``phi_{k+1} = phi_k - lr * g_k`` with the hand-computed gradient (module section above)."""
    lr, key = 0.3, jax.random.PRNGKey(13)
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}}
    config = MAMLConfig(inner_steps=2, inner_lr=lr, estimator="dice")
    expected = _np_adapt(lambda phi, g, k: phi - lr * g, key, 2)
    np.testing.assert_allclose(_adapted_logits(config, meta_params, key, optax.sgd(lr)), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_adapted_logits(config, meta_params, key), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected - BANDIT_THETA).min() > 1e-2


def test_inner_optimizer_with_learned_inner_rates_is_refused():
    """Meta-SGD rates and an optax inner optimizer cannot both set the step: the optimizer would ignore the
    rates (their meta-gradient would be zero), so ``adapt`` refuses the pair, naming the field."""
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}, "inner_lr": {"logits": jnp.ones((1, 3))}}
    with pytest.raises(ValueError, match="inner_optimizer is invalid with learned inner step sizes"):
        _adapted_logits(MAMLConfig(inner_steps=1, inner_lr=0.3), meta_params, jax.random.PRNGKey(0), optax.sgd(0.3))


def test_optax_adam_inner_optimizer_equals_adam_by_hand():
    """``adapt(..., inner_optimizer=optax.adam(lr))``, K = 2, against Adam written out in numpy.

    Adam (b1 = 0.9, b2 = 0.999, eps = 1e-8): ``m_k = b1 m + (1 - b1) g``, ``v_k = b2 v + (1 - b2) g^2``,
    ``phi -= lr * (m_k / (1 - b1^k)) / (sqrt(v_k / (1 - b2^k)) + eps)``; its first step is
    ``-lr * g / (|g| + eps)``, i.e. ``-lr * sign(g)`` whatever the gradient's size, unlike SGD's.
    """
    lr, key, state = 0.05, jax.random.PRNGKey(13), {"m": np.zeros(3), "v": np.zeros(3)}

    def adam(phi, g, k):
        state["m"] = 0.9 * state["m"] + 0.1 * g
        state["v"] = 0.999 * state["v"] + 0.001 * g * g
        m_hat, v_hat = state["m"] / (1 - 0.9 ** (k + 1)), state["v"] / (1 - 0.999 ** (k + 1))
        step = lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        if k == 0:
            np.testing.assert_allclose(step, lr * np.sign(g), rtol=1e-6)  # the first step is lr * sign(g)
            assert np.ptp(np.abs(g)) > 1e-2  # ... although the gradient's entries differ in size
        return phi - step

    expected = _np_adapt(adam, key, 2)
    config = MAMLConfig(inner_steps=2, inner_lr=0.3, estimator="dice")
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}}
    np.testing.assert_allclose(_adapted_logits(config, meta_params, key, optax.adam(lr)), expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the DiCE score weight (bandit)

STD_LEARNER = PolicyGradientLearner(
    BANDIT, TabularPolicy(1, 3),
    PGConfig(num_inner_episodes=4, num_outer_episodes=5, horizon=3, gamma=BANDIT_GAMMA, baseline="mean",
             standardize_advantages=True, normalize="step"))


def _np_score_weight(outer, gamma=BANDIT_GAMMA):
    """``V = mean_e sum_t gamma^t r[e,t] * (E / #steps) / std(A_raw)``, ``A_raw = G - mean_e G`` (numpy).

    The outer surrogate's gradient estimates ``c grad J`` with ``c = (1 / T) / std(A_raw)`` (step
    normalisation, standardised advantages, a bandit never terminates): DiCE's score term must be
    weighed by the same ``c``. Returns ``(V, V without the 1/std factor)``.
    """
    reward = np.asarray(outer.reward, np.float64)
    num_episodes, horizon = reward.shape
    value = np.mean(reward @ gamma ** np.arange(horizon)) * (num_episodes / reward.size)
    returns = _np_returns(reward, gamma)
    raw = returns - returns.mean(axis=0, keepdims=True)
    return value / (np.std(raw) + 1e-8), value


def test_pg_dice_score_term_is_weighed_by_the_standardised_objective_estimate():
    """PG learner with standardised advantages: ``objective_estimate`` and the DiCE score part of the meta-gradient.

    ``objective_estimate`` must equal the numpy ``V`` of :func:`_np_score_weight`, and (K = 1, three
    tasks, leave-one-out baseline ``b_i = (sum_j V_j - V_i) / 2``) the DiCE meta-gradient minus the
    naive one (same inner step and data) must be the score part
    ``-1/N sum_i (V_i - b_i) sum_{e,t} (e_{a[e,t]} - pi_theta)`` over each task's inner batch, all in
    numpy. Without the ``1/std`` factor the weights here change by more than 10%.
    """
    tasks = BanditParams(probs=jnp.asarray([[0.8, 0.3, 0.55], [0.1, 0.9, 0.5], [0.4, 0.4, 0.95]]),
                         max_steps_in_episode=jnp.full((3,), 3))
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}}
    key = jax.random.PRNGKey(14)
    dice = MAMLConfig(inner_steps=1, inner_lr=0.5, estimator="dice")
    naive = MAMLConfig(inner_steps=1, inner_lr=0.5, estimator="naive")

    @jax.jit
    def run(mp):
        def data(task, task_key):  # meta_loss's key plumbing, per task
            key_inner, key_outer = jax.random.split(task_key)
            inner = STD_LEARNER.collect(jax.random.split(key_inner, 1)[0], mp["policy"], task)
            phi, _ = adapt(STD_LEARNER, dice, mp, task, key_inner)
            outer = STD_LEARNER.collect_outer(key_outer, phi, task)
            return inner, outer.traj, STD_LEARNER.objective_estimate(outer)

        g_dice = make_meta_gradient(STD_LEARNER, dice)(mp, tasks, key)[1]
        g_naive = make_meta_gradient(STD_LEARNER, naive)(mp, tasks, key)[1]
        return g_dice, g_naive, jax.vmap(data)(tasks, jax.random.split(key, 3))

    g_dice, g_naive, (inner, outer, estimates) = run(meta_params)
    weights, unstandardised = [], []
    for i in range(3):
        traj = jax.tree.map(lambda x, i=i: x[i], outer)
        w, raw = _np_score_weight(traj)
        weights.append(w)
        unstandardised.append(raw)
    weights = np.array(weights)
    np.testing.assert_allclose(np.asarray(estimates), weights, rtol=1e-5)
    assert np.all(np.abs(weights / np.array(unstandardised) - 1.0) > 0.1), (weights, unstandardised)

    baselines = (weights.sum() - weights) / 2.0
    score_grads = np.stack([_np_scores(BANDIT_THETA.astype(np.float64), inner.action[i]).sum(axis=(0, 1))
                            for i in range(3)])
    expected = -np.mean((weights - baselines)[:, None] * score_grads, axis=0)
    got = np.asarray(g_dice["policy"]["logits"][0] - g_naive["policy"]["logits"][0], np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected).max() > 1e-2


def test_leave_one_out_score_baseline_by_hand_and_zero_for_a_single_task():
    """``b_i = (sum_j V_j - V_i) / (N - 1)``: for V = (1, 2, 6), b = (4, 3.5, 1.5); with one task there is no
    other task to average, so the baseline is 0 (not a division by zero); ``"none"`` is always 0."""
    from metarl_jax.algorithms.maml import score_baseline_values

    np.testing.assert_allclose(score_baseline_values(jnp.array([1.0, 2.0, 6.0]), "leave_one_out"), [4.0, 3.5, 1.5])
    np.testing.assert_array_equal(score_baseline_values(jnp.array([5.0]), "leave_one_out"), [0.0])
    np.testing.assert_array_equal(score_baseline_values(jnp.array([1.0, 2.0]), "none"), [0.0, 0.0])


def test_task_metrics_report_the_first_inner_steps_loss_and_return():
    """``task_meta_objective``'s metrics: ``inner_loss`` and ``pre_adaptation_return`` are those of the first
    inner step (on theta's own data), replayed with ``adapt`` on the same key split; K = 3 so the first and
    last steps differ."""
    from metarl_jax.algorithms.maml import task_meta_objective

    config = MAMLConfig(inner_steps=3, inner_lr=0.5, estimator="dice")
    meta_params = {"policy": {"logits": jnp.asarray(BANDIT_THETA)[None]}}
    key = jax.random.PRNGKey(21)
    _, _, _, metrics = jax.jit(lambda k: task_meta_objective(BANDIT_LEARNER, config, meta_params, BANDIT_TASK, k))(key)
    _, info = jax.jit(lambda k: adapt(BANDIT_LEARNER, config, meta_params, BANDIT_TASK, k))(jax.random.split(key)[0])
    losses_k = np.asarray(info.inner_losses)
    assert abs(losses_k[0] - losses_k[-1]) > 1e-4
    np.testing.assert_allclose(float(metrics["inner_loss"]), losses_k[0], rtol=1e-6)
    np.testing.assert_allclose(float(metrics["pre_adaptation_return"]), float(info.inner_returns[0]), rtol=1e-6)
