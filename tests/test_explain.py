"""Integrated gradients (metarl_jax.explain): the axioms, a numpy reference, and explaining adaptation.

Completeness (``sum_i IG_i = f(x) - f(x')``, the gap being the quadrature error that shrinks with
the number of path points), exactness for a linear function, zero attribution for an ignored
feature, agreement with a slow float64 numpy reference (finite differences, a Python loop over a
midpoint rule), the batched form against the per-state one, and ``explain_adaptation`` on a
Gaussian (navigation) and a tabular categorical (bandit) learner built by the experiment layer.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import explain
from metarl_jax.algorithms.inner import adapt
from metarl_jax.experiment import MAMLExperimentConfig, build
from metarl_jax.networks import CategoricalPolicy, GaussianPolicy
from metarl_jax.plotting import plot_attributions
from metarl_jax.tasks import index_tasks, sample_tasks

F = 5
POLICY = GaussianPolicy(action_dim=2, hidden_sizes=(16, 16), activation="tanh")


@jax.jit
def _perturbed(key, params):
    """Every leaf moved by ``0.5 * N(0, 1)`` (output layers start at zero: a constant output)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves)])


def _random_init(init, key):
    """``init(key)`` perturbed, in one compiled call (op-by-op it costs a compile per operation)."""
    return jax.jit(lambda k: _perturbed(jax.random.fold_in(k, 1), init(k)))(key)


@functools.lru_cache(maxsize=None)
def _mlp_mean():
    """``f(x) = mu_0(x)`` of a tanh MLP Gaussian policy with random weights, and its params (do not mutate)."""
    params = _random_init(lambda k: POLICY.init(k, F), jax.random.PRNGKey(1))
    return (lambda x: POLICY.mean(params, x)[0]), params


X = jnp.array([0.9, -1.2, 0.4, 1.5, -0.3], jnp.float32)
BASE = jnp.array([0.1, 0.2, -0.5, 0.0, 0.3], jnp.float32)


def test_quadrature_rules_integrate_what_their_error_order_says():
    """Gauss-Legendre with S nodes integrates a^(2S-1) exactly on [0, 1] (the nodes and weights are
    numpy's ``leggauss``); the trapezoid rule a linear function exactly and a^2 with error exactly
    1 / (6 (S-1)^2); all weights sum to 1."""
    for s in (1, 2, 7, 64, 200):
        for ours, numpys in zip(explain.gauss_legendre(s), np.polynomial.legendre.leggauss(s)):
            np.testing.assert_allclose(ours, numpys, rtol=0, atol=1e-13)
    for s in (1, 3, 6):
        a, w = explain.quadrature(s, "gauss_legendre")
        assert np.all((a > 0) & (a < 1)) and np.isclose(w.sum(), 1.0)
        assert np.isclose(np.sum(w * a ** (2 * s - 1)), 1.0 / (2 * s))
    for s in (2, 5, 9):
        a, w = explain.quadrature(s, "trapezoid")
        assert a[0] == 0.0 and a[-1] == 1.0 and np.isclose(w.sum(), 1.0)
        assert np.isclose(np.sum(w * (3 * a + 1)), 2.5)
        assert np.isclose(np.sum(w * a ** 2) - 1.0 / 3.0, 1.0 / (6 * (s - 1) ** 2))
    with pytest.raises(ValueError, match="num_steps=1 is invalid"):
        explain.quadrature(1, "trapezoid")
    with pytest.raises(ValueError, match="rule='simpson' is invalid"):
        explain.quadrature(8, "simpson")


