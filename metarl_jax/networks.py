"""Policies: small flax.linen networks behind a four-function interface.

Every policy is a frozen (hashable) dataclass with pure methods

* ``init(key, obs_dim) -> params``
* ``log_prob(params, obs, action) -> [...]``: log pi(a | s), differentiable in ``params``;
* ``sample(key, params, obs) -> action``;
* ``entropy(params, obs) -> [...]``;
* ``kl_divergence(params_old, params_new, obs) -> [...]``: ``KL(pi_old(.|s) || pi_new(.|s))``
  in closed form, ``params_old`` held constant (``stop_gradient``).

The same interface covers the actor-critic models (:class:`SeparateActorCritic`,
:class:`SharedActorCritic`, which add ``value``) and :class:`QPolicy`, the
behaviour policy of a Q-network (:class:`MLPQNetwork`, :class:`TabularQNetwork`).
Critics (:class:`MLPCritic`, :class:`TabularCritic`) have ``init`` and
``value(params, obs) -> [...]``; Q-networks ``init`` and
``q_values(params, obs) -> [..., A]``.

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

from metarl_jax.validation import check_choice, check_int, check_int_sequence, check_real, require

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


# ----------------------------------------------------------------------------- distributions


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
    """``log softmax(l)[a] = l_a - log sum_b exp l_b``: ``[..., A], [...] (int) -> [...]``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array) -> jax.Array:
    """``H = -sum_a p_a log p_a`` with ``p = softmax(l)``: ``[..., A] -> [...]``."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def kl_from_log_probs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``KL(p || q) = sum_{a: p_a > 0} p_a (log p_a - log q_a)``: ``[..., A], [..., A] -> [...]``.

    From log-probabilities; actions with ``p_a = 0`` (``log p_a = -inf``, e.g. a greedy
    policy) contribute 0. The policies' ``kl_divergence`` and
    :func:`metarl_jax.losses.categorical_kl` (which adds shape checks) compute with it.
    """
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def diag_gaussian_kl(mean_p: jax.Array, log_std_p: jax.Array, mean_q: jax.Array, log_std_q: jax.Array) -> jax.Array:
    """``sum_i [log s_q,i - log s_p,i + (s_p,i^2 + (mu_p,i - mu_q,i)^2) / (2 s_q,i^2) - 1/2]``: ``[..., D] -> [...]``.

    The log-stds broadcast against the means. The Gaussian policies' ``kl_divergence`` and
    :func:`metarl_jax.losses.gaussian_kl` (which adds shape checks) compute with it.
    """
    var_ratio = jnp.exp(2.0 * (log_std_p - log_std_q))
    maha = jnp.square(mean_p - mean_q) * jnp.exp(-2.0 * log_std_q)
    return jnp.sum((log_std_q - log_std_p) + 0.5 * (var_ratio + maha) - 0.5, axis=-1)


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

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        """``KL(N(mu_old(s), s_old^2) || N(mu_new(s), s_new^2))``, diagonal, closed form: ``[..., obs_dim] -> [...]``.

        ``params_old`` is held constant (``stop_gradient``).
        """
        params_old = jax.lax.stop_gradient(params_old)
        return diag_gaussian_kl(self.mean(params_old, obs), params_old["log_std"],
                                 self.mean(params_new, obs), params_new["log_std"])


