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
from metarl_jax.maml import init_meta_params
from metarl_jax.tasks import sample_tasks
from metarl_jax.train import meta_train


def _post_adaptation_gain(config):
    family, learner, maml_config, train_config = build(config)
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    state, history = meta_train(learner, maml_config, train_config, sample, progress=False)
    tasks = sample_tasks(family, jax.random.PRNGKey(12345), 200)
    curve = jax.jit(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks,
                                                             jax.random.PRNGKey(7), 1))
    random_params = init_meta_params(jax.random.PRNGKey(99), learner, maml_config)
    learned, random = np.asarray(curve(state.meta_params)), np.asarray(curve(random_params))
    diff = learned[:, 1] - random[:, 1]
    stderr = diff.std(ddof=1) / np.sqrt(diff.size)
    optimum = np.asarray(evaluation.optimal_returns(family, tasks, config.horizon))
    return diff.mean(), stderr, learned[:, 1].mean(), random[:, 1].mean(), optimum.mean()


@pytest.mark.parametrize("config", [
    BanditConfig(num_iterations=40, meta_batch=20),
    TabularMDPConfig(num_iterations=40, meta_batch=20),
], ids=["bandit", "tabular_mdp"])
def test_short_meta_training_beats_random_initialisation(config):
    gain, stderr, learned, random, optimum = _post_adaptation_gain(config)
    # The gap closed towards the optimum must be substantial and far outside the noise.
    assert gain > 5 * stderr, (gain, stderr)
    assert gain > 0.15 * (optimum - random), (learned, random, optimum)
