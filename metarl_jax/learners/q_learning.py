"""Q-learning as the inner learner of MAML, with an exact second-order meta-gradient.

Notation: ``theta`` the meta-parameters (the pre-adaptation Q-network),
``phi_0 = theta``, ``phi_{k+1} = phi_k - alpha g(phi_k; tau_k)`` for ``k < K``,
``tau_k`` a batch of transitions ``(s_t, a_t, r_t, d_t, s'_t, m_t)`` sampled by
the behaviour policy of ``Q_{phi_k}`` (sampling is never differentiated).

Inner update (semi-gradient Q-learning). With the bootstrap target

    y_t(phi) = r_t + gamma (1 - d_t) max_a' Q_phi(s'_t, a'),
    delta_t  = y_t(phi) - Q_phi(s_t, a_t),

the inner step descends

    g(phi) = grad_p L(p; y(phi)) |_{p = phi} = -1/Z sum_t m_t delta_t grad_phi Q_phi(s_t, a_t),
    L(p; y) = 1/(2Z) sum_t m_t (y_t - Q_p(s_t, a_t))^2,

with ``Z = sum_t m_t`` (``normalize="step"``) or ``Z = E`` (``"episode"``: sum over
time, mean over episodes). Inside the step the target is held fixed (the
usual semi-gradient: ``g`` is *not* the gradient of ``1/2 delta(phi)^2``, whose
gradient would also differentiate ``y``), but ``y`` is a function of ``phi``
and so of ``theta``: :meth:`QLearner.inner_grad` computes ``y(phi)`` outside the
function whose gradient is taken and passes it in, so the meta-gradient
``d phi_K / d theta`` flows through the target values. This is the derivative
of the procedure actually run. (No scalar loss has ``g`` as its gradient as a
function of ``phi``, because ``d g / d phi`` is not symmetric; that is why the
learner provides ``inner_grad`` and :func:`metarl_jax.algorithms.maml.adapt` uses it.)

Targets (``QConfig.target``):

* ``"semi_gradient"`` (default): as above; the meta-gradient differentiates ``y(phi_k)``.
* ``"stop_gradient"``: ``y = stop_gradient(y(phi_k))``: same values and inner
  steps, but the meta-gradient ignores how the targets depend on ``theta`` (what
  an implementation that writes the semi-gradient as a loss with
  ``stop_gradient`` computes). For comparison.
* ``"frozen"``: a fixed target network: ``y = r + gamma (1 - d) max_a' Q_{stop(theta_T)}(s', a')``
  with ``theta_T`` the target-network leaf of the parameters (below).

``double_q`` (van Hasselt et al. 2016): the next action is chosen by the online
parameters and valued by the target network, the pre-adaptation parameters:

    y_t = r_t + gamma (1 - d_t) Q_{theta_T}(s'_t, argmax_a' Q_{phi_k}(s'_t, a')).

The argmax is piecewise constant (no gradient); the value is differentiated
through ``theta_T`` unless ``target`` is ``"frozen"`` or ``"stop_gradient"``.

The target-network leaf. The learner's parameters are ``{"online": w}``, plus
``{"target": w_T}`` when ``target="frozen"`` or ``double_q``. The inner gradient
of ``"target"`` is zero, so with SGD (or any optax transformation that leaves
a zero gradient alone: no weight decay) ``phi_k["target"] = theta["target"]``
at every inner step: the pre-adaptation parameters are the target network.
:meth:`QLearner.init` sets ``w_T = w``. For the meta-optimizer, wrap it with
:func:`tie_target_network` to keep ``theta["target"] == theta["online"]`` (the
meta-gradient of the tied function, ``d_online + d_target``, is applied to both);
without the wrapper, ``"target"`` is a separately meta-learned network.

Behaviour policies (``QConfig.behaviour``) built from ``Q_phi`` by :class:`metarl_jax.networks.QPolicy`:
``"boltzmann"`` ``pi(a|s) = softmax(Q_phi(s) / temperature)``; ``"epsilon_greedy"``
``(1 - epsilon) 1[a = argmax Q_phi(s)] + epsilon / A``; ``"uniform"`` ``1 / A``.
The data density enters the meta-gradient through
:meth:`QLearner.log_prob_of_data` (DiCE's score term in :mod:`metarl_jax.algorithms.maml`):
for ``"boltzmann"`` it is ``sum_t m_t log softmax(Q_phi(s_t)/temperature)[a_t]``,
differentiable in ``phi``. For ``"uniform"`` the data do not depend on the
parameters and it is 0: the meta-gradient is exact. For ``"epsilon_greedy"`` the
density is piecewise constant in ``phi`` (it jumps where the argmax changes, a
dependence no score term captures) and it is 0 too: the meta-gradient then
ignores the dependence of the sampled data on the parameters, a documented
approximation.

Outer objective (``QConfig.outer``), on a fresh batch ``tau'``:

* ``"td"`` (default): ``tau'`` from the behaviour policy of ``phi_K``; the outer loss is
  the TD loss ``1/(2Z) sum_t m_t delta_t(phi_K)^2``, differentiated as a function of
  ``phi_K`` (targets included, unless ``target`` stops them); the objective
  estimate is minus its value. The dependence of ``tau'`` on ``phi_K`` (where the
  adapted behaviour goes) is not differentiated.
* ``"return"``: ``tau'`` from the Boltzmann policy of ``phi_K``; the outer loss is
  its policy-gradient surrogate ``-1/Z sum_t m_t log pi_{phi_K}(a_t|s_t) G_t`` with
  ``G_t`` the discounted reward-to-go held constant (the convention of
  :class:`metarl_jax.learners.pg.PolicyGradientLearner`); the objective estimate
  is the mean discounted return over the same ``Z`` (``sum_e R_e / Z``), so the
  score term and the surrogate estimate the gradient of one objective. With
  ``behaviour="boltzmann"`` and ``estimator="dice"`` this is the unbiased
  MAML-RL gradient of the procedure run.

Episodes. Transitions come from :func:`metarl_jax.rollout.rollout`; a
non-terminated last step of an episode bootstraps from ``s'`` (the horizon is a
time limit, not a terminal state), so the fixed point of the inner update
with full coverage is the discounted ``Q*`` of
:func:`metarl_jax.tasks.tabular_mdp.discounted_q_value_iteration`,
``Q = R + gamma P max_a Q``.

Estimators: TD has no LVC form; ``"dice"``, ``"lvc"`` and ``"naive"`` take the
same inner step (``"dice"`` adds the score term in :mod:`metarl_jax.algorithms.maml`),
``"first_order"`` stops the inner gradients there.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from metarl_jax import losses
from metarl_jax.learners.base import PLAIN_LOSS_ESTIMATORS, LearnerDefaults, OuterBatch
from metarl_jax.losses import q_learning_targets, td_loss_given_targets
from metarl_jax.networks import Q_POLICY_KINDS, MLPQNetwork, QPolicy, TabularQNetwork
from metarl_jax.rollout import Trajectory, rollout
from metarl_jax.validation import check_bool, check_choice, check_int, check_probability, check_real

BEHAVIOURS = Q_POLICY_KINDS
TARGETS = ("semi_gradient", "stop_gradient", "frozen")
OUTERS = ("td", "return")
NORMALIZATIONS = ("step", "episode")


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class QConfig:
    """Q-learning inner learner.

    Attributes:
      num_inner_episodes: episodes per inner step (``E``).
      num_outer_episodes: episodes of the adapted behaviour for the outer loss (``E'``).
      horizon: steps per episode (``T``).
      gamma: discount of the bootstrap target and the reward-to-go, in ``[0, 1]``.
      behaviour: ``"epsilon_greedy"`` | ``"boltzmann"`` | ``"uniform"`` (see module docstring).
      epsilon: exploration rate of ``"epsilon_greedy"``, in ``[0, 1]``.
      temperature: ``tau > 0`` of the Boltzmann policy ``softmax(Q / tau)`` (the
        behaviour for ``"boltzmann"`` and the outer policy for ``outer="return"``).
      double_q: double Q-learning with the pre-adaptation parameters as target network.
      target: ``"semi_gradient"`` | ``"stop_gradient"`` | ``"frozen"``.
      outer: ``"td"`` | ``"return"``.
      normalize: ``"step"``: losses are means over valid steps; ``"episode"``:
        sums over time, means over episodes.
      rollout_unroll: execution only (identical results): ``unroll`` of the rollout's
        ``lax.scan`` over time. ``k > 1`` runs ``k`` steps per loop iteration: longer
        compiles, fewer loop iterations (on a GPU each one costs a device-to-host
        round trip for the loop condition).
    """

    num_inner_episodes: int = 10
    num_outer_episodes: int = 10
    horizon: int = 20
    gamma: float = 0.9
    behaviour: str = "boltzmann"
    epsilon: float = 0.1
    temperature: float = 1.0
    double_q: bool = False
    target: str = "semi_gradient"
    outer: str = "td"
    normalize: str = "step"
    rollout_unroll: int = 1

    def __post_init__(self):
        for name in ("num_inner_episodes", "num_outer_episodes", "horizon", "rollout_unroll"):
            check_int(name, getattr(self, name), minimum=1)
        check_probability("gamma", self.gamma)
        check_choice("behaviour", self.behaviour, BEHAVIOURS)
        check_probability("epsilon", self.epsilon)
        check_real("temperature", self.temperature, minimum=0.0, min_open=True)
        check_bool("double_q", self.double_q)
        check_choice("target", self.target, TARGETS)
        check_choice("outer", self.outer, OUTERS)
        check_choice("normalize", self.normalize, NORMALIZATIONS)

    @property
    def uses_target_network(self) -> bool:
        """Whether the parameters carry a ``"target"`` leaf (``target="frozen"`` or ``double_q``)."""
        return self.target == "frozen" or self.double_q


# --------------------------------------------------------------------------- target network


def tie_target_network(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wrap a meta-optimizer so that ``theta["target"]`` stays equal to ``theta["online"]``.

    The meta-loss is a function ``F(w, w_T)`` evaluated at ``w_T = w``; the gradient
    of the tied function ``w -> F(w, w)`` is ``d_w F + d_{w_T} F``. This
    transformation sums the two into the ``"online"`` gradient, runs
    ``optimizer`` and gives ``"target"`` the same update as ``"online"``. It
    finds the Q-learner parameters at ``tree["policy"]`` (MAML meta-parameters)
    or at the top level, and is the identity wrapper when there is no
    ``"target"`` leaf. Learned inner rates (``"inner_lr"``) are left alone.
    """

    def _q_params(tree):
        return tree["policy"] if isinstance(tree, dict) and "policy" in tree else tree

    def _replace(tree, q_params):
        if isinstance(tree, dict) and "policy" in tree:
            return dict(tree, policy=q_params)
        return q_params

    def init(params):
        return optimizer.init(params)

    def update(grads, state, params=None):
        q_grads = _q_params(grads)
        tied = isinstance(q_grads, dict) and "target" in q_grads
        if tied:
            merged = jax.tree.map(jnp.add, q_grads["online"], q_grads["target"])
            zeros = jax.tree.map(jnp.zeros_like, q_grads["target"])
            grads = _replace(grads, dict(q_grads, online=merged, target=zeros))
        updates, state = optimizer.update(grads, state, params)
        if tied:
            q_updates = _q_params(updates)
            updates = _replace(updates, dict(q_updates, target=q_updates["online"]))
        return updates, state

    return optax.GradientTransformation(init, update)


# --------------------------------------------------------------------------- learner


@dataclasses.dataclass(frozen=True)
class QLearner(LearnerDefaults):
    """Q-learning inner learner for :mod:`metarl_jax.algorithms.maml` (see the module docstring).

    Args:
      env: a task family with a ``Discrete`` action space.
      q_network: :class:`metarl_jax.networks.MLPQNetwork` or :class:`metarl_jax.networks.TabularQNetwork`
        (anything with ``init(key, obs_dim)`` and ``q_values(params, obs) -> [..., A]``).
      config: :class:`QConfig`.

    Parameters: ``{"online": q_params}`` plus ``{"target": q_params}`` when
    ``config.uses_target_network``.
    """

    env: object
    q_network: object
    config: QConfig = QConfig()

    #: The TD inner step has no LVC form: ``"lvc"`` would silently be ``"naive"``, so it is refused.
    supported_estimators = PLAIN_LOSS_ESTIMATORS
    #: The outer objective is a TD loss (or the Boltzmann policy's return): TRPO / ProMP's
    #: likelihood-ratio surrogate of a stochastic policy's return does not apply.
    has_policy_surrogate = False

    # ---- policies
    @property
    def behaviour_policy(self) -> QPolicy:
        cfg = self.config
        return QPolicy(self.q_network, cfg.behaviour, cfg.epsilon, cfg.temperature)

    @property
    def boltzmann_policy(self) -> QPolicy:
        return QPolicy(self.q_network, "boltzmann", self.config.epsilon, self.config.temperature)

    # ---- interface
    def init(self, key: jax.Array):
        online = self.q_network.init(key, self.env.obs_dim())
        if self.config.uses_target_network:
            return {"online": online, "target": jax.tree.map(jnp.copy, online)}
        return {"online": online}

    def q_values(self, params, obs: jax.Array) -> jax.Array:
        """``Q_online(s)``: ``[..., obs_dim] -> [..., A]``."""
        return self.q_network.q_values(params["online"], obs)

    def collect(self, key: jax.Array, params, task) -> Trajectory:
        """``E`` episodes of the behaviour policy of ``Q_params`` (not differentiated)."""
        cfg = self.config
        return rollout(key, self.env, self.behaviour_policy, params["online"], task,
                       cfg.num_inner_episodes, cfg.horizon, cfg.rollout_unroll)

    def collect_outer(self, key: jax.Array, params, task) -> OuterBatch:
        """``E'`` episodes of the behaviour (``outer="td"``) or Boltzmann (``"return"``) policy of ``phi_K``."""
        cfg = self.config
        policy = self.behaviour_policy if cfg.outer == "td" else self.boltzmann_policy
        traj = rollout(key, self.env, policy, params["online"], task, cfg.num_outer_episodes, cfg.horizon,
                       cfg.rollout_unroll)
        if cfg.outer == "td":
            objective = -self.td_loss(jax.lax.stop_gradient(params), traj)
        else:
            objective = jnp.sum(traj.episode_returns(cfg.gamma)) / self._normalizer(traj)
        return OuterBatch(traj=traj, objective=jax.lax.stop_gradient(objective), advantages=jnp.zeros_like(traj.reward))

    def acting_policy(self):
        """The behaviour policy, as a policy over the whole ``params`` (it reads ``params["online"]``)."""
        return _OnlinePolicy(self.behaviour_policy)

    def log_probs(self, params, traj: Trajectory) -> jax.Array:
        """``log pi_behaviour(a_t | s_t)`` under ``Q_params``: ``[E, T]``."""
        return self.behaviour_policy.log_prob(params["online"], traj.obs, traj.action)

    def policy_entropy(self, params, traj: Trajectory) -> jax.Array:
        """Mean entropy of the behaviour policy over the valid states of ``traj``: ``[]``."""
        return losses.entropy_bonus(self.behaviour_policy.entropy(params["online"], traj.obs), traj.mask)

    def _check(self, traj: Trajectory) -> None:
        chex.assert_rank(traj.reward, 2)
        chex.assert_equal_shape([traj.reward, traj.done, traj.mask, traj.action])
        chex.assert_equal_shape([traj.obs, traj.next_obs])

    def _normalizer(self, traj: Trajectory) -> jax.Array:
        if self.config.normalize == "step":
            return jnp.maximum(jnp.sum(traj.mask), 1.0)
        return jnp.asarray(traj.num_episodes, traj.reward.dtype)

    def td_targets(self, params, traj: Trajectory) -> jax.Array:
        """Bootstrap targets ``y_t`` of the batch as a function of ``params``: ``[E, T]``.

        Differentiable in ``params`` (through the online network, or the
        target network for ``double_q``) unless ``config.target`` stops it.
        """
        cfg = self.config
        next_q_online = self.q_network.q_values(params["online"], traj.next_obs)
        if cfg.target == "frozen":
            next_q_value = self.q_network.q_values(jax.lax.stop_gradient(params["target"]), traj.next_obs)
            next_q_select = next_q_online if cfg.double_q else next_q_value
        elif cfg.double_q:
            next_q_value = self.q_network.q_values(params["target"], traj.next_obs)
            next_q_select = next_q_online
        else:
            next_q_value = next_q_select = next_q_online
        targets = q_learning_targets(next_q_select, next_q_value, traj.reward, traj.done, cfg.gamma)
        if cfg.target == "stop_gradient":
            targets = jax.lax.stop_gradient(targets)
        return targets

    def _q_taken(self, online_params, traj: Trajectory) -> jax.Array:
        q = self.q_network.q_values(online_params, traj.obs)
        return jnp.take_along_axis(q, traj.action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def td_loss(self, params, traj: Trajectory) -> jax.Array:
        """``1/(2Z) sum m delta(params)^2``, the targets differentiable as :meth:`td_targets` says."""
        self._check(traj)
        return td_loss_given_targets(self._q_taken(params["online"], traj), self.td_targets(params, traj),
                                     traj.mask, self._normalizer(traj))

    def inner_grad(self, params, traj: Trajectory, estimator: str = "dice"):
        """``(L, g)``: the semi-gradient TD step, differentiable in ``params`` through the targets.

        ``y = td_targets(params)`` is computed outside the differentiated
        function, so ``g = grad_p L(p; y)|_{p=params}`` holds ``y`` fixed while a
        derivative of ``g`` with respect to ``params`` sees ``y(params)``. ``g`` has
        the structure of ``params`` (zero for ``"target"``). ``estimator`` is
        accepted for the interface (every estimator takes this step).
        """
        del estimator
        self._check(traj)
        targets = self.td_targets(params, traj)
        normalizer = self._normalizer(traj)

        def loss_given_targets(p):
            return td_loss_given_targets(self._q_taken(p["online"], traj), targets, traj.mask, normalizer)

        return jax.value_and_grad(loss_given_targets)(params)

    def inner_loss(self, params, traj: Trajectory, estimator: str = "dice") -> jax.Array:
        """The semi-gradient TD loss with stopped targets: its gradient is the inner step.

        Its *higher* derivatives ignore the target's dependence on ``params``;
        :func:`metarl_jax.algorithms.maml.adapt` uses :meth:`inner_grad` instead.
        """
        del estimator
        self._check(traj)
        targets = jax.lax.stop_gradient(self.td_targets(params, traj))
        return td_loss_given_targets(self._q_taken(params["online"], traj), targets, traj.mask,
                                     self._normalizer(traj))

    def log_prob_of_data(self, params, traj: Trajectory) -> jax.Array:
        """``sum_t m_t log softmax(Q(s_t)/temperature)[a_t]`` for ``"boltzmann"``, else 0 (module docstring)."""
        if self.config.behaviour != "boltzmann":
            return jnp.zeros((), traj.reward.dtype)
        logp = self.boltzmann_policy.log_prob(params["online"], traj.obs, traj.action)
        return jnp.sum(logp * traj.mask)

    def outer_loss(self, params, data: OuterBatch) -> jax.Array:
        """TD loss of ``phi_K`` (``"td"``) or minus the PG surrogate of its Boltzmann policy (``"return"``)."""
        traj = data.traj
        if self.config.outer == "td":
            return self.td_loss(params, traj)
        self._check(traj)
        logp = self.boltzmann_policy.log_prob(params["online"], traj.obs, traj.action)
        reward_to_go = jax.lax.stop_gradient(losses.discounted_returns(traj.reward, traj.mask, self.config.gamma))
        return -jnp.sum(logp * reward_to_go * traj.mask) / self._normalizer(traj)



@dataclasses.dataclass(frozen=True)
class _OnlinePolicy:
    """A policy over ``params["online"]`` seen as a policy over the Q-learner's whole ``params``."""

    policy: object

    def log_prob(self, params, obs, action):
        return self.policy.log_prob(params["online"], obs, action)

    def sample(self, key, params, obs):
        return self.policy.sample(key, params["online"], obs)

    def entropy(self, params, obs):
        return self.policy.entropy(params["online"], obs)

    def kl_divergence(self, params_old, params_new, obs):
        return self.policy.kl_divergence(params_old["online"], params_new["online"], obs)


def q_network_for(family, hidden_sizes: Sequence[int] = (64, 64), activation: str = "relu", tabular: bool = False):
    """A Q-network matching a discrete-action family: a table (one-hot observations) or an MLP."""
    from gymnax.environments import spaces

    space = family.action_space(family.default_params)
    if not isinstance(space, spaces.Discrete):
        raise ValueError(f"action_space={space!r} is invalid: Q-learning needs a Discrete action space")
    if tabular:
        return TabularQNetwork(family.obs_dim(), int(space.n))
    return MLPQNetwork(int(space.n), tuple(hidden_sizes), activation)
