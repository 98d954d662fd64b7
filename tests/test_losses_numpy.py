"""Loss building blocks against numpy references written here (no optional dependency).

``test_losses_rlax.py`` compares with rlax when it is installed; these references always run:

* discounted returns and GAE(lambda) by their backward recursions, with an episode that
  terminates in the middle of the segment (later steps masked) and one truncated by the horizon
  (the last step bootstraps from ``next_values``);
* masked mean / standardisation and the plain policy-gradient surrogate in numpy;
* :func:`metarl_jax.losses.dice_surrogate`: its value is the mean discounted return, its gradient
  and Hessian are the score-function estimators written out in numpy on a tabular policy, and
  their expectations over every trajectory of a tiny bandit are the exact gradient and Hessian
  of the expected return;
* the (double) Q-learning targets, the TD loss with given targets and the categorical / diagonal
  Gaussian KL divergences in numpy, per example and on a batch, and their shape checks.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import losses

GAMMA, LAM = 0.9, 0.8
E, T = 3, 6


def _np_returns(reward, mask, gamma):
    """``G_t = r_t m_t + gamma G_{t+1}``, ``G_T = 0``."""
    out = np.zeros_like(reward)
    running = np.zeros(reward.shape[:-1])
    for t in reversed(range(reward.shape[-1])):
        running = reward[..., t] * mask[..., t] + gamma * running
        out[..., t] = running
    return out


def _np_gae(reward, values, next_values, done, mask, gamma, lam):
    """``delta_t = r_t + gamma (1 - d_t) V'_t - V_t``; ``A_t = delta_t + gamma lam (1 - d_t) A_{t+1}``, masked."""
    out = np.zeros_like(reward)
    running = np.zeros(reward.shape[:-1])
    for t in reversed(range(reward.shape[-1])):
        not_done = 1.0 - done[..., t]
        delta = reward[..., t] + gamma * not_done * next_values[..., t] - values[..., t]
        running = (delta + gamma * lam * not_done * running) * mask[..., t]
        out[..., t] = running
    return out


def _episodes():
    """Episode 0 runs the whole segment (truncated at T), 1 terminates at step 2, 2 at step 4 (the last
    valid step); steps after a termination are masked. Values of ``T + 1`` states per episode."""
    rng = np.random.default_rng(0)
    reward = rng.normal(size=(E, T))
    values = rng.normal(size=(E, T + 1))
    done = np.zeros((E, T))
    done[1, 2] = done[2, 4] = 1.0
    mask = np.ones((E, T))
    mask[1, 3:] = mask[2, 5:] = 0.0
    return reward, values, done, mask


def test_discounted_returns_and_gae_match_the_backward_recursions():
    """Returns and GAE(lambda) (``lambda`` = 0.8, 0 and 1) against the numpy recursions above.

    Also two closed forms: ``lambda = 0`` gives the masked TD error, and ``lambda = 1`` gives
    ``G_t - V_t`` plus ``gamma^(T-t) V(s_T)`` for the truncated episode (0 for terminated ones).
    """
    reward, values, done, mask = _episodes()

    @jax.jit
    def ours(reward, values, done, mask):
        gae = lambda lam: losses.gae_advantages(reward, values[:, :-1], values[:, 1:], done.astype(bool), mask,
                                                GAMMA, lam)
        return losses.discounted_returns(reward, mask, GAMMA), gae(LAM), gae(0.0), gae(1.0)

    returns, gae, gae0, gae1 = (np.asarray(x, np.float64) for x in ours(
        *(jnp.asarray(x, jnp.float32) for x in (reward, values, done, mask))))
    expected_returns = _np_returns(reward, mask, GAMMA)
    np.testing.assert_allclose(returns, expected_returns, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gae, _np_gae(reward, values[:, :-1], values[:, 1:], done, mask, GAMMA, LAM),
                               rtol=1e-5, atol=1e-5)
    td = (reward + GAMMA * (1 - done) * values[:, 1:] - values[:, :-1]) * mask
    np.testing.assert_allclose(gae0, td, rtol=1e-5, atol=1e-5)
    bootstrap = np.zeros((E, T))
    bootstrap[0] = GAMMA ** (T - np.arange(T)) * values[0, T]  # only the truncated episode bootstraps
    np.testing.assert_allclose(gae1, (expected_returns - values[:, :-1] + bootstrap) * mask, rtol=1e-5, atol=1e-5)
    # By hand, episode 1 (terminates at step 2): G_2 = r_2, G_0 = r_0 + gamma r_1 + gamma^2 r_2; nothing after.
    np.testing.assert_allclose(returns[1, :3], [reward[1, 0] + GAMMA * reward[1, 1] + GAMMA**2 * reward[1, 2],
                                                reward[1, 1] + GAMMA * reward[1, 2], reward[1, 2]], rtol=1e-5)
    np.testing.assert_array_equal(returns[1, 3:], 0.0)


