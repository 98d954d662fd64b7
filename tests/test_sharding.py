"""The task axis sharded over several (virtual CPU) devices gives the single-device results.

The device count is fixed when JAX starts, so the multi-device checks run in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=<n>``.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax import sharding
from metarl_jax.algorithms.maml import MAMLConfig, maml, map_tasks
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.networks import GaussianPolicy
from metarl_jax.tasks import Navigation2D, sample_tasks
from metarl_jax.training.loop import TrainConfig, run_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_maml_setup(devices=None, num_iterations=3, meta_batch=4, seed=0):
    """A few second-order (DiCE) MAML iterations on 2D navigation, small enough to compile in seconds.

    Returns ``(step_fn, init_state, train_config)`` for :func:`run_loop`, with
    ``TrainConfig(devices=devices)`` and the initial state from ``PRNGKey(seed)``. Also built by
    the subprocesses of the multi-device tests (``tests/`` on their ``sys.path``), so every run
    compiles the same program.
    """
    env = Navigation2D(horizon=8)
    learner = PolicyGradientLearner(env, GaussianPolicy(2, hidden_sizes=(8,)),
                                    PGConfig(num_inner_episodes=2, num_outer_episodes=2, horizon=8))
    maml_config = MAMLConfig(estimator="dice")
    train_config = TrainConfig(num_iterations=num_iterations, meta_batch=meta_batch, iterations_per_call=num_iterations,
                               checkpoint_every=num_iterations, devices=devices)
    optimizer = optax.adam(1e-2)
    algorithm = maml(learner, maml_config, optimizer, lambda key: sample_tasks(env, key, meta_batch))
    return algorithm.step, algorithm.init(jax.random.PRNGKey(seed)), train_config


def tiny_maml_run(devices=None, run_dir=None, **kwargs):
    """:func:`run_loop` of :func:`tiny_maml_setup`: ``(final state, history, step_fn, init_state)``."""
    step, init, train_config = tiny_maml_setup(devices, **kwargs)
    state, history = run_loop(step, init, train_config, run_dir, progress=False)
    return state, history, step, init


def flat_params(state) -> np.ndarray:
    """Every meta-parameter of ``state`` in one float64 vector (for comparisons across processes)."""
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state.meta_params)])


def run_script(script: str, devices: int, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -c script`` in the repository root with ``devices`` virtual CPU devices; fails with its output."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = dict(os.environ, XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"subprocess timed out after {timeout} s\nstdout:\n{err.stdout}\nstderr:\n{err.stderr}")
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc

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
    proc = run_script(SCRIPT, devices=4)
    assert "SHARDED-OK" in proc.stdout


# --------------------------------------------------------------------------- one process, one device


def test_devices_field_is_validated():
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match=r"devices=.* is invalid"):
            TrainConfig(devices=bad)
    assert TrainConfig(devices=1).devices == 1 and TrainConfig().devices is None
    count = jax.device_count()
    assert sharding.select_devices(None) == jax.devices()
    assert sharding.select_devices(1) == jax.devices()[:1]
    with pytest.raises(ValueError, match=rf"devices={count + 1} is invalid: JAX sees {count} device\(s\)"):
        sharding.select_devices(count + 1)


def test_task_constraints_are_the_identity_without_a_mesh_or_with_one_device():
    """No ambient mesh, or a one-device one: ``map_tasks`` is the plain (chunked) vmap, nothing constrained."""
    xs = (jnp.arange(6.0), jnp.arange(12.0).reshape(6, 2))
    fn = lambda x: x[0] * jnp.sum(x[1])
    expected = jax.vmap(fn)(xs)
    assert sharding.task_shard_count() == 1 and sharding.constrain_tasks(xs) is xs
    counts = []

    def program(xs):
        counts.append(sharding.task_shard_count())
        return map_tasks(fn, xs, 6, 4)

    np.testing.assert_allclose(jax.jit(program)(xs), expected)
    with jax.set_mesh(sharding.task_mesh(jax.devices()[:1])):
        np.testing.assert_allclose(jax.jit(program)(xs), expected)
    assert counts == [1, 1]


# --------------------------------------------------------------------------- one process, two devices

TWO_DEVICES = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, "tests")
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 2, jax.devices()
    from metarl_jax import sharding
    from metarl_jax.algorithms.maml import map_tasks
    from metarl_jax.training.loop import jit_multi_step
    from test_sharding import flat_params, tiny_maml_run

    mesh = sharding.task_mesh()

    # Random draws do not depend on the sharding (threefry is partitionable).
    assert jax.config.jax_threefry_partitionable
    def draws(key):
        keys = sharding.constrain_tasks(jax.random.split(key, 6))
        return jax.vmap(lambda k: jax.random.normal(k, (3,)))(keys)
    plain = jax.jit(draws)(jax.random.PRNGKey(5))
    with jax.set_mesh(mesh):
        split = jax.jit(draws)(jax.random.PRNGKey(5))
    assert len(split.sharding.device_set) == 2, split.sharding
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(split))

    # map_tasks on two devices: values and gradients of every branch (one vmap; padding to a multiple of
    # the device count; unrolled chunks per device; lax.map over more than TASK_CHUNK_UNROLL_LIMIT chunks).
    def loss(w, xs, num_tasks, chunk):
        per_task = map_tasks(lambda x: jnp.tanh(x[0] * w) * jnp.sum(x[1] ** 2), xs, num_tasks, chunk)
        return jnp.sum(per_task * jnp.arange(1.0, num_tasks + 1)), per_task
    for num_tasks, chunk in ((4, None), (3, 1), (5, 2), (19, 1)):
        xs = (jnp.linspace(-1.0, 1.0, num_tasks), jnp.arange(num_tasks * 2.0).reshape(num_tasks, 2) / num_tasks)
        fn = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=(2, 3))
        (l1, per1), g1 = fn(0.7, xs, num_tasks, chunk)
        with jax.set_mesh(mesh):
            (l2, per2), g2 = fn(0.7, xs, num_tasks, chunk)
            hlo = fn.lower(0.7, xs, num_tasks, chunk).compile().as_text()
        assert per2.shape == (num_tasks,)
        np.testing.assert_allclose(per1, per2, rtol=1e-6)
        np.testing.assert_allclose(g1, g2, rtol=1e-6)
        assert "all-reduce" in hlo, (num_tasks, chunk)   # the gradient sums over both devices' tasks

    # A few MAML iterations: two devices give the one-device parameters up to float rounding.
    t0 = time.perf_counter()
    one, history_one, step, init = tiny_maml_run(devices=1)
    t1 = time.perf_counter()
    two, history_two, _, _ = tiny_maml_run(devices=None)
    t2 = time.perf_counter()
    assert int(one.step) == int(two.step) == 3
    assert len(two.meta_params["policy"]["log_std"].sharding.device_set) == 1   # the caller gets a one-device copy
    diff = float(np.max(np.abs(flat_params(one) - flat_params(two))))
    change = float(np.max(np.abs(flat_params(one) - flat_params(init))))
    assert diff <= 1e-5 and change > 100 * diff, (diff, change)
    for a, b in zip(history_one, history_two):
        np.testing.assert_allclose(a["post_adaptation_return"], b["post_adaptation_return"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a["meta_loss"], b["meta_loss"], rtol=1e-3, atol=1e-5)
    try:
        tiny_maml_run(devices=3)
        raise SystemExit("expected a ValueError for devices=3 with 2 devices")
    except ValueError as err:
        assert "devices=3 is invalid: JAX sees 2 device(s)" in str(err), err
    print(f"MAXDIFF {diff:.3g} (parameters moved by up to {change:.3g}); one device {t1 - t0:.1f} s, two {t2 - t1:.1f} s")
    """
)


def test_two_devices_give_the_one_device_run():
    """``TrainConfig(devices=None)`` on 2 devices: the task axis is split (every ``map_tasks`` branch),
    random draws are unchanged, and a few MAML iterations end with the one-device parameters."""
    t0 = time.perf_counter()
    proc = run_script(TWO_DEVICES, devices=2)
    assert "MAXDIFF" in proc.stdout, proc.stdout
    print(proc.stdout.strip().splitlines()[-1], f"(test {time.perf_counter() - t0:.1f} s)")
