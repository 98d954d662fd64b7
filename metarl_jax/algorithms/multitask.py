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

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from metarl_jax.algorithms.maml import MAMLConfig, MetaTrainState, init_meta_params, keep_if_finite, map_tasks, tree_all_finite
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.training.loop import TrainConfig, make_optimizer, run_loop
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
        return learner.outer_loss(params, data), learner.mean_return(data)

    task_losses, returns = map_tasks(per_task, (tasks, keys), num_tasks, task_chunk)  # as MAML's chunks
    return jnp.mean(task_losses), {"return": jnp.mean(returns), "per_task_return": returns}


def init_multitask_state(key: jax.Array, learner, config: MAMLConfig, optimizer) -> MetaTrainState:
    """Training state whose parameters are exactly MAML's initial ones for the same ``key``.

    The key is split as in :func:`metarl_jax.algorithms.maml.init_train_state`, so a multi-task run and a
    MAML run with the same seed start from the same ``theta``. Only ``meta_params["policy"]``
    is optimised (Meta-SGD rates, if any, keep their initial value).
    """
    key_init, key_run = jax.random.split(key)
    meta_params = init_meta_params(key_init, learner, config)
    return MetaTrainState(meta_params, optimizer.init(meta_params["policy"]), key_run, jnp.zeros((), jnp.int32))


def make_multitask_train_step(
    learner,
    optimizer: optax.GradientTransformation,
    sample_tasks: Callable[[jax.Array], Any],
    task_chunk: int | None = None,
    skip_nonfinite: bool = False,
):
    """One multi-task iteration ``state -> (state, metrics)``: sample tasks, fresh data, optimizer step.

    Pure and jittable; the counterpart of :func:`metarl_jax.algorithms.maml.make_meta_train_step` with the
    inner update skipped. ``metrics["grad_finite"]`` says whether every gradient entry was finite;
    with ``skip_nonfinite`` a non-finite update is skipped (parameters and optimizer state unchanged).
    """

    def step(state: MetaTrainState):
        key, key_tasks, key_data = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        theta = state.meta_params["policy"]
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: multitask_loss(learner, p, tasks, key_data, task_chunk), has_aux=True
        )(theta)
        finite = tree_all_finite(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, theta)
        policy = optax.apply_updates(theta, updates)
        if skip_nonfinite:
            policy, opt_state = keep_if_finite(finite, policy, theta), keep_if_finite(finite, opt_state, state.opt_state)
        meta_params = dict(state.meta_params, policy=policy)
        metrics = {"return": metrics["return"], "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "grad_finite": finite}
        return MetaTrainState(meta_params, opt_state, key, state.step + 1), metrics

    return step


@functools.lru_cache(maxsize=8)
def _cached_step(learner, sample_tasks, task_chunk, outer_lr, max_grad_norm, skip_nonfinite):
    optimizer = make_optimizer(TrainConfig(outer_lr=outer_lr, max_grad_norm=max_grad_norm))
    return make_multitask_train_step(learner, optimizer, sample_tasks, task_chunk, skip_nonfinite)


def multitask_train_step(learner, config: MAMLConfig, train_config: TrainConfig,
                         sample_tasks: Callable[[jax.Array], Any]) -> Callable:
    """The iteration ``state -> (state, metrics)`` that :func:`multitask_pretrain` runs.

    :func:`make_multitask_train_step` with :func:`metarl_jax.training.loop.make_optimizer`'s optimizer,
    ``config.task_chunk`` and ``skip_nonfinite`` from ``on_nonfinite``. Equal (hashable) arguments
    return the same function, so repeated runs (seeds, resumes, tests) compile once; only
    ``outer_lr``, ``max_grad_norm`` and ``on_nonfinite`` of ``train_config`` matter.
    """
    args = (learner, sample_tasks, config.task_chunk, train_config.outer_lr, train_config.max_grad_norm,
            train_config.on_nonfinite == "skip")
    try:
        return _cached_step(*args)
    except TypeError:  # an unhashable argument: no cache
        return _cached_step.__wrapped__(*args)


def multitask_pretrain(
    learner,
    config: MAMLConfig,
    train_config: TrainConfig,
    sample_tasks: Callable[[jax.Array], Any],
    run_dir: str | None = None,
    *,
    progress: bool = False,
    stop_after: int | None = None,
) -> tuple[dict, list[dict]]:
    """Train a multi-task initialisation and return ``(meta_params, history)``.

    Uses ``train_config``'s iterations, meta-batch (``sample_tasks(key)`` returns that many
    tasks), optimizer (Adam with ``outer_lr``, optional clipping), seed, ``iterations_per_call``,
    checkpoint settings and ``on_nonfinite``; ``config`` gives the parameter layout and ``task_chunk``.
    Per iteration each task sees one batch of ``num_outer_episodes`` episodes, where a MAML
    iteration with ``K`` inner steps sees ``K + 1`` batches.

    The loop is :func:`metarl_jax.training.loop.run_loop` over :func:`multitask_train_step` from
    :func:`init_multitask_state` with ``PRNGKey(train_config.seed)``, as :func:`metarl_jax.training.loop.meta_train`:
    exactly ``num_iterations`` iterations (a shorter last scan), and with ``run_dir`` a
    ``metrics.jsonl`` and checkpoints every ``checkpoint_every`` iterations in ``run_dir/checkpoints``;
    a later call resumes from (or, if finished, just loads) the latest checkpoint there.
    ``stop_after`` ends this call after that many iterations (to simulate an interruption).
    ``history`` holds one ``{"iteration", "return", "loss", "grad_norm", "grad_finite", "seconds"}``
    per iteration (with ``run_dir``, those recorded there by earlier calls too).
    """
    require(isinstance(config, MAMLConfig), "config", config, "must be a maml.MAMLConfig")
    require(isinstance(train_config, TrainConfig), "train_config", train_config, "must be a train.TrainConfig")
    require(callable(sample_tasks), "sample_tasks", sample_tasks, "must be a callable key -> batch of tasks")
    optimizer = make_optimizer(train_config)
    state = init_multitask_state(jax.random.PRNGKey(train_config.seed), learner, config, optimizer)
    step = multitask_train_step(learner, config, train_config, sample_tasks)
    state, history = run_loop(step, state, train_config, run_dir, progress=progress, stop_after=stop_after,
                              desc="multi-task iterations", metadata={"kind": "multitask"})
    return state.meta_params, history