def test_masked_statistics_and_policy_gradient_surrogate_match_numpy():
    """``masked_mean``, ``standardize`` (population std over the valid entries, 0 elsewhere) and
    ``policy_gradient_surrogate = 1/E sum logp A m`` against numpy on the valid entries only."""
    reward, values, _, mask = _episodes()
    x, logp = reward, values[:, :-1]
    mean, standardized, surrogate = (np.asarray(v, np.float64) for v in jax.jit(
        lambda x, logp, m: (losses.masked_mean(x, m), losses.standardize(x, m),
                            losses.policy_gradient_surrogate(logp, x, m)))(
        jnp.asarray(x, jnp.float32), jnp.asarray(logp, jnp.float32), jnp.asarray(mask, jnp.float32)))
    valid = x[mask > 0]
    np.testing.assert_allclose(mean, valid.mean(), rtol=1e-5)
    np.testing.assert_allclose(standardized, np.where(mask > 0, (x - valid.mean()) / valid.std(), 0.0), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(surrogate, np.sum(logp * x * mask) / E, rtol=1e-5)


# ----------------------------------------------------------------------------- DiCE

S, A = 2, 3
THETA = np.array([[0.3, -0.5, 0.1], [-0.2, 0.4, 0.0]])


def _log_softmax(theta):
    return theta - np.log(np.sum(np.exp(theta), axis=-1, keepdims=True))


def _tabular_logp(theta, states, actions):
    """``log pi_theta(a | s) = log softmax(theta[s])[a]`` (jax, the function being differentiated)."""
    return jnp.take_along_axis(jax.nn.log_softmax(theta[states], axis=-1), actions[..., None], axis=-1)[..., 0]


def test_dice_surrogate_value_gradient_and_hessian_are_the_score_function_estimators():
    """On one batch (3 episodes, 4 steps, two terminate early), in numpy:

    value ``1/E sum_{e,t} gamma^t r m``; gradient ``1/E sum_{e,t} gamma^t r_t m_t sum_{u<=t} m_u g_u``
    with ``g_u = d log pi(a_u|s_u) / d theta`` (row ``s_u``: ``e_{a_u} - pi(s_u)``); Hessian
    ``1/E sum_{e,t} gamma^t r_t m_t [(sum_{u<=t} m_u g_u)(sum_{u<=t} m_u g_u)^T + sum_{u<=t} m_u h_u]``
    with ``h_u`` the block ``-(diag(pi) - pi pi^T)`` of state ``s_u``. Per-step causality: a
    reward is weighed by the scores of the steps up to it only.
    """
    gamma, n_ep, horizon = 0.8, 3, 4
    rng = np.random.default_rng(1)
    states = rng.integers(0, S, size=(n_ep, horizon))
    actions = rng.integers(0, A, size=(n_ep, horizon))
    reward = rng.normal(size=(n_ep, horizon))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], np.float64)

    def dice(theta):
        return losses.dice_surrogate(_tabular_logp(theta, states, actions), jnp.asarray(reward, theta.dtype),
                                     jnp.asarray(mask, theta.dtype), gamma)

    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        value, grad, hess = jax.jit(lambda t: (dice(t), jax.grad(dice)(t), jax.hessian(dice)(t)))(theta)
    value, grad, hess = np.asarray(value), np.asarray(grad).reshape(-1), np.asarray(hess).reshape(S * A, S * A)

    pi = np.exp(_log_softmax(THETA))
    weights = gamma ** np.arange(horizon) * reward * mask  # [E, T]
    expected_grad, expected_hess = np.zeros(S * A), np.zeros((S * A, S * A))
    for e in range(n_ep):
        score_sum, hess_sum = np.zeros(S * A), np.zeros((S * A, S * A))
        for t in range(horizon):
            s, a = states[e, t], actions[e, t]
            g = np.zeros((S, A))
            g[s] = np.eye(A)[a] - pi[s]
            h = np.zeros((S, A, S, A))
            h[s, :, s, :] = -(np.diag(pi[s]) - np.outer(pi[s], pi[s]))
            score_sum = score_sum + mask[e, t] * g.reshape(-1)
            hess_sum = hess_sum + mask[e, t] * h.reshape(S * A, S * A)
            expected_grad += weights[e, t] * score_sum / n_ep
            expected_hess += weights[e, t] * (np.outer(score_sum, score_sum) + hess_sum) / n_ep
    np.testing.assert_allclose(value, np.sum(weights) / n_ep, rtol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hess, expected_hess, rtol=1e-10, atol=1e-12)


