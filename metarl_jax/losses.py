"""Pure loss functions and the quantities they are built from.

Conventions: ``[E, T]`` arrays hold episodes x time steps of one task and
``mask`` marks the valid steps. Functions that take ``[..., T]`` work on any
leading batch shape. Losses are *to be minimised*; surrogates are objectives
whose gradient is the estimator named (to be maximised). Composing a new loss
is adding functions: see ``docs/losses.md``.

Surrogates for the policy gradient (``logp[e, t] = log pi_theta(a_t | s_t)``,
``A`` an advantage treated as a constant):

* plain / "naive":  ``S(theta) = 1/E sum_e sum_t logp[e,t] A[e,t]``; its gradient
  is the REINFORCE estimate, its Hessian ``1/E sum sum (d^2 logp) A`` lacks the
  score-function outer products;
* LVC (Rothfuss et al. 2019): ``1/E sum_e sum_t exp(logp - stop(logp)) A``:
  same value of the gradient, Hessian ``1/E sum sum (d^2 logp + d logp d logp^T) A``;
* DiCE (Foerster et al. 2018): :func:`magic_box` turns a sum of log-probs into a
  term whose every derivative is the score-function estimator.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from metarl_jax import networks

HIGHEST = jax.lax.Precision.HIGHEST


def magic_box(x: jax.Array) -> jax.Array:
    """DiCE's magic box ``exp(x - stop_gradient(x))``: value 1, derivative ``magic_box(x) dx``."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def discount_matrix(horizon: int, gamma: float, dtype=jnp.float32) -> jax.Array:
    """``D[s, t] = gamma^(s - t)`` for ``s >= t`` else 0: ``[T, T]``.

    Then ``(x @ D)[t] = sum_{s >= t} gamma^(s-t) x[s]`` (a discounted reverse cumulative sum).
    """
    idx = jnp.arange(horizon)
    power = (idx[:, None] - idx[None, :]).astype(dtype)
    return jnp.where(power >= 0, jnp.asarray(gamma, dtype) ** jnp.maximum(power, 0), 0.0).astype(dtype)


