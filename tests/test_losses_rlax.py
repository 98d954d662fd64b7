"""Our returns, GAE and TD errors against rlax's reference implementations (test-only dependency)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import losses

rlax = pytest.importorskip("rlax")

T, E, A = 7, 3, 4
GAMMA, LAM = 0.9, 0.8


def _data(key):
    k1, k2, k3 = jax.random.split(key, 3)
    rewards = jax.random.normal(k1, (E, T))
    values = jax.random.normal(k2, (E, T + 1))
    return rewards, values, k3


def test_discounted_returns_match_rlax():
    rewards, _, _ = _data(jax.random.PRNGKey(0))
    mask = jnp.ones((E, T))
    ours = losses.discounted_returns(rewards, mask, GAMMA)
    ref = jax.vmap(lambda r: rlax.discounted_returns(r, jnp.full((T,), GAMMA), jnp.zeros(())))(rewards)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("terminal_step", [None, 4])
def test_gae_matches_rlax(terminal_step):
    rewards, values, _ = _data(jax.random.PRNGKey(1))
    done = jnp.zeros((E, T), bool)
    mask = jnp.ones((E, T))
    if terminal_step is not None:  # the episode ends at terminal_step; later steps are padding
        done = done.at[:, terminal_step].set(True)
        mask = (jnp.arange(T) <= terminal_step).astype(jnp.float32)[None].repeat(E, 0)
    ours = losses.gae_advantages(rewards * mask, values[:, :-1], values[:, 1:], done, mask, GAMMA, LAM)
    discounts = GAMMA * (1.0 - done.astype(jnp.float32))
    ref = jax.vmap(lambda r, d, v: rlax.truncated_generalized_advantage_estimation(r, d, LAM, v))(
        rewards * mask, discounts, values)
    np.testing.assert_allclose(ours * mask, ref * mask, rtol=1e-5, atol=1e-5)


def test_td_errors_match_rlax_q_learning():
    key = jax.random.PRNGKey(2)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    q_tm1 = jax.random.normal(k1, (E, A))
    q_t = jax.random.normal(k2, (E, A))
    actions = jax.random.randint(k3, (E,), 0, A)
    rewards = jax.random.normal(k4, (E,))
    done = jax.random.bernoulli(k5, 0.3, (E,))
    ours = losses.td_errors(q_tm1[jnp.arange(E), actions], rewards, done, q_t, GAMMA)
    ref = jax.vmap(rlax.q_learning)(q_tm1, actions, rewards, GAMMA * (1.0 - done.astype(jnp.float32)), q_t)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
