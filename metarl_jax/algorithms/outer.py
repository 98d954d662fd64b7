"""Outer update rules beside optax: TRPO on the meta-objective, and ProMP.

Both rules *sample once, then optimise a surrogate on fixed data*. Notation as in
:mod:`metarl_jax.algorithms.maml`: ``theta`` the meta-parameters, ``tau_k ~ pi_{phi_k}`` the
inner data of inner step ``k`` (``phi_0 = theta``), ``tau' ~ pi_{phi_K}`` the
outer data, ``A`` the outer advantages (``learner.advantages(tau')``, constants).

1. :func:`sample_meta_batch` runs the adaptation exactly as :func:`maml.adapt`
   does (fresh data from ``pi_{phi_k}`` at every step, same key plumbing as
   :func:`maml.meta_loss`) and keeps, as constants, every ``tau_k``, the outer
   data ``tau'``, ``A`` and ``log pi_{phi_K^old}(a' | s')``.
2. :func:`adapt_on_data` recomputes ``phi_K(theta)`` on the *fixed* inner data,
   differentiably (second order through the updates unless
   ``config.first_order``): ``phi_{k+1} = phi_k - alpha * grad L_in(phi_k, tau_k)``.
   At ``theta = theta_old`` it reproduces the sampled ``phi_K`` exactly.
3. TRPO (Schulman et al. 2015) as MAML's outer optimiser (Finn et al. 2017;
   ``pytorch-maml-rl``'s ``MetaLearner``)::

       L(theta)  = 1/N sum_i  mean_{t in tau'_i} r_t(theta) A_t,
                   r_t = exp(log pi_{phi_i(theta)}(a_t|s_t) - log pi_old(a_t|s_t))
       KL(theta) = 1/N sum_i  mean_{s in tau'_i} KL(pi_{phi_i^old}(.|s) || pi_{phi_i(theta)}(.|s))
       maximise L  subject to  KL <= delta.

   With ``g = grad L(theta_old)`` and ``F = hess KL(theta_old)`` (the Fisher of
   the adapted policies pulled back through the adaptation, ``J^T F_phi J``),
   :func:`conjugate_gradient` solves ``(F + lambda I) x = g`` from
   Hessian-vector products (forward-over-reverse through the adaptation), the
   full step is ``s = sqrt(2 delta / x^T (F + lambda I) x) x`` (so that the
   quadratic model of the KL equals ``delta``), and a backtracking line search
   takes the first ``theta_old + beta^j s`` (``j = 0 .. J-1``) whose surrogate
   improves and whose exact KL is ``<= delta``; if none does, no step is taken.
4. ProMP (Rothfuss et al. 2019): inner steps on the LVC surrogate
   (``MAMLConfig(estimator="lvc")``) and the outer objective::

       J(theta) = 1/N sum_i mean_{t in tau'_i} min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)
                  - eta * 1/N sum_i mean_{s in tau_{i,0}} KL(pi_{theta_old}(.|s) || pi_theta(.|s))

   (the KL penalty on the pre-adaptation data ``tau_0``), maximised by
   ``num_outer_steps`` Adam steps on the same sampled meta-batch.

Both are one pure, jittable ``state -> (state, metrics)`` function per
meta-iteration (:func:`make_trpo_step`, :func:`make_promp_step`) over
:class:`maml.MetaTrainState`, with ``metrics["grad_finite"]`` as MAML's step
reports it, so :mod:`metarl_jax.training.loop`'s loop (scan, ``metrics.jsonl``,
checkpoints, resume, non-finite policy) runs them: :func:`metarl_jax.training.loop.meta_train_outer`.

Where this differs from the reference implementations, on purpose or for now:

* the KL is ``KL(old || new)`` as in TRPO's paper; ``pytorch-maml-rl`` constrains
  ``KL(new || old)``. Both have the same Hessian at ``theta_old`` (so the same
  natural step); only the line search's acceptance differs, at third order.
* ProMP's reference code importance-weights the inner LVC step by
  ``pi_theta / pi_theta_old`` once ``theta`` has moved during the outer steps,
  and can adapt ``eta`` towards a target KL; here the inner step is the
  learner's own inner loss on the fixed data (as TRPO's re-adaptation in
  ``pytorch-maml-rl`` does) and ``eta`` is fixed.

Learner requirements beyond :func:`maml.adapt`'s: ``policy`` (for the closed-form
KL), ``log_probs(params, traj) -> [E, T]`` and ``advantages(traj) -> [E, T]`` (a
function of the data only) -- the :class:`learners.PolicyGradientLearner` interface.
The DiCE score term is not part of these surrogates (as in ``pytorch-maml-rl``
and ProMP): with ``estimator="dice"`` the inner step is the plain surrogate,
i.e. the same as ``"naive"``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from metarl_jax import losses
from metarl_jax.algorithms.maml import (MAMLConfig, MetaTrainState, init_train_state, keep_if_finite, map_tasks,
                             sgd_inner_update, tree_all_finite)
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import check_int, check_real

# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class TRPOConfig:
    """Trust-region natural-gradient step on the meta-objective.

    Attributes:
      max_kl: ``delta``, the trust region: mean KL between the old and new
        adapted policies on the outer observations.
      cg_iters: conjugate-gradient iterations for ``(F + lambda I) x = g``.
      cg_damping: ``lambda``, Tikhonov damping added to the KL Hessian.
      ls_max_steps: ``J``, number of step fractions tried, ``beta^0 .. beta^(J-1)``.
      ls_backtrack_ratio: ``beta`` in ``(0, 1)``.
    """

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 0.01
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8

    def __post_init__(self):
        check_real("max_kl", self.max_kl, minimum=0, min_open=True)
        check_int("cg_iters", self.cg_iters, minimum=1)
        check_real("cg_damping", self.cg_damping, minimum=0)
        check_int("ls_max_steps", self.ls_max_steps, minimum=1)
        check_real("ls_backtrack_ratio", self.ls_backtrack_ratio, minimum=0, maximum=1, min_open=True, max_open=True)


@dataclasses.dataclass(frozen=True)
class ProMPConfig:
    """ProMP's outer objective and optimiser.

    Attributes:
      clip_eps: ``eps`` of the clipped likelihood ratio, in ``(0, 1)``.
      kl_coef: ``eta >= 0``, weight of the pre-adaptation KL penalty.
      num_outer_steps: Adam steps on each sampled meta-batch.
      outer_lr: Adam's learning rate.
    """

    clip_eps: float = 0.3
    kl_coef: float = 0.0005
    num_outer_steps: int = 5
    outer_lr: float = 1e-3

    def __post_init__(self):
        check_real("clip_eps", self.clip_eps, minimum=0, maximum=1, min_open=True, max_open=True)
        check_real("kl_coef", self.kl_coef, minimum=0)
        check_int("num_outer_steps", self.num_outer_steps, minimum=1)
        check_real("outer_lr", self.outer_lr, minimum=0, min_open=True)


def _check_learner(learner) -> None:
    missing = [name for name in ("policy", "log_probs", "advantages", "collect", "collect_outer", "mean_return")
               if not hasattr(learner, name)]
    if missing:
        raise ValueError(
            f"learner={type(learner).__name__} is invalid for TRPO/ProMP: it lacks {missing}; "
            "the outer rules need the PolicyGradientLearner interface (policy, log_probs(params, traj), "
            "advantages(traj) from the data alone)"
        )


# ----------------------------------------------------------------------------- KL divergences


def categorical_kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
    """``KL(p || q) = sum_a p_a (log p_a - log q_a)``: ``[..., A], [..., A] -> [...]``."""
    log_p = jax.nn.log_softmax(logits_p, axis=-1)
    log_q = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array) -> jax.Array:
    """KL between diagonal Gaussians, summed over the last axis: ``[..., D] -> [...]``.

    ``KL(p || q) = sum_i [ log s_q,i - log s_p,i + (s_p,i^2 + (mu_p,i - mu_q,i)^2) / (2 s_q,i^2) - 1/2 ]``;
    the log-stds broadcast against the means.
    """
    var_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    maha = jnp.square(mean_p - mean_q) * jnp.exp(-2.0 * log_std_q)  # [..., D]
    return jnp.sum((log_std_q - log_std_p) + 0.5 * (var_ratio + maha) - 0.5, axis=-1)


def kl_divergence(policy, params_old, params_new, obs: jax.Array) -> jax.Array:
    """``KL(pi_old(.|s) || pi_new(.|s))`` per observation, closed form: ``[..., obs_dim] -> [...]``.

    ``params_old`` is held constant (``stop_gradient``). Dispatch: a policy's own
    ``kl_divergence(params_old, params_new, obs)`` method if it has one; policies
    with ``logits(params, obs)`` (categorical, tabular) use :func:`categorical_kl`;
    policies with ``mean(params, obs)`` and ``params["log_std"]`` (Gaussian) use
    :func:`gaussian_kl`.
    """
    params_old = jax.lax.stop_gradient(params_old)
    if hasattr(policy, "kl_divergence"):
        return policy.kl_divergence(params_old, params_new, obs)
    if hasattr(policy, "logits"):
        return categorical_kl(policy.logits(params_old, obs), policy.logits(params_new, obs))
    if hasattr(policy, "mean") and isinstance(params_new, dict) and "log_std" in params_new:
        return gaussian_kl(policy.mean(params_old, obs), params_old["log_std"],
                           policy.mean(params_new, obs), params_new["log_std"])
    raise TypeError(
        f"kl_divergence has no closed form for policy {type(policy).__name__}: give it a "
        "kl_divergence(params_old, params_new, obs) method, logits(params, obs), or mean(params, obs) "
        "with params['log_std']"
    )


# ----------------------------------------------------------------------------- conjugate gradient


def _vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _axpy(alpha, x, y):
    """``alpha * x + y`` on pytrees."""
    return jax.tree.map(lambda a, b: alpha * a + b, x, y)


def conjugate_gradient(
    hvp: Callable[[Any], Any], b, iters: int = 10, damping: float = 0.0, tol: float = 1e-10
):
    """Solve ``(H + damping I) x = b`` for symmetric positive (semi-)definite ``H``.

    ``hvp(v) = H v`` maps a pytree (or array) like ``b`` to one like ``b``; ``H``
    is never formed. Plain CG from ``x_0 = 0``: ``r_0 = p_0 = b``, and per iteration
    ``alpha = r.r / p.(H + damping I)p``, ``x += alpha p``, ``r -= alpha (H + damping I) p``,
    ``p = r + (r'.r' / r.r) p``. Stops after ``iters`` iterations or once
    ``||r|| <= tol ||b||``. A ``lax.while_loop``: pure and jittable (not
    reverse-differentiable, which an outer update does not need).
    """
    def matvec(v):
        return _axpy(damping, v, hvp(v))

    b_norm2 = _vdot(b, b)
    threshold = (tol**2) * b_norm2

    def cond(carry):
        i, _, _, _, rr = carry
        return (i < iters) & (rr > threshold)

    def body(carry):
        i, x, r, p, rr = carry
        hp = matvec(p)
        php = _vdot(p, hp)
        alpha = jnp.where(php > 0, rr / jnp.where(php > 0, php, 1.0), 0.0)
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, hp, r)
        rr_new = _vdot(r, r)
        p = _axpy(rr_new / jnp.where(rr > 0, rr, 1.0), p, r)
        return i + 1, x, r, p, rr_new

    x0 = jax.tree.map(jnp.zeros_like, b)
    init = (jnp.zeros((), jnp.int32), x0, b, b, b_norm2)
    _, x, _, _, _ = jax.lax.while_loop(cond, body, init)
    return x


# ----------------------------------------------------------------------------- sampling on fixed data


@struct.dataclass
class MetaBatch:
    """One sampled meta-batch, all constants. ``N`` tasks, ``K`` inner steps.

    Attributes:
      old_meta_params: ``theta_old``, the meta-parameters the batch was sampled with.
      inner_data: the inner trajectories, leaves ``[N, K, E, T, ...]`` (``tau_{i,k} ~ pi_{phi_{i,k}}``).
      outer_data: the outer trajectories, leaves ``[N, E', T, ...]`` (``tau'_i ~ pi_{phi_{i,K}}``).
      advantages: ``learner.advantages(tau'_i)``: ``[N, E', T]``.
      old_log_probs: ``log pi_{phi_{i,K}}(a'|s')``: ``[N, E', T]``.
      adapted_params: ``phi_{i,K}`` (old), a pytree with leading axis ``N``.
      inner_returns: mean undiscounted return of each inner batch: ``[N, K]``.
      post_returns: mean undiscounted return of the outer batch: ``[N]``.
    """

    old_meta_params: Any
    inner_data: Any
    outer_data: Any
    advantages: jax.Array
    old_log_probs: jax.Array
    adapted_params: Any
    inner_returns: jax.Array
    post_returns: jax.Array

    @property
    def num_tasks(self) -> int:
        return self.advantages.shape[0]

    def metrics(self) -> dict:
        """Adaptation statistics named as :func:`maml.meta_loss` names them."""
        return {
            "pre_adaptation_return": jnp.mean(self.inner_returns[:, 0]),
            "post_adaptation_return": jnp.mean(self.post_returns),
            "returns_per_step": jnp.mean(
                jnp.concatenate([self.inner_returns, self.post_returns[:, None]], axis=1), axis=0),
            "per_task_post_adaptation_return": self.post_returns,
        }


def _inner_gradient(learner, config: MAMLConfig, phi, data):
    """The inner gradient exactly as :func:`maml.adapt` takes it (``inner_grad`` hook, ``first_order``)."""
    if hasattr(learner, "inner_grad"):
        loss, grads = learner.inner_grad(phi, data, config.estimator)
    else:
        loss, grads = jax.value_and_grad(learner.inner_loss)(phi, data, config.estimator)
    if config.first_order:
        grads = jax.lax.stop_gradient(grads)
    return loss, grads


def _inner_lr(config: MAMLConfig, meta_params):
    return meta_params.get("inner_lr", config.inner_lr)


def sample_meta_batch(learner, config: MAMLConfig, meta_params: dict, tasks, key: jax.Array) -> MetaBatch:
    """Sample the inner and outer data of every task once; everything returned is constant.

    For task ``i`` (vmapped): ``K`` inner steps as :func:`maml.adapt` runs them
    (``tau_k ~ pi_{phi_k}`` with a fresh key per step, SGD with ``inner_lr``),
    then ``tau' ~ pi_{phi_K}``. The keys follow :func:`maml.meta_loss`
    (``split(key, N)`` per task, then ``(key_inner, key_outer)``), so the data equal
    those of ``maml.meta_loss(..., tasks, key)``. ``tasks`` has a leading axis ``N``.
    """
    _check_learner(learner)
    meta_params = jax.lax.stop_gradient(meta_params)
    num_tasks = num_tasks_in(tasks)
    theta = meta_params["policy"]
    lr = _inner_lr(config, meta_params)

    def per_task(task_and_key):
        task, task_key = task_and_key
        key_inner, key_outer = jax.random.split(task_key)

        def inner_step(phi, step_key):
            data = learner.collect(step_key, phi, task)
            _, grads = _inner_gradient(learner, config, phi, data)
            return sgd_inner_update(phi, grads, lr), (data, learner.mean_return(data))

        phi, (inner_data, inner_returns) = jax.lax.scan(
            inner_step, theta, jax.random.split(key_inner, config.inner_steps))
        outer = learner.collect_outer(key_outer, phi, task)
        return (inner_data, outer, learner.advantages(outer), learner.log_probs(phi, outer), phi,
                inner_returns, learner.mean_return(outer))

    keys = jax.random.split(key, num_tasks)
    out = map_tasks(per_task, (tasks, keys), num_tasks, config.task_chunk)
    inner_data, outer, adv, logp, phi, inner_returns, post_returns = jax.lax.stop_gradient(out)
    chex.assert_rank(adv, 3)
    chex.assert_equal_shape([adv, logp, outer.mask])
    chex.assert_shape(inner_returns, (num_tasks, config.inner_steps))
    return MetaBatch(meta_params, inner_data, outer, adv, logp, phi, inner_returns, post_returns)


def adapt_on_data(learner, config: MAMLConfig, meta_params: dict, inner_data):
    """``phi_K(theta)`` from ``K`` SGD inner steps on fixed data of one task (leaves ``[K, E, T, ...]``).

    ``phi_{k+1} = phi_k - alpha * grad L_in(phi_k, tau_k)`` with the data held
    fixed: a differentiable function of ``meta_params`` (``theta`` and, for
    Meta-SGD, ``alpha``), second order through the updates unless
    ``config.first_order``; the inner gradient is taken as in :func:`maml.adapt`
    (``learner.inner_grad`` hook, ``config.estimator``'s inner loss, ``config.remat``).
    """
    chex.assert_tree_shape_prefix(inner_data, (config.inner_steps,))
    lr = _inner_lr(config, meta_params)

    def inner_step(phi, data):
        _, grads = _inner_gradient(learner, config, phi, data)
        return sgd_inner_update(phi, grads, lr), None

    if getattr(config, "remat", False):  # as maml.adapt: recompute each inner step in the backward pass
        inner_step = jax.checkpoint(inner_step)
    phi, _ = jax.lax.scan(inner_step, meta_params["policy"], inner_data)
    return phi


def _per_task_terms(learner, config: MAMLConfig, meta_params, batch: MetaBatch, clip_eps: float | None):
    """Per task ``i``: ``(surrogate_i, kl_i, clip_fraction_i)`` on the outer data, ``[N]`` each.

    ``surrogate_i = mean_t r_t A_t`` (``clip_eps=None``) or the clipped
    ``mean_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)``; ``kl_i`` the mean KL
    from the old to the new adapted policy; means over the valid steps.
    """
    policy = learner.policy

    def per_task(xs):
        inner, outer, adv, old_logp, old_phi = xs
        phi = adapt_on_data(learner, config, meta_params, inner)
        ratio = jnp.exp(learner.log_probs(phi, outer) - old_logp)
        if clip_eps is None:
            objective = ratio * adv
            clipped = jnp.zeros_like(adv)
        else:
            objective = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
            clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(adv.dtype)
        kl = kl_divergence(policy, old_phi, phi, outer.obs)
        return (losses.masked_mean(objective, outer.mask), losses.masked_mean(kl, outer.mask),
                losses.masked_mean(clipped, outer.mask))

    xs = (batch.inner_data, batch.outer_data, batch.advantages, batch.old_log_probs, batch.adapted_params)
    return map_tasks(per_task, xs, batch.num_tasks, config.task_chunk)


# ----------------------------------------------------------------------------- TRPO


def trpo_surrogate_and_kl(learner, config: MAMLConfig, meta_params, batch: MetaBatch):
    """``(L(theta), KL(theta))`` on a fixed meta-batch (see the module docstring); scalars.

    ``L(theta_old)`` is the mean advantage and ``KL(theta_old) = 0``; both are
    differentiable in ``meta_params`` through :func:`adapt_on_data`.
    """
    surrogate, kl, _ = _per_task_terms(learner, config, meta_params, batch, clip_eps=None)
    chex.assert_shape([surrogate, kl], (batch.num_tasks,))
    return jnp.mean(surrogate), jnp.mean(kl)


def kl_hvp(learner, config: MAMLConfig, meta_params, batch: MetaBatch) -> Callable:
    """``v -> (hess_theta KL)(meta_params) v`` on pytrees like ``meta_params``.

    Forward-over-reverse (``jvp`` of ``grad``) through the adaptation, linearised
    once (``jax.linearize``) so each product reuses the stored forward pass.
    At ``theta_old`` the Hessian is the Gauss-Newton/Fisher matrix ``J^T F_phi J``.
    """
    kl_fn = lambda mp: trpo_surrogate_and_kl(learner, config, mp, batch)[1]
    _, hvp = jax.linearize(jax.grad(kl_fn), meta_params)
    return hvp


def trpo_update(learner, config: MAMLConfig, trpo_config: TRPOConfig, meta_params, batch: MetaBatch):
    """One TRPO step from ``meta_params`` (normally ``batch.old_meta_params``) on a fixed batch.

    Returns ``(new_meta_params, metrics)``; metrics: ``kl`` (exact KL of the taken
    step, 0 if none), ``surrogate_before``/``surrogate_after``/``surrogate_improvement``,
    ``step_fraction`` (``beta^j`` accepted, 0 if none), ``accepted``,
    ``line_search_steps``, ``grad_norm``, ``natural_step_norm``, ``predicted_kl``
    (quadratic model of the KL at the full step: ``delta`` unless ``g = 0``),
    ``grad_finite`` (every entry of ``g`` is finite; if not, no step is accepted).
    """
    cfg = trpo_config
    chex.assert_trees_all_equal_shapes(meta_params, batch.old_meta_params)
    surr_kl = lambda mp: trpo_surrogate_and_kl(learner, config, mp, batch)
    (surr0, _), grads = jax.value_and_grad(surr_kl, has_aux=True)(meta_params)
    hvp = kl_hvp(learner, config, meta_params, batch)
    x = conjugate_gradient(hvp, grads, cfg.cg_iters, cfg.cg_damping)
    xfx = _vdot(x, _axpy(cfg.cg_damping, x, hvp(x)))
    scale = jnp.where(xfx > 0, jnp.sqrt(2.0 * cfg.max_kl / jnp.where(xfx > 0, xfx, 1.0)), 0.0)
    full_step = jax.tree.map(lambda v: scale * v, x)

    def candidate(fraction):
        return _axpy(fraction, full_step, meta_params)

    def cond(carry):
        j, accepted, _, _ = carry
        return (~accepted) & (j < cfg.ls_max_steps)

    def body(carry):
        j, _, _, _ = carry
        surr, kl = surr_kl(candidate(cfg.ls_backtrack_ratio ** j))
        ok = jnp.isfinite(surr) & jnp.isfinite(kl) & (surr > surr0) & (kl <= cfg.max_kl)
        return j + 1, ok, surr, kl

    zero = jnp.zeros((), surr0.dtype)
    j, accepted, surr, kl = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), jnp.array(False), surr0, zero))
    fraction = jnp.where(accepted, jnp.asarray(cfg.ls_backtrack_ratio, surr0.dtype) ** (j - 1), 0.0)
    # Where no step is accepted the parameters stay bit-identical (even if the step were not finite).
    new_params = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), candidate(fraction), meta_params)
    surr_after = jnp.where(accepted, surr, surr0)
    metrics = {
        "kl": jnp.where(accepted, kl, zero),
        "surrogate_before": surr0,
        "surrogate_after": surr_after,
        "surrogate_improvement": surr_after - surr0,
        "step_fraction": fraction,
        "accepted": accepted,
        "line_search_steps": j,
        "grad_norm": optax.tree.norm(grads),
        "grad_finite": tree_all_finite(grads),
        "natural_step_norm": optax.tree.norm(full_step),
        "predicted_kl": 0.5 * scale**2 * xfx,
    }
    return new_params, metrics


def init_trpo_state(key: jax.Array, learner, config: MAMLConfig) -> MetaTrainState:
    """A :class:`maml.MetaTrainState` with an empty optimizer state (same parameters as ``maml.init_train_state``)."""
    return init_train_state(key, learner, config, optax.identity())


def make_trpo_step(learner, maml_config: MAMLConfig, trpo_config: TRPOConfig,
                   sample_tasks: Callable[[jax.Array], Any]) -> Callable:
    """One TRPO meta-iteration as a pure ``state -> (state, metrics)`` (jit it once).

    Samples tasks with ``sample_tasks(key)``, a meta-batch with
    :func:`sample_meta_batch`, and takes :func:`trpo_update`. The key plumbing
    mirrors :func:`maml.make_meta_train_step`. ``state.opt_state`` is carried
    unchanged (TRPO keeps no optimizer state). A non-finite gradient
    (``metrics["grad_finite"]`` false) leaves the parameters unchanged: the line
    search accepts only finite surrogates and KLs.
    """
    _check_learner(learner)
    if not isinstance(trpo_config, TRPOConfig):
        raise ValueError(f"trpo_config={trpo_config!r} is invalid: must be a TRPOConfig")

    def step(state: MetaTrainState):
        key, key_tasks, key_sample = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        batch = sample_meta_batch(learner, maml_config, state.meta_params, tasks, key_sample)
        meta_params, metrics = trpo_update(learner, maml_config, trpo_config, state.meta_params, batch)
        metrics = dict(batch.metrics(), **metrics)
        return MetaTrainState(meta_params, state.opt_state, key, state.step + 1), metrics

    return step


# ----------------------------------------------------------------------------- ProMP


def pre_adaptation_kl(learner, meta_params, batch: MetaBatch) -> jax.Array:
    """``1/N sum_i mean_{s in tau_{i,0}} KL(pi_{theta_old}(.|s) || pi_theta(.|s))``: scalar.

    Observations of the first inner batch (sampled by ``theta_old``); zero, with
    zero gradient, at ``theta = theta_old``.
    """
    first = jax.tree.map(lambda x: x[:, 0], batch.inner_data)
    kl = kl_divergence(learner.policy, batch.old_meta_params["policy"], meta_params["policy"], first.obs)
    chex.assert_equal_shape([kl, first.mask])
    return jnp.mean(jax.vmap(losses.masked_mean)(kl, first.mask))


def promp_objective(learner, config: MAMLConfig, promp_config: ProMPConfig, meta_params, batch: MetaBatch):
    """ProMP's ``J(theta)`` (to be maximised) on a fixed batch and its parts.

    Returns ``(J, {"clipped_surrogate", "pre_adaptation_kl", "post_adaptation_kl", "clip_fraction"})``.
    """
    surrogate, post_kl, clip_fraction = _per_task_terms(learner, config, meta_params, batch, promp_config.clip_eps)
    pre_kl = pre_adaptation_kl(learner, meta_params, batch)
    objective = jnp.mean(surrogate) - promp_config.kl_coef * pre_kl
    return objective, {"clipped_surrogate": jnp.mean(surrogate), "pre_adaptation_kl": pre_kl,
                       "post_adaptation_kl": jnp.mean(post_kl), "clip_fraction": jnp.mean(clip_fraction)}


def promp_optimizer(promp_config: ProMPConfig) -> optax.GradientTransformation:
    return optax.adam(promp_config.outer_lr)


def promp_update(learner, config: MAMLConfig, promp_config: ProMPConfig, meta_params, opt_state,
                 batch: MetaBatch, optimizer: optax.GradientTransformation | None = None):
    """``num_outer_steps`` optimizer steps ascending :func:`promp_objective` on one batch (a ``lax.scan``).

    Returns ``(meta_params, opt_state, metrics)``; metrics hold per-step arrays
    ``[num_outer_steps]`` (``objective``, ``clipped_surrogate``, ``pre_adaptation_kl``,
    ``post_adaptation_kl``, ``clip_fraction``, ``grad_norm``, ``grad_finite``, each at
    the start of its step) and ``objective_after``, the objective at the returned parameters.
    """
    chex.assert_trees_all_equal_shapes(meta_params, batch.old_meta_params)
    optimizer = promp_optimizer(promp_config) if optimizer is None else optimizer
    objective = lambda mp: promp_objective(learner, config, promp_config, mp, batch)

    def outer_step(carry, _):
        params, state = carry
        (value, parts), grads = jax.value_and_grad(objective, has_aux=True)(params)
        neg = jax.tree.map(jnp.negative, grads)  # optax minimises
        updates, state = optimizer.update(neg, state, params)
        return (optax.apply_updates(params, updates), state), dict(parts, objective=value,
                                                                   grad_norm=optax.tree.norm(grads),
                                                                   grad_finite=tree_all_finite(grads))

    (meta_params, opt_state), per_step = jax.lax.scan(
        outer_step, (meta_params, opt_state), None, length=promp_config.num_outer_steps)
    after, parts_after = objective(meta_params)
    metrics = dict(per_step, objective_after=after, post_adaptation_kl_after=parts_after["post_adaptation_kl"],
                   pre_adaptation_kl_after=parts_after["pre_adaptation_kl"])
    return meta_params, opt_state, metrics


def init_promp_state(key: jax.Array, learner, config: MAMLConfig, promp_config: ProMPConfig,
                     optimizer: optax.GradientTransformation | None = None) -> MetaTrainState:
    """A :class:`maml.MetaTrainState` holding the ProMP optimizer's state."""
    optimizer = promp_optimizer(promp_config) if optimizer is None else optimizer
    return init_train_state(key, learner, config, optimizer)


def make_promp_step(learner, maml_config: MAMLConfig, promp_config: ProMPConfig,
                    sample_tasks: Callable[[jax.Array], Any],
                    optimizer: optax.GradientTransformation | None = None,
                    skip_nonfinite: bool = False) -> Callable:
    """One ProMP meta-iteration as a pure ``state -> (state, metrics)`` (jit it once).

    Sample a meta-batch once, then :func:`promp_update`. ProMP proper uses
    ``MAMLConfig(estimator="lvc")``; other estimators run (the inner step is
    then the plain surrogate's). ``optimizer`` defaults to ``adam(outer_lr)``; its
    state persists across meta-iterations in ``state.opt_state``.
    ``metrics["grad_finite"]`` says whether every gradient of the ``num_outer_steps``
    steps was finite; with ``skip_nonfinite`` an iteration where one was not leaves
    the parameters and the optimizer state unchanged.
    """
    _check_learner(learner)
    if not isinstance(promp_config, ProMPConfig):
        raise ValueError(f"promp_config={promp_config!r} is invalid: must be a ProMPConfig")
    optimizer = promp_optimizer(promp_config) if optimizer is None else optimizer

    def step(state: MetaTrainState):
        key, key_tasks, key_sample = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        batch = sample_meta_batch(learner, maml_config, state.meta_params, tasks, key_sample)
        meta_params, opt_state, metrics = promp_update(learner, maml_config, promp_config, state.meta_params,
                                                       state.opt_state, batch, optimizer)
        finite = jnp.all(metrics["grad_finite"])
        if skip_nonfinite:
            meta_params = keep_if_finite(finite, meta_params, state.meta_params)
            opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        before = metrics["objective"][0]
        summary = dict(
            batch.metrics(),
            objective_before=before,
            objective_after=metrics["objective_after"],
            objective_improvement=metrics["objective_after"] - before,
            objective_per_step=metrics["objective"],
            clip_fraction=metrics["clip_fraction"][-1],  # at the start of the last outer step
            grad_norm=metrics["grad_norm"][0],
            grad_finite=finite,
            pre_adaptation_kl_after=metrics["pre_adaptation_kl_after"],
            post_adaptation_kl_after=metrics["post_adaptation_kl_after"],
        )
        return MetaTrainState(meta_params, opt_state, key, state.step + 1), summary

    return step
