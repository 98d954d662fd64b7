"""The policy-gradient (REINFORCE) inner learner, and a learner with user-written losses.

Interface: :class:`metarl_jax.learners.base.Learner`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metarl_jax import losses
from metarl_jax.learners.base import ESTIMATORS, PLAIN_LOSS_ESTIMATORS, LearnerDefaults, OuterBatch
from metarl_jax.rollout import Trajectory, rollout
from metarl_jax.validation import check_bool, check_choice, check_int, check_real, require

BASELINES = ("none", "mean", "linear")
NORMALIZATIONS = ("episode", "step")



@dataclasses.dataclass(frozen=True)
class PGConfig:
    """Policy-gradient inner learner (REINFORCE with optional baseline).

    Attributes:
      num_inner_episodes: episodes per inner step (``E``).
      num_outer_episodes: episodes of the adapted policy for the outer loss (``E'``).
      horizon: steps per episode (``T``).
      gamma: discount of the reward-to-go.
      baseline: ``"none"``, ``"mean"`` (per-time-step batch mean) or ``"linear"``
        (rllab's linear feature baseline fitted on the batch in closed form).
      standardize_advantages: rescale advantages to mean 0 / std 1 over the batch.
      normalize: ``"step"`` (default): mean over all valid steps (grad J / T, the
        convention of pytorch-maml-rl and learn2learn, and the one ``MAMLConfig``'s
        default ``inner_lr=0.1`` is tuned for); ``"episode"``: surrogate = sum over time,
        mean over episodes (its gradient estimates grad J, T times larger).
      rollout_unroll: execution only (identical results): ``unroll`` of the rollout's
        ``lax.scan`` over time. ``k > 1`` runs ``k`` steps per loop iteration: longer
        compiles, fewer loop iterations (on a GPU each one costs a device-to-host
        round trip for the loop condition).
    """

    num_inner_episodes: int = 20
    num_outer_episodes: int = 20
    horizon: int = 100
    gamma: float = 0.99
    baseline: str = "linear"
    standardize_advantages: bool = True
    normalize: str = "step"
    rollout_unroll: int = 1

    def __post_init__(self):
        for name in ("num_inner_episodes", "num_outer_episodes", "horizon", "rollout_unroll"):
            check_int(name, getattr(self, name), minimum=1)
        check_real("gamma", self.gamma, minimum=0.0, maximum=1.0, min_open=True)
        check_choice("baseline", self.baseline, BASELINES)
        check_bool("standardize_advantages", self.standardize_advantages)
        check_choice("normalize", self.normalize, NORMALIZATIONS)


def surrogate_scale(traj: Trajectory, normalize: str) -> jax.Array:
    """``c``: ``E / sum_{e,t} mask`` for ``normalize="step"``, ``1`` for ``"episode"``: ``[]``."""
    if normalize == "step":
        return traj.num_episodes / jnp.maximum(jnp.sum(traj.mask), 1.0)
    return jnp.ones((), traj.reward.dtype)


def pg_advantages(traj: Trajectory, gamma: float, baseline: str, standardize: bool) -> jax.Array:
    """Advantages ``A = G - b`` (optionally standardised) for a batch: ``[E, T]``.

    ``G`` is the discounted reward-to-go; ``b`` is 0, the per-step batch mean of
    ``G``, or the linear feature baseline. A function of the data only.
    """
    returns = losses.discounted_returns(traj.reward, traj.mask, gamma)
    if baseline == "mean":
        count = jnp.maximum(jnp.sum(traj.mask, axis=0, keepdims=True), 1.0)
        adv = returns - jnp.sum(returns * traj.mask, axis=0, keepdims=True) / count
    elif baseline == "linear":
        adv = returns - losses.linear_feature_baseline(traj.obs, returns, traj.mask)
    else:
        adv = returns
    adv = adv * traj.mask
    if standardize:
        adv = losses.standardize(adv, traj.mask)
    return jax.lax.stop_gradient(adv)


@dataclasses.dataclass(frozen=True)
class PolicyGradientLearner(LearnerDefaults):
    """REINFORCE inner learner; the outer loss is the policy-gradient surrogate of the adapted policy."""

    env: object
    policy: object
    config: PGConfig = PGConfig()

    def init(self, key: jax.Array):
        return self.policy.init(key, self.env.obs_dim())

    def collect(self, key: jax.Array, params, task) -> Trajectory:
        cfg = self.config
        return rollout(key, self.env, self.policy, params, task, cfg.num_inner_episodes, cfg.horizon,
                       cfg.rollout_unroll)

    def collect_outer(self, key: jax.Array, params, task) -> OuterBatch:
        """``E'`` episodes of ``pi_params`` with their objective estimate and advantages (constants)."""
        cfg = self.config
        traj = rollout(key, self.env, self.policy, params, task, cfg.num_outer_episodes, cfg.horizon,
                       cfg.rollout_unroll)
        return OuterBatch(traj=traj, objective=self.objective_of(traj), advantages=self.advantages(traj))

    def acting_policy(self):
        return self.policy

    def advantages(self, traj: Trajectory) -> jax.Array:
        cfg = self.config
        return pg_advantages(traj, cfg.gamma, cfg.baseline, cfg.standardize_advantages)

    def log_probs(self, params, traj: Trajectory) -> jax.Array:
        """``log pi_params(a_t | s_t)`` for the batch: ``[E, T]``."""
        return self.policy.log_prob(params, traj.obs, traj.action)

    def surrogate_scale(self, traj: Trajectory) -> jax.Array:
        """The factor ``c`` this learner multiplies its surrogates by: ``[]``.

        The surrogates (``losses.policy_gradient_surrogate``) average over episodes;
        ``c = E / sum(mask)`` for ``normalize="step"`` (a mean over valid steps), ``1`` for
        ``"episode"``. A custom inner loss multiplies by it to keep the learner's step
        length, i.e. to stay on the scale ``inner_lr`` is tuned for (``docs/losses.md``).
        """
        return surrogate_scale(traj, self.config.normalize)

    def inner_loss_of_log_probs(self, logp: jax.Array, traj: Trajectory, estimator: str = "dice") -> jax.Array:
        """The inner loss as a function of ``logp = log pi(a|s)`` of the batch ``[E, T]``: ``[]``."""
        surrogate = losses.lvc_surrogate if estimator == "lvc" else losses.policy_gradient_surrogate
        return -surrogate(logp, self.advantages(traj), traj.mask) * self.surrogate_scale(traj)

    def inner_loss(self, params, traj: Trajectory, estimator: str = "dice") -> jax.Array:
        """Minus the plain surrogate (``"lvc"``: minus the LVC surrogate)."""
        return self.inner_loss_of_log_probs(self.log_probs(params, traj), traj, estimator)

    def log_prob_of_data(self, params, traj: Trajectory) -> jax.Array:
        return jnp.sum(self.log_probs(params, traj) * traj.mask)

    def inner_grad_and_log_prob(self, params, traj: Trajectory, estimator: str = "dice"):
        """``(L_in, grad L_in, sum log pi)`` from one forward pass of the policy.

        ``logp, pullback = vjp(log_probs)``; ``grad L_in = pullback(dL_in/dlogp)`` (the
        chain rule, exactly the gradient of :meth:`inner_loss`) and the DiCE score sum
        is ``sum(logp * mask)`` (exactly :meth:`log_prob_of_data`). Every output stays
        differentiable in ``params`` to any order, so the meta-gradient through it is
        that of the three separate calls, with one forward pass and one backward
        pass of the network less in the second-order program.
        """
        logp, pullback = jax.vjp(lambda p: self.log_probs(p, traj), params)
        loss, dloss_dlogp = jax.value_and_grad(self.inner_loss_of_log_probs)(logp, traj, estimator)
        (grads,) = pullback(dloss_dlogp)
        return loss, grads, jnp.sum(logp * traj.mask)

    def outer_loss(self, params, batch: OuterBatch) -> jax.Array:
        """``-c S(log pi_params, A)`` on the outer batch (``A`` = ``batch.advantages``, constants)."""
        traj = batch.traj
        logp = self.log_probs(params, traj)
        return -losses.policy_gradient_surrogate(logp, batch.advantages, traj.mask) * self.surrogate_scale(traj)

    def objective_of(self, traj: Trajectory) -> jax.Array:
        """Mean discounted return, on the scale of :meth:`outer_loss`'s gradient (``OuterBatch.objective``).

        The outer surrogate estimates ``c * grad V`` where ``c`` is the surrogate's
        normalisation (``1/T`` for ``normalize="step"``) divided by the advantage
        standard deviation when advantages are standardised; the DiCE score term
        ``(V_hat - b) grad log p(tau)`` must carry the same ``c`` or the two parts of
        the meta-gradient would be weighed inconsistently.
        """
        cfg = self.config
        value = jnp.mean(traj.episode_returns(cfg.gamma)) * self.surrogate_scale(traj)
        if cfg.standardize_advantages:
            raw = pg_advantages(traj, cfg.gamma, cfg.baseline, standardize=False)
            mean = losses.masked_mean(raw, traj.mask)
            std = jnp.sqrt(losses.masked_mean(jnp.square(raw - mean), traj.mask))
            value = value / (std + 1e-8)
        return jax.lax.stop_gradient(value)

    def policy_entropy(self, params, traj: Trajectory) -> jax.Array:
        """Mean entropy of ``pi_params(.|s)`` over the valid states of ``traj``: ``[]`` (differentiable)."""
        return losses.entropy_bonus(self.policy.entropy(params, traj.obs), traj.mask)


@dataclasses.dataclass(frozen=True)
class CustomLossLearner(LearnerDefaults):
    """A learner with its inner and/or outer loss replaced by your own pure function.

    ``inner(base, params, data, estimator) -> scalar`` (``data``: a :class:`Trajectory`) and
    ``outer(base, params, batch) -> scalar`` (``batch``: an :class:`OuterBatch`) receive the wrapped
    learner ``base`` so they can reuse its pieces (``base.log_probs``, ``base.advantages``,
    ``base.surrogate_scale``, ``base.policy``...). Everything else (data collection, the DiCE score
    term, metrics) is the base learner's. MAML differentiates through the new inner loss to any
    order like through the built-in ones. See ``docs/losses.md``.

    With ``inner``, the inner gradient is ``jax.value_and_grad`` of it (a base learner's
    hand-written inner gradient does not know the new loss); without, the base's.

    ``estimators``: the estimators the new inner loss implements. Default: those that step along
    the plain loss (``PLAIN_LOSS_ESTIMATORS``: ``"dice"``, ``"naive"``, ``"first_order"``); add
    ``"lvc"`` only if ``inner`` switches to an LVC-style surrogate when ``estimator == "lvc"``.
    Asking :func:`metarl_jax.algorithms.inner.adapt` for another one is a ``ValueError``, never a
    silent change of estimator. Without ``inner`` the base learner's estimators apply.
    """

    base: object
    inner: object = None
    outer: object = None
    estimators: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.estimators is not None:
            bad = [e for e in self.estimators if e not in ESTIMATORS]
            require(not bad and len(self.estimators) > 0, "estimators", self.estimators,
                    f"must be a non-empty tuple of {ESTIMATORS}")

    def __getattr__(self, name):
        # Attributes outside the Learner interface (policy, advantages, surrogate_scale...) are the base's.
        if name.startswith("__") or name in ("base", "inner", "outer", "estimators"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def env(self):
        return self.base.env

    @property
    def config(self):
        return self.base.config

    @property
    def has_policy_surrogate(self) -> bool:
        return self.outer is None and self.base.has_policy_surrogate

    @property
    def supported_estimators(self) -> tuple[str, ...]:
        if self.estimators is not None:
            return tuple(self.estimators)
        if self.inner is None:
            return tuple(self.base.supported_estimators)
        return PLAIN_LOSS_ESTIMATORS

    def init(self, key):
        return self.base.init(key)

    def collect(self, key, params, task):
        return self.base.collect(key, params, task)

    def collect_outer(self, key, params, task):
        return self.base.collect_outer(key, params, task)

    def acting_policy(self):
        return self.base.acting_policy()

    def log_probs(self, params, traj):
        return self.base.log_probs(params, traj)

    def log_prob_of_data(self, params, data):
        return self.base.log_prob_of_data(params, data)

    def policy_entropy(self, params, traj):
        return self.base.policy_entropy(params, traj)

    def kl_divergence(self, params_old, params_new, obs):
        return self.base.kl_divergence(params_old, params_new, obs)

    def objective_estimate(self, batch):
        return self.base.objective_estimate(batch)

    def mean_return(self, traj):
        return self.base.mean_return(traj)

    def inner_loss(self, params, data, estimator: str = "dice"):
        if self.inner is None:
            return self.base.inner_loss(params, data, estimator)
        return self.inner(self.base, params, data, estimator)

    def inner_grad(self, params, data, estimator: str = "dice"):
        if self.inner is None:
            return self.base.inner_grad(params, data, estimator)
        return jax.value_and_grad(self.inner_loss)(params, data, estimator)

    def inner_grad_and_log_prob(self, params, data, estimator: str = "dice"):
        if self.inner is None:
            return self.base.inner_grad_and_log_prob(params, data, estimator)
        loss, grads = self.inner_grad(params, data, estimator)
        return loss, grads, self.log_prob_of_data(params, data)

    def outer_loss(self, params, batch):
        if self.outer is None:
            return self.base.outer_loss(params, batch)
        return self.outer(self.base, params, batch)