def discounted_returns(rewards: jax.Array, mask: jax.Array, gamma: float) -> jax.Array:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(s-t) r_s m_s``: ``[..., T] -> [..., T]``."""
    horizon = rewards.shape[-1]
    return jnp.matmul(rewards * mask, discount_matrix(horizon, gamma, rewards.dtype), precision=HIGHEST)


def gae_advantages(
    rewards: jax.Array, values: jax.Array, next_values: jax.Array, done: jax.Array, mask: jax.Array,
    gamma: float, lam: float,
) -> jax.Array:
    """GAE(lambda) (Schulman et al. 2016): ``A_t = sum_{s>=t} (gamma lam)^(s-t) delta_s``.

    ``delta_s = r_s + gamma (1 - done_s) V(s_{s+1}) - V(s_s)``, masked; all ``[..., T]``.
    Within a fixed-length segment, a non-terminated last step bootstraps from
    ``next_values``. Terminated steps cut the sum because later steps are masked.
    """
    delta = (rewards + gamma * (1.0 - done.astype(rewards.dtype)) * next_values - values) * mask
    return jnp.matmul(delta, discount_matrix(rewards.shape[-1], gamma * lam, rewards.dtype), precision=HIGHEST)


def td_errors(q_sa: jax.Array, reward: jax.Array, done: jax.Array, next_q: jax.Array, gamma: float) -> jax.Array:
    """One-step Q-learning TD error ``r + gamma (1 - done) max_a' Q(s', a') - Q(s, a)``.

    ``q_sa``, ``reward``, ``done``: ``[...]``; ``next_q``: ``[..., A]``.
    """
    target = reward + gamma * (1.0 - done.astype(q_sa.dtype)) * jnp.max(next_q, axis=-1)
    return target - q_sa


def q_learning_targets(
    q_t_selector: jax.Array, q_t_value: jax.Array, r_t: jax.Array, done_t: jax.Array, gamma: float
) -> jax.Array:
    """(Double) Q-learning bootstrap target ``y_t = r_t + gamma (1 - d_t) q_t_value[argmax_a q_t_selector[a]]``.

    Per transition: ``q_t_selector``, ``q_t_value``: ``[A]``, the next state's action
    values used to choose and to value the next action (the same array for plain
    Q-learning, where ``y_t = r_t + gamma (1 - d_t) max_a Q(s_t, a)``; online and
    target-network values for double Q-learning); ``r_t``, ``done_t``: ``[]`` -> ``[]``.
    Leading batch axes ``[...]`` (the same on every argument) are carried through,
    so a batch needs no ``vmap``. The argmax has no gradient; ``y`` is differentiable
    in ``q_t_value`` (the caller stops it if it wants a fixed target).
    """
    chex.assert_equal_shape([q_t_selector, q_t_value])
    chex.assert_equal_shape([r_t, done_t])
    chex.assert_shape(q_t_value, (*jnp.shape(r_t), None))
    a_star = jnp.argmax(q_t_selector, axis=-1)
    next_v = jnp.take_along_axis(q_t_value, a_star[..., None], axis=-1)[..., 0]
    return r_t + gamma * (1.0 - done_t.astype(next_v.dtype)) * next_v


def td_loss_given_targets(
    qa_tm1: jax.Array, target_tm1: jax.Array, mask: jax.Array, normalizer: jax.Array
) -> jax.Array:
    """``1/(2Z) sum_i m_i (y_i - Q(s_i, a_i))^2``: ``[...], [...], [...], [] -> []``.

    ``qa_tm1``: the values ``Q(s_i, a_i)`` of the actions taken; ``target_tm1``: their
    targets ``y_i`` (e.g. :func:`q_learning_targets`), used as given: not stopped, the
    caller decides whether the loss differentiates them; ``mask``: valid entries;
    ``normalizer``: ``Z`` (the number of valid steps, or of episodes).
    """
    chex.assert_equal_shape([qa_tm1, target_tm1, mask])
    chex.assert_rank(normalizer, 0)
    return 0.5 * jnp.sum(mask * jnp.square(target_tm1 - qa_tm1)) / normalizer


def categorical_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """``KL(p || q) = sum_a p_a (log p_a - log q_a)`` with ``p = softmax(logits_p)``, ``q = softmax(logits_q)``.

    Per example ``[A], [A] -> []``; leading batch axes ``[...]`` (the same on both) are
    carried through. Differentiable in both arguments (stop one if it is a fixed reference).
    """
    chex.assert_shape(logits_p, (..., None))  # at least one axis: the last is summed over
    chex.assert_equal_shape([logits_p, logits_q])
    return networks.kl_from_log_probs(jax.nn.log_softmax(logits_p, axis=-1), jax.nn.log_softmax(logits_q, axis=-1))


def gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array) -> jax.Array:
    """KL between diagonal Gaussians ``p = N(mu_p, diag s_p^2)`` and ``q = N(mu_q, diag s_q^2)``.

    ``KL(p || q) = sum_i [ log s_q,i - log s_p,i + (s_p,i^2 + (mu_p,i - mu_q,i)^2) / (2 s_q,i^2) - 1/2 ]``.
    Per example ``mean_*``: ``[D]`` -> ``[]``; leading batch axes ``[...]`` (the same on
    both means) are carried through, and the log-stds broadcast against the means
    (e.g. a state-independent ``[D]`` log-std against ``[..., D]`` means).
    """
    chex.assert_shape(mean_p, (..., None))  # at least one axis: the last is summed over
    chex.assert_equal_shape([mean_p, mean_q])
    chex.assert_is_broadcastable(jnp.shape(log_std_p), jnp.shape(mean_p))
    chex.assert_is_broadcastable(jnp.shape(log_std_q), jnp.shape(mean_p))
    return networks.diag_gaussian_kl(mean_p, log_std_p, mean_q, log_std_q)


def linear_feature_baseline(
    obs: jax.Array, returns: jax.Array, mask: jax.Array, reg: float = 1e-5
) -> jax.Array:
    """rllab's linear feature baseline, fitted in closed form on the batch.

    Features per step: ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]`` with
    ``o = clip(obs, -10, 10)``; ridge regression
    ``w = (X^T X + reg I)^{-1} X^T G`` over the valid steps; the baseline is
    ``X w``. Shapes: obs ``[E, T, D]``, returns and mask ``[E, T]`` -> ``[E, T]``.
    The fit is a function of the data only (no gradient flows through it).
    """
    obs, returns, mask = jax.lax.stop_gradient((obs, returns, mask))
    E, T, _ = obs.shape
    o = jnp.clip(obs, -10.0, 10.0)
    al = jnp.broadcast_to((jnp.arange(T, dtype=obs.dtype) / 100.0)[None, :, None], (E, T, 1))
    feats = jnp.concatenate([o, o * o, al, al**2, al**3, jnp.ones_like(al)], axis=-1)
    x = (feats * mask[..., None]).reshape(E * T, -1)
    y = (returns * mask).reshape(E * T)
    xtx = jnp.matmul(x.T, x, precision=HIGHEST)
    # Scale the ridge term with the data so the solve stays well posed in float32.
    ridge = reg * (1.0 + jnp.trace(xtx) / xtx.shape[0])
    w = jnp.linalg.solve(xtx + ridge * jnp.eye(xtx.shape[0], dtype=x.dtype), jnp.matmul(x.T, y, precision=HIGHEST))
    return jnp.einsum("etf,f->et", feats, w, precision=HIGHEST) * mask


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def standardize(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``(x - mean) / (std + eps)`` over the valid entries; invalid entries set to 0."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean(jnp.square(x - mean), mask))
    return (x - mean) / (std + eps) * mask


def policy_gradient_surrogate(
    logp: jax.Array, advantages: jax.Array, mask: jax.Array, *, stop_gradient: bool = True
) -> jax.Array:
    """``1/E sum_e sum_t logp[e,t] A[e,t] m[e,t]`` (advantages held constant): ``[E,T] -> []``.

    ``stop_gradient=False`` leaves ``A`` differentiable: for callers that hold it
    constant by passing it as an argument the inner gradient does not
    differentiate, while an outer derivative may still flow through it (e.g.
    advantages from a critic, :mod:`metarl_jax.learners.actor_critic`).
    """
    if stop_gradient:
        advantages = jax.lax.stop_gradient(advantages)
    return jnp.sum(logp * advantages * mask) / logp.shape[0]


def lvc_surrogate(
    logp: jax.Array, advantages: jax.Array, mask: jax.Array, *, stop_gradient: bool = True
) -> jax.Array:
    """ProMP's low-variance curvature surrogate ``1/E sum sum pi/stop(pi) A``: ``[E,T] -> []``.

    Value and gradient equal :func:`policy_gradient_surrogate`'s at the
    sampling parameters; its Hessian adds the per-step score outer products.
    ``stop_gradient`` as in :func:`policy_gradient_surrogate`.
    """
    if stop_gradient:
        advantages = jax.lax.stop_gradient(advantages)
    return jnp.sum(magic_box(logp) * advantages * mask) / logp.shape[0]


def dice_surrogate(logp: jax.Array, rewards: jax.Array, mask: jax.Array, gamma: float = 1.0) -> jax.Array:
    """DiCE objective of a batch of episodes with per-step causality.

    ``1/E sum_e sum_t magic_box(sum_{s<=t} logp[e,s]) gamma^t r[e,t]``: its value is the mean
    discounted return, and derivatives of every order are unbiased
    score-function estimates of the derivatives of the expected return.
    """
    cum_logp = jnp.cumsum(logp * mask, axis=-1)
    discounts = gamma ** jnp.arange(rewards.shape[-1], dtype=rewards.dtype)
    return jnp.sum(magic_box(cum_logp) * jax.lax.stop_gradient(rewards) * discounts * mask) / logp.shape[0]


def entropy_bonus(entropy: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean policy entropy over the valid steps: ``[E, T] -> []``."""
    return masked_mean(entropy, mask)


def value_loss(values: jax.Array, targets: jax.Array, mask: jax.Array, *, stop_gradient: bool = True) -> jax.Array:
    """``1/2 mean (V - stop(target))^2`` over the valid steps.

    ``stop_gradient=False`` leaves the targets differentiable (see
    :func:`policy_gradient_surrogate`).
    """
    if stop_gradient:
        targets = jax.lax.stop_gradient(targets)
    return 0.5 * masked_mean(jnp.square(values - targets), mask)


def td_loss(td: jax.Array, mask: jax.Array) -> jax.Array:
    """``1/2 mean delta^2`` over the valid entries."""
    return 0.5 * masked_mean(jnp.square(td), mask)
