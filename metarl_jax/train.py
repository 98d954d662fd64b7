"""The loop around the jitted meta-iteration: progress bar, metrics on disk, checkpoints, resume.

The compiled unit is a ``lax.scan`` over ``iterations_per_call`` meta-iterations
(each: sample tasks, adapt, meta-gradient, optimizer step); nothing inside it
talks to the host. Between calls the loop appends one JSON line per
iteration to ``metrics.jsonl`` (flushed, so a crash loses no finished
iteration) and saves a crash-safe checkpoint of the whole training state
(parameters, optimizer state, PRNG key, step) every ``checkpoint_every``
iterations. Restarting with the same run directory resumes from the latest
checkpoint and produces the same metrics as an uninterrupted run with the
same seed: the PRNG key is part of the checkpointed state and
``metrics.jsonl`` is cut back to the checkpointed iteration.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from metarl_jax import checkpoint as ckpt
from metarl_jax.learners import _require
from metarl_jax.maml import MAMLConfig, MetaTrainState, init_train_state, make_meta_train_step

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteGradientError(RuntimeError):
    """Raised when a meta-gradient contains NaN or inf and the policy is ``"stop"``."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Meta-training loop settings.

    Attributes:
      num_iterations: meta-iterations to run in total.
      meta_batch: tasks per meta-iteration.
      outer_lr: Adam step size of the meta-optimizer.
      seed: PRNG seed (parameters, tasks, rollouts).
      iterations_per_call: meta-iterations compiled into one ``lax.scan`` call.
      checkpoint_every: iterations between checkpoints (rounded up to whole calls).
      keep_checkpoints: how many checkpoints to keep.
      on_nonfinite: ``"stop"`` raises (keeping the last good checkpoint) or ``"skip"``
        leaves the parameters unchanged for that iteration.
      max_grad_norm: clip the meta-gradient's global norm (``None``: no clipping).
    """

    num_iterations: int = 100
    meta_batch: int = 20
    outer_lr: float = 1e-3
    seed: int = 0
    iterations_per_call: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    on_nonfinite: str = "stop"
    max_grad_norm: float | None = None

    def __post_init__(self):
        _require(int(self.num_iterations) >= 1, "num_iterations", self.num_iterations, "must be an integer >= 1")
        _require(int(self.meta_batch) >= 1, "meta_batch", self.meta_batch, "must be an integer >= 1")
        _require(self.outer_lr > 0, "outer_lr", self.outer_lr, "must be > 0")
        _require(int(self.iterations_per_call) >= 1, "iterations_per_call", self.iterations_per_call,
                 "must be an integer >= 1")
        _require(int(self.checkpoint_every) >= 1, "checkpoint_every", self.checkpoint_every, "must be an integer >= 1")
        _require(int(self.keep_checkpoints) >= 1, "keep_checkpoints", self.keep_checkpoints, "must be an integer >= 1")
        _require(self.on_nonfinite in NONFINITE_POLICIES, "on_nonfinite", self.on_nonfinite,
                 f"allowed values are {NONFINITE_POLICIES}")
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm,
                 "must be > 0 or None")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam on the meta-parameters, with optional global-norm clipping."""
    adam = optax.adam(config.outer_lr)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def make_multi_step(step_fn: Callable, num_steps: int) -> Callable:
    """``state -> (state, metrics stacked over num_steps)``: a ``lax.scan`` of the meta-iteration."""

    def multi_step(state):
        return jax.lax.scan(lambda s, _: step_fn(s), state, None, length=num_steps)

    return multi_step


def _scalar_metrics(metrics: dict, index: int) -> dict:
    out = {}
    for name, value in metrics.items():
        value = np.asarray(value[index])
        if value.ndim == 0:
            out[name] = value.item() if value.dtype != np.bool_ else bool(value)
        elif value.size <= 32:
            out[name] = value.tolist()
    return out


