"""Second-order MAML through the policy-gradient inner update: finite differences and structure.

A tabular MDP with a categorical policy makes the sampled data piecewise
constant in ``theta``: a perturbation of 1e-5 does not change any sampled
action, so the library's whole meta-loss (rollouts, linear baseline,
standardised advantages, K inner steps) is a smooth function of ``theta``
with the data held fixed, and its autodiff gradient must equal central finite
differences in float64.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.learners import PGConfig, PolicyGradientLearner
from metarl_jax.maml import MAMLConfig, adapt, init_meta_params, make_meta_gradient, make_meta_loss
from metarl_jax.networks import CategoricalPolicy
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


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_shared_forward_dice_equals_separate_passes(inner_steps):
    """``inner_grad_and_log_prob`` (one forward pass) gives the meta-gradient of the three separate passes.

    Hiding the hook behind a ``CustomLossLearner`` whose inner loss is the base one makes
    :func:`adapt` take ``value_and_grad(inner_loss)`` and ``log_prob_of_data`` separately.
    Float64, so agreement is to rounding; the meta-loss *Hessian-vector product* is
    compared too (one order more than the meta-gradient) because the hook must stay
    differentiable to any order.
    """
    from metarl_jax.learners import CustomLossLearner

    separate = CustomLossLearner(LEARNER, inner=lambda base, p, d, e: base.inner_loss(p, d, e))
    assert hasattr(LEARNER, "inner_grad_and_log_prob") and not hasattr(separate, "inner_grad_and_log_prob")
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


@pytest.mark.parametrize("estimator, score_baseline", [("dice", "leave_one_out"), ("dice", "none"),
                                                       ("first_order", "leave_one_out")])
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
    from metarl_jax.maml import task_meta_objective

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
                traj = LEARNER.collect_outer(k_outer, phi, task)
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