def test_dice_surrogate_is_unbiased_for_the_gradient_and_hessian_of_the_expected_return():
    """Over every trajectory of a 1-state, 2-action bandit (horizon 3, reward ``R[a_t]``, gamma 0.7):
    ``sum_tau p(tau) grad^k DiCE(tau) = grad^k J`` for k = 0, 1, 2, with ``J(theta) = sum_tau p(tau) R(tau)``
    enumerated exactly (autodiff of the enumeration, not of the surrogate)."""
    gamma, horizon, rewards = 0.7, 3, np.array([1.0, -0.5])
    trajectories = np.array(list(itertools.product(range(2), repeat=horizon)))  # [8, 3]
    discounts = gamma ** np.arange(horizon)

    with jax.enable_x64(True):
        def exact(theta):
            logp = jax.nn.log_softmax(theta)[trajectories]  # [8, 3]
            return jnp.sum(jnp.exp(jnp.sum(logp, axis=1)) * (rewards[trajectories] @ discounts))

        def expected_dice(theta):
            """``sum_tau p(tau) DiCE(tau)`` with ``p(tau)`` held constant: derivatives act on DiCE only."""
            prob = jax.lax.stop_gradient(jnp.exp(jnp.sum(jax.nn.log_softmax(theta)[trajectories], axis=1)))
            per_tau = jax.vmap(lambda a: losses.dice_surrogate(jax.nn.log_softmax(theta)[a][None],
                                                               jnp.asarray(rewards)[a][None],
                                                               jnp.ones((1, horizon)), gamma))(trajectories)
            return jnp.sum(prob * per_tau)

        theta = jnp.asarray([0.4, -0.3])
        both = jax.jit(lambda t: [(f(t), jax.grad(f)(t), jax.hessian(f)(t)) for f in (exact, expected_dice)])(theta)
    (j, gj, hj), (d, gd, hd) = jax.tree.map(np.asarray, both)
    np.testing.assert_allclose(d, j, rtol=1e-12)
    np.testing.assert_allclose(gd, gj, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hd, hj, rtol=1e-10, atol=1e-12)
    assert np.abs(gj).max() > 1e-2 and np.abs(hj).max() > 1e-2


def test_discounted_returns_accept_leading_batch_axes():
    """``[..., T]``: a ``[2, E, T]`` batch gives the numpy recursion per row (the horizon is the last axis)."""
    reward, _, _, mask = _episodes()
    batch_reward, batch_mask = np.stack([reward, -2.0 * reward]), np.stack([mask, mask[::-1]])
    got = np.asarray(losses.discounted_returns(jnp.asarray(batch_reward), jnp.asarray(batch_mask), GAMMA))
    np.testing.assert_allclose(got, _np_returns(batch_reward, batch_mask, GAMMA), rtol=1e-5, atol=1e-6)


