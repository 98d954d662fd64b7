"""The inner step, written once: adaptation for MAML, TRPO, ProMP, deployment and evaluation.

One inner step on task data ``tau`` from parameters ``phi`` with an inner rule ``U`` (an optax
``GradientTransformation``)::

    (L, g) = learner.inner_grad(phi, tau, estimator)       # g = stop_gradient(g) for "first_order"
    u, s   = U.update(g, s, phi)
    phi'   = phi + u

:func:`sgd` (``u = -alpha g``) and :func:`meta_sgd` (``u = -alpha * g`` with one learned rate per
parameter, Li et al. 2017) are such rules; any optax transformation is one too (``optax.adam``...).
Every rule is differentiable in its parameters and in ``phi``, so MAML differentiates through the
steps to any order. :func:`adapt` samples fresh data at every step (``tau_k ~ pi_{phi_k}``);
:func:`adapt_on_data` replays fixed data (TRPO / ProMP re-adapt on the sampled batch). Both scan
:func:`inner_update`.

``config`` is any object with the fields of :class:`metarl_jax.algorithms.maml.MAMLConfig` that
adaptation reads: ``inner_steps``, ``inner_lr``, ``estimator`` (``first_order`` stops the inner
gradients), ``remat``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metarl_jax.learners.base import Learner, check_estimator


def sgd(learning_rate) -> optax.GradientTransformation:
    """Plain SGD, ``u = -alpha * g``, with ``alpha`` a scalar or a pytree like the parameters.

    ``alpha`` may be a traced array (a meta-parameter): the update is differentiable in it.
    A pytree ``alpha`` (one rate per parameter entry) is Meta-SGD (:func:`meta_sgd`).
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(grads, state, params=None):
        del params
        if jax.tree.structure(learning_rate) == jax.tree.structure(grads):
            return jax.tree.map(lambda g, a: -(a * g), grads, learning_rate), state
        return jax.tree.map(lambda g: -(learning_rate * g), grads), state

    return optax.GradientTransformation(init, update)


def meta_sgd(rates) -> optax.GradientTransformation:
    """Meta-SGD: ``u = -alpha (.) g`` with ``alpha`` a pytree of learned rates like the parameters."""
    return sgd(rates)


def inner_rule(config, meta_params: dict, inner_optimizer: optax.GradientTransformation | None = None):
    """The inner rule of a run: ``inner_optimizer``, else Meta-SGD with ``meta_params["inner_lr"]``
    when the rates are learned, else :func:`sgd` with ``config.inner_lr``.

    An optax ``inner_optimizer`` together with learned rates is refused: the optimizer would ignore
    them and their meta-gradient would silently be 0.
    """
    if inner_optimizer is not None:
        if "inner_lr" in meta_params:
            raise ValueError("inner_optimizer is invalid with learned inner step sizes (meta_params['inner_lr'], "
                             "learn_inner_lr=True): the optimizer would ignore them; use one or the other")
        return inner_optimizer
    if "inner_lr" in meta_params:
        return meta_sgd(meta_params["inner_lr"])
    return sgd(config.inner_lr)


def inner_gradient(learner: Learner, estimator: str, phi, data, with_log_prob: bool = False):
    """``(loss, g, log_prob)``: the inner loss on ``data`` at ``phi`` and the gradient the step takes.

    ``log_prob`` is ``learner.log_prob_of_data(phi, data)`` (from the same forward pass as the
    gradient, :meth:`~metarl_jax.learners.base.Learner.inner_grad_and_log_prob`) when
    ``with_log_prob``, else ``None``. ``estimator="first_order"`` stops ``g``'s dependence on ``phi``.
    """
    if with_log_prob:
        loss, grads, log_prob = learner.inner_grad_and_log_prob(phi, data, estimator)
    else:
        (loss, grads), log_prob = learner.inner_grad(phi, data, estimator), None
    if estimator == "first_order":
        grads = jax.lax.stop_gradient(grads)
    return loss, grads, log_prob


def apply_inner_rule(rule: optax.GradientTransformation, grads, rule_state, phi):
    """``(phi + u, rule_state')`` with ``(u, rule_state') = rule.update(g, rule_state, phi)``."""
    updates, rule_state = rule.update(grads, rule_state, phi)
    return optax.apply_updates(phi, updates), rule_state


