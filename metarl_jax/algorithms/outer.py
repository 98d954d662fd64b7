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

Both are :class:`~metarl_jax.algorithms.base.MetaAlgorithm` factories (:func:`trpo`,
:func:`promp`) over :class:`~metarl_jax.algorithms.base.MetaTrainState`, with
``metrics["grad_finite"]`` as MAML's step reports it, so :func:`metarl_jax.training.loop.run`
(scan, ``metrics.jsonl``, checkpoints, resume, non-finite policy) runs them.

Where this differs from the reference implementations, on purpose or for now:

* the KL is ``KL(old || new)`` as in TRPO's paper; ``pytorch-maml-rl`` constrains
  ``KL(new || old)``. Both have the same Hessian at ``theta_old`` (so the same
  natural step); only the line search's acceptance differs, at third order.
* ProMP's reference code importance-weights the inner LVC step by
  ``pi_theta / pi_theta_old`` once ``theta`` has moved during the outer steps,
  and can adapt ``eta`` towards a target KL; here the inner step is the
  learner's own inner loss on the fixed data (as TRPO's re-adaptation in
  ``pytorch-maml-rl`` does) and ``eta`` is fixed.

Both adapt with :mod:`metarl_jax.algorithms.inner` (SGD, Meta-SGD or an optax inner optimizer).
Learners: any :class:`~metarl_jax.learners.base.Learner` with ``has_policy_surrogate`` (the
policy-gradient and actor-critic learners): the surrogates use ``learner.log_probs``,
``learner.kl_divergence`` and the outer batch's ``advantages``, held constant from sampling. The
Q-learner has none: its outer objective is a TD loss, not a stochastic policy's return.
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
from metarl_jax.algorithms.base import MetaAlgorithm, MetaTrainState, keep_if_finite, tree_all_finite
from metarl_jax.algorithms.inner import adapt, adapt_on_data
from metarl_jax.algorithms.maml import MAMLConfig, init_train_state, map_tasks
from metarl_jax.learners.base import check_policy_surrogate
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import check_int, check_real, require

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
      advantages: the outer batches' advantages (``OuterBatch.advantages``): ``[N, E', T]``.
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
    #: the optax inner rule the batch was adapted with (``None``: SGD / Meta-SGD), reused to re-adapt
    inner_optimizer: Any = struct.field(pytree_node=False, default=None)

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


def sample_meta_batch(learner, config: MAMLConfig, meta_params: dict, tasks, key: jax.Array,
                      inner_optimizer=None) -> MetaBatch:
    """Sample the inner and outer data of every task once; everything returned is constant.

    For task ``i``: :func:`~metarl_jax.algorithms.inner.adapt` (``K`` inner steps on fresh data,
    keeping it), then ``tau' ~ pi_{phi_K}``. The keys follow
    :func:`~metarl_jax.algorithms.maml.meta_loss` (``split(key, N)`` per task, then
    ``(key_inner, key_outer)``), so the data equal those of ``meta_loss(..., tasks, key)``.
    ``tasks`` has a leading axis ``N``.
    """
    check_policy_surrogate(learner, "TRPO / ProMP")
    meta_params = jax.lax.stop_gradient(meta_params)
    num_tasks = num_tasks_in(tasks)

    def per_task(task_and_key):
        task, task_key = task_and_key
        key_inner, key_outer = jax.random.split(task_key)
        phi, info = adapt(learner, config, meta_params, task, key_inner, inner_optimizer, keep_data=True)
        outer = learner.collect_outer(key_outer, phi, task)
        return (info.data, outer.traj, outer.advantages, learner.log_probs(phi, outer.traj), phi,
                info.inner_returns, learner.mean_return(outer.traj))

    keys = jax.random.split(key, num_tasks)
    out = map_tasks(per_task, (tasks, keys), num_tasks, config.task_chunk)
    inner_data, outer, adv, logp, phi, inner_returns, post_returns = jax.lax.stop_gradient(out)
    chex.assert_rank(adv, 3)
    chex.assert_equal_shape([adv, logp, outer.mask])
    chex.assert_shape(inner_returns, (num_tasks, config.inner_steps))
    return MetaBatch(meta_params, inner_data, outer, adv, logp, phi, inner_returns, post_returns, inner_optimizer)


