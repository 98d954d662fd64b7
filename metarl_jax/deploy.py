"""The decision stage: act on a task round after round, adapting online from the reward feedback.

Starting from the meta-learned parameters ``phi_0 = theta``, round ``r = 0..R-1``:

    D_r      = collect(key_r, phi_r, task)                  act: a batch of E episodes with pi_{phi_r}
    G_r      = mean_e sum_t r_{e,t}                          the round's (undiscounted) return
    phi_r+1  = phi_r - alpha * grad L_in(phi_r, D_r)        adapt on the feedback (SGD, Meta-SGD or optax)

which is exactly :func:`metarl_jax.algorithms.maml.adapt` run for ``R`` steps (same keys, same
data, same updates: ``returns`` equals ``adapt``'s ``inner_returns`` with
``inner_steps=R``), with per-round statistics recorded as well. The rounds are one
``lax.scan``; :func:`deploy` is a pure function of ``(meta_params, task, key)``, so
it jits, and ``jax.vmap`` over tasks (and keys) deploys on a batch of tasks
(:func:`deploy_batch`). Nothing is differentiated.

Per round it also runs one episode of the *mode* policy of ``phi_r`` (Gaussian
mean / most likely action / greedy Q action), whose observations are the
``paths`` (positions, for navigation).

Rounds beyond the trained ``K``. The meta-objective trained ``K = inner_steps``
updates; later rounds take steps it never saw. ``keep_best=True`` is policy
selection by the reward feedback itself. Let ``B`` be the best round return among
the accepted rounds and ``se_r`` the standard error of round ``r``'s mean return.
Round ``r``'s parameters are accepted unless ``G_r < B - 2 se_r`` (clearly worse than
the best, not just noise); the next update starts from the last accepted
parameters ``phi_a``:

    phi_r+1 = phi_r - alpha * grad L_in(phi_r, D_r)          if round r is accepted
    phi_r+1 = phi_a - alpha * grad L_in(phi_a, D'_r)         else, D'_r fresh episodes of phi_a

(the rejected step is retaken on new data, since ``D_a`` would repeat the same
update; ``D'_r`` is counted in ``extra_episodes``). A step that made the return
worse is undone after one round instead of compounding; the validation data is
the deployment's own episodes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from metarl_jax.training import checkpoint as ckpt
from metarl_jax.algorithms.inner import apply_inner_rule, inner_gradient, inner_rule, sgd
from metarl_jax.algorithms.maml import MAMLConfig
from metarl_jax.rollout import rollout
from metarl_jax.tasks.base import num_tasks_in
from metarl_jax.validation import check_bool, check_int, check_real


@struct.dataclass
class DeployResult:
    """What :func:`deploy` returns for one task (``R`` rounds; add a leading task axis under vmap).

    Attributes:
      returns: ``[R]`` mean undiscounted episode return of round ``r``'s batch (policy ``phi_r``).
      losses: ``[R]`` inner loss of round ``r``.
      greedy_returns: ``[R]`` return of one episode of the mode policy of ``phi_r``.
      paths: ``[R, T, obs_dim]`` observations after each step of that episode (navigation: positions).
      action_counts: ``[R, A]`` float32, times each action was taken in round ``r``'s batch
        (discrete actions; bandits: pulls per arm), else ``None``.
      mean_action: ``[R, d]`` mean action of round ``r``'s batch (continuous actions), else ``None``.
      params: ``phi_R``, the parameters after the last round's update.
      update_from_round: ``[R]`` int32, the round whose parameters the update after round ``r``
        started from: ``r`` itself, or with ``keep_best`` the last accepted round.
      return_stderr: ``[R]`` standard error of round ``r``'s mean return (episode returns' std / sqrt(E)).
      extra_episodes: ``[]`` int32, episodes collected beyond the rounds' own batches (``keep_best``
        retakes a rejected step on a fresh batch of the best parameters).
    """

    returns: jax.Array
    losses: jax.Array
    greedy_returns: jax.Array
    paths: jax.Array
    action_counts: jax.Array | None
    mean_action: jax.Array | None
    params: Any
    update_from_round: jax.Array | None = None
    extra_episodes: jax.Array | None = None
    return_stderr: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class ModeActions:
    """The deterministic policy of a learner's parameters: Gaussian mean, argmax logits, or greedy Q.

    Policy-gradient learners use ``learner.policy``; actor-critic learners the actor of their
    ``model`` (``params["actor"]``); Q-learners ``argmax_a Q(s, a)``. A policy without a mode
    method (``mean`` / ``logits``, e.g. a shared-torso actor-critic) acts by sampling with ``key``.
    """

    learner: Any

    def sample(self, key, params, obs):
        learner = self.learner
        if hasattr(learner, "q_values"):
            return jnp.argmax(learner.q_values(params, obs), axis=-1).astype(jnp.int32)
        policy = learner.model if hasattr(learner, "model") else learner.policy
        if hasattr(policy, "actor"):  # separate actor and critic
            policy, params = policy.actor, params["actor"]
        if hasattr(policy, "mean"):
            return policy.mean(params, obs)
        if hasattr(policy, "logits"):
            return jnp.argmax(policy.logits(params, obs), axis=-1).astype(jnp.int32)
        return policy.sample(key, params, obs)


def is_discrete(env) -> bool:
    """Whether ``env``'s action space is ``Discrete``."""
    return isinstance(env.action_space(env.default_params), spaces.Discrete)