def inner_update(learner: Learner, estimator: str, rule: optax.GradientTransformation, phi, rule_state, data,
                 with_log_prob: bool = False):
    """One inner step ``phi -> phi'`` on ``data``: ``(phi', rule_state', loss, log_prob)``
    (:func:`inner_gradient`, then :func:`apply_inner_rule`)."""
    loss, grads, log_prob = inner_gradient(learner, estimator, phi, data, with_log_prob)
    phi, rule_state = apply_inner_rule(rule, grads, rule_state, phi)
    return phi, rule_state, loss, log_prob


class AdaptInfo(NamedTuple):
    """What :func:`adapt` reports besides the adapted parameters.

    ``log_prob_sum``: ``sum_k log p(tau_k; phi_k)`` (differentiable, the DiCE score term; 0 unless
    ``estimator="dice"``). ``inner_returns``: ``[K]`` mean undiscounted return of each inner batch,
    i.e. of ``phi_0..phi_{K-1}``. ``inner_losses``: ``[K]`` inner loss values. ``path``: with
    ``keep_path=True``, ``phi_0..phi_{K-1}`` stacked on a leading ``[K]`` axis, else ``None``.
    ``data``: with ``keep_data=True``, the inner trajectories ``tau_0..tau_{K-1}`` (leaves
    ``[K, E, T, ...]``), else ``None``.
    """

    log_prob_sum: jax.Array
    inner_returns: jax.Array
    inner_losses: jax.Array
    path: Any = None
    data: Any = None


def adapt(
    learner: Learner,
    config,
    meta_params: dict,
    task,
    key: jax.Array,
    inner_optimizer: optax.GradientTransformation | None = None,
    keep_path: bool = False,
    keep_data: bool = False,
):
    """``K`` differentiable inner steps from ``theta = meta_params["policy"]`` on one task.

    Step ``k`` collects ``tau_k ~ pi_{phi_k}`` with key ``split(key, K)[k]`` and takes
    :func:`inner_update` with :func:`inner_rule`. Returns ``(phi_K, AdaptInfo)``. Gradients flow
    through the updates unless ``config.estimator == "first_order"``; ``config.remat`` recomputes
    each step's forward pass in the backward pass (``jax.checkpoint``: same values, memory that
    does not grow with K's activations). ``keep_path`` also returns ``phi_0..phi_{K-1}``,
    ``keep_data`` the inner trajectories.
    """
    check_estimator(learner, config.estimator)
    rule = inner_rule(config, meta_params, inner_optimizer)
    theta = meta_params["policy"]
    dice = config.estimator == "dice"

    def step(carry, step_key):
        phi, rule_state, log_prob_sum = carry
        data = learner.collect(step_key, phi, task)
        new_phi, rule_state, loss, log_prob = inner_update(learner, config.estimator, rule, phi, rule_state, data,
                                                           with_log_prob=dice)
        if dice:
            log_prob_sum = log_prob_sum + log_prob
        out = (learner.mean_return(data), loss, phi if keep_path else None, data if keep_data else None)
        return (new_phi, rule_state, log_prob_sum), out

    if config.remat:
        step = jax.checkpoint(step)
    keys = jax.random.split(key, config.inner_steps)
    zero = jnp.zeros((), jax.tree.leaves(theta)[0].dtype)
    (phi, _, log_prob_sum), (returns, inner_losses, path, data) = jax.lax.scan(
        step, (theta, rule.init(theta), zero), keys)
    return phi, AdaptInfo(log_prob_sum, returns, inner_losses, path, data)


def adapt_on_data(learner: Learner, config, meta_params: dict, inner_data,
                  inner_optimizer: optax.GradientTransformation | None = None):
    """``phi_K(theta)`` from ``K`` inner steps on fixed data of one task (leaves ``[K, E, T, ...]``).

    The same :func:`inner_update` as :func:`adapt`, with the data held fixed: a differentiable
    function of ``meta_params`` (``theta`` and, for Meta-SGD, the rates), second order through the
    updates unless ``first_order``. At the parameters that sampled ``inner_data`` (with
    :func:`adapt`'s ``keep_data``) it reproduces :func:`adapt`'s ``phi_K``.
    """
    check_estimator(learner, config.estimator)
    rule = inner_rule(config, meta_params, inner_optimizer)
    theta = meta_params["policy"]

    def step(carry, data):
        phi, rule_state = carry
        phi, rule_state, _, _ = inner_update(learner, config.estimator, rule, phi, rule_state, data)
        return (phi, rule_state), None

    if config.remat:
        step = jax.checkpoint(step)
    (phi, _), _ = jax.lax.scan(step, (theta, rule.init(theta)), inner_data)
    return phi
