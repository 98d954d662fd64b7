"""Policies: small flax.linen networks behind a four-function interface.

Every policy is a frozen (hashable) dataclass with pure methods

* ``init(key, obs_dim) -> params``
* ``log_prob(params, obs, action) -> [...]``: log pi(a | s), differentiable in ``params``;
* ``sample(key, params, obs) -> action``;
* ``entropy(params, obs) -> [...]``.

``obs`` may carry any leading batch shape ``[..., obs_dim]``; the outputs carry
the same leading shape. Because ``params`` is an ordinary pytree, a batch of
adapted parameters (one per task) is the same pytree with a leading axis and
a policy is vmapped over it like any other function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metarl_jax.validation import check_choice, check_int, check_int_sequence, check_real

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
}
LOG_2PI = math.log(2.0 * math.pi)


def _rows(x: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
    """``[..., D] -> ([N, D], leading shape)``.

    Networks run on one row axis: the weight gradient of a layer applied to
    ``[E, T, D]`` contracts two axes, which XLA:CPU lowers by transposing the
    whole activation first; on ``[E*T, D]`` it is a plain matrix product.
    """
    return x.reshape((-1, x.shape[-1])), x.shape[:-1]


class MLP(nn.Module):
    """``x -> act(W_1 x + b_1) -> ... -> W_L h + b_L`` with a linear output layer (any leading shape)."""

    hidden_sizes: Sequence[int]
    out_dim: int
    activation: str = "relu"
    zero_init_output: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x, lead = _rows(x)
        for size in self.hidden_sizes:
            x = act(nn.Dense(size)(x))
        out_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
        out = nn.Dense(self.out_dim, kernel_init=out_init)(x)
        return out.reshape(lead + (self.out_dim,))


def _check_activation(activation: str) -> None:
    check_choice("activation", activation, sorted(ACTIVATIONS))


def _check_hidden(hidden_sizes: Sequence[int]) -> None:
    """Layer sizes: integers >= 1 (none at all is a linear model)."""
    check_int_sequence("hidden_sizes", hidden_sizes, min_length=0)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """Diagonal Gaussian policy: mean = MLP(s), state-independent learned log-std.

    log pi(a|s) = -1/2 sum_i [((a_i - mu_i(s)) / sigma_i)^2 + 2 log sigma_i + log 2 pi].
    Params: ``{"mean": flax params, "log_std": [action_dim]}``.
    """

    action_dim: int
    hidden_sizes: tuple[int, ...] = (100, 100)
    activation: str = "relu"
    init_log_std: float = 0.0

    def __post_init__(self):
        check_int("action_dim", self.action_dim, minimum=1)
        _check_hidden(self.hidden_sizes)
        _check_activation(self.activation)
        check_real("init_log_std", self.init_log_std)

    @property
    def network(self) -> MLP:
        return MLP(tuple(self.hidden_sizes), self.action_dim, self.activation, zero_init_output=True)

    def init(self, key: jax.Array, obs_dim: int):
        mean_params = self.network.init(key, jnp.zeros((1, obs_dim), jnp.float32))
        log_std = jnp.full((self.action_dim,), self.init_log_std, jnp.float32)
        return {"mean": mean_params, "log_std": log_std}

    def mean(self, params, obs: jax.Array) -> jax.Array:
        """Mean action ``mu(s)``: ``[..., obs_dim] -> [..., action_dim]``."""
        return self.network.apply(params["mean"], obs)

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``[..., obs_dim], [..., action_dim] -> [...]``."""
        mu = self.mean(params, obs)
        log_std = params["log_std"]
        z = (action - mu) * jnp.exp(-log_std)
        return -0.5 * jnp.sum(jnp.square(z) + 2.0 * log_std + LOG_2PI, axis=-1)

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        return self.sample_with_noise(params, obs, self.sample_noise(key, params, obs))

    def sample_noise(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        """The standard normal draw of :meth:`sample`, shaped like the mean action.

        Only shapes are taken from ``params`` and ``obs``, so a rollout can draw the
        noise of every step before its loop (see :mod:`metarl_jax.rollout`).
        """
        mu = jax.eval_shape(self.mean, params, obs)
        return jax.random.normal(key, mu.shape, mu.dtype)

    def sample_with_noise(self, params, obs: jax.Array, noise: jax.Array) -> jax.Array:
        """``mu(s) + sigma * noise``: ``sample(key, ...) == sample_with_noise(..., sample_noise(key, ...))``."""
        return self.mean(params, obs) + jnp.exp(params["log_std"]) * noise

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        per_dim = 0.5 * (1.0 + LOG_2PI) + params["log_std"]
        return jnp.broadcast_to(jnp.sum(per_dim), obs.shape[:-1])


def _categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _categorical_entropy(logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


class _CategoricalMixin:
    """log_prob / sample / entropy from a ``logits(params, obs)`` method."""

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``[..., obs_dim], [...] (int) -> [...]``."""
        return _categorical_log_prob(self.logits(params, obs), action)

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits(params, obs), axis=-1).astype(jnp.int32)

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        return _categorical_entropy(self.logits(params, obs))

    def probs(self, params, obs: jax.Array) -> jax.Array:
        return jax.nn.softmax(self.logits(params, obs), axis=-1)


@dataclasses.dataclass(frozen=True)
class CategoricalPolicy(_CategoricalMixin):
    """Softmax policy over ``num_actions`` with MLP logits. Params: flax params."""

    num_actions: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self):
        check_int("num_actions", self.num_actions, minimum=2)
        _check_hidden(self.hidden_sizes)
        _check_activation(self.activation)

    @property
    def network(self) -> MLP:
        return MLP(tuple(self.hidden_sizes), self.num_actions, self.activation, zero_init_output=True)

    def init(self, key: jax.Array, obs_dim: int):
        return self.network.init(key, jnp.zeros((1, obs_dim), jnp.float32))

    def logits(self, params, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs)


@dataclasses.dataclass(frozen=True)
class TabularPolicy(_CategoricalMixin):
    """Softmax over a logit table: ``logits(s) = s @ table`` for one-hot ``s``.

    With one-hot observations this is exactly ``table[state]``; bandits (a
    constant observation ``[1.]``) have a single row. Params: ``{"logits": [S, A]}``,
    initialised to zeros (the uniform policy), which makes exact
    enumeration tests simple.
    """

    num_states: int
    num_actions: int

    def __post_init__(self):
        check_int("num_states", self.num_states, minimum=1)
        check_int("num_actions", self.num_actions, minimum=2)

    def init(self, key: jax.Array, obs_dim: int):
        del key
        if obs_dim != self.num_states:
            raise ValueError(
                f"obs_dim={obs_dim!r} does not match num_states={self.num_states!r}: "
                "a tabular policy needs one-hot observations of length num_states"
            )
        return {"logits": jnp.zeros((self.num_states, self.num_actions), jnp.float32)}

    def logits(self, params, obs: jax.Array) -> jax.Array:
        rows, lead = _rows(obs)
        return (rows @ params["logits"]).reshape(lead + (self.num_actions,))


def make_policy_for(family, params=None, *, hidden_sizes=None, activation=None, tabular=False, **kwargs):
    """A policy matching a task family's action space (Box -> Gaussian, Discrete -> categorical)."""
    from gymnax.environments import spaces

    env_params = family.default_params if params is None else params
    space = family.action_space(env_params)
    obs_dim = int(family.observation_space(env_params).shape[0])
    extra = {} if hidden_sizes is None else {"hidden_sizes": tuple(hidden_sizes)}
    if activation is not None:
        extra["activation"] = activation
    if isinstance(space, spaces.Discrete):
        if tabular:
            return TabularPolicy(obs_dim, int(space.n))
        return CategoricalPolicy(int(space.n), **extra, **kwargs)
    if tabular:
        raise ValueError("tabular=True is invalid for a continuous action space: use a Gaussian policy")
    return GaussianPolicy(int(space.shape[0]), **extra, **kwargs)
