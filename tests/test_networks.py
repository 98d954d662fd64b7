"""Networks against closed forms computed in numpy: Gaussian and categorical log-densities, entropies, samples.

Also every policy's closed-form ``kl_divergence`` (Gaussian, categorical, tabular, the actor-critic models, the
Q-network policies) against the sum over actions of its own log-probabilities or a Monte-Carlo estimate, and the
moved actor-critic / Q-network classes' own checks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import losses
from metarl_jax.networks import (
    CategoricalPolicy,
    GaussianPolicy,
    MLPCritic,
    MLPQNetwork,
    QPolicy,
    SeparateActorCritic,
    SharedActorCritic,
    TabularCritic,
    TabularPolicy,
    TabularQNetwork,
)

LOG_STD = np.array([0.4, -0.9, 1.3], np.float32)  # far from 0: a missing log-std term shows


def _random_params(key, params, scale=0.5):
    """Perturb every leaf (the output layer starts at zero, which would make the mean constant)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves)])


def _numpy_mlp(dense_params, x, activation):
    """``act(x W_0 + b_0) ... W_L + b_L`` from flax's ``Dense_i`` kernels and biases, in float64 numpy."""
    layers = sorted(dense_params, key=lambda name: int(name.split("_")[1]))
    h = np.asarray(x, np.float64)
    for i, name in enumerate(layers):
        h = h @ np.asarray(dense_params[name]["kernel"], np.float64) + np.asarray(dense_params[name]["bias"], np.float64)
        if i < len(layers) - 1:
            h = activation(h)
    return h


def test_gaussian_log_prob_entropy_and_sample_match_the_normal_closed_form():
    """``log pi(a|s) = sum_i [-1/2 ((a_i - mu_i)/sigma_i)^2 - log sigma_i - 1/2 log 2 pi]`` in numpy.

    The mean ``mu(s)`` is the MLP recomputed in numpy from the flax kernels; ``log_std`` is
    ``(0.4, -0.9, 1.3)``, so dropping the ``log sigma`` term (or its sign, or its factor)
    changes every value. Also: ``d log pi / d log sigma_i = z_i^2 - 1`` (``z = (a - mu)/sigma``),
    ``d log pi / d a = -(a - mu) / sigma^2``, entropy ``sum_i 1/2 (1 + log 2 pi) + log sigma_i``,
    and ``sample_with_noise = mu + sigma * noise``.
    """
    policy = GaussianPolicy(action_dim=3, hidden_sizes=(5,), activation="tanh")

    @jax.jit  # one compiled program (eager ops would each compile their own)
    def run(key):
        k_init, k_params, k_obs, k_act, k_noise = jax.random.split(key, 5)
        params = _random_params(k_params, policy.init(k_init, 2))
        params["log_std"] = jnp.asarray(LOG_STD)
        obs = jax.random.normal(k_obs, (4, 6, 2))  # leading shape [E, T]
        action = 2.0 * jax.random.normal(k_act, (4, 6, 3))
        noise = jax.random.normal(k_noise, (4, 6, 3))
        logp = policy.log_prob(params, obs, action)
        grad_log_std = jax.grad(lambda p: jnp.sum(policy.log_prob(p, obs, action)))(params)["log_std"]
        grad_action = jax.grad(lambda a: jnp.sum(policy.log_prob(params, obs, a)))(action)
        outputs = (logp, grad_log_std, grad_action, policy.entropy(params, obs),
                   policy.sample_with_noise(params, obs, noise))
        return params, obs, action, noise, outputs

    params, obs, action, noise, (logp, grad_log_std, grad_action, entropy, sample) = run(jax.random.PRNGKey(0))

    mu = _numpy_mlp(params["mean"]["params"], obs, np.tanh)  # [4, 6, 3]
    sigma = np.exp(LOG_STD.astype(np.float64))
    a = np.asarray(action, np.float64)
    z = (a - mu) / sigma
    expected = np.sum(-0.5 * z**2 - np.log(sigma) - 0.5 * math.log(2 * math.pi), axis=-1)
    assert logp.shape == (4, 6)
    np.testing.assert_allclose(np.asarray(logp), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_log_std), np.sum(z**2 - 1.0, axis=(0, 1)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grad_action), -(a - mu) / sigma**2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy), np.full((4, 6), np.sum(0.5 * (1 + math.log(2 * math.pi)) + np.log(sigma))),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sample), mu + sigma * np.asarray(noise, np.float64), rtol=1e-5, atol=1e-5)
    assert np.ptp(mu) > 0.1  # the mean really depends on the state


