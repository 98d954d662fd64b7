"""Policies against closed forms computed in numpy: Gaussian and categorical log-densities, entropies, samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.networks import CategoricalPolicy, GaussianPolicy, TabularPolicy

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
    import pytest

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