def _truncate_metrics(path: str, num_iterations: int) -> None:
    """Keep the first ``num_iterations`` lines of ``metrics.jsonl`` (drop work after the checkpoint)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] < num_iterations]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(run_dir: str) -> list[dict]:
    """All iterations recorded in ``run_dir/metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def meta_train(
    learner,
    maml_config: MAMLConfig,
    train_config: TrainConfig,
    sample_tasks: Callable[[jax.Array], Any],
    run_dir: str | None = None,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    inner_optimizer=None,
) -> tuple[MetaTrainState, list[dict]]:
    """Meta-train ``learner`` and return ``(final state, per-iteration metrics)``.

    ``sample_tasks(key)`` returns a batch of ``train_config.meta_batch`` tasks.
    With ``run_dir`` the run writes ``metrics.jsonl`` and ``checkpoints/`` there
    and resumes from the latest checkpoint if one exists. ``stop_after`` ends
    the loop early after that many iterations of this call (to simulate an
    interruption in tests).
    """
    optimizer = make_optimizer(train_config)
    state = init_train_state(jax.random.PRNGKey(train_config.seed), learner, maml_config, optimizer)
    step_fn = make_meta_train_step(
        learner, maml_config, optimizer, sample_tasks, inner_optimizer,
        skip_nonfinite=train_config.on_nonfinite == "skip",
    )
    compiled: dict[int, Callable] = {}

    def multi_step_of(length: int) -> Callable:
        """A jitted scan of ``length`` meta-iterations (compiled once per distinct length)."""
        if length not in compiled:
            compiled[length] = jax.jit(make_multi_step(step_fn, length))
        return compiled[length]

    metrics_path = ckpt_dir = None
    if run_dir is not None:
        os.makedirs(run_dir, exist_ok=True)
        metrics_path = os.path.join(run_dir, "metrics.jsonl")
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        restored = ckpt.restore_latest(ckpt_dir, state)
        if restored is not None:
            _, state, _ = restored
        _truncate_metrics(metrics_path, int(state.step))
    history = read_metrics(run_dir) if run_dir is not None else []

    start = int(state.step)
    total = int(train_config.num_iterations)
    end = total if stop_after is None else min(total, start + int(stop_after))
    bar = tqdm(total=total, initial=start, desc="meta-iterations", disable=not progress, dynamic_ncols=True)
    last_saved = start
    iteration = start
    while iteration < end:
        chunk = min(int(train_config.iterations_per_call), end - iteration)  # never run past the end
        t0 = time.perf_counter()
        new_state, metrics = multi_step_of(chunk)(state)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - t0
        finite = np.asarray(metrics["grad_finite"])
        if train_config.on_nonfinite == "stop" and not finite.all():
            bad = iteration + int(np.argmin(finite))
            where = ckpt.latest_checkpoint(ckpt_dir) if ckpt_dir else None
            raise NonFiniteGradientError(
                f"non-finite meta-gradient at iteration {bad}: training stopped; "
                f"last good checkpoint: {where or 'none saved'} (set on_nonfinite='skip' to skip such updates)"
            )
        state = new_state
        lines = []
        for j in range(chunk):
            if iteration >= end:
                break
            record = {"iteration": iteration, **_scalar_metrics(metrics, j), "seconds": elapsed / chunk}
            history.append(record)
            lines.append(json.dumps(record) + "\n")
            iteration += 1
        if metrics_path is not None:
            with open(metrics_path, "a") as f:
                f.writelines(lines)
                f.flush()
        bar.update(len(lines))
        bar.set_postfix(post=f"{history[-1]['post_adaptation_return']:.3g}",
                        pre=f"{history[-1]['pre_adaptation_return']:.3g}")
        if ckpt_dir is not None and (iteration - last_saved >= train_config.checkpoint_every or iteration >= end):
            ckpt.save_checkpoint(ckpt_dir, iteration, state, {"iteration": iteration},
                                 keep=train_config.keep_checkpoints)
            last_saved = iteration
    bar.close()
    return state, history


def load_meta_params(checkpoint_dir: str, learner, maml_config: MAMLConfig, train_config: TrainConfig):
    """Meta-parameters from the latest checkpoint in ``checkpoint_dir`` (a run's ``checkpoints/``)."""
    optimizer = make_optimizer(train_config)
    target = init_train_state(jax.random.PRNGKey(train_config.seed), learner, maml_config, optimizer)
    restored = ckpt.restore_latest(checkpoint_dir, target)
    if restored is None:
        raise FileNotFoundError(f"checkpoint_dir={checkpoint_dir!r} holds no checkpoint")
    return restored[1].meta_params