def test_categorical_and_tabular_log_probs_are_log_softmax_in_numpy():
    """``log pi(a|s) = l_a - log sum_b exp l_b`` with the logits of the MLP / of the table row of one-hot ``s``."""
    policy = CategoricalPolicy(num_actions=3, hidden_sizes=(4,), activation="tanh")
    tabular = TabularPolicy(num_states=2, num_actions=3)
    action = np.array([0, 1, 2, 2, 1])
    table = {"logits": np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], np.float32)}
    states = np.array([1, 0, 0, 1, 1])

    @jax.jit
    def run(key):
        k_init, k_params, k_obs = jax.random.split(key, 3)
        params = _random_params(k_params, policy.init(k_init, 2), scale=1.0)
        obs = jax.random.normal(k_obs, (5, 2))
        return params, obs, (policy.log_prob(params, obs, action), policy.entropy(params, obs),
                             tabular.log_prob(table, jax.nn.one_hot(states, 2), action))

    params, obs, (logp, entropy, logp_tab) = run(jax.random.PRNGKey(3))

    def log_softmax(logits):
        logits = np.asarray(logits, np.float64)
        return logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))

    log_pi = log_softmax(_numpy_mlp(params["params"], obs, np.tanh))
    np.testing.assert_allclose(np.asarray(logp), log_pi[np.arange(5), action], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(entropy), -np.sum(np.exp(log_pi) * log_pi, axis=-1), rtol=1e-5, atol=1e-6)
    log_table = log_softmax(table["logits"])
    np.testing.assert_allclose(np.asarray(logp_tab), log_table[states, action], rtol=1e-6)


def test_policy_constructors_validate_sizes_and_defaults():
    """Sizes are checked where the policy is built, naming the field: a tabular policy needs >= 2 actions and
    one-hot observations of length ``num_states`` (2 actions and a matching length are accepted); the Gaussian
    policy's default mean network is Finn et al.'s two hidden layers of 100 units."""
    with pytest.raises(ValueError, match="num_actions=1 is invalid"):
        TabularPolicy(3, 1)
    with pytest.raises(ValueError, match="num_states=0 is invalid"):
        TabularPolicy(0, 2)
    tabular = TabularPolicy(3, 2)
    assert tabular.init(jax.random.PRNGKey(0), 3)["logits"].shape == (3, 2)
    for wrong in (2, 4):
        with pytest.raises(ValueError, match=f"obs_dim={wrong} does not match num_states=3"):
            tabular.init(jax.random.PRNGKey(0), wrong)
    params = GaussianPolicy(action_dim=2).init(jax.random.PRNGKey(0), 5)
    kernels = [leaf.shape for leaf in jax.tree.leaves(params["mean"]) if leaf.ndim == 2]
    assert kernels == [(5, 100), (100, 100), (100, 2)] and params["log_std"].shape == (2,)


def test_shared_gaussian_head_log_prob_and_sampler_match_the_normal_closed_form():
    """The shared-torso actor-critic with continuous actions: ``log pi(a|s)`` is the diagonal Normal density
    ``-1/2 sum(((a - mu)/sigma)^2 + 2 log sigma + log 2 pi)`` with the network's own ``mu`` and a non-trivial
    ``log_std`` set here; ``sample`` is ``mu + sigma * N(0, 1)`` with ``jax.random.normal`` of the same key."""
    from metarl_jax.networks import SharedActorCritic

    model = SharedActorCritic(num_outputs=2, continuous=True, hidden_sizes=(8,))
    params = model.init(jax.random.PRNGKey(0), 3)
    log_std = np.array([0.4, -0.9], np.float32)
    is_log_std = lambda path: "log_std" in jax.tree_util.keystr(path)
    assert sum(is_log_std(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]) == 1
    params = jax.tree_util.tree_map_with_path(  # a non-trivial log_std, and weights moved off their init
        lambda path, x: jnp.asarray(log_std) if is_log_std(path)
        else x + 0.5 * jax.random.normal(jax.random.PRNGKey(x.ndim), x.shape), params)
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    action = jax.random.normal(jax.random.PRNGKey(2), (5, 2)) * 2.0
    mu = np.asarray(model.network.apply(params, obs)[0], np.float64)
    sigma = np.exp(log_std.astype(np.float64))
    expected = -0.5 * np.sum(((np.asarray(action) - mu) / sigma) ** 2 + 2 * np.log(sigma) + np.log(2 * np.pi), -1)
    np.testing.assert_allclose(np.asarray(model.log_prob(params, obs, action)), expected, rtol=1e-5, atol=1e-5)
    key = jax.random.PRNGKey(3)
    sample = np.asarray(model.sample(key, params, obs))
    np.testing.assert_allclose(sample, mu + sigma * np.asarray(jax.random.normal(key, (5, 2))), rtol=1e-5, atol=1e-5)


def test_q_network_validation():
    with pytest.raises(ValueError, match="obs_dim=5"):
        TabularQNetwork(3, 2).init(jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match="activation='gelu'"):
        MLPQNetwork(2, (8,), "gelu")


