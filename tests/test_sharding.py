"""The task axis sharded over 4 (virtual CPU) devices gives the single-device results.

The device count is fixed when JAX starts, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 4, jax.devices()
    from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
    from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params, make_meta_gradient
    from metarl_jax.networks import GaussianPolicy
    from metarl_jax.sharding import make_sharded, replicate, shard_tasks, task_mesh
    from metarl_jax.tasks import Navigation2D, sample_tasks

    env = Navigation2D(horizon=20)
    learner = PolicyGradientLearner(env, GaussianPolicy(2, hidden_sizes=(16, 16)),
                                    PGConfig(num_inner_episodes=4, num_outer_episodes=4, horizon=20))
    config = MAMLConfig(estimator="dice")
    meta_params = init_meta_params(jax.random.PRNGKey(0), learner, config)
    tasks = sample_tasks(env, jax.random.PRNGKey(1), 8)
    key = jax.random.PRNGKey(2)
    fn = make_meta_gradient(learner, config)

    single = jax.jit(fn, device=jax.devices()[0]) if False else jax.jit(fn)
    loss1, grads1, m1 = single(jax.device_put(meta_params, jax.devices()[0]),
                               jax.device_put(tasks, jax.devices()[0]), key)
    mesh = task_mesh()
    sharded_tasks = shard_tasks(tasks, mesh)
    assert len(sharded_tasks.goal.sharding.device_set) == 4
    assert sharded_tasks.goal.addressable_shards[0].data.shape == (2, 2)
    loss4, grads4, m4 = make_sharded(fn, mesh)(replicate(meta_params, mesh), sharded_tasks, key)
    np.testing.assert_allclose(loss1, loss4, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads4)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(m1["per_task_post_adaptation_return"], m4["per_task_post_adaptation_return"],
                               rtol=1e-4)
    try:
        shard_tasks(sample_tasks(env, key, 6), mesh)
        raise SystemExit("expected a ValueError for 6 tasks on 4 devices")
    except ValueError as err:
        assert "meta_batch=6" in str(err)
    print("SHARDED-OK", float(loss1), float(loss4))
    """
)


def test_sharded_meta_gradient_matches_single_device():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHARDED-OK" in proc.stdout
