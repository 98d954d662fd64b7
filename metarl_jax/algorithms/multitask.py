"""Multi-task pretraining: the non-meta-learned baseline initialisation.

MAML maximises the expected return *after* adaptation,
``J_MAML(theta) = E_task E[R(phi_K(theta))]``. The natural baseline trains the same
parameters on the same task distribution to maximise the expected return
*without* adaptation,

    J_MT(theta) = E_task E_{tau ~ pi_theta}[ R(tau) ],

i.e. ordinary (multi-task) policy gradient: a meta-iteration with the inner update
skipped (``phi_K = theta``). Its gradient is estimated by the learner's own outer
loss on fresh data of ``theta`` itself,

    grad J_MT ~ grad_theta 1/N sum_i outer_loss(theta, tau'_i),  tau'_i ~ pi_theta on task i,

which for :class:`~metarl_jax.learners.pg.PolicyGradientLearner` is the REINFORCE
surrogate with the learner's baseline, and for the Q-learner the outer objective it
is configured with (the Boltzmann policy's surrogate for ``outer="return"``, the TD
loss for ``outer="td"``: multi-task Q-learning). No score term is needed: the data
are sampled from the parameters being scored, and the surrogate's gradient is the
likelihood-ratio gradient itself.

The resulting parameters are returned in the layout of
:func:`metarl_jax.algorithms.maml.init_meta_params` (``{"policy": theta}``, plus the *untrained*
Meta-SGD rates when the MAML config learns them), so the same adaptation and
evaluation code runs on them: adapting from a multi-task initialisation uses the
config's fixed inner step size.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from metarl_jax.algorithms.base import MetaAlgorithm, MetaTrainState, keep_if_finite, tree_all_finite
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params, map_tasks
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import require


def multitask_loss(learner, params, tasks, key: jax.Array, task_chunk: int | None = None):
    """``(loss, metrics)``: the learner's outer loss of ``params`` (no adaptation), averaged over tasks.

    ``loss = 1/N sum_i outer_loss(params, tau'_i)`` with ``tau'_i = collect_outer(key_i, params, task_i)``.
    ``metrics["return"]`` is the mean undiscounted return of those batches (the return of ``params``
    before any adaptation), ``metrics["per_task_return"]`` its ``[N]`` values.
    """
    num_tasks = num_tasks_in(tasks)
    keys = jax.random.split(key, num_tasks)

    def per_task(task_and_key):
        task, task_key = task_and_key
        data = learner.collect_outer(task_key, params, task)
        return learner.outer_loss(params, data), learner.mean_return(data.traj)

    task_losses, returns = map_tasks(per_task, (tasks, keys), num_tasks, task_chunk)  # as MAML's chunks
    return jnp.mean(task_losses), {"return": jnp.mean(returns), "per_task_return": returns}


def multitask(learner, config: MAMLConfig, outer_tx: optax.GradientTransformation,
              sample_tasks: Callable[[jax.Array], Any], skip_nonfinite: bool = False) -> MetaAlgorithm:
    """Multi-task training of ``theta`` (no adaptation) as a :class:`~metarl_jax.algorithms.base.MetaAlgorithm`.

    ``init(key)``: exactly MAML's initial parameters for the same key (the key is split as in
    :func:`metarl_jax.algorithms.maml.maml`), ``outer_tx``'s state over ``meta_params["policy"]`` only
    (Meta-SGD rates, if any, keep their initial value). ``step``: sample tasks, fresh data of
    ``theta`` on each, one ``outer_tx`` step on :func:`multitask_loss`; per iteration each task sees
    one batch of ``num_outer_episodes`` episodes, where a MAML iteration with ``K`` inner steps sees
    ``K + 1``. ``config`` gives the parameter layout and ``task_chunk``. ``metrics``: ``return``,
    ``loss``, ``grad_norm``, ``grad_finite``; with ``skip_nonfinite`` a non-finite update is skipped.
    """
    require(isinstance(config, MAMLConfig), "config", config, "must be a MAMLConfig")
    require(callable(sample_tasks), "sample_tasks", sample_tasks, "must be a callable key -> batch of tasks")

    def init(key: jax.Array) -> MetaTrainState:
        key_init, key_run = jax.random.split(key)
        meta_params = init_meta_params(key_init, learner, config)
        return MetaTrainState(meta_params, outer_tx.init(meta_params["policy"]), key_run, jnp.zeros((), jnp.int32))

    def step(state: MetaTrainState):
        key, key_tasks, key_data = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        theta = state.meta_params["policy"]
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: multitask_loss(learner, p, tasks, key_data, config.task_chunk), has_aux=True
        )(theta)
        finite = tree_all_finite(grads)
        updates, opt_state = outer_tx.update(grads, state.opt_state, theta)
        policy = optax.apply_updates(theta, updates)
        if skip_nonfinite:
            policy, opt_state = keep_if_finite(finite, policy, theta), keep_if_finite(finite, opt_state, state.opt_state)
        meta_params = dict(state.meta_params, policy=policy)
        metrics = {"return": metrics["return"], "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "grad_finite": finite,
                   # K = 0: what task selection scores (with_task_selection), named as MAML names it
                   "per_task_post_adaptation_return": metrics["per_task_return"]}
        return MetaTrainState(meta_params, opt_state, key, state.step + 1), metrics

    return MetaAlgorithm(init, step)