# ----------------------------------------------------------------------------- closed-form KL divergences


def _kl_parts(policy, old, new, obs):
    """``KL(old || new)``, ``KL(old || old)`` and the gradients of ``sum KL(old || new)`` in ``old`` and in ``new``."""
    total = lambda p_old, p_new: jnp.sum(policy.kl_divergence(p_old, p_new, obs))
    grad_old, grad_new = jax.grad(total, argnums=(0, 1))(old, new)
    return policy.kl_divergence(old, new, obs), policy.kl_divergence(old, old, obs), grad_old, grad_new


def _compile(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` with XLA's backend optimisations off (small programs: compile time
    dominates; same semantics)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})


def _max_abs(tree) -> float:
    return max(float(np.max(np.abs(np.asarray(leaf)))) for leaf in jax.tree.leaves(tree))


DISCRETE_KL_CASES = {  # name: (policy, one-hot observations, differentiable in params_new)
    "categorical": (CategoricalPolicy(3, (5,)), False, True),
    "tabular": (TabularPolicy(4, 3), True, True),
    "shared": (SharedActorCritic(3, False, (5,)), False, True),
    "separate": (SeparateActorCritic(CategoricalPolicy(3, (5,)), MLPCritic((4,))), False, True),
    "q_boltzmann": (QPolicy(MLPQNetwork(3, (5,)), "boltzmann", temperature=0.7), False, True),
    "q_epsilon_greedy": (QPolicy(TabularQNetwork(4, 3), "epsilon_greedy", epsilon=0.2), True, False),
    "q_greedy": (QPolicy(TabularQNetwork(4, 3), "epsilon_greedy", epsilon=0.0), True, False),
    "q_uniform": (QPolicy(TabularQNetwork(4, 3), "uniform"), True, False),
}


def test_discrete_kl_divergences_are_the_sum_over_actions_of_their_log_probs():
    """Every discrete policy: ``kl_divergence(old, new, s) = sum_{a: p_old(a|s) > 0} p_old(a|s) (log p_old(a|s) -
    log p_new(a|s))``, summed in float64 numpy over ``log_prob`` of each action, on a ``[2, 3]`` batch of states
    with parameters moved off their init. It is 0 at equal parameters (also for the greedy policy, whose
    ``log p_old`` is ``-inf`` off the argmax), no gradient reaches ``params_old`` (``stop_gradient``), and the
    softmax policies' KL has a non-zero gradient in ``params_new``. Separate actor-critic: the critic plays no part.
    Softmax policies: equal to :func:`metarl_jax.losses.categorical_kl` of their logits."""
    num_states, num_actions = 4, 3

    def run(key):
        k_obs, k_states, k_cases = jax.random.split(key, 3)
        dense_obs = jax.random.normal(k_obs, (2, 3, num_states))
        one_hot = jax.nn.one_hot(jax.random.randint(k_states, (2, 3), 0, num_states), num_states)
        out = {}
        for (name, (policy, tabular, _)), k in zip(DISCRETE_KL_CASES.items(), jax.random.split(k_cases, 8)):
            k_init, k_old, k_new = jax.random.split(k, 3)
            obs = one_hot if tabular else dense_obs
            network = policy.q_network if isinstance(policy, QPolicy) else policy
            old = _random_params(k_old, network.init(k_init, num_states), scale=1.0)
            new = _random_params(k_new, old, scale=1.0)
            actions = jnp.broadcast_to(jnp.arange(num_actions)[:, None, None], (num_actions, 2, 3))
            logp = lambda p: jax.vmap(lambda a: policy.log_prob(p, obs, a))(actions)  # [A, 2, 3]
            out[name] = (*_kl_parts(policy, old, new, obs), logp(old), logp(new))
            if name == "separate":
                out["critic_only"] = policy.kl_divergence(old, {**old, "critic": new["critic"]}, obs)
            if name in ("categorical", "tabular"):
                out[name + "_losses"] = losses.categorical_kl(policy.logits(old, obs), policy.logits(new, obs))
        return out

    key = jax.random.PRNGKey(7)
    out = _compile(run, key)(key)
    for name, (_, _, differentiable) in DISCRETE_KL_CASES.items():
        kl, kl_same, grad_old, grad_new, logp_old, logp_new = out[name]
        logp_old, logp_new = np.asarray(logp_old, np.float64), np.asarray(logp_new, np.float64)
        p_old = np.exp(logp_old)
        with np.errstate(invalid="ignore"):
            expected = np.sum(np.where(p_old > 0, p_old * (logp_old - logp_new), 0.0), axis=0)
        assert kl.shape == (2, 3), name
        np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(kl_same), 0.0, atol=1e-6, err_msg=name)
        assert _max_abs(grad_old) == 0.0, name
        if differentiable:
            assert np.all(np.asarray(kl) > 1e-4) and _max_abs(grad_new) > 1e-4, name
        else:
            assert _max_abs(grad_new) == 0.0, name
    assert np.any(np.asarray(out["q_epsilon_greedy"][0]) > 0.1)  # the greedy action moved in some state
    np.testing.assert_allclose(np.asarray(out["q_uniform"][0]), 0.0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(out["critic_only"]), 0.0, atol=1e-7)
    for name in ("categorical", "tabular"):
        np.testing.assert_allclose(np.asarray(out[name][0]), np.asarray(out[name + "_losses"]), rtol=1e-6, atol=1e-7)


GAUSSIAN_KL_CASES = {
    "gaussian": GaussianPolicy(2, (5,), init_log_std=-0.3),
    "shared": SharedActorCritic(2, True, (5,), init_log_std=-0.3),
    "separate": SeparateActorCritic(GaussianPolicy(2, (5,)), TabularCritic(3)),
}


def _gaussian_head(name, policy, params, obs):
    """``(mu(s) [..., D], log_std [D])`` of each case, read from its own parameters."""
    if name == "gaussian":
        return policy.mean(params, obs), params["log_std"]
    if name == "shared":
        out, _, log_std = policy.network.apply(params, obs)
        return out, log_std
    return policy.actor.mean(params["actor"], obs), params["actor"]["log_std"]


def test_gaussian_kl_divergences_match_the_closed_form_in_numpy_and_monte_carlo():
    """Diagonal Gaussian policies (plain, shared torso, separate actor-critic) on a ``[2, 3]`` batch of states:
    ``kl_divergence`` equals ``sum_i log s_new,i - log s_old,i + (s_old,i^2 + (mu_old,i - mu_new,i)^2) /
    (2 s_new,i^2) - 1/2`` in float64 numpy from each model's own means and log-stds, and the Monte-Carlo mean of
    ``log pi_old(a|s) - log pi_new(a|s)`` over 4000 actions ``a ~ pi_old(.|s)`` per state from its ``sample`` (within
    5 standard errors); 0 at equal parameters; no gradient reaches ``params_old``; a non-zero one reaches
    ``params_new``; equal to :func:`metarl_jax.losses.gaussian_kl` of the same means and log-stds."""
    num_samples = 4000

    def run(key):
        k_obs, k_cases = jax.random.split(key)
        obs = jax.random.normal(k_obs, (2, 3, 3))
        out = {}
        for (name, policy), k in zip(GAUSSIAN_KL_CASES.items(), jax.random.split(k_cases, 3)):
            k_init, k_old, k_new, k_sample = jax.random.split(k, 4)
            old = _random_params(k_old, policy.init(k_init, 3), scale=0.5)
            new = _random_params(k_new, old, scale=0.5)
            head_old, head_new = _gaussian_head(name, policy, old, obs), _gaussian_head(name, policy, new, obs)
            actions = jax.vmap(lambda k: policy.sample(k, old, obs))(jax.random.split(k_sample, num_samples))
            log_ratio = jax.vmap(lambda a: policy.log_prob(old, obs, a) - policy.log_prob(new, obs, a))(actions)
            out[name] = (*_kl_parts(policy, old, new, obs), head_old, head_new, log_ratio,
                         losses.gaussian_kl(*head_old, *head_new))
        return out

    key = jax.random.PRNGKey(11)
    out = _compile(run, key)(key)
    for name in GAUSSIAN_KL_CASES:
        kl, kl_same, grad_old, grad_new, (mu_p, log_sp), (mu_q, log_sq), log_ratio, kl_losses = out[name]
        mu_p, mu_q = np.asarray(mu_p, np.float64), np.asarray(mu_q, np.float64)
        sp, sq = np.exp(np.asarray(log_sp, np.float64)), np.exp(np.asarray(log_sq, np.float64))
        expected = np.sum(np.log(sq / sp) + (sp**2 + (mu_p - mu_q) ** 2) / (2 * sq**2) - 0.5, axis=-1)
        assert kl.shape == (2, 3) and np.all(expected > 1e-3), name
        np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(np.asarray(kl), np.asarray(kl_losses), rtol=1e-6, err_msg=name)
        log_ratio = np.asarray(log_ratio, np.float64)  # [N, 2, 3]
        mc, se = log_ratio.mean(0), log_ratio.std(0) / np.sqrt(num_samples)
        assert np.all(np.abs(mc - expected) < 5 * se + 1e-6), (name, mc, expected, se)
        np.testing.assert_allclose(np.asarray(kl_same), 0.0, atol=1e-6, err_msg=name)
        assert _max_abs(grad_old) == 0.0 and _max_abs(grad_new) > 1e-3, name
