"""docs/losses.md: the custom-loss example runs, and MAML differentiates through the new loss correctly."""

import pathlib
import re

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

from metarl_jax.maml import make_meta_loss


def _example_namespace():
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "losses.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/losses.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "docs/losses.md", "exec"), namespace)
    return namespace


def test_custom_loss_example_second_order_matches_finite_differences():
    ns = _example_namespace()
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(ns["grads"]))
    learner, base, config, tasks = ns["learner"], ns["base"], ns["config"], ns["tasks"]
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), ns["meta_params"])
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
        params = jax.tree.unflatten(treedef, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                              for k, x in zip(keys, leaves)])
        key = jax.random.PRNGKey(2)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        loss = lambda x, lrn: make_meta_loss(lrn, config)(unravel(x), tasks, key)[0]
        grad = jax.jit(jax.grad(loss), static_argnums=1)(flat, learner)
        directions = jax.random.normal(jax.random.PRNGKey(6), (4, flat.size), jnp.float64)
        eps = 1e-5
        batched = jax.jit(jax.vmap(loss, in_axes=(0, None)), static_argnums=1)
        fd = (batched(flat + eps * directions, learner) - batched(flat - eps * directions, learner)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(fd), np.asarray(directions @ grad), rtol=1e-6, atol=1e-9)
        plain = jax.jit(jax.grad(loss), static_argnums=1)(flat, base)
        assert float(jnp.linalg.norm(plain - grad)) > 1e-4 * float(jnp.linalg.norm(grad))
