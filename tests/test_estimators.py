"""Meta-gradient estimators against an exact oracle on a tiny Bernoulli bandit.

Horizon 1, ``M`` inner pulls, tabular softmax policy ``pi_theta = softmax(theta)``.
The inner step is REINFORCE without baseline:
``phi = theta + alpha/M sum_i r_i (e_{a_i} - pi_theta)``. The MAML objective of
the procedure actually run is the finite sum over all ``(2K)^M`` inner outcomes

    J(theta) = sum_{a, r} prod_i pi_theta(a_i) p(r_i | a_i)  *  pi_phi(a,r;theta) . p ,

computed here in float64 independently of the library, and differentiated
exactly with ``jax.grad``. The library's estimators are averaged over many
PRNG keys in one vmapped call and compared with it in units of their
Monte-Carlo standard error.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, make_meta_gradient
from metarl_jax.networks import TabularPolicy
from metarl_jax.tasks.bandit import BanditParams, BernoulliBandit

PROBS = np.array([0.9, 0.15, 0.5])
THETA = np.array([0.4, -0.3, 0.1])
NUM_ARMS = 3
INNER_PULLS = 2
OUTER_PULLS = 8
ALPHA = 3.0
NUM_KEYS = 20_000
TASKS_PER_KEY = 4


def _outcomes(num_arms, pulls):
    """Every inner outcome: actions [n, M] and rewards [n, M]."""
    acts, rews = [], []
    for a in itertools.product(range(num_arms), repeat=pulls):
        for r in itertools.product((0.0, 1.0), repeat=pulls):
            acts.append(a)
            rews.append(r)
    return np.array(acts), np.array(rews)


def _inner_update(theta, actions, rewards, alpha):
    """``phi = theta + alpha/M sum_i r_i grad log pi_theta(a_i)`` (one outcome)."""
    pi = jax.nn.softmax(theta)
    scores = jax.nn.one_hot(actions, theta.shape[0], dtype=theta.dtype) - pi
    return theta + alpha * jnp.mean(rewards[:, None] * scores, axis=0)


def _outcome_prob(theta, actions, rewards, probs):
    pi = jax.nn.softmax(theta)
    p = probs[actions]
    return jnp.prod(pi[actions] * jnp.where(rewards > 0, p, 1.0 - p))


def exact_objective(theta, probs, alpha, pulls):
    """``J(theta)``: the expected post-adaptation expected reward, by enumeration."""
    acts, rews = _outcomes(theta.shape[0], pulls)

    def one(a, r):
        phi = _inner_update(theta, a, r, alpha)
        return _outcome_prob(theta, a, r, probs) * jnp.dot(jax.nn.softmax(phi), probs)

    return jnp.sum(jax.vmap(one)(jnp.asarray(acts), jnp.asarray(rews)))


def exact_lvc_expectation(theta, probs, alpha, pulls):
    """``E_tau[(I + alpha H_lvc(tau))^T grad V(phi(tau))]`` with ``V(phi) = pi_phi . p`` exact.

    ``H_lvc = 1/M sum_i r_i (grad^2 log pi(a_i) + s_i s_i^T)`` with ``s_i = e_{a_i} - pi`` and
    ``grad^2 log pi = -(diag(pi) - pi pi^T)``.
    """
    acts, rews = _outcomes(theta.shape[0], pulls)
    pi = jax.nn.softmax(theta)
    hess_logp = -(jnp.diag(pi) - jnp.outer(pi, pi))
    value = lambda phi: jnp.dot(jax.nn.softmax(phi), probs)

    def one(a, r):
        s = jax.nn.one_hot(a, theta.shape[0], dtype=theta.dtype) - pi
        h = jnp.mean(r[:, None, None] * (hess_logp[None] + s[:, :, None] * s[:, None, :]), axis=0)
        phi = _inner_update(theta, a, r, alpha)
        jac = jnp.eye(theta.shape[0]) + alpha * h
        return _outcome_prob(theta, a, r, probs) * (jac.T @ jax.grad(value)(phi))

    return jnp.sum(jax.vmap(one)(jnp.asarray(acts), jnp.asarray(rews)), axis=0)


@pytest.fixture(scope="module")
def oracle():
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA, jnp.float64)
        probs = jnp.asarray(PROBS, jnp.float64)
        grad = jax.grad(exact_objective)(theta, probs, ALPHA, INNER_PULLS)
        lvc = exact_lvc_expectation(theta, probs, ALPHA, INNER_PULLS)
        # The part of the exact gradient that comes from *which* inner samples were drawn:
        # sum prob(tau) V(phi(tau)) grad log prob(tau), obtained by freezing phi.
        acts, rews = _outcomes(NUM_ARMS, INNER_PULLS)

        def frozen_phi_objective(th):
            def one(a, r):
                phi = jax.lax.stop_gradient(_inner_update(theta, a, r, ALPHA))
                return _outcome_prob(th, a, r, probs) * jnp.dot(jax.nn.softmax(phi), probs)
            return jnp.sum(jax.vmap(one)(jnp.asarray(acts), jnp.asarray(rews)))

        score_part = jax.grad(frozen_phi_objective)(theta)
        return {"grad": np.asarray(grad), "lvc": np.asarray(lvc), "score_part": np.asarray(score_part)}


def _mc_gradients(estimator):
    """Per-key meta-gradients ``[NUM_KEYS, K]`` of the library's estimator (one vmapped call)."""
    env = BernoulliBandit(num_arms=NUM_ARMS, horizon=1)
    learner = PolicyGradientLearner(
        env,
        TabularPolicy(1, NUM_ARMS),
        PGConfig(num_inner_episodes=INNER_PULLS, num_outer_episodes=OUTER_PULLS, horizon=1,
                 gamma=1.0, baseline="none", standardize_advantages=False),
    )
    config = MAMLConfig(inner_steps=1, inner_lr=ALPHA, estimator=estimator)
    meta_gradient = make_meta_gradient(learner, config)
    meta_params = {"policy": {"logits": jnp.asarray(THETA, jnp.float32)[None, :]}}
    probs = jnp.tile(jnp.asarray(PROBS, jnp.float32), (TASKS_PER_KEY, 1))
    tasks = jax.vmap(lambda p: BanditParams(probs=p, max_steps_in_episode=1))(probs)

    @jax.jit
    def batch(keys):
        return jax.vmap(lambda k: meta_gradient(meta_params, tasks, k)[1]["policy"]["logits"][0])(keys)

    # The meta-loss is minimised: the gradient of the objective is minus its gradient.
    return -np.asarray(batch(jax.random.split(jax.random.PRNGKey(0), NUM_KEYS)), np.float64)


