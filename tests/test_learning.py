"""Short meta-training runs really learn: post-adaptation return well above a random initialisation.

Both policies are evaluated on the same held-out tasks with the same keys (a paired comparison).
"""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.maml_bandit import BanditConfig
from experiments.maml_tabular_mdp import TabularMDPConfig
from metarl_jax import evaluation
from metarl_jax.experiment import build
from metarl_jax.algorithms.maml import init_meta_params, maml
from metarl_jax.tasks import sample_tasks
from metarl_jax.training.loop import make_optimizer, run


def _post_adaptation_gain(config):
    family, learner, maml_config, train_config = build(config)
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    algorithm = maml(learner, maml_config, make_optimizer(train_config), sample,
                     skip_nonfinite=train_config.on_nonfinite == "skip")
    state, history = run(algorithm, train_config, progress=False)
    tasks = sample_tasks(family, jax.random.PRNGKey(12345), 200)
    k = maml_config.inner_steps  # the steps the meta-objective trained
    curve = jax.jit(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks,
                                                             jax.random.PRNGKey(7), k))
    random_params = init_meta_params(jax.random.PRNGKey(99), learner, maml_config)
    learned, random = np.asarray(curve(state.meta_params)), np.asarray(curve(random_params))
    diff = learned[:, k] - random[:, k]
    stderr = diff.std(ddof=1) / np.sqrt(diff.size)
    optimum = np.asarray(evaluation.optimal_returns(family, tasks, config.horizon))
    return diff.mean(), stderr, learned[:, k].mean(), random[:, k].mean(), optimum.mean(), learned[:, 0].mean()


def test_short_meta_training_beats_random_initialisation():
    """Tabular MDPs at a small inner step (0.3), where three steps from a random start barely move
    (k=3 13.0 against the optimum's 22.1): what the meta-learned start and rates add is visible."""
    gain, stderr, learned, random, optimum, _ = _post_adaptation_gain(
        TabularMDPConfig(num_iterations=100, meta_batch=20, inner_lr=0.3))
    # The gap closed towards the optimum must be substantial and far outside the noise.
    assert gain > 5 * stderr, (gain, stderr)
    assert gain > 0.15 * (optimum - random), (learned, random, optimum)


def test_short_meta_training_on_bandits_adapts_and_is_no_worse_than_random():
    """5-armed bandits: the uniform start is already the best single policy and the bandit step size
    takes any near-uniform start most of the way in K=3 steps, so the meta-learned start must (a) close
    at least half of the gap from its own pre-adaptation return to the optimum and (b) not lose to the
    random start by more than noise (measured: gain -0.04 ± 0.07)."""
    gain, stderr, learned, random, optimum, before = _post_adaptation_gain(
        BanditConfig(num_iterations=40, meta_batch=20, num_arms=5))
    assert learned - before > 0.5 * (optimum - before), (before, learned, optimum)
    assert gain > -3 * stderr, (gain, stderr)