def test_completeness_on_an_mlp_policy_mean_and_the_gap_shrinks_with_num_steps():
    """``sum IG = f(x) - f(x')`` for a nonlinear f (a tanh MLP's mean action): the gap is the quadrature
    error, tiny at 64 Gauss-Legendre nodes, and falls as ``O(1/S^2)`` for the trapezoid rule."""
    fn, _ = _mlp_mean()
    diff = float(fn(X) - fn(BASE))
    assert abs(diff) > 0.1  # a non-trivial output change to attribute
    runs = [(s, "gauss_legendre") for s in (1, 2, 4, 64)] + [(s, "trapezoid") for s in (5, 9, 17, 64)]

    @jax.jit
    def gaps(x, x0):
        return jnp.stack([explain.completeness_gap(fn, x, x0, explain.integrated_gradients(fn, x, x0, s, rule))
                          for s, rule in runs])

    gap = dict(zip(runs, np.abs(np.asarray(gaps(X, BASE)))))
    gl = [gap[s, "gauss_legendre"] for s in (1, 2, 4)]
    assert gl[0] > gl[1] > gl[2] and gl[0] > 1e-3
    assert gap[64, "gauss_legendre"] < 1e-5 * max(1.0, abs(diff))
    t = [gap[s, "trapezoid"] for s in (5, 9, 17)]
    assert t[0] > t[1] > t[2]
    assert 2.5 < t[1] / t[2] < 6.0 and 2.5 < t[0] / t[1] < 6.0  # halving h quarters the error
    assert gap[64, "trapezoid"] < 2e-3 * abs(diff)


def test_exact_for_a_linear_function_with_any_rule():
    """``f(x) = w . x + b``: ``IG = (x - x') * w`` from a single Gauss-Legendre node or two trapezoid points."""
    w = jnp.array([1.5, -2.0, 0.0, 0.25, 3.0])
    fn = lambda x: jnp.dot(w, x) + 0.7
    runs = ((1, "gauss_legendre"), (64, "gauss_legendre"), (2, "trapezoid"))
    igs = jax.jit(lambda x, x0: [explain.integrated_gradients(fn, x, x0, s, rule) for s, rule in runs])(X, BASE)
    for ig in igs:
        np.testing.assert_allclose(ig, (X - BASE) * w, rtol=1e-6, atol=1e-6)
        assert abs(float(explain.completeness_gap(fn, X, BASE, ig))) < 1e-5


def test_a_feature_the_function_ignores_gets_exactly_zero():
    """Dummy axiom: zero the first-layer weights of feature 2, and its attribution is exactly 0 while
    the others carry the whole output change; a feature at its baseline value gets 0 too."""
    params = jax.tree.map(lambda a: a, _mlp_mean()[1])  # new containers: the cached ones stay intact
    kernel = params["mean"]["params"]["Dense_0"]["kernel"]
    params["mean"]["params"]["Dense_0"]["kernel"] = kernel.at[2].set(0.0)
    fn = lambda x: POLICY.mean(params, x)[1]
    ig_at = jax.jit(lambda x: explain.integrated_gradients(fn, x, BASE))
    ig = ig_at(X)
    assert float(ig[2]) == 0.0
    assert np.all(np.abs(np.asarray(ig)[[0, 1, 3, 4]]) > 1e-4)
    at_base = ig_at(X.at[0].set(BASE[0]))
    assert float(at_base[0]) == 0.0


def test_matches_a_slow_numpy_reference():
    """A float64 numpy reference with no JAX: the MLP recomputed from its kernels, central finite
    differences for the gradient, a Python loop over a 1000-point midpoint rule."""
    fn, params = _mlp_mean()
    dense = params["mean"]["params"]
    layers = [tuple(np.asarray(dense[f"Dense_{i}"][name], np.float64) for name in ("kernel", "bias"))
              for i in range(3)]

    def f_np(x):  # [..., F] -> [...]
        h = x
        for i, (k, b) in enumerate(layers):
            h = h @ k + b
            h = np.tanh(h) if i < 2 else h
        return h[..., 0]

    x, x0 = np.asarray(X, np.float64), np.asarray(BASE, np.float64)
    m, step = 1000, 1e-6 * np.eye(F)
    total = np.zeros(F)
    for k in range(m):
        z = x0 + (k + 0.5) / m * (x - x0)
        total += (f_np(z + step) - f_np(z - step)) / 2e-6 / m  # d f / d z_i by central differences
    reference = (x - x0) * total
    assert abs(f_np(x) - float(fn(X))) < 1e-5  # the same function
    ours = jax.jit(lambda x, x0: explain.integrated_gradients(fn, x, x0))(X, BASE)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=2e-6)