def check_single_task(env, task) -> None:
    """The task must be one unbatched ``EnvParams`` of ``env``'s kind."""
    default = env.default_params
    if jax.tree.structure(task) != jax.tree.structure(default):
        raise ValueError(f"task={type(task).__name__} is invalid: expected {type(default).__name__} of {env.name}")
    for got, want in zip(jax.tree.leaves(task), jax.tree.leaves(default)):
        if jnp.ndim(got) != jnp.ndim(want):
            raise ValueError(
                f"task is invalid: a leaf has shape {jnp.shape(got)}, a single task's has {jnp.shape(want)} "
                "(deploy takes one task; vmap it, or use deploy_batch, for a batch)"
            )


def deploy(
    learner,
    maml_config: MAMLConfig,
    meta_params: dict,
    task,
    key: jax.Array,
    num_rounds: int,
    inner_lr: float | jax.Array | None = None,
    inner_optimizer=None,
    keep_best: bool = False,
) -> DeployResult:
    """Act and adapt on one task for ``num_rounds`` rounds from ``meta_params`` (see the module docstring).

    Args:
      learner: the inner learner the meta-parameters were trained with.
      maml_config: its :class:`~metarl_jax.algorithms.maml.MAMLConfig` (``estimator`` picks the inner loss,
        ``inner_lr`` the step size unless overridden).
      meta_params: ``{"policy": theta}`` (plus ``{"inner_lr": ...}`` with Meta-SGD).
      task: one task (``EnvParams``, unbatched).
      key: PRNG key.
      num_rounds: ``R >= 1`` (static).
      inner_lr: ``None`` uses the learned per-parameter rates if present, else
        ``maml_config.inner_lr``; a number (or traced scalar) ``>= 0`` overrides both;
        ``0`` is the no-update control (the meta-learned policy, unchanged).
      inner_optimizer: an optax transformation to use instead of SGD (as in ``adapt``).
      keep_best: reject a round clearly (2 standard errors) below the best accepted one and retake
        its step from the last accepted parameters (module docstring). Under ``jit`` the retake's
        rollout and gradient run every round (both branches of a select), about doubling the
        per-round cost. ``False`` updates the last round's parameters.

    Returns:
      A :class:`DeployResult`.
    """
    check_int("num_rounds", num_rounds, minimum=1)
    if inner_lr is not None and not isinstance(inner_lr, (jax.Array, np.ndarray)):  # arrays (traced too) unchecked
        check_real("inner_lr", inner_lr, minimum=0.0)
    check_bool("keep_best", keep_best)
    env = learner.env
    check_single_task(env, task)
    theta = meta_params["policy"]
    rule = inner_rule(maml_config, meta_params, inner_optimizer) if inner_lr is None else sgd(jnp.asarray(inner_lr))
    discrete = is_discrete(env)
    num_actions = int(env.action_space(env.default_params).n) if discrete else 0
    mode = ModeActions(learner)
    horizon = int(learner.config.horizon)
    opt_state = rule.init(theta)
    estimator = maml_config.estimator

    def step_gradient(phi, data):
        loss, grads, _ = inner_gradient(learner, estimator, phi, data)
        return loss, grads

    def round_(carry, xs):
        phi, opt_state, best = carry
        round_key, r = xs
        data = learner.collect(round_key, phi, task)
        round_return = learner.mean_return(data)
        loss, grads = step_gradient(phi, data)
        episode_returns = data.episode_returns(1.0)
        stderr = jnp.std(episode_returns, ddof=1) / jnp.sqrt(episode_returns.shape[0]) if episode_returns.shape[0] > 1 \
            else jnp.zeros_like(round_return)
        if keep_best:
            best_phi, best_opt, best_return, best_index, extra = best
            # Accept the round's parameters unless their return is clearly (2 standard errors) below the best.
            accepted = round_return >= best_return - 2.0 * stderr
            best_phi, best_opt = jax.tree.map(lambda n, o: jnp.where(accepted, n, o),
                                              (phi, opt_state), (best_phi, best_opt))
            best_return = jnp.where(accepted, jnp.maximum(round_return, best_return), best_return).astype(best_return.dtype)
            best_index = jnp.where(accepted, r, best_index)
            # A rejected step is retaken from the best parameters on a fresh batch of their episodes.
            retake = learner.collect(jax.random.fold_in(round_key, 2), best_phi, task)
            _, retake_grads = step_gradient(best_phi, retake)
            grads = jax.tree.map(lambda g, h: jnp.where(accepted, g, h), grads, retake_grads)
            extra = extra + jnp.where(accepted, 0, retake.num_episodes).astype(jnp.int32)
            new_phi, opt_state = apply_inner_rule(rule, grads, best_opt, best_phi)
            best = (best_phi, best_opt, best_return, best_index, extra)
            start = best_index
        else:
            new_phi, opt_state = apply_inner_rule(rule, grads, opt_state, phi)
            start = r
        mask = data.mask
        if discrete:
            counts = jnp.sum(jax.nn.one_hot(data.action, num_actions) * mask[..., None], axis=(0, 1))
            stats = (counts, None)
        else:
            total = jnp.sum(data.action * mask[..., None], axis=(0, 1))
            stats = (None, total / jnp.maximum(jnp.sum(mask), 1.0))
        greedy = rollout(jax.random.fold_in(round_key, 1), env, mode, phi, task, 1, horizon)
        out = (round_return, loss, greedy.episode_returns(1.0)[0], greedy.next_obs[0], stats, start, stderr)
        return (new_phi, opt_state, best), out

    keys = jax.random.split(key, num_rounds)
    best0 = (theta, opt_state, jnp.asarray(-jnp.inf, jnp.float32), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32)) if keep_best else None
    (phi, _, best), (returns, losses, greedy_returns, paths, (counts, mean_action), starts, stderrs) = jax.lax.scan(
        round_, (theta, opt_state, best0), (keys, jnp.arange(num_rounds, dtype=jnp.int32)))
    chex.assert_shape(returns, (num_rounds,))
    extra = best[4] if keep_best else jnp.zeros((), jnp.int32)
    return DeployResult(returns=returns, losses=losses, greedy_returns=greedy_returns, paths=paths,
                        action_counts=counts, mean_action=mean_action, params=phi,
                        update_from_round=starts.astype(jnp.int32), extra_episodes=extra, return_stderr=stderrs)


