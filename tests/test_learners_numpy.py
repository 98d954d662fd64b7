"""The policy-gradient learner's building blocks against numpy on a fixed CartPole batch with early terminations.

Advantages for every baseline (none, per-step batch mean, the linear feature baseline), with and without
standardisation over the valid steps; the normalisation ``c = E / sum(mask)`` (finite on an empty batch); the
inner loss's value; the DiCE score sum of the one-pass hook; the objective estimate's scale. Independent
answers: numpy recursions and formulas written here (the linear baseline's own numpy check is in
``test_losses_numpy.py``).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import losses
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner, pg_advantages, surrogate_scale
from metarl_jax.networks import CategoricalPolicy
from metarl_jax.rollout import rollout
from metarl_jax.tasks import make_family, sample_tasks

E, T, GAMMA = 6, 30, 0.97


@pytest.fixture(scope="module")
def batch():
    family = make_family("cartpole", horizon=T)
    policy = CategoricalPolicy(num_actions=2, hidden_sizes=(8,))
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(4), x.shape),
                          policy.init(jax.random.PRNGKey(0), family.obs_dim()))
    task = jax.tree.map(lambda x: x[0], sample_tasks(family, jax.random.PRNGKey(1), 1))
    traj = jax.jit(lambda k: rollout(k, family, policy, params, task, E, T))(jax.random.PRNGKey(2))
    mask = np.asarray(traj.mask, np.float64)
    assert 0 < mask.sum() < E * T  # some episodes end early: the mask matters
    return family, policy, params, traj


def _np_returns(reward, mask, gamma):
    out, running = np.zeros_like(reward), np.zeros(reward.shape[0])
    for t in reversed(range(reward.shape[1])):
        running = reward[:, t] * mask[:, t] + gamma * running
        out[:, t] = running
    return out


def _np_standardize(x, mask):
    mean = (x * mask).sum() / mask.sum()
    std = np.sqrt((((x - mean) ** 2) * mask).sum() / mask.sum())
    return (x - mean) / (std + 1e-8) * mask


@pytest.mark.parametrize("baseline", ["none", "mean", "linear"])
@pytest.mark.parametrize("standardize", [False, True])
def test_advantages_match_numpy(batch, baseline, standardize):
    """``A = (G - b) * mask``, then (optionally) ``(A - mean) / (std + 1e-8) * mask`` over the valid steps."""
    _, _, _, traj = batch
    reward, mask = np.asarray(traj.reward, np.float64), np.asarray(traj.mask, np.float64)
    returns = _np_returns(reward, mask, GAMMA)
    if baseline == "mean":
        b = (returns * mask).sum(0, keepdims=True) / np.maximum(mask.sum(0, keepdims=True), 1.0)
    elif baseline == "linear":
        b = np.asarray(losses.linear_feature_baseline(traj.obs, jnp.asarray(returns, jnp.float32), traj.mask))
    else:
        b = 0.0
    expected = (returns - b) * mask
    if standardize:
        expected = _np_standardize(expected, mask)
    got = np.asarray(pg_advantages(traj, GAMMA, baseline, standardize))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
    if baseline != "none":  # the baseline changes the advantages
        without = _np_standardize(returns * mask, mask) if standardize else returns * mask
        assert np.abs(got - without).max() > 1e-2


def test_step_normalisation_inner_loss_and_score_sum_match_numpy(batch):
    """``c = E / sum(mask)`` (``E`` on an all-masked batch, not a division by zero; 1 for ``"episode"``);
    ``L_in = -c/E sum(logp * A * mask)``; the one-pass hook's loss equals ``inner_loss`` and its score sum
    equals ``sum(logp * mask)`` and ``log_prob_of_data`` (masked steps excluded)."""
    family, policy, params, traj = batch
    mask = np.asarray(traj.mask, np.float64)
    np.testing.assert_allclose(float(surrogate_scale(traj, "step")), E / mask.sum(), rtol=1e-6)
    assert float(surrogate_scale(traj, "episode")) == 1.0
    empty = traj.replace(mask=jnp.zeros_like(traj.mask))
    assert float(surrogate_scale(empty, "step")) == pytest.approx(E)
    learner = PolicyGradientLearner(family, policy, PGConfig(num_inner_episodes=E, horizon=T, gamma=GAMMA,
                                                             normalize="step"))
    logp = np.asarray(policy.log_prob(params, traj.obs, traj.action), np.float64)
    adv = np.asarray(learner.advantages(traj), np.float64)
    expected_loss = -(logp * adv * mask).sum() / E * (E / mask.sum())
    np.testing.assert_allclose(float(learner.inner_loss(params, traj)), expected_loss, rtol=1e-4, atol=1e-6)
    loss, _, score_sum = learner.inner_grad_and_log_prob(params, traj)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(score_sum), (logp * mask).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(learner.log_prob_of_data(params, traj)), (logp * mask).sum(), rtol=1e-5)


def test_objective_estimate_is_the_mean_return_on_the_surrogates_scale(batch):
    """``objective_of`` (what ``collect_outer`` stores as ``OuterBatch.objective``):
    ``V_hat = mean_e G_e * c / (std(raw A) + 1e-8)`` with the raw (unstandardised) advantages' std over the
    valid steps; without standardisation just ``mean_e G_e * c``. Configs and learners are frozen."""
    family, policy, _, traj = batch
    reward, mask = np.asarray(traj.reward, np.float64), np.asarray(traj.mask, np.float64)
    # No baseline: the raw advantages (the returns) have a clearly non-zero mean, which the std must remove.
    config = PGConfig(num_inner_episodes=E, horizon=T, gamma=GAMMA, normalize="step", baseline="none")
    learner = PolicyGradientLearner(family, policy, config)
    value = (reward * mask * GAMMA ** np.arange(T)).sum(1).mean() * E / mask.sum()
    returns = _np_returns(reward, mask, GAMMA)
    raw = returns * mask
    mean = (raw * mask).sum() / mask.sum()
    std = np.sqrt((((raw - mean) ** 2) * mask).sum() / mask.sum())
    assert mean > 1.0
    np.testing.assert_allclose(float(learner.objective_of(traj)), value / (std + 1e-8), rtol=2e-4)
    plain = PolicyGradientLearner(family, policy, dataclasses.replace(config, standardize_advantages=False))
    np.testing.assert_allclose(float(plain.objective_of(traj)), value, rtol=1e-5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):  # a learner is a value too (hashable, jit-static)
        learner.config = plain.config