def _z_scores(samples, target):
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return (mean - target) / stderr, mean


def test_oracle_is_a_real_gradient(oracle):
    """Finite differences of the enumerated objective agree with its autodiff gradient."""
    with jax.enable_x64(True):
        probs = jnp.asarray(PROBS)
        eps = 1e-6
        fd = np.array([
            (exact_objective(jnp.asarray(THETA) + eps * e, probs, ALPHA, INNER_PULLS)
             - exact_objective(jnp.asarray(THETA) - eps * e, probs, ALPHA, INNER_PULLS)) / (2 * eps)
            for e in np.eye(NUM_ARMS)
        ])
    np.testing.assert_allclose(fd, oracle["grad"], rtol=1e-6, atol=1e-9)
    # The configuration is chosen so that the sampling (score) part is large.
    assert np.abs(oracle["score_part"]).max() > 0.2 * np.abs(oracle["grad"]).max()


def test_dice_is_unbiased(oracle):
    z, mean = _z_scores(_mc_gradients("dice"), oracle["grad"])
    assert np.all(np.abs(z) < 4.0), f"dice mean {mean} vs exact {oracle['grad']}: z = {z}"


def test_naive_is_biased(oracle):
    z, mean = _z_scores(_mc_gradients("naive"), oracle["grad"])
    assert np.max(np.abs(z)) > 10.0, f"naive mean {mean} vs exact {oracle['grad']}: z = {z}"
    # ... and its bias is the missing sampling term.
    z_missing, _ = _z_scores(_mc_gradients("naive"), oracle["grad"] - oracle["score_part"])
    assert np.all(np.abs(z_missing) < 4.0), z_missing


def test_lvc_matches_its_own_expectation(oracle):
    z, mean = _z_scores(_mc_gradients("lvc"), oracle["lvc"])
    assert np.all(np.abs(z) < 4.0), f"lvc mean {mean} vs its expectation {oracle['lvc']}: z = {z}"
