"""``rollout_unroll`` is execution only: unrolled rollouts give the same trajectories and meta-gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.learners.actor_critic import ACConfig
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params, make_meta_gradient
from metarl_jax.networks import make_policy_for
from metarl_jax.learners.q_learning import QConfig
from metarl_jax.rollout import rollout
from metarl_jax.tasks import make_family
from metarl_jax.tasks.base import sample_tasks


@pytest.mark.parametrize("family_name", ["navigation", "tabular_mdp"])
def test_unrolled_rollout_equals_scan(family_name):
    family = make_family(family_name, horizon=7)
    policy = make_policy_for(family, hidden_sizes=(16,))
    params = policy.init(jax.random.PRNGKey(0), family.obs_dim())
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    task = sample_tasks(family, jax.random.PRNGKey(2), 1)
    task = jax.tree.map(lambda x: x[0], task)
    run = lambda unroll: jax.jit(lambda k: rollout(k, family, policy, params, task, 3, 7, unroll))(
        jax.random.PRNGKey(3))
    base = run(1)
    for unroll in (2, 7, True):
        for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(run(unroll))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert float(jnp.std(base.reward)) > 0  # the comparison is not between constants


def test_pg_meta_gradient_is_the_same_with_an_unrolled_rollout():
    family = make_family("navigation", horizon=6)
    policy = make_policy_for(family, hidden_sizes=(16,))
    cfg = dict(num_inner_episodes=3, num_outer_episodes=3, horizon=6)
    maml = MAMLConfig(inner_lr=0.3, estimator="dice")
    learner = PolicyGradientLearner(family, policy, PGConfig(**cfg))
    unrolled = PolicyGradientLearner(family, policy, PGConfig(**cfg, rollout_unroll=3))
    meta_params = init_meta_params(jax.random.PRNGKey(0), learner, maml)
    tasks = sample_tasks(family, jax.random.PRNGKey(1), 4)
    _, g1, _ = jax.jit(make_meta_gradient(learner, maml))(meta_params, tasks, jax.random.PRNGKey(2))
    _, g2, _ = jax.jit(make_meta_gradient(unrolled, maml))(meta_params, tasks, jax.random.PRNGKey(2))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)) > 0


@pytest.mark.parametrize("config_cls", [PGConfig, ACConfig, QConfig])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_rollout_unroll_validation_names_the_field(config_cls, bad):
    with pytest.raises(ValueError, match=r"rollout_unroll=.* is invalid: must be an integer >= 1"):
        config_cls(rollout_unroll=bad)