def test_linear_feature_baseline_is_the_ridge_fit_of_rllabs_features_in_numpy():
    """rllab's features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` (``o`` clipped to [-10, 10]) built here in
    numpy, ridge ``reg (1 + tr(X^T X) / F)``, solved in float64 over the valid steps only: the baseline is
    ``X w`` on valid steps and 0 on masked ones. Returns are a known function of the features plus noise, so
    the fit is close to them too (a missing or wrong feature would not be)."""
    rng = np.random.default_rng(3)
    n_ep, horizon, dim = 4, 7, 2
    obs = rng.normal(size=(n_ep, horizon, dim)) * 3.0
    obs[0, 0, 0] = 25.0                                   # clipped to 10
    mask = np.ones((n_ep, horizon))
    mask[1, 4:] = mask[3, 2:] = 0.0
    t = np.broadcast_to((np.arange(horizon) / 100.0)[None, :, None], (n_ep, horizon, 1))
    o = np.clip(obs, -10.0, 10.0)
    feats = np.concatenate([o, o * o, t, t**2, t**3, np.ones_like(t)], axis=-1)
    true_w = rng.normal(size=feats.shape[-1])
    returns = feats @ true_w + 0.01 * rng.normal(size=(n_ep, horizon))
    x = (feats * mask[..., None]).reshape(-1, feats.shape[-1])
    xtx = x.T @ x
    ridge = 1e-5 * (1.0 + np.trace(xtx) / xtx.shape[0])
    w = np.linalg.solve(xtx + ridge * np.eye(xtx.shape[0]), x.T @ (returns * mask).reshape(-1))
    expected = (feats @ w) * mask
    got = np.asarray(losses.linear_feature_baseline(jnp.asarray(obs, jnp.float32), jnp.asarray(returns, jnp.float32),
                                                   jnp.asarray(mask, jnp.float32)))
    assert got.shape == (n_ep, horizon)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)
    assert np.all(got[mask == 0] == 0.0)
    valid = mask == 1
    np.testing.assert_allclose(got[valid], returns[valid], atol=0.05)


def test_td_errors_td_loss_and_lvc_values_match_numpy():
    """Values, not only gradients: ``td_errors`` on ``[E, T]`` steps with ``[E, T, A]`` next-state Q-values
    (the max over the last axis), ``td_loss = 1/2`` masked mean of squares, and the LVC surrogate's value
    ``1/E sum_{e,t} A m`` (its magic box is 1 in value)."""
    rng = np.random.default_rng(5)
    reward, _, done, mask = _episodes()
    q_sa, next_q = rng.normal(size=(E, T)), rng.normal(size=(E, T, 4))
    expected_td = reward + GAMMA * (1.0 - done) * next_q.max(-1) - q_sa
    td = np.asarray(losses.td_errors(jnp.asarray(q_sa), jnp.asarray(reward), jnp.asarray(done, bool),
                                     jnp.asarray(next_q), GAMMA))
    np.testing.assert_allclose(td, expected_td, rtol=1e-5, atol=1e-6)
    loss = float(losses.td_loss(jnp.asarray(expected_td), jnp.asarray(mask)))
    np.testing.assert_allclose(loss, 0.5 * (expected_td**2 * mask).sum() / mask.sum(), rtol=1e-5)
    advantages, logp = rng.normal(size=(E, T)), rng.normal(size=(E, T))
    value = float(losses.lvc_surrogate(jnp.asarray(logp), jnp.asarray(advantages), jnp.asarray(mask)))
    np.testing.assert_allclose(value, (advantages * mask).sum() / E, rtol=1e-5, atol=1e-6)