def test_the_batched_form_equals_the_per_state_form():
    """Per-state and shared baselines, with a per-state target (the action explained) held fixed."""
    policy = CategoricalPolicy(num_actions=3, hidden_sizes=(8,))
    params = _random_init(lambda k: policy.init(k, F), jax.random.PRNGKey(4))
    fn = lambda z, a: policy.log_prob(params, z, a)
    xs, per_state = np.random.default_rng(5).normal(size=(2, 4, F)).astype(np.float32)
    actions = jnp.array([0, 2, 1, 2], jnp.int32)
    one = jax.jit(lambda x, b, a: explain.integrated_gradients(lambda z: fn(z, a), x, b, 16))  # one state

    @jax.jit
    def batches(xs, per_state, actions):
        return (explain.batched_integrated_gradients(fn, xs, per_state, actions, num_steps=16),
                explain.batched_integrated_gradients(fn, xs, BASE, actions, num_steps=16),
                explain.batched_integrated_gradients(lambda z: fn(z, jnp.int32(1)), xs, BASE, num_steps=16))

    batched, shared, plain = batches(xs, per_state, actions)
    for n in range(4):
        np.testing.assert_allclose(batched[n], one(xs[n], per_state[n], actions[n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(shared[n], one(xs[n], BASE, actions[n]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(plain[n], one(xs[n], BASE, jnp.int32(1)), rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(batched - shared)).max() > 1e-3  # the baselines did matter
    with pytest.raises(ValueError, match=r"baseline.shape=\(3,\) is invalid"):
        explain.batched_integrated_gradients(fn, xs, jnp.zeros(3), actions)
    with pytest.raises(ValueError, match=r"fn\(x\).shape=\(3,\) is invalid"):
        explain.integrated_gradients(lambda z: policy.logits(params, z), X, BASE)


CASES = {
    "navigation-gaussian": dict(task="navigation", learner="pg"),
    "bandit-tabular": dict(task="bandit", learner="pg", tabular_policy=True, num_arms=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_explain_adaptation_before_and_after_inner_steps(case):
    """Shapes, completeness before and after, outputs that are the policy's own at theta and at phi_K
    (the first-order ``adapt`` evaluation uses), and attributions that adaptation changed."""
    cfg = MAMLExperimentConfig(horizon=5, num_episodes=4, inner_steps=1, hidden_sizes=(8,), inner_lr=0.5,
                               **CASES[case])
    family, learner, maml_config, _ = build(cfg)
    meta_params = {"policy": _random_init(learner.init, jax.random.PRNGKey(0))}
    task = jax.jit(lambda k: index_tasks(sample_tasks(family, k, 1), 0))(jax.random.PRNGKey(2))
    n, f = 6, family.obs_dim()
    if case == "bandit-tabular":
        states = np.ones((n, f), np.float32)  # the bandit's one observation
    else:
        states = np.random.default_rng(3).uniform(-0.5, 0.5, size=(n, f)).astype(np.float32)
    key = jax.random.PRNGKey(4)
    # The navigation policy is a ReLU MLP: its path gradient is piecewise constant, the quadrature
    # error O(1/S) (about 0.4% of the output change at S = 64), so it takes more path points.
    num_steps = 64 if case == "bandit-tabular" else 1024
    r = explain.explain_adaptation(learner, maml_config, meta_params, task, key, states, steps=2,
                                   num_steps=num_steps)
    for name in ("before", "after", "difference", "baselines"):
        assert r[name].shape == (n, f), name
    for name in ("outputs_before", "outputs_after", "gap_before", "gap_after", "targets_before"):
        assert r[name].shape == (n,), name
    for when in ("before", "after"):
        change = r[f"outputs_{when}"] - r[f"baseline_outputs_{when}"]
        np.testing.assert_allclose(r[when].sum(axis=1), change, atol=1e-5 + 5e-4 * np.abs(change).max())
        np.testing.assert_allclose(r[f"gap_{when}"], r[when].sum(axis=1) - change, atol=1e-6)
    assert np.abs(r["before"]).max() > 1e-3
    assert np.abs(r["difference"]).max() > 1e-3  # adaptation changed what drives the decision
    np.testing.assert_allclose(r["difference"], r["after"] - r["before"])
    np.testing.assert_array_equal(r["baselines"], 0.0)

    policy = learner.acting_policy()
    if case == "bandit-tabular":  # phi_K is the first-order adapt of evaluation, from the same key
        adapt_config = dataclasses.replace(maml_config, inner_steps=2, estimator="first_order")
        phi = jax.jit(lambda mp, t, k: adapt(learner, adapt_config, mp, t, k)[0])(meta_params, task, key)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), phi, r["params_after"])
        own = jax.jit(lambda p, s: jax.nn.log_softmax(policy.logits(p, s), axis=-1))
    else:
        own = jax.jit(lambda p, s: policy.mean(p, s)[:, 0])
    for when, params in (("before", meta_params["policy"]), ("after", r["params_after"])):
        expected = np.asarray(own(params, states))  # the policy's own output at theta, at phi_K
        if case == "bandit-tabular":
            assert r["output"] == "log_prob of the greedy action"
            greedy = np.argmax(expected, axis=-1)
            np.testing.assert_array_equal(r[f"targets_{when}"], greedy)
            np.testing.assert_allclose(r[f"outputs_{when}"], expected[np.arange(n), greedy], rtol=1e-5)
            np.testing.assert_allclose(r[f"baseline_outputs_{when}"], -np.log(3.0), rtol=1e-5)  # x' = 0: uniform
        else:
            assert r["output"] == "mean_action[0]"
            np.testing.assert_allclose(r[f"outputs_{when}"], expected, rtol=1e-5, atol=1e-6)


def test_scalar_output_dispatch_for_actor_critic_and_q_learners():
    """``"auto"``: an actor-critic's V(x) and a Q-learner's Q(x, greedy a), each equal to the model's own
    output, complete; an output the learner lacks is refused in one line."""
    cases = [dict(task="navigation", learner="ac"), dict(task="tabular_mdp", learner="q", tabular_policy=True)]
    for kw in cases:
        family, learner, _, _ = build(MAMLExperimentConfig(horizon=5, num_episodes=2, hidden_sizes=(8,), **kw))
        params = _random_init(learner.init, jax.random.PRNGKey(1))
        f = family.obs_dim()
        states = np.random.default_rng(2).uniform(size=(3, f)).astype(np.float32)
        direct = learner.model.value if kw["learner"] == "ac" else learner.q_values  # [N] or [N, A]
        r, own = jax.jit(lambda p, s: (explain.attribute(learner, p, s, "mean", num_steps=32), direct(p, s)))(
            params, states)
        np.testing.assert_allclose(r["baselines"], np.broadcast_to(states.mean(0), states.shape), rtol=1e-6)
        if kw["learner"] == "ac":
            np.testing.assert_allclose(r["outputs"], own, rtol=1e-5, atol=1e-6)
        else:
            q = np.asarray(own)
            np.testing.assert_array_equal(r["targets"], q.argmax(-1))
            np.testing.assert_allclose(r["outputs"], q.max(-1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["gaps"], 0.0, atol=1e-4)
        assert np.abs(np.asarray(r["attributions"])).max() > 1e-3
    offers = r"output='mean_action' is invalid: QLearner offers \['log_prob', 'q_value'\]"
    with pytest.raises(ValueError, match=offers):
        explain.scalar_output(learner, params, "mean_action")
    in_range = r"action=5 is invalid: must be None \(greedy\) or an action index in \[0, 5\)"
    with pytest.raises(ValueError, match=in_range):
        explain.scalar_output(learner, params, "q_value", action=5)


def test_plot_attributions_writes_a_grouped_bar_chart(tmp_path):
    before = np.array([[0.1, -0.4], [0.3, -0.2]])
    path = tmp_path / "attributions.png"
    plot_attributions(["x position", "y position"], before, before + 0.2, str(path), statistic="mean")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="before.shape=.* is invalid"):
        plot_attributions(["only one"], before, before, str(path))
