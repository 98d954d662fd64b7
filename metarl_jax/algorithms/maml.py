"""Model-agnostic meta-learning with proven meta-gradient estimators.

Notation: ``theta`` meta-parameters, ``tau_k ~ pi_{phi_k}`` the inner data of
inner step ``k`` (``phi_0 = theta``), ``phi_{k+1} = phi_k - alpha * grad L_in(phi_k, tau_k)``,
``tau' ~ pi_{phi_K}`` the outer data. The meta-objective of the procedure
actually run is

    J(theta) = E_{tau_0..tau_{K-1}} E_{tau'} [ R(tau') ].

Its gradient has two parts:

    grad J = E[ (d phi_K / d theta)^T grad_phi V(phi_K) ]          (path through the update)
           + E[ V(phi_K) * sum_k grad_theta log p(tau_k; phi_k) ]    (which tau were sampled)

where ``d phi_K / d theta`` differentiates the update with the data held fixed
(it contains the Hessian of the *plain* inner surrogate). Estimators:

* ``"dice"``: both parts, unbiased. The inner step uses the plain surrogate
  and the second part enters once, through DiCE's magic box:
  ``loss = outer_loss(phi_K) - stop(V_hat - b) * (magic_box(sum_k log p(tau_k; phi_k)) - 1)``
  with ``V_hat`` the outer batch's mean return and ``b`` a baseline independent
  of this task's inner samples (leave-one-out mean over the other tasks).
* ``"lvc"``: ProMP's formulation I. Inner step on the LVC surrogate, whose
  Hessian carries the per-step score outer products; no second part. Lower
  variance, biased for the procedure run.
* ``"naive"``: plain surrogate, no second part (what most libraries compute):
  misses the second part entirely.
* ``"first_order"``: the inner gradients are ``stop_gradient``-ed: grad J ~ grad_phi V(phi_K).

Everything is a pure function of ``(meta_params, tasks, key)``: vmap over the
task axis, jit the whole meta-iteration, differentiate again if you like.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import optax

from metarl_jax import losses
from metarl_jax import sharding
from metarl_jax.algorithms.base import MetaAlgorithm, MetaTrainState, keep_if_finite, tree_all_finite
from metarl_jax.algorithms.inner import AdaptInfo, adapt
from metarl_jax.learners.base import ESTIMATORS
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import check_bool, check_choice, check_int, check_optional_int, check_real, require

SCORE_BASELINES = ("none", "leave_one_out")


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """How to adapt and how to differentiate through the adaptation.

    Attributes:
      inner_steps: ``K`` differentiable inner steps (fresh samples at every step).
      inner_lr: ``alpha``, the inner SGD step size (initial value if learned).
      learn_inner_lr: Meta-SGD (Li et al. 2017): one learned rate per parameter.
      estimator: ``"dice"`` | ``"lvc"`` | ``"naive"`` | ``"first_order"``.
      score_baseline: baseline of the DiCE score term: ``"leave_one_out"`` (mean
        return of the other tasks in the meta-batch) or ``"none"``.
      task_chunk: execution only (results equal up to float rounding): ``None`` vmaps
        all tasks at once; an integer ``c`` splits them into chunks of ``c`` vmapped
        tasks, run one after the other: unrolled in the program when there are at most
        ``TASK_CHUNK_UNROLL_LIMIT`` chunks (more compile time, no per-chunk copies), else
        by ``lax.map`` (which stacks every chunk's residuals for the backward pass and
        pays for it). On a CPU a few chunks beat one huge batch (their activations stay in
        cache; figures in ``docs/benchmarks.md``); on a GPU, vmap everything.
        :func:`auto_task_chunk` picks one for a meta-batch size and platform.
      remat: rematerialise each inner step in the backward pass (``jax.checkpoint``):
        memory of the K-step adaptation stops growing with K's activations, at the
        price of recomputing each inner step's forward pass. Results are identical.
      accumulate_chunks: with ``task_chunk``, :func:`make_meta_gradient` differentiates
        each chunk on its own inside a ``lax.scan`` over chunks and sums the gradients
        (gradient accumulation): memory holds one chunk's activations instead of the
        whole meta-batch's, so meta-batches far beyond memory run. The gradient equals
        the un-chunked one up to float rounding, the leave-one-out DiCE baseline
        included (:func:`accumulated_meta_gradient` assembles it from per-chunk sums);
        it is a first derivative to hand to an optimizer, not a function to
        differentiate again (use :func:`meta_loss` for that).
      init_entropy_coef: ``beta >= 0``: the meta-loss adds ``-beta H(pi_theta)``, the mean entropy
        of the *meta-learned initial* policy on the outer batch's states (the learner's
        ``policy_entropy``). The meta-objective only scores the adapted policy, so nothing
        else stops ``theta`` from drifting into a saturated softmax, where every inner
        gradient vanishes and adaptation stops for good (``docs/benchmarks.md``, "Training
        that does not decay"); a small ``beta`` keeps it adaptable. ``0``: plain MAML.
    """

    inner_steps: int = 1
    inner_lr: float = 0.1
    learn_inner_lr: bool = False
    estimator: str = "dice"
    score_baseline: str = "leave_one_out"
    task_chunk: int | None = None
    remat: bool = False
    accumulate_chunks: bool = False
    init_entropy_coef: float = 0.0

    def __post_init__(self):
        check_int("inner_steps", self.inner_steps, minimum=1)
        check_real("inner_lr", self.inner_lr, minimum=0.0, min_open=True)
        check_bool("learn_inner_lr", self.learn_inner_lr)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("score_baseline", self.score_baseline, SCORE_BASELINES)
        check_optional_int("task_chunk", self.task_chunk, minimum=1)
        check_bool("remat", self.remat)
        check_bool("accumulate_chunks", self.accumulate_chunks)
        check_real("init_entropy_coef", self.init_entropy_coef, minimum=0.0)
        require(not self.accumulate_chunks or self.task_chunk is not None, "accumulate_chunks",
                self.accumulate_chunks, "needs task_chunk (the number of tasks differentiated at once)")

    @property
    def first_order(self) -> bool:
        return self.estimator == "first_order"


def init_meta_params(key: jax.Array, learner, config: MAMLConfig) -> dict:
    """``{"policy": theta}`` plus ``{"inner_lr": alpha}`` (a pytree like theta) for Meta-SGD."""
    theta = learner.init(key)
    meta_params = {"policy": theta}
    if config.learn_inner_lr:
        meta_params["inner_lr"] = jax.tree.map(lambda p: jnp.full_like(p, config.inner_lr), theta)
    return meta_params


def task_meta_objective(learner, config, meta_params, task, key, inner_optimizer=None):
    """Adapt on one task, then score the adapted parameters on fresh data.

    Returns ``(outer_loss, log_prob_sum, objective_estimate, metrics)`` for the task.
    """
    key_inner, key_outer = jax.random.split(key)
    phi, info = adapt(learner, config, meta_params, task, key_inner, inner_optimizer)
    batch = learner.collect_outer(key_outer, phi, task)
    outer_loss = learner.outer_loss(phi, batch)
    post_return = learner.mean_return(batch.traj)
    extra = {}
    if config.init_entropy_coef > 0.0:
        entropy = learner.policy_entropy(meta_params["policy"], batch.traj)
        outer_loss = outer_loss - config.init_entropy_coef * entropy
        extra["init_policy_entropy"] = entropy
    metrics = {
        "pre_adaptation_return": info.inner_returns[0],
        "post_adaptation_return": post_return,
        "returns_per_step": jnp.concatenate([info.inner_returns, post_return[None]]),
        "inner_loss": info.inner_losses[0],
        "outer_loss": outer_loss,
        **extra,
    }
    return outer_loss, info.log_prob_sum, learner.objective_estimate(batch), metrics


def score_baseline_values(values: jax.Array, kind: str) -> jax.Array:
    """Baselines ``b_i`` for the DiCE score term, independent of task ``i``'s samples: ``[N] -> [N]``."""
    values = jax.lax.stop_gradient(values)
    n = values.shape[0]
    if kind == "leave_one_out" and n > 1:
        return (jnp.sum(values) - values) / (n - 1)
    return jnp.zeros_like(values)


#: ``task_chunk`` splits into at most this many chunks are unrolled; more use ``lax.map``.
TASK_CHUNK_UNROLL_LIMIT = 8

#: :func:`auto_task_chunk` on a CPU: about this many tasks per chunk (their activations stay in cache).
AUTO_TASKS_PER_CHUNK = 4


def auto_task_chunk(meta_batch: int, platform: str | None = None, accumulate: bool = False) -> int | None:
    """A ``MAMLConfig.task_chunk`` for ``meta_batch`` tasks on ``platform`` (default: JAX's default backend).

    Execution only: every choice gives the same results up to float rounding.

    * ``meta_batch <= AUTO_TASKS_PER_CHUNK``: ``None`` (one ``vmap``).
    * ``accumulate`` (``MAMLConfig.accumulate_chunks``, memory of one chunk): chunks of
      ``AUTO_TASKS_PER_CHUNK`` tasks on any platform.
    * Accelerators: ``None``; one ``vmap`` over all tasks is what a GPU wants.
    * CPU: ``ceil(meta_batch / c)`` tasks per chunk with ``c = min(TASK_CHUNK_UNROLL_LIMIT,
      ceil(meta_batch / AUTO_TASKS_PER_CHUNK))`` chunks, i.e. about 4 tasks per chunk and never
      more chunks than :func:`map_tasks` unrolls (measured against one vmap in ``docs/benchmarks.md``).
    """
    meta_batch = check_int("meta_batch", meta_batch, minimum=1)
    if meta_batch <= AUTO_TASKS_PER_CHUNK:
        return None
    if accumulate:
        return AUTO_TASKS_PER_CHUNK
    if (platform or jax.default_backend()) != "cpu":
        return None
    chunks = min(TASK_CHUNK_UNROLL_LIMIT, -(-meta_batch // AUTO_TASKS_PER_CHUNK))
    return -(-meta_batch // chunks)


def map_tasks(fn: Callable, xs, num_tasks: int, task_chunk: int | None):
    """``fn`` over the leading (task) axis of the pytree ``xs``, per ``MAMLConfig.task_chunk``.

    ``None`` (or a chunk >= ``num_tasks``): one ``vmap``. Otherwise chunks of
    ``task_chunk`` tasks, each vmapped: a Python loop (separate buffers per chunk)
    up to ``TASK_CHUNK_UNROLL_LIMIT`` chunks, ``lax.map`` beyond.

    Under a mesh whose ``"tasks"`` axis has ``d > 1`` devices (``jax.set_mesh``, as
    :func:`metarl_jax.training.loop.run_loop` does; :func:`metarl_jax.sharding.task_shard_count`)
    the task axis is split over them: :func:`metarl_jax.sharding.split_task_axis` turns the
    ``N`` tasks into ``d`` consecutive blocks of ``ceil(N / d)`` (padded with copies of the
    last task, whose outputs are dropped, when ``d`` does not divide ``N``), block ``i`` on
    device ``i``, and each device maps its own block as above. So ``task_chunk`` is the
    chunk size *on each device*: a chunk never spans two devices, and slicing chunks moves
    no data between them. Results equal the one-device ones up to float rounding.
    """

    def on_one_device(block, n: int):
        if task_chunk is None or task_chunk >= n:
            return jax.vmap(fn)(block)
        chunk = int(task_chunk)
        starts = range(0, n, chunk)
        if len(starts) > TASK_CHUNK_UNROLL_LIMIT:
            return jax.lax.map(fn, block, batch_size=chunk)
        outs = [jax.vmap(fn)(jax.tree.map(lambda x, s=s: x[s:s + chunk], block)) for s in starts]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=0), *outs)

    shards = sharding.task_shard_count()
    if shards == 1:
        return on_one_device(xs, num_tasks)
    per_device = -(-num_tasks // shards)
    blocks = sharding.split_task_axis(xs, num_tasks)
    return sharding.merge_task_axis(jax.vmap(lambda block: on_one_device(block, per_device))(blocks), num_tasks)


def meta_loss(learner, config: MAMLConfig, meta_params, tasks, key, inner_optimizer=None):
    """The meta-loss over a batch of tasks (leading axis ``N``) and its metrics.

    ``loss = 1/N sum_i [ outer_loss_i - stop(V_i - b_i) (magic_box(S_i) - 1) ]`` for
    ``"dice"`` (the second term has value 0), ``1/N sum_i outer_loss_i`` otherwise.
    Returns ``(loss, metrics)``; metrics are means over tasks plus per-task arrays.
    """
    num_tasks = num_tasks_in(tasks)
    keys = jax.random.split(key, num_tasks)
    def per_task(task_and_key):
        task, task_key = task_and_key
        return task_meta_objective(learner, config, meta_params, task, task_key, inner_optimizer)

    outputs = map_tasks(per_task, (tasks, keys), num_tasks, config.task_chunk)
    outer_losses, log_prob_sums, values, metrics = outputs
    chex.assert_shape(outer_losses, (num_tasks,))
    per_task_loss = outer_losses
    if config.estimator == "dice":
        advantages = jax.lax.stop_gradient(values - score_baseline_values(values, config.score_baseline))
        per_task_loss = per_task_loss - advantages * (losses.magic_box(log_prob_sums) - 1.0)
    summary = {name: jnp.mean(value, axis=0) for name, value in metrics.items()}
    summary["per_task_post_adaptation_return"] = metrics["post_adaptation_return"]
    return jnp.mean(per_task_loss), summary


def make_meta_loss(learner, config: MAMLConfig, inner_optimizer=None) -> Callable:
    """``meta_loss_fn(meta_params, tasks, key) -> (loss, metrics)``: pure, jittable, differentiable."""

    def meta_loss_fn(meta_params, tasks, key):
        return meta_loss(learner, config, meta_params, tasks, key, inner_optimizer)

    return meta_loss_fn


def make_meta_gradient(learner, config: MAMLConfig, inner_optimizer=None) -> Callable:
    """``meta_gradient(meta_params, tasks, key) -> (loss, grads, metrics)``.

    A pure function of its arguments: ``jax.jit`` it, ``jax.vmap`` it over
    seeds, or differentiate it again. ``grads`` has the structure of
    ``meta_params``; ``metrics`` are the adaptation statistics of the batch.
    With ``config.accumulate_chunks`` the gradient is accumulated chunk by chunk
    (:func:`accumulated_meta_gradient`; same values, one chunk's memory).
    """
    loss_fn = make_meta_loss(learner, config, inner_optimizer)

    def meta_gradient(meta_params, tasks, key):
        if config.accumulate_chunks and config.task_chunk < num_tasks_in(tasks):
            return accumulated_meta_gradient(learner, config, meta_params, tasks, key, inner_optimizer)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(meta_params, tasks, key)
        return loss, grads, metrics

    return meta_gradient


def accumulated_meta_gradient(learner, config: MAMLConfig, meta_params, tasks, key, inner_optimizer=None):
    """The meta-gradient of :func:`meta_loss`, accumulated over chunks of ``config.task_chunk`` tasks.

    Per task ``i`` (keys split exactly as in :func:`meta_loss`): outer loss ``o_i``, score
    sum ``S_i`` and objective estimate ``V_i``. The gradient of the meta-loss is

        g = 1/N [ sum_i grad o_i - sum_i a_i grad S_i ],   a_i = V_i - b_i   (dice; else a_i = 0)

    and with the leave-one-out baseline ``b_i = (sum_j V_j - V_i) / (N - 1)``,
    ``a_i = N/(N-1) V_i - sum_j V_j / (N-1)``: a part known inside the task's chunk and a
    part that needs every chunk. So each chunk runs one forward pass and pulls back two
    cotangents through it, ``(1, -N/(N-1) V_i)`` and ``(0, 1)``, giving
    ``P_c = sum_{i in c} [grad o_i - N/(N-1) V_i grad S_i]`` and ``Q_c = sum_{i in c} grad S_i``;
    then ``g = 1/N [sum_c P_c + (sum_j V_j) / (N-1) sum_c Q_c]``. (``score_baseline="none"``:
    ``a_i = V_i``, one cotangent.) Chunks run in a ``lax.scan`` (a last, smaller chunk
    separately), so only one chunk's residuals are alive at a time.

    Returns ``(loss, grads, metrics)`` like :func:`make_meta_gradient`'s function.
    """
    num_tasks = num_tasks_in(tasks)
    chunk = int(config.task_chunk)
    keys = jax.random.split(key, num_tasks)
    dice = config.estimator == "dice"
    loo = dice and config.score_baseline == "leave_one_out" and num_tasks > 1
    score_weight = num_tasks / (num_tasks - 1) if loo else 1.0

    def chunk_objectives(mp, chunk_tasks, chunk_keys):
        def per_task(task_and_key):
            task, task_key = task_and_key
            outer_loss, log_prob_sum, value, metrics = task_meta_objective(
                learner, config, mp, task, task_key, inner_optimizer)
            return (outer_loss, log_prob_sum), (value, metrics)

        return jax.vmap(per_task)((chunk_tasks, chunk_keys))

    def chunk_gradient(chunk_tasks, chunk_keys):
        (outer_losses, log_prob_sums), pullback, (values, metrics) = jax.vjp(
            lambda mp: chunk_objectives(mp, chunk_tasks, chunk_keys), meta_params, has_aux=True)
        values = jax.lax.stop_gradient(values)
        ones = jnp.ones_like(outer_losses)
        score_ct = (-score_weight * values).astype(log_prob_sums.dtype) if dice else jnp.zeros_like(log_prob_sums)
        (p_grad,) = pullback((ones, score_ct))
        if loo:
            (q_grad,) = pullback((jnp.zeros_like(outer_losses), jnp.ones_like(log_prob_sums)))
        else:
            q_grad = jax.tree.map(jnp.zeros_like, p_grad)
        return p_grad, q_grad, outer_losses, values, metrics

    num_full = num_tasks // chunk
    split = lambda x, n: x[: n * chunk].reshape((n, chunk) + x.shape[1:])
    full_tasks = jax.tree.map(lambda x: split(x, num_full), tasks)
    zeros = jax.tree.map(jnp.zeros_like, meta_params)

    def body(carry, xs):
        p_acc, q_acc = carry
        p_grad, q_grad, outer_losses, values, metrics = chunk_gradient(*xs)
        carry = (jax.tree.map(jnp.add, p_acc, p_grad), jax.tree.map(jnp.add, q_acc, q_grad))
        return carry, (outer_losses, values, metrics)

    (p_sum, q_sum), (outer_losses, values, metrics) = jax.lax.scan(
        body, (zeros, zeros), (full_tasks, split(keys, num_full)))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    outer_losses, values, metrics = jax.tree.map(flat, (outer_losses, values, metrics))
    if num_tasks % chunk:  # the last, smaller chunk
        rest = num_full * chunk
        p_grad, q_grad, r_losses, r_values, r_metrics = chunk_gradient(
            jax.tree.map(lambda x: x[rest:], tasks), keys[rest:])
        p_sum, q_sum = jax.tree.map(jnp.add, p_sum, p_grad), jax.tree.map(jnp.add, q_sum, q_grad)
        outer_losses, values, metrics = jax.tree.map(
            lambda a, b: jnp.concatenate([a, b], axis=0), (outer_losses, values, metrics), (r_losses, r_values, r_metrics))
    chex.assert_shape(outer_losses, (num_tasks,))
    total_value = jnp.sum(values)
    q_coef = total_value / (num_tasks - 1) if loo else 0.0
    grads = jax.tree.map(lambda p, q: (p + q_coef * q) / num_tasks, p_sum, q_sum)
    summary = {name: jnp.mean(value, axis=0) for name, value in metrics.items()}
    summary["per_task_post_adaptation_return"] = metrics["post_adaptation_return"]
    return jnp.mean(outer_losses), grads, summary


def init_train_state(key: jax.Array, learner, config: MAMLConfig, outer_tx: optax.GradientTransformation) -> MetaTrainState:
    """The initial state of a meta-training run over ``{"policy": theta}`` (+ Meta-SGD rates).

    ``(key_init, key_run) = split(key)``: the parameters from ``key_init`` (:func:`init_meta_params`),
    ``outer_tx``'s state over them, ``key_run`` as the run's key, step 0. MAML, TRPO and ProMP start
    here, so the same seed starts every one of them from the same ``theta``.
    """
    key_init, key_run = jax.random.split(key)
    meta_params = init_meta_params(key_init, learner, config)
    return MetaTrainState(meta_params, outer_tx.init(meta_params), key_run, jnp.zeros((), jnp.int32))


def maml(
    learner,
    config: MAMLConfig,
    outer_tx: optax.GradientTransformation,
    sample_tasks: Callable[[jax.Array], Any],
    inner_optimizer: optax.GradientTransformation | None = None,
    skip_nonfinite: bool = False,
) -> MetaAlgorithm:
    """MAML as a :class:`~metarl_jax.algorithms.base.MetaAlgorithm` over :class:`MetaTrainState`.

    ``init(key)``: ``theta`` (and Meta-SGD rates) from the first half of ``split(key)``, ``outer_tx``'s
    state, the second half as the run's key. ``step(state)``: split the key into (next, tasks,
    gradient); ``tasks = sample_tasks(key_tasks)``; the meta-gradient of :func:`make_meta_gradient`;
    one ``outer_tx`` update. ``metrics["grad_finite"]`` says whether every gradient entry was finite;
    with ``skip_nonfinite`` a non-finite update is skipped (parameters and optimizer state unchanged).
    """
    meta_gradient = make_meta_gradient(learner, config, inner_optimizer)

    def init(key: jax.Array) -> MetaTrainState:
        return init_train_state(key, learner, config, outer_tx)

    def step(state: MetaTrainState):
        key, key_tasks, key_grad = jax.random.split(state.key, 3)
        tasks = sample_tasks(key_tasks)
        loss, grads, metrics = meta_gradient(state.meta_params, tasks, key_grad)
        finite = tree_all_finite(grads)
        updates, opt_state = outer_tx.update(grads, state.opt_state, state.meta_params)
        meta_params = optax.apply_updates(state.meta_params, updates)
        if skip_nonfinite:
            meta_params = keep_if_finite(finite, meta_params, state.meta_params)
            opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        metrics = dict(metrics, meta_loss=loss, grad_norm=optax.tree.norm(grads), grad_finite=finite)
        return MetaTrainState(meta_params, opt_state, key, state.step + 1), metrics

    return MetaAlgorithm(init, step)
