"""The inner-learner interface: what every algorithm in :mod:`metarl_jax.algorithms` calls.

A learner is a frozen dataclass over ``(env, model, config)`` whose methods are pure functions. The
meta layer calls exactly the methods of :class:`Learner` and nothing else, so adding a learner is
one file that subclasses :class:`LearnerDefaults` (which supplies the optional hooks) plus one line
in the experiments' learner registry.

Data: ``collect`` returns a :class:`~metarl_jax.rollout.Trajectory` ``[E, T, ...]`` (inner data);
``collect_outer`` returns an :class:`OuterBatch` (outer data of the adapted parameters ``phi_K``
plus the constants computed when it was collected). Sampling is never differentiated.

Notation (:mod:`metarl_jax.algorithms.maml`): ``theta`` the meta-parameters, ``phi_k`` the
parameters after ``k`` inner steps, ``tau_k ~ pi_{phi_k}`` the inner data, ``tau'`` the outer data.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct

from metarl_jax.rollout import Trajectory
from metarl_jax.validation import require

#: Meta-gradient estimators (:mod:`metarl_jax.algorithms.maml`).
ESTIMATORS = ("dice", "lvc", "naive", "first_order")
#: Estimators whose inner step descends the plain inner loss: any differentiable inner loss supports them
#: (``"dice"`` adds the score term of the sampled data, which does not depend on the loss).
PLAIN_LOSS_ESTIMATORS = ("dice", "naive", "first_order")


@struct.dataclass
class OuterBatch:
    """The outer data of one task, one type for every learner.

    Attributes:
      traj: the outer trajectories of ``pi_{phi_K}``: :class:`Trajectory` with leaves ``[E', T, ...]``.
      objective: ``[]``, an estimate of the post-adaptation objective on the scale of the outer
        loss's gradient (what the DiCE score term weighs; :meth:`Learner.objective_estimate`).
        Computed at collection and held constant.
      advantages: ``[E', T]``, the advantages of the outer actions under the parameters that
        collected them, held constant: what TRPO's and ProMP's likelihood-ratio surrogates weigh
        (:mod:`metarl_jax.algorithms.trpo`). Zeros for a learner without a policy-gradient outer
        objective (:attr:`Learner.has_policy_surrogate` is then ``False``).
    """

    traj: Trajectory
    objective: jax.Array
    advantages: jax.Array


@runtime_checkable
class Learner(Protocol):
    """Every method the meta layer calls on an inner learner.

    Attributes:
      env: the task family (a gymnax environment whose ``EnvParams`` is a task).
      config: the learner's frozen config; ``config.horizon`` is the episode length ``T``.
      supported_estimators: the estimators whose inner step :meth:`inner_loss` implements
        (``"lvc"`` needs an inner loss that switches to the LVC surrogate when asked).
      has_policy_surrogate: ``True`` if :meth:`log_probs`, :meth:`kl_divergence` and
        ``OuterBatch.advantages`` define a likelihood-ratio surrogate of the outer objective,
        which TRPO and ProMP need.
    """

    env: Any
    config: Any
    supported_estimators: tuple[str, ...]
    has_policy_surrogate: bool

    def init(self, key: jax.Array) -> Any:
        """The adapted model's parameters ``theta`` (policy, critic, Q-network...)."""

    def collect(self, key: jax.Array, params: Any, task: Any) -> Trajectory:
        """Inner data ``tau ~ pi_params`` on one task: ``[E, T, ...]``."""

    def collect_outer(self, key: jax.Array, params: Any, task: Any) -> OuterBatch:
        """Outer data of ``pi_params`` on one task, with its constants."""

    def inner_loss(self, params: Any, data: Trajectory, estimator: str) -> jax.Array:
        """``L_in(params; data)``: ``[]``; its gradient is the inner step (``"lvc"``: the LVC surrogate)."""

    def inner_grad(self, params: Any, data: Trajectory, estimator: str) -> tuple[jax.Array, Any]:
        """``(L_in, grad L_in)``: the step the inner update takes, differentiable to any order.

        Learners whose inner targets are computed from ``params`` (a critic's advantages, TD
        targets) compute them outside the differentiated function, so the step is the
        semi-gradient while outer derivatives still flow through the targets.
        """

    def inner_grad_and_log_prob(self, params: Any, data: Trajectory, estimator: str) -> tuple[jax.Array, Any, jax.Array]:
        """``(L_in, grad L_in, log_prob_of_data)``: what ``"dice"`` needs at every inner step."""

    def log_prob_of_data(self, params: Any, data: Trajectory) -> jax.Array:
        """``sum_{e,t} m log p(a_t | s_t; params)``: ``[]``, the DiCE score term's log-probability."""

    def outer_loss(self, params: Any, batch: OuterBatch) -> jax.Array:
        """What the meta-gradient descends after adaptation: ``[]``."""

    def objective_estimate(self, batch: OuterBatch) -> jax.Array:
        """``batch.objective``: ``[]``, constant."""

    def mean_return(self, traj: Trajectory) -> jax.Array:
        """Mean undiscounted episode return of a batch of trajectories: ``[]`` (metrics)."""

    def policy_entropy(self, params: Any, traj: Trajectory) -> jax.Array:
        """Mean entropy of the acting policy over the valid states of ``traj``: ``[]``, differentiable."""

    def log_probs(self, params: Any, traj: Trajectory) -> jax.Array:
        """``log pi_params(a_t | s_t)``: ``[E, T]`` (TRPO / ProMP ratios)."""

    def kl_divergence(self, params_old: Any, params_new: Any, obs: jax.Array) -> jax.Array:
        """``KL(pi_old(.|s) || pi_new(.|s))`` per observation in closed form: ``[...]``."""

    def acting_policy(self) -> Any:
        """The policy-like object over the whole parameters that rollouts sample from."""


class LearnerDefaults:
    """The optional hooks of :class:`Learner`, derived from the required ones. Subclass it.

    * :meth:`inner_grad`: ``jax.value_and_grad(inner_loss)``.
    * :meth:`inner_grad_and_log_prob`: :meth:`inner_grad` plus :meth:`log_prob_of_data` (a learner
      can share one forward pass between them: :class:`~metarl_jax.learners.pg.PolicyGradientLearner`).
    * :meth:`objective_estimate`: ``batch.objective``; :meth:`mean_return`: over ``traj``'s episodes.
    * :meth:`kl_divergence`: the acting policy's closed form.
    """

    supported_estimators: tuple[str, ...] = ESTIMATORS
    has_policy_surrogate: bool = True

    def inner_grad(self, params, data: Trajectory, estimator: str = "dice"):
        return jax.value_and_grad(self.inner_loss)(params, data, estimator)

    def inner_grad_and_log_prob(self, params, data: Trajectory, estimator: str = "dice"):
        loss, grads = self.inner_grad(params, data, estimator)
        return loss, grads, self.log_prob_of_data(params, data)

    def objective_estimate(self, batch: OuterBatch) -> jax.Array:
        return batch.objective

    def mean_return(self, traj: Trajectory) -> jax.Array:
        return jnp.mean(traj.episode_returns(1.0))

    def kl_divergence(self, params_old, params_new, obs: jax.Array) -> jax.Array:
        return self.acting_policy().kl_divergence(params_old, params_new, obs)


def check_estimator(learner: Learner, estimator: str) -> None:
    """Raise ``ValueError`` unless ``learner``'s inner loss implements ``estimator``'s inner step."""
    supported = tuple(learner.supported_estimators)
    require(estimator in supported, "estimator", estimator,
            f"{type(learner).__name__}'s inner loss supports {supported} (declare supported_estimators "
            "on a custom inner loss that implements another)")


def check_policy_surrogate(learner: Learner, algorithm: str) -> None:
    """Raise ``ValueError`` unless ``learner`` has the likelihood-ratio surrogate ``algorithm`` needs."""
    require(bool(getattr(learner, "has_policy_surrogate", False)), "learner", type(learner).__name__,
            f"{algorithm} maximises a likelihood-ratio surrogate of a stochastic policy's return; this "
            "learner's outer objective has no such form (has_policy_surrogate=False): use MAML")