class _CategoricalMixin:
    """log_prob / sample / entropy / kl_divergence from a ``logits(params, obs)`` method."""

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``[..., obs_dim], [...] (int) -> [...]``."""
        return categorical_log_prob(self.logits(params, obs), action)

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits(params, obs), axis=-1).astype(jnp.int32)

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        return categorical_entropy(self.logits(params, obs))

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        """``KL(pi_old(.|s) || pi_new(.|s)) = sum_a p_old,a (log p_old,a - log p_new,a)``: ``[..., obs_dim] -> [...]``.

        From the log-softmax of the logits; ``params_old`` is held constant (``stop_gradient``).
        """
        params_old = jax.lax.stop_gradient(params_old)
        return kl_from_log_probs(jax.nn.log_softmax(self.logits(params_old, obs), axis=-1),
                                  jax.nn.log_softmax(self.logits(params_new, obs), axis=-1))

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


# ----------------------------------------------------------------------------- critics


@dataclasses.dataclass(frozen=True)
class MLPCritic:
    """``V(s) = MLP(s)``: ``init(key, obs_dim) -> params``, ``value(params, obs [..., D]) -> [...]``."""

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", check_int_sequence("hidden_sizes", self.hidden_sizes, min_length=0))
        check_choice("activation", self.activation, sorted(ACTIVATIONS))

    @property
    def network(self) -> MLP:
        return MLP(self.hidden_sizes, 1, self.activation)

    def init(self, key: jax.Array, obs_dim: int):
        return self.network.init(key, jnp.zeros((1, obs_dim), jnp.float32))

    def value(self, params, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs)[..., 0]


@dataclasses.dataclass(frozen=True)
class TabularCritic:
    """``V(s) = s . v`` for one-hot ``s`` (a bandit: one scalar). Params ``{"values": [S]}``, zero init."""

    num_states: int

    def __post_init__(self):
        check_int("num_states", self.num_states, minimum=1)

    def init(self, key: jax.Array, obs_dim: int):
        del key
        if obs_dim != self.num_states:
            raise ValueError(f"obs_dim={obs_dim!r} does not match num_states={self.num_states!r}: "
                             "a tabular critic needs one-hot observations of length num_states")
        return {"values": jnp.zeros((self.num_states,), jnp.float32)}

    def value(self, params, obs: jax.Array) -> jax.Array:
        return obs @ params["values"]


# ----------------------------------------------------------------------------- models
# A model is a policy-like object over the *whole* parameter pytree (so rollouts can
# use it as the policy) plus ``value`` and ``scale_critic_grads``.


@dataclasses.dataclass(frozen=True)
class SeparateActorCritic:
    """Actor and critic with their own parameters: ``{"actor": ..., "critic": ...}``."""

    actor: object
    critic: object

    def init(self, key: jax.Array, obs_dim: int):
        key_actor, key_critic = jax.random.split(key)
        return {"actor": self.actor.init(key_actor, obs_dim), "critic": self.critic.init(key_critic, obs_dim)}

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.actor.log_prob(params["actor"], obs, action)

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        return self.actor.sample(key, params["actor"], obs)

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        return self.actor.entropy(params["actor"], obs)

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        """The actor's ``KL(pi_old(.|s) || pi_new(.|s))``: ``[..., obs_dim] -> [...]`` (the critic plays no part).

        The actor's own ``kl_divergence`` holds ``params_old`` constant (``stop_gradient``).
        """
        return self.actor.kl_divergence(params_old["actor"], params_new["actor"], obs)

    def value(self, params, obs: jax.Array) -> jax.Array:
        return self.critic.value(params["critic"], obs)

    def scale_critic_grads(self, grads, scale: float):
        return {**grads, "critic": jax.tree.map(lambda g: g * scale, grads["critic"])}


class SharedTorsoNetwork(nn.Module):
    """``h = torso(s)``; policy head ``W_pi h + b`` (logits, or Gaussian mean), value head ``w_v . h + b``.

    Returns ``(policy_out [..., num_outputs], value [...], log_std [num_outputs] or None)``;
    ``log_std`` is a state-independent parameter for continuous actions.
    """

    hidden_sizes: Sequence[int]
    num_outputs: int
    activation: str = "tanh"
    continuous: bool = False
    init_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array):
        act = ACTIVATIONS[self.activation]
        h = obs
        for i, size in enumerate(self.hidden_sizes):
            h = act(nn.Dense(size, name=f"torso_{i}")(h))
        head_init = nn.initializers.lecun_normal() if self.continuous else nn.initializers.zeros
        out = nn.Dense(self.num_outputs, kernel_init=head_init, name="policy_head")(h)
        value = nn.Dense(1, name="value_head")(h)[..., 0]
        log_std = None
        if self.continuous:
            log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.num_outputs,))
        return out, value, log_std


@dataclasses.dataclass(frozen=True)
class SharedActorCritic:
    """One network with a shared torso, as a policy (``log_prob/sample/entropy/kl_divergence``) with a ``value``.

    Discrete: softmax over the logits head. Continuous: diagonal Gaussian with
    the mean head and a learned state-independent ``log_std``. Params: flax
    variables ``{"params": {"torso_i", "policy_head", "value_head"[, "log_std"]}}``.
    """

    num_outputs: int
    continuous: bool
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init_log_std: float = 0.0

    @classmethod
    def from_policy(cls, policy) -> "SharedActorCritic":
        """Same action space, torso sizes and activation as a Categorical / Gaussian policy."""
        if isinstance(policy, CategoricalPolicy):
            return cls(int(policy.num_actions), False, tuple(policy.hidden_sizes), policy.activation)
        if isinstance(policy, GaussianPolicy):
            return cls(int(policy.action_dim), True, tuple(policy.hidden_sizes), policy.activation,
                       float(policy.init_log_std))
        raise ValueError(f"policy={policy!r} is invalid for architecture='shared': "
                         "use a CategoricalPolicy or GaussianPolicy (its hidden sizes become the torso)")

    @property
    def network(self) -> SharedTorsoNetwork:
        return SharedTorsoNetwork(self.hidden_sizes, self.num_outputs, self.activation, self.continuous,
                                  self.init_log_std)

    def init(self, key: jax.Array, obs_dim: int):
        return self.network.init(key, jnp.zeros((1, obs_dim), jnp.float32))

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        out, _, log_std = self.network.apply(params, obs)
        if not self.continuous:
            return categorical_log_prob(out, action)
        z = (action - out) * jnp.exp(-log_std)
        return -0.5 * jnp.sum(jnp.square(z) + 2.0 * log_std + LOG_2PI, axis=-1)

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        out, _, log_std = self.network.apply(params, obs)
        if not self.continuous:
            return jax.random.categorical(key, out, axis=-1).astype(jnp.int32)
        return out + jnp.exp(log_std) * jax.random.normal(key, out.shape, out.dtype)

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        out, _, log_std = self.network.apply(params, obs)
        if not self.continuous:
            return categorical_entropy(out)
        return jnp.broadcast_to(jnp.sum(0.5 * (1.0 + LOG_2PI) + log_std), obs.shape[:-1])

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        """``KL(pi_old(.|s) || pi_new(.|s))`` from the policy head, closed form: ``[..., obs_dim] -> [...]``.

        Discrete: ``sum_a p_old,a (log p_old,a - log p_new,a)`` of the softmax of the logits.
        Continuous: the diagonal Gaussian KL of the mean head and ``log_std``. ``params_old``
        is held constant (``stop_gradient``).
        """
        params_old = jax.lax.stop_gradient(params_old)
        out_old, _, log_std_old = self.network.apply(params_old, obs)
        out_new, _, log_std_new = self.network.apply(params_new, obs)
        if not self.continuous:
            return kl_from_log_probs(jax.nn.log_softmax(out_old, axis=-1), jax.nn.log_softmax(out_new, axis=-1))
        return diag_gaussian_kl(out_old, log_std_old, out_new, log_std_new)

    def value(self, params, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs)[1]

    def scale_critic_grads(self, grads, scale: float):
        inner = dict(grads["params"])
        inner["value_head"] = jax.tree.map(lambda g: g * scale, inner["value_head"])
        return {**grads, "params": inner}


# ----------------------------------------------------------------------------- Q-networks


@dataclasses.dataclass(frozen=True)
class MLPQNetwork:
    """``Q(s) = MLP(s)``: ``[..., obs_dim] -> [..., A]``. Params: flax params.

    The matmuls run at JAX's default precision (TF32 on recent NVIDIA GPUs);
    the Q-table below uses ``HIGHEST`` (it is a lookup and must be exact).
    """

    num_actions: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "relu"

    def __post_init__(self):
        check_int("num_actions", self.num_actions, minimum=1)
        check_int_sequence("hidden_sizes", self.hidden_sizes, min_length=0)
        check_choice("activation", self.activation, sorted(ACTIVATIONS))

    @property
    def network(self) -> MLP:
        return MLP(tuple(self.hidden_sizes), self.num_actions, self.activation)

    def init(self, key: jax.Array, obs_dim: int):
        return self.network.init(key, jnp.zeros((1, obs_dim), jnp.float32))

    def q_values(self, params, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs)


@dataclasses.dataclass(frozen=True)
class TabularQNetwork:
    """A Q-table: ``Q(s) = s @ q`` for one-hot ``s`` (``= q[state]``). Params: ``{"q": [S, A]}``.

    Initialised to ``init_std * N(0, 1)`` entries (zeros by default).
    """

    num_states: int
    num_actions: int
    init_std: float = 0.0

    def __post_init__(self):
        check_int("num_states", self.num_states, minimum=1)
        check_int("num_actions", self.num_actions, minimum=1)
        check_real("init_std", self.init_std, minimum=0.0)

    def init(self, key: jax.Array, obs_dim: int):
        require(obs_dim == self.num_states, "obs_dim", obs_dim,
                 f"a Q-table needs one-hot observations of length num_states={self.num_states}")
        shape = (self.num_states, self.num_actions)
        return {"q": self.init_std * jax.random.normal(key, shape, jnp.float32)}

    def q_values(self, params, obs: jax.Array) -> jax.Array:
        return jnp.matmul(obs, params["q"], precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------- Q-network policies

#: ``QPolicy.kind``: how a Q-network's values become a behaviour policy.
Q_POLICY_KINDS = ("epsilon_greedy", "boltzmann", "uniform")


@dataclasses.dataclass(frozen=True)
class QPolicy:
    """A policy from a Q-network (the policy interface of this module).

    ``params`` are the Q-network's parameters. ``kind``: ``"boltzmann"``
    (``softmax(Q / temperature)``), ``"epsilon_greedy"`` or ``"uniform"``.
    """

    q_network: object
    kind: str = "boltzmann"
    epsilon: float = 0.1
    temperature: float = 1.0

    def __post_init__(self):
        check_choice("kind", self.kind, Q_POLICY_KINDS)

    def log_probs_all(self, params, obs: jax.Array) -> jax.Array:
        """``log pi(. | s)``: ``[..., obs_dim] -> [..., A]``.

        Differentiable for ``"boltzmann"``; for ``"epsilon_greedy"`` (piecewise
        constant in ``params``) and ``"uniform"`` the gradient is zero.
        """
        q = self.q_network.q_values(params, obs)
        num_actions = q.shape[-1]
        if self.kind == "boltzmann":
            return jax.nn.log_softmax(q / self.temperature, axis=-1)
        if self.kind == "uniform":
            return jnp.full(q.shape, -jnp.log(num_actions), q.dtype)
        greedy = jax.nn.one_hot(jnp.argmax(q, axis=-1), num_actions, dtype=q.dtype)
        return jax.lax.stop_gradient(jnp.log((1.0 - self.epsilon) * greedy + self.epsilon / num_actions))

    def log_prob(self, params, obs: jax.Array, action: jax.Array) -> jax.Array:
        """``log pi(a | s)``: ``[..., obs_dim], [...] -> [...]``."""
        logp = self.log_probs_all(params, obs)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def sample(self, key: jax.Array, params, obs: jax.Array) -> jax.Array:
        q = self.q_network.q_values(params, obs)
        num_actions = q.shape[-1]
        key_explore, key_action = jax.random.split(key)
        if self.kind == "boltzmann":
            return jax.random.categorical(key_action, q / self.temperature, axis=-1).astype(jnp.int32)
        uniform = jax.random.randint(key_action, q.shape[:-1], 0, num_actions, jnp.int32)
        if self.kind == "uniform":
            return uniform
        explore = jax.random.uniform(key_explore, q.shape[:-1]) < self.epsilon
        return jnp.where(explore, uniform, jnp.argmax(q, axis=-1).astype(jnp.int32))

    def probs(self, params, obs: jax.Array) -> jax.Array:
        return jnp.exp(self.log_probs_all(params, obs))

    def entropy(self, params, obs: jax.Array) -> jax.Array:
        logp = self.log_probs_all(params, obs)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        """``KL(pi_old(.|s) || pi_new(.|s)) = sum_a p_old,a (log p_old,a - log p_new,a)``: ``[..., obs_dim] -> [...]``.

        From :meth:`log_probs_all` of both parameters (so its gradient is zero for
        ``"epsilon_greedy"`` and ``"uniform"``, as theirs is); actions the old policy
        never takes contribute 0. ``params_old`` is held constant (``stop_gradient``).
        """
        params_old = jax.lax.stop_gradient(params_old)
        return kl_from_log_probs(self.log_probs_all(params_old, obs), self.log_probs_all(params_new, obs))


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