def _per_task_terms(learner, config: MAMLConfig, meta_params, batch: MetaBatch, clip_eps: float | None):
    """Per task ``i``: ``(surrogate_i, kl_i, clip_fraction_i)`` on the outer data, ``[N]`` each.

    ``surrogate_i = mean_t r_t A_t`` (``clip_eps=None``) or the clipped
    ``mean_t min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)``; ``kl_i`` the mean KL
    from the old to the new adapted policy; means over the valid steps.
    """
    def per_task(xs):
        inner, outer, adv, old_logp, old_phi = xs
        phi = adapt_on_data(learner, config, meta_params, inner, batch.inner_optimizer)
        ratio = jnp.exp(learner.log_probs(phi, outer) - old_logp)
        if clip_eps is None:
            objective = ratio * adv
            clipped = jnp.zeros_like(adv)
        else:
            objective = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
            clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(adv.dtype)
        kl = learner.kl_divergence(old_phi, phi, outer.obs)
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


def trpo(learner, maml_config: MAMLConfig, trpo_config: TRPOConfig, sample_tasks: Callable[[jax.Array], Any],
         inner_optimizer: optax.GradientTransformation | None = None) -> MetaAlgorithm:
    """TRPO on the meta-objective as a :class:`~metarl_jax.algorithms.base.MetaAlgorithm`.

    ``init(key)``: the same parameters as :func:`metarl_jax.algorithms.maml.maml`'s for the same key,
    an empty optimizer state. ``step``: sample tasks with ``sample_tasks(key)``, a meta-batch with
    :func:`sample_meta_batch`, one :func:`trpo_update` (the key plumbing of MAML's step). A
    non-finite gradient (``metrics["grad_finite"]`` false) leaves the parameters unchanged: the line
    search accepts only finite surrogates and KLs, so ``skip_nonfinite`` needs nothing here.
    """
    check_policy_surrogate(learner, "TRPO")
    require(isinstance(trpo_config, TRPOConfig), "trpo_config", trpo_config, "must be a TRPOConfig")

    def init(key: jax.Array) -> MetaTrainState:
        return init_train_state(key, learner, maml_config, optax.identity())

    def step(state: MetaTrainState):
        key, key_tasks, key_sample = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        batch = sample_meta_batch(learner, maml_config, state.meta_params, tasks, key_sample, inner_optimizer)
        meta_params, metrics = trpo_update(learner, maml_config, trpo_config, state.meta_params, batch)
        metrics = dict(batch.metrics(), **metrics)
        return MetaTrainState(meta_params, state.opt_state, key, state.step + 1), metrics

    return MetaAlgorithm(init, step)


# ----------------------------------------------------------------------------- ProMP


def pre_adaptation_kl(learner, meta_params, batch: MetaBatch) -> jax.Array:
    """``1/N sum_i mean_{s in tau_{i,0}} KL(pi_{theta_old}(.|s) || pi_theta(.|s))``: scalar.

    Observations of the first inner batch (sampled by ``theta_old``); zero, with
    zero gradient, at ``theta = theta_old``.
    """
    first = jax.tree.map(lambda x: x[:, 0], batch.inner_data)
    kl = learner.kl_divergence(batch.old_meta_params["policy"], meta_params["policy"], first.obs)
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


def promp(learner, maml_config: MAMLConfig, promp_config: ProMPConfig, sample_tasks: Callable[[jax.Array], Any],
          outer_tx: optax.GradientTransformation | None = None, skip_nonfinite: bool = False,
          inner_optimizer: optax.GradientTransformation | None = None) -> MetaAlgorithm:
    """ProMP as a :class:`~metarl_jax.algorithms.base.MetaAlgorithm`: sample a meta-batch once, then
    :func:`promp_update` (``num_outer_steps`` steps of ``outer_tx``, default ``adam(outer_lr)``, whose
    state persists across meta-iterations).

    ProMP proper uses ``MAMLConfig(estimator="lvc")``; other estimators run (the inner step is then
    the plain surrogate's). ``metrics["grad_finite"]`` says whether every gradient of the
    ``num_outer_steps`` steps was finite; with ``skip_nonfinite`` an iteration where one was not
    leaves the parameters and the optimizer state unchanged.
    """
    check_policy_surrogate(learner, "ProMP")
    require(isinstance(promp_config, ProMPConfig), "promp_config", promp_config, "must be a ProMPConfig")
    optimizer = promp_optimizer(promp_config) if outer_tx is None else outer_tx

    def init(key: jax.Array) -> MetaTrainState:
        return init_train_state(key, learner, maml_config, optimizer)

    def step(state: MetaTrainState):
        key, key_tasks, key_sample = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        batch = sample_meta_batch(learner, maml_config, state.meta_params, tasks, key_sample, inner_optimizer)
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

    return MetaAlgorithm(init, step)
