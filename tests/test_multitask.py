"""Multi-task pretraining runs in the one training loop: exact iteration count, resume, non-finite gradients."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.training import checkpoint
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig
from metarl_jax.algorithms.multitask import multitask, multitask_loss
from metarl_jax.networks import make_policy_for
from metarl_jax.tasks import BernoulliBandit, sample_tasks
from metarl_jax.training.loop import NonFiniteGradientError, TrainConfig, make_optimizer, read_metrics, run

FAMILY = BernoulliBandit(num_arms=3, horizon=4)
LEARNER = PolicyGradientLearner(FAMILY, make_policy_for(FAMILY, tabular=True),
                                PGConfig(num_inner_episodes=2, num_outer_episodes=2, horizon=4, baseline="mean"))
MAML = MAMLConfig(inner_lr=0.5)
# 5 iterations in scans of 2: 2 + 2 + 1.
TRAIN = TrainConfig(num_iterations=5, meta_batch=3, outer_lr=0.1, iterations_per_call=2, checkpoint_every=2)


def _sample(key):
    return sample_tasks(FAMILY, key, TRAIN.meta_batch)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _algorithm(learner, train_config):
    """Multi-task training with the training config's Adam and non-finite policy."""
    return multitask(learner, MAML, make_optimizer(train_config), _sample, train_config.on_nonfinite == "skip")


ALG = _algorithm(LEARNER, TRAIN)  # one object: every run below reuses one compiled scan


def _pretrain(algorithm, train_config, run_dir=None, stop_after=None):
    """``(meta_params, history)`` of a multi-task run through the one training loop."""
    state, history = run(algorithm, train_config, run_dir, progress=False, stop_after=stop_after,
                         desc="multi-task iterations", metadata={"kind": "multitask"})
    return state.meta_params, history


def _final_step(run_dir: str) -> int:
    target = ALG.init(jax.random.PRNGKey(0))
    step, state, metadata = checkpoint.restore_latest(os.path.join(run_dir, "checkpoints"), target)
    assert int(state.step) == step == metadata["iteration"] and metadata["kind"] == "multitask"
    return step


def test_iteration_count_not_a_multiple_of_the_chunk_is_exact_and_resume_equals_uninterrupted(tmp_path):
    full_dir = str(tmp_path / "full")
    full_params, full = _pretrain(ALG, TRAIN, full_dir)
    assert [h["iteration"] for h in full] == [0, 1, 2, 3, 4]
    assert _strip(read_metrics(full_dir)) == _strip(full)
    assert _final_step(full_dir) == 5
    assert all(h["grad_finite"] is True for h in full)

    interrupted = str(tmp_path / "interrupted")
    _, first = _pretrain(ALG, TRAIN, interrupted, stop_after=3)
    assert len(first) == 3 and _final_step(interrupted) == 3  # checkpointed before the end, not only at it
    # Work done after the checkpoint and lost in a crash: an extra metrics line, cut back on resume.
    with open(os.path.join(interrupted, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": 3, "return": 123.0}) + "\n")
    params, resumed = _pretrain(ALG, TRAIN, interrupted)
    assert _final_step(interrupted) == 5
    assert _strip(resumed) == _strip(full) == _strip(read_metrics(interrupted))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A finished run only loads.
    again, history = _pretrain(ALG, TRAIN, full_dir)
    assert _strip(history) == _strip(full)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(full_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _NaNLossLearner(PolicyGradientLearner):
    """The policy-gradient learner with a NaN outer loss, hence a NaN multi-task gradient."""

    def outer_loss(self, params, batch):
        return super().outer_loss(params, batch) * jnp.nan


def test_task_chunks_give_the_vmapped_loss_and_gradient():
    """``task_chunk`` is execution only (``maml.map_tasks``, as in MAML): 5 tasks in chunks of 2 give
    the vmapped loss, per-task returns and gradient."""
    tasks = sample_tasks(FAMILY, jax.random.PRNGKey(1), 5)
    theta = ALG.init(jax.random.PRNGKey(0)).meta_params["policy"]
    theta = jax.tree.map(lambda x: x + 0.3 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size, theta)

    def program(p):
        return [jax.value_and_grad(lambda q: multitask_loss(LEARNER, q, tasks, jax.random.PRNGKey(2), chunk),
                                   has_aux=True)(p) for chunk in (None, 2)]

    ((loss_v, metrics_v), grad_v), ((loss_c, metrics_c), grad_c) = jax.jit(program)(theta)
    np.testing.assert_allclose(float(loss_c), float(loss_v), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics_c["per_task_return"]), np.asarray(metrics_v["per_task_return"]))
    for a, b in zip(jax.tree.leaves(grad_v), jax.tree.leaves(grad_c)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_v)) > 1e-3


def test_nonfinite_gradient_stops_or_is_skipped():
    nan_learner = _NaNLossLearner(LEARNER.env, LEARNER.policy, LEARNER.config)
    short = dataclasses.replace(TRAIN, num_iterations=2)
    with pytest.raises(NonFiniteGradientError, match="non-finite meta-gradient at iteration 0"):
        _pretrain(_algorithm(nan_learner, short), short)
    initial = ALG.init(jax.random.PRNGKey(0)).meta_params
    skip = dataclasses.replace(short, on_nonfinite="skip")
    params, history = _pretrain(_algorithm(nan_learner, skip), skip)
    assert [h["grad_finite"] for h in history] == [False, False]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kwargs, message", [
    ({"train_config": "fast"}, "train_config='fast' is invalid: must be a TrainConfig"),
    ({"config": None}, "config=None is invalid: must be a MAMLConfig"),
    ({"sample_tasks": 3}, "sample_tasks=3 is invalid: must be a callable"),
    ({"stop_after": -1}, "stop_after=-1 is invalid: must be None or an integer >= 0"),
])
def test_multitask_and_its_run_validation_names_the_field(kwargs, message):
    """``multitask`` names a bad config or task sampler; ``run`` a bad training config or ``stop_after``."""
    args = {"config": MAML, "train_config": TRAIN, "sample_tasks": _sample, "stop_after": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        algorithm = multitask(LEARNER, args["config"], make_optimizer(TRAIN), args["sample_tasks"])
        run(algorithm, args["train_config"], progress=False, stop_after=args["stop_after"])
