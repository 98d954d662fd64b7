"""Inner learners: how to collect data, which inner loss, which outer loss.

A learner is a frozen dataclass over ``(env, policy, config)`` exposing pure
functions that :mod:`metarl_jax.algorithms.maml` composes into ``adapt`` and the meta-loss:

* ``init(key) -> params``: parameters of the adapted model (policy, critic, Q...).
* ``collect(key, params, task) -> data``: sample data for one (inner or outer) step;
  sampling is never differentiated.
* ``inner_loss(params, data, estimator) -> loss``: what the inner step descends.
* ``log_prob_of_data(params, data) -> scalar``: ``sum log p(data; params)`` over the
  sampled actions (the part of the data density that depends on ``params``); the
  DiCE meta-gradient multiplies it into the outer objective once.
* ``outer_loss(params, data) -> loss``: what the meta-gradient descends after adaptation.
* optional ``inner_grad_and_log_prob(params, data, estimator) -> (loss, grads, log_prob_sum)``:
  the inner loss, its gradient and ``log_prob_of_data`` from *one* forward pass of the
  model (what ``"dice"`` needs at every inner step); :func:`metarl_jax.algorithms.maml.adapt` uses
  it when present instead of three separate passes.
* ``objective_estimate(data) -> scalar``: an unbiased estimate of the expected
  post-adaptation objective whose gradient the outer loss estimates (the mean
  discounted return for policy-gradient learners); weighs the DiCE score term.
* ``mean_return(data) -> scalar``: mean undiscounted episode return, for metrics.
* optional ``policy_entropy(params, data) -> scalar``: mean policy entropy over the data's
  states, for ``MAMLConfig.init_entropy_coef``.
* optional ``supported_estimators``: the estimators whose inner step this learner's
  ``inner_loss`` implements (default: all of ``ESTIMATORS``). ``"lvc"`` needs an inner
  loss that switches to the LVC surrogate when asked; a learner whose loss ignores
  ``estimator`` leaves it out, and :func:`check_estimator` rejects the combination.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from metarl_jax import losses
from metarl_jax.rollout import Trajectory, rollout
from metarl_jax.validation import check_bool, check_choice, check_int, check_real, require

BASELINES = ("none", "mean", "linear")
NORMALIZATIONS = ("episode", "step")
ESTIMATORS = ("dice", "lvc", "naive", "first_order")
#: Estimators whose inner step descends the plain inner loss: any differentiable inner loss supports them
#: (``"dice"`` adds the score term of the sampled data, which does not depend on the loss).
PLAIN_LOSS_ESTIMATORS = ("dice", "naive", "first_order")


def check_estimator(learner, estimator: str) -> None:
    """Raise ``ValueError`` unless ``learner``'s inner loss implements ``estimator``'s inner step.

    A learner declares ``supported_estimators`` (default: every one of ``ESTIMATORS``).
    """
    supported = tuple(getattr(learner, "supported_estimators", ESTIMATORS))
    require(estimator in supported, "estimator", estimator,
            f"{type(learner).__name__}'s inner loss supports {supported} (declare supported_estimators "
            "on a custom inner loss that implements another)")


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
class PolicyGradientLearner:
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

    def collect_outer(self, key: jax.Array, params, task) -> Trajectory:
        cfg = self.config
        return rollout(key, self.env, self.policy, params, task, cfg.num_outer_episodes, cfg.horizon,
                       cfg.rollout_unroll)

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

    def outer_loss(self, params, traj: Trajectory) -> jax.Array:
        logp = self.log_probs(params, traj)
        return -losses.policy_gradient_surrogate(logp, self.advantages(traj), traj.mask) * self.surrogate_scale(traj)

    def objective_estimate(self, traj: Trajectory) -> jax.Array:
        """Mean discounted return, on the scale of :meth:`outer_loss`'s gradient.

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

    def mean_return(self, traj: Trajectory) -> jax.Array:
        return jnp.mean(traj.episode_returns(1.0))

    def policy_entropy(self, params, traj: Trajectory) -> jax.Array:
        """Mean entropy of ``pi_params(.|s)`` over the valid states of ``traj``: ``[]`` (differentiable)."""
        return losses.entropy_bonus(self.policy.entropy(params, traj.obs), traj.mask)


@dataclasses.dataclass(frozen=True)
class CustomLossLearner:
    """A learner with its inner and/or outer loss replaced by your own pure function.

    ``inner(base, params, data, estimator) -> scalar`` and ``outer(base, params, data) -> scalar``
    receive the wrapped learner ``base`` so they can reuse its pieces (``base.log_probs``,
    ``base.advantages``, ``base.surrogate_scale``, ``base.policy``...). Everything else (data
    collection, the DiCE score term, metrics) is the base learner's. MAML differentiates through
    the new inner loss to any order like through the built-in ones. See ``docs/losses.md``.

    ``estimators``: the estimators the new inner loss implements. Default: those that step along
    the plain loss (``PLAIN_LOSS_ESTIMATORS``: ``"dice"``, ``"naive"``, ``"first_order"``); add
    ``"lvc"`` only if ``inner`` switches to an LVC-style surrogate when ``estimator == "lvc"``.
    Asking :func:`metarl_jax.algorithms.maml.adapt` for another one is a ``ValueError``, never a silent
    change of estimator. Without ``inner`` the base learner's estimators apply.
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
        if name in ("inner_grad", "inner_grad_and_log_prob") and self.inner is not None:
            # A base learner's hand-written inner gradient does not know the new loss.
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def supported_estimators(self) -> tuple[str, ...]:
        if self.estimators is not None:
            return tuple(self.estimators)
        if self.inner is None:
            return tuple(getattr(self.base, "supported_estimators", ESTIMATORS))
        return PLAIN_LOSS_ESTIMATORS

    def inner_loss(self, params, data, estimator: str = "dice"):
        if self.inner is None:
            return self.base.inner_loss(params, data, estimator)
        return self.inner(self.base, params, data, estimator)

    def outer_loss(self, params, data):
        if self.outer is None:
            return self.base.outer_loss(params, data)
        return self.outer(self.base, params, data)