def deploy_batch(learner, maml_config: MAMLConfig, meta_params: dict, tasks, key: jax.Array, num_rounds: int,
                 inner_lr=None, inner_optimizer=None, keep_best: bool = False) -> DeployResult:
    """:func:`deploy` vmapped over a batch of ``N`` tasks (one key each): every field gets a leading ``[N]``."""
    keys = jax.random.split(key, num_tasks_in(tasks))
    return jax.vmap(lambda t, k: deploy(learner, maml_config, meta_params, t, k, num_rounds, inner_lr,
                                        inner_optimizer, keep_best))(tasks, keys)


# --------------------------------------------------------------------------- loading a run


class LoadedRun(NamedTuple):
    """A meta-trained experiment rebuilt from its run directory."""

    config: Any  # metarl_jax.experiment.MAMLExperimentConfig
    family: Any
    learner: Any
    maml_config: MAMLConfig
    meta_params: dict
    checkpoint: str
    run_dir: str


def _locate(path: str) -> tuple[str, str]:
    """``(checkpoint, run directory)`` for a run dir, its ``checkpoints/`` dir or one ``step_<digits>`` checkpoint."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint={path!r} is invalid: no such file or directory")
    one_checkpoint = re.fullmatch(r"step_\d{8,}", os.path.basename(os.path.normpath(path)))
    if os.path.isfile(path) or one_checkpoint:  # a checkpoint is a directory; a file named so is an old-format one
        if not one_checkpoint:
            raise ValueError(f"checkpoint={path!r} is invalid: not a checkpoint (step_<digits>); pass "
                             "runs/<name>/<timestamp>, its checkpoints/ directory or one step_<digits> checkpoint")
        return path, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    ckpt_dir = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    found = ckpt.latest_checkpoint(ckpt_dir)
    if found is None:
        raise FileNotFoundError(
            f"checkpoint={path!r} is invalid: {ckpt_dir} holds no checkpoint (expected step_<digits> directories; "
            "pass runs/<name>/<timestamp>, its checkpoints/ directory or one step_<digits> checkpoint)"
        )
    return found, os.path.dirname(os.path.abspath(ckpt_dir))


def experiment_config_from_json(path: str):
    """The :class:`~metarl_jax.experiment.MAMLExperimentConfig` saved as ``config.json`` by an experiment."""
    from metarl_jax.experiment import MAMLExperimentConfig

    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing: the run directory of a checkpoint must hold the config.json its experiment wrote"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    fields = {f.name: f for f in dataclasses.fields(MAMLExperimentConfig)}
    kwargs = {}
    for name, value in raw.items():
        if name in fields:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return MAMLExperimentConfig(**kwargs)


def load_run(path: str) -> LoadedRun:
    """Rebuild the learner of an experiment run and load its meta-parameters.

    ``path``: ``runs/<name>/<timestamp>`` (latest checkpoint), its ``checkpoints/`` directory
    or one ``step_<digits>`` checkpoint directory; ``config.json`` must sit in the run directory.
    Raises ``FileNotFoundError`` / ``ValueError`` with a message naming what is wrong.
    """
    from metarl_jax.experiment import build
    from metarl_jax.algorithms.maml import init_meta_params

    checkpoint_file, run_dir = _locate(os.fspath(path))
    config = experiment_config_from_json(os.path.join(run_dir, "config.json"))
    family, learner, maml_config, train_config = build(config)
    # Only the meta-parameters are read: the outer optimizer's state (its schedule included) is not needed.
    target = init_meta_params(jax.random.PRNGKey(train_config.seed), learner, maml_config)
    try:
        meta_params, _ = ckpt.restore_checkpoint(checkpoint_file, target, subtree=".meta_params")
    except ckpt.CheckpointCorruptError as err:
        raise ValueError(f"checkpoint={checkpoint_file!r} is unreadable: {err}") from None
    except ValueError as err:
        raise ValueError(
            f"checkpoint={checkpoint_file!r} does not fit the learner built from {run_dir}/config.json: {err}"
        ) from None
    return LoadedRun(config, family, learner, maml_config, meta_params, checkpoint_file, run_dir)
