"""Actor-critic inner learner: second-order MAML through the actor *and* the critic update.

Parameters ``phi = (phi_a, phi_c)``: an actor ``pi_{phi_a}(a | s)`` and a critic
``V_{phi_c}(s)`` (``architecture="separate"``), or one network with a shared torso
and two heads (``"shared"``; then ``phi_a`` and ``phi_c`` overlap in the torso).

Inner step
----------
On data ``tau ~ pi_{phi_a}`` (``E`` episodes of ``T`` steps, arrays ``[E, T]``) the
critic at the *current* parameters gives, per step,

    delta_t(phi_c) = r_t + gamma (1 - done_t) V_{phi_c}(s_{t+1}) - V_{phi_c}(s_t)
    A_t(phi_c)     = sum_{u >= t} (gamma lambda)^(u - t) delta_u            (GAE(lambda))
    y_t(phi_c)     = A_t(phi_c) + V_{phi_c}(s_t)                             (lambda-return target)

(``V(s_T) = 0`` at the rollout horizon unless ``bootstrap_at_horizon``: the
objective is the return of the ``T`` steps rolled out). With ``A`` and ``y``
given as *arguments*, the inner objective is

    L(p; A, y) = - S(log pi_p, A_hat) + c_v * 1/2 mean_t (V_p(s_t) - y_t)^2 - c_H * mean_t H(pi_p(. | s_t))

with ``S`` the plain policy-gradient surrogate (LVC surrogate for
``estimator="lvc"``), ``A_hat`` = ``A`` optionally standardised, and the update is

    phi' = phi - alpha * P grad_p L(p; A(phi_c), y(phi_c)) |_{p = phi}

where ``P`` multiplies the critic block (``phi_c`` for ``"separate"``, the value
head for ``"shared"``) by ``critic_lr_scale``.

Semantics of the derivative (why :meth:`ActorCriticLearner.inner_grad` exists).
Inside the inner gradient ``A`` and ``y`` are constants: the actor surrogate does
not train the critic and the critic's regression does not chase its own targets
(the usual semi-gradient actor-critic step). But the map ``phi -> phi'`` that is
actually run depends on ``phi_c`` also *through the numbers* ``A(phi_c)`` and
``y(phi_c)``, so its Jacobian, which the meta-gradient needs, is

    d phi' / d phi = I - alpha P [ d^2 L / dp^2  +  d^2 L / dp dA . dA/dphi  +  d^2 L / dp dy . dy/dphi ].

A ``stop_gradient`` on ``A`` and ``y`` inside the loss would drop the last two
terms (and with them every meta-gradient the critic initialisation receives
through the actor's adaptation). So :meth:`ActorCriticLearner.inner_grad`
computes ``A`` and ``y`` from ``phi`` *outside* the function it differentiates and
passes them in as arguments: ``jax.grad`` with respect to ``p`` treats them as
constants, while an outer derivative of ``phi'`` sees them as functions of
``phi``. :func:`metarl_jax.algorithms.maml.adapt` calls this hook when a learner defines it.
:meth:`ActorCriticLearner.inner_loss` is the same loss with ``A`` and ``y``
stop-gradient-ed (its value and gradient are those of the step; only its
second derivative lacks the dependence above).

Outer objective
---------------
The adapted actor is scored on fresh data ``tau' ~ pi_{phi'_a}``; the
meta-objective is ``J = E[sum_t gamma^t r'_t]`` and

    outer_loss(phi', tau') = - S(log pi_{phi'_a}, stop(A'))  +  c_o * 1/2 mean_t (V_{phi'_c}(s'_t) - stop(y'_t))^2 .

With ``outer_baseline="critic"``, ``A' = GAE(outer_gae_lambda)`` from the adapted
critic; with the default ``outer_gae_lambda = 1`` and no bootstrap,
``A'_t = G_t - V_{phi'_c}(s'_t)``: the adapted critic is a baseline. It depends on
the state and on the *inner* samples only, never on the outer actions, so
``E[grad log pi(a'_t | s'_t) V(s'_t)] = 0`` and the outer surrogate stays an
unbiased estimate of ``grad_{phi'_a} J``; with DiCE (:mod:`metarl_jax.algorithms.maml`) the
whole meta-gradient of ``J`` is unbiased (without ``standardize_advantages``, which
rescales by a batch statistic, as in ``PolicyGradientLearner``). ``outer_gae_lambda < 1`` trades that
for lower variance (the usual actor-critic bias). ``outer_baseline="none"`` uses
the reward-to-go ``G_t``. The auxiliary critic term (``c_o = outer_critic_coef``)
is differentiated along the adaptation path only: DiCE's score term weighs the
return estimate, so with ``c_o > 0`` the meta-gradient is that of ``J`` plus the
path derivative of the adapted critic's regression loss.

``objective_estimate`` is the batch mean of the discounted return times ``c``,
the scale of the outer surrogate's gradient (``c * grad J``: 1, or ``E / #steps``
for ``normalize="step"``, divided by the raw outer advantages' standard deviation
when they are standardised), so that DiCE's score term and the path term are
weighed alike; ``collect_outer`` attaches ``c`` to the data
(:class:`OuterTrajectory`) because with a critic baseline it needs the adapted critic.

All estimators of :mod:`metarl_jax.algorithms.maml` apply unchanged: ``"dice"`` adds the
score of the inner actor log-probs, ``"lvc"`` uses the LVC actor surrogate in the
inner step, ``"first_order"`` stops the inner gradients.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from metarl_jax import losses
from metarl_jax.learners.base import LearnerDefaults, OuterBatch
from metarl_jax.learners.pg import NORMALIZATIONS
from metarl_jax.networks import MLPCritic, SeparateActorCritic, SharedActorCritic
from metarl_jax.rollout import Trajectory, rollout
from metarl_jax.validation import check_bool, check_choice, check_int, check_optional_real, check_probability, check_real

ARCHITECTURES = ("separate", "shared")
OUTER_BASELINES = ("critic", "none")


@dataclasses.dataclass(frozen=True)
class ACConfig:
    """Actor-critic inner learner (see the module docstring for the maths).

    Attributes:
      num_inner_episodes: episodes per inner step (``E``).
      num_outer_episodes: episodes of the adapted actor for the outer loss (``E'``).
      horizon: steps per episode (``T``).
      gamma: discount ``gamma`` of returns, TD errors and the objective.
      gae_lambda: ``lambda`` of the inner GAE advantages and lambda-return targets.
      value_coef: ``c_v``, weight of the critic regression in the inner loss.
      entropy_coef: ``c_H``, weight of the entropy bonus in the inner loss.
      critic_lr_scale: the critic block's inner step is ``inner_lr * critic_lr_scale``
        (``None`` means 1). Applied to the gradient in ``inner_grad``, so with an
        optax inner optimizer it scales the gradient the optimizer sees.
      standardize_advantages: rescale the actor's advantages to mean 0 / std 1 over
        the batch (inner and outer).
      architecture: ``"separate"`` (params ``{"actor", "critic"}``) or ``"shared"``
        (one network, shared torso, policy and value heads).
      outer_critic_coef: ``c_o``, weight of the adapted critic's loss in the outer loss.
      normalize: ``"episode"`` (actor surrogate = sum over time, mean over episodes)
        or ``"step"`` (mean over all valid steps), as in ``PGConfig``.
      outer_baseline: ``"critic"`` (advantages of the adapted critic in the outer
        surrogate) or ``"none"`` (reward-to-go).
      outer_gae_lambda: ``lambda`` of the outer advantages and the outer critic's
        targets; 1 keeps the outer surrogate unbiased.
      bootstrap_at_horizon: bootstrap ``V(s_T)`` at the rollout horizon (an
        infinite-horizon view) instead of ending the return there.
      rollout_unroll: execution only (identical results): ``unroll`` of the rollout's
        ``lax.scan`` over time. ``k > 1`` runs ``k`` steps per loop iteration: longer
        compiles, fewer loop iterations (on a GPU each one costs a device-to-host
        round trip for the loop condition).
    """

    num_inner_episodes: int = 20
    num_outer_episodes: int = 20
    horizon: int = 100
    gamma: float = 0.99
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    critic_lr_scale: float | None = 1.0
    standardize_advantages: bool = True
    architecture: str = "separate"
    outer_critic_coef: float = 0.0
    normalize: str = "episode"
    outer_baseline: str = "critic"
    outer_gae_lambda: float = 1.0
    bootstrap_at_horizon: bool = False
    rollout_unroll: int = 1

    def __post_init__(self):
        for name in ("num_inner_episodes", "num_outer_episodes", "horizon", "rollout_unroll"):
            check_int(name, getattr(self, name), minimum=1)
        check_real("gamma", self.gamma, minimum=0.0, maximum=1.0, min_open=True)
        for name in ("gae_lambda", "outer_gae_lambda"):
            check_probability(name, getattr(self, name))
        for name in ("value_coef", "entropy_coef", "outer_critic_coef"):
            check_real(name, getattr(self, name), minimum=0.0)
        check_optional_real("critic_lr_scale", self.critic_lr_scale, minimum=0.0, min_open=True)
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_choice("normalize", self.normalize, NORMALIZATIONS)
        check_choice("outer_baseline", self.outer_baseline, OUTER_BASELINES)
        for name in ("standardize_advantages", "bootstrap_at_horizon"):
            check_bool(name, getattr(self, name))

    @property
    def critic_scale(self) -> float:
        return 1.0 if self.critic_lr_scale is None else float(self.critic_lr_scale)


# ----------------------------------------------------------------------------- learner


@dataclasses.dataclass(frozen=True)
class ActorCriticLearner(LearnerDefaults):
    """Actor-critic inner learner for :mod:`metarl_jax.algorithms.maml` (interface of :mod:`metarl_jax.learners.pg`).

    Args:
      env: a task family.
      policy: the actor (a policy from :mod:`metarl_jax.networks`); for
        ``architecture="shared"`` a Categorical/Gaussian policy whose hidden sizes
        and activation define the shared torso.
      config: :class:`ACConfig`.
      critic_hidden_sizes, critic_activation: the MLP critic of ``"separate"``.
      critic: any object with ``init(key, obs_dim)`` and ``value(params, obs)``
        (e.g. :class:`metarl_jax.networks.TabularCritic`); overrides the MLP critic (``"separate"`` only).
    """

    env: object
    policy: object
    config: ACConfig = ACConfig()
    critic_hidden_sizes: tuple[int, ...] = (64, 64)
    critic_activation: str = "tanh"
    critic: object | None = None

    def __post_init__(self):
        if not isinstance(self.config, ACConfig):
            raise ValueError(f"config={self.config!r} is invalid: must be an ACConfig")
        object.__setattr__(self, "critic_hidden_sizes", tuple(self.critic_hidden_sizes))
        if self.config.architecture == "shared":
            if self.critic is not None:
                raise ValueError(f"critic={self.critic!r} is invalid for architecture='shared': "
                                 "the value head shares the policy's torso")
            SharedActorCritic.from_policy(self.policy)  # validates the policy type
        elif self.critic is None:
            MLPCritic(self.critic_hidden_sizes, self.critic_activation)  # validates sizes and activation

    @property
    def model(self):
        """The policy-like object over the whole params (used for rollouts too)."""
        if self.config.architecture == "shared":
            return SharedActorCritic.from_policy(self.policy)
        critic = self.critic if self.critic is not None else MLPCritic(self.critic_hidden_sizes,
                                                                        self.critic_activation)
        return SeparateActorCritic(self.policy, critic)

    # --- data

    def init(self, key: jax.Array):
        return self.model.init(key, self.env.obs_dim())

    def collect(self, key: jax.Array, params, task) -> Trajectory:
        cfg = self.config
        return rollout(key, self.env, self.model, params, task, cfg.num_inner_episodes, cfg.horizon,
                       cfg.rollout_unroll)

    def collect_outer(self, key: jax.Array, params, task) -> OuterBatch:
        """Outer data with its constants: the objective estimate (mean discounted return times the
        outer surrogate's scale ``c``, which needs the adapted critic) and the actor's advantages."""
        cfg = self.config
        traj = rollout(key, self.env, self.model, params, task, cfg.num_outer_episodes, cfg.horizon,
                       cfg.rollout_unroll)
        fixed = jax.lax.stop_gradient(params)
        scale = self.outer_surrogate_scale(fixed, traj)
        objective = jax.lax.stop_gradient(jnp.mean(traj.episode_returns(cfg.gamma)) * scale)
        adv, _ = self.outer_advantages_and_targets(fixed, traj)
        return OuterBatch(traj=traj, objective=objective, advantages=self._actor_advantages(adv, traj.mask))

    def acting_policy(self):
        return self.model

    # --- building blocks

    def log_probs(self, params, traj: Trajectory) -> jax.Array:
        """``log pi(a_t | s_t)``: ``[E, T]``."""
        return self.model.log_prob(params, traj.obs, traj.action)

    def values(self, params, traj: Trajectory) -> tuple[jax.Array, jax.Array]:
        """``(V(s_t), V(s_{t+1}))``, both ``[E, T]``; ``V(s_T) = 0`` unless ``bootstrap_at_horizon``.

        ``s_{t+1}`` is ``obs[:, t+1]`` for ``t < T - 1`` (the rollout carries it), so the
        critic runs once over the batch plus once over the final observations.
        """
        chex.assert_rank(traj.reward, 2)
        values = self.model.value(params, traj.obs)
        chex.assert_equal_shape([values, traj.reward])
        if self.config.bootstrap_at_horizon:
            last = self.model.value(params, traj.next_obs[:, -1])
        else:
            last = jnp.zeros_like(values[:, -1])
        next_values = jnp.concatenate([values[:, 1:], last[:, None]], axis=1)
        return values, next_values

    def advantages_and_targets(self, params, traj: Trajectory, lam: float) -> tuple[jax.Array, jax.Array]:
        """GAE(lam) advantages ``A`` and lambda-return targets ``y = A + V``, ``[E, T]``, masked.

        Differentiable functions of the critic parameters (no stop_gradient).
        """
        values, next_values = self.values(params, traj)
        adv = losses.gae_advantages(traj.reward, values, next_values, traj.done, traj.mask,
                                    self.config.gamma, lam) * traj.mask
        return adv, (adv + values) * traj.mask

    def _actor_advantages(self, adv: jax.Array, mask: jax.Array) -> jax.Array:
        return losses.standardize(adv, mask) if self.config.standardize_advantages else adv * mask

    def _scale(self, traj: Trajectory) -> jax.Array:
        if self.config.normalize == "step":
            return traj.num_episodes / jnp.maximum(jnp.sum(traj.mask), 1.0)
        return jnp.ones((), traj.reward.dtype)

    # --- inner step

    def inner_objective(self, params, traj: Trajectory, advantages: jax.Array, targets: jax.Array,
                        estimator: str = "dice") -> jax.Array:
        """``L(p; A, y)`` with ``A`` and ``y`` given (no stop_gradient: see the module docstring)."""
        cfg = self.config
        chex.assert_equal_shape([advantages, targets, traj.reward])
        logp = self.log_probs(params, traj)
        surrogate = losses.lvc_surrogate if estimator == "lvc" else losses.policy_gradient_surrogate
        actor = -surrogate(logp, self._actor_advantages(advantages, traj.mask), traj.mask,
                           stop_gradient=False) * self._scale(traj)
        critic = losses.value_loss(self.model.value(params, traj.obs), targets, traj.mask, stop_gradient=False)
        entropy = losses.entropy_bonus(self.model.entropy(params, traj.obs), traj.mask)
        return actor + cfg.value_coef * critic - cfg.entropy_coef * entropy

    def inner_loss(self, params, traj: Trajectory, estimator: str = "dice") -> jax.Array:
        """The inner loss with stop-gradient-ed advantages and targets (value and gradient of the step)."""
        adv, targets = jax.lax.stop_gradient(self.advantages_and_targets(params, traj, self.config.gae_lambda))
        return self.inner_objective(params, traj, adv, targets, estimator)

    def inner_grad(self, params, traj: Trajectory, estimator: str = "dice"):
        """``(L, P grad_p L(p; A(phi), y(phi)) |_{p=phi})``: what :func:`metarl_jax.algorithms.maml.adapt` steps along.

        ``A`` and ``y`` are computed from ``params`` and passed as constants of the
        inner gradient; outer derivatives flow through them. ``P`` scales the
        critic block by ``critic_lr_scale``.
        """
        adv, targets = self.advantages_and_targets(params, traj, self.config.gae_lambda)
        loss, grads = jax.value_and_grad(self.inner_objective)(params, traj, adv, targets, estimator)
        if self.config.critic_scale != 1.0:
            grads = self.model.scale_critic_grads(grads, self.config.critic_scale)
        return loss, grads

    def log_prob_of_data(self, params, traj: Trajectory) -> jax.Array:
        return jnp.sum(self.log_probs(params, traj) * traj.mask)

    # --- outer objective

    def outer_advantages_and_targets(self, params, traj: Trajectory) -> tuple[jax.Array, jax.Array]:
        """Raw outer advantages ``A'`` (critic GAE or reward-to-go) and critic targets ``y'``: ``[E, T]``, constants."""
        cfg = self.config
        adv, targets = jax.lax.stop_gradient(self.advantages_and_targets(params, traj, cfg.outer_gae_lambda))
        if cfg.outer_baseline == "none":
            adv = losses.discounted_returns(traj.reward, traj.mask, cfg.gamma) * traj.mask
        return adv, targets

    def outer_surrogate_scale(self, params, traj: Trajectory) -> jax.Array:
        """``c``: the outer surrogate's gradient estimates ``c * grad J``.

        ``c`` = the normalisation (1, or ``E / #steps`` for ``"step"``) divided by the
        standard deviation of the raw outer advantages when they are standardised.
        """
        c = self._scale(traj)
        if self.config.standardize_advantages:
            adv, _ = self.outer_advantages_and_targets(params, traj)
            mean = losses.masked_mean(adv, traj.mask)
            c = c / (jnp.sqrt(losses.masked_mean(jnp.square(adv - mean), traj.mask)) + 1e-8)
        return jax.lax.stop_gradient(c)

    def outer_loss(self, params, batch: OuterBatch) -> jax.Array:
        """``-S(log pi, stop(A')) + c_o * 1/2 mean (V - stop(y'))^2`` on the outer batch."""
        cfg = self.config
        traj = batch.traj
        logp = self.log_probs(params, traj)
        adv, targets = self.outer_advantages_and_targets(params, traj)
        actor = -losses.policy_gradient_surrogate(logp, self._actor_advantages(adv, traj.mask), traj.mask)
        loss = actor * self._scale(traj)
        if cfg.outer_critic_coef > 0.0:
            loss = loss + cfg.outer_critic_coef * losses.value_loss(self.model.value(params, traj.obs), targets,
                                                                   traj.mask)
        return loss

    def policy_entropy(self, params, traj: Trajectory) -> jax.Array:
        """Mean entropy of the actor over the valid states of ``traj``: ``[]`` (differentiable)."""
        return losses.entropy_bonus(self.model.entropy(params, traj.obs), traj.mask)