def test_q_learning_targets_td_loss_given_targets_and_kls_match_numpy():
    """``q_learning_targets``: double Q ``y = r + gamma (1 - d) q_value[argmax q_select]`` on ``[E, T, A]``, plain Q
    (one array) ``r + gamma (1 - d) max_a q``, and one transition (``[A] -> []``) equal to its batch entry;
    ``td_loss_given_targets = 1/(2Z) sum m (y - q)^2`` with a given ``Z``; ``categorical_kl`` and ``gaussian_kl``
    (a ``[D]`` log-std broadcast against ``[E, T, D]`` means) against their sums in numpy, per example too."""
    rng = np.random.default_rng(11)
    reward, _, done, mask = _episodes()
    q_select, q_value = rng.normal(size=(E, T, 4)), rng.normal(size=(E, T, 4))
    got = np.asarray(losses.q_learning_targets(jnp.asarray(q_select), jnp.asarray(q_value), jnp.asarray(reward),
                                               jnp.asarray(done, bool), GAMMA))
    chosen = np.take_along_axis(q_value, q_select.argmax(-1)[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, reward + GAMMA * (1.0 - done) * chosen, rtol=1e-5, atol=1e-6)
    plain = np.asarray(losses.q_learning_targets(jnp.asarray(q_value), jnp.asarray(q_value), jnp.asarray(reward),
                                                 jnp.asarray(done), GAMMA))
    np.testing.assert_allclose(plain, reward + GAMMA * (1.0 - done) * q_value.max(-1), rtol=1e-5, atol=1e-6)
    one = losses.q_learning_targets(jnp.asarray(q_select[1, 2]), jnp.asarray(q_value[1, 2]), jnp.asarray(reward[1, 2]),
                                    jnp.asarray(done[1, 2]), GAMMA)
    assert one.shape == () and np.isclose(float(one), got[1, 2], rtol=1e-6)

    q_sa, targets = rng.normal(size=(E, T)), rng.normal(size=(E, T))
    loss = float(losses.td_loss_given_targets(jnp.asarray(q_sa), jnp.asarray(targets), jnp.asarray(mask),
                                              jnp.asarray(float(E))))
    np.testing.assert_allclose(loss, 0.5 * np.sum(mask * (targets - q_sa) ** 2) / E, rtol=1e-5)

    logits_p, logits_q = rng.normal(size=(E, T, 4)), rng.normal(size=(E, T, 4))
    p = np.exp(logits_p) / np.exp(logits_p).sum(-1, keepdims=True)
    q = np.exp(logits_q) / np.exp(logits_q).sum(-1, keepdims=True)
    kl = np.asarray(losses.categorical_kl(jnp.asarray(logits_p), jnp.asarray(logits_q)))
    np.testing.assert_allclose(kl, np.sum(p * np.log(p / q), -1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(losses.categorical_kl(jnp.asarray(logits_p[0, 0]), jnp.asarray(logits_q[0, 0]))),
                               kl[0, 0], rtol=1e-6)

    mp, mq = rng.normal(size=(E, T, 2)), rng.normal(size=(E, T, 2))
    log_sp, log_sq = np.array([0.3, -0.5]), rng.normal(size=(E, T, 2)) * 0.3
    sp, sq = np.exp(log_sp), np.exp(log_sq)
    expected = np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5, -1)
    gauss = np.asarray(losses.gaussian_kl(jnp.asarray(mp), jnp.asarray(log_sp), jnp.asarray(mq), jnp.asarray(log_sq)))
    assert gauss.shape == (E, T)
    np.testing.assert_allclose(gauss, expected, rtol=1e-5, atol=1e-6)
    one = losses.gaussian_kl(jnp.asarray(mp[2, 1]), jnp.asarray(log_sp), jnp.asarray(mq[2, 1]), jnp.asarray(log_sq[2, 1]))
    assert one.shape == () and np.isclose(float(one), expected[2, 1], rtol=1e-5)


def _z(*shape):
    return jnp.zeros(shape)


@pytest.mark.parametrize("call", [
    pytest.param(lambda: losses.q_learning_targets(_z(3, 4), _z(3, 5), _z(3), _z(3), 0.9), id="q-actions-differ"),
    pytest.param(lambda: losses.q_learning_targets(_z(3, 4), _z(3, 4), _z(3), _z(2), 0.9), id="reward-done-differ"),
    pytest.param(lambda: losses.q_learning_targets(_z(3, 4), _z(3, 4), _z(2), _z(2), 0.9), id="q-batch-not-reward"),
    pytest.param(lambda: losses.q_learning_targets(_z(3), _z(3), _z(3), _z(3), 0.9), id="q-without-action-axis"),
    pytest.param(lambda: losses.td_loss_given_targets(_z(3, 4), _z(3, 4), _z(3, 5), _z()), id="td-mask"),
    pytest.param(lambda: losses.td_loss_given_targets(_z(3, 4), _z(4, 3), _z(3, 4), _z()), id="td-targets"),
    pytest.param(lambda: losses.td_loss_given_targets(_z(3, 4), _z(3, 4), _z(3, 4), _z(3)), id="td-normalizer"),
    pytest.param(lambda: losses.categorical_kl(_z(3, 4), _z(3, 5)), id="categorical-actions-differ"),
    pytest.param(lambda: losses.categorical_kl(_z(), _z()), id="categorical-no-action-axis"),
    pytest.param(lambda: losses.gaussian_kl(_z(3, 2), _z(2), _z(4, 2), _z(2)), id="gaussian-means-differ"),
    pytest.param(lambda: losses.gaussian_kl(_z(3, 2), _z(3), _z(3, 2), _z(2)), id="gaussian-log-std-p"),
    pytest.param(lambda: losses.gaussian_kl(_z(3, 2), _z(2), _z(3, 2), _z(5, 2)), id="gaussian-log-std-q"),
])
def test_moved_losses_assert_their_shapes(call):
    """Mismatched shapes raise (chex) instead of broadcasting into a wrong answer or failing deep inside."""
    with pytest.raises(AssertionError):
        call()
