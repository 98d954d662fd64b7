"""Explaining a decision: integrated-gradients attributions before and after adaptation.

Integrated gradients (Sundararajan, Taly and Yan, 2017) attribute a scalar output ``f(x)`` of one
observation ``x [F]`` to its features, relative to a baseline observation ``x' [F]``::

    IG_i(x) = (x_i - x'_i) * int_0^1  d f(x' + a (x - x')) / d x_i  da          (i = 1..F)

By the fundamental theorem of calculus along the straight path ``x' -> x`` the attributions are
*complete*: ``sum_i IG_i(x) = f(x) - f(x')``. A feature the function does not depend on gets
exactly 0 (the dummy axiom), and a feature equal to its baseline gets 0 too.

The integral is a quadrature over ``S = num_steps`` path points ``a_s`` with weights ``w_s``
(``sum_s w_s = 1``), computed as ONE ``jax.vmap`` of ``jax.grad(f)`` over the ``[S, F]`` path points::

    IG(x) = (x - x') * sum_s w_s grad f(x' + a_s (x - x'))

so the completeness gap ``sum_i IG_i - (f(x) - f(x'))`` is exactly the quadrature error (plus
floating-point rounding); :func:`completeness_gap` reports it, :func:`attribute` returns it per state.

What is attributed, for any learner of :mod:`metarl_jax.learners` (:func:`scalar_output`):

* Gaussian policies: the mean action ``mu_d(x)`` (dimension ``dim``);
* categorical / tabular policies: ``log pi(a | x)`` (``"log_prob"``) or the logit ``l_a(x)``
  (``"logit"``) of a chosen action ``a``: by default the greedy action at ``x``, held fixed along
  the path;
* actor-critic learners: the critic's value ``V(x)`` (the actor's outputs on request);
* Q-learners: ``Q(x, a)``, ``a`` the greedy action at ``x`` by default.

:func:`explain_adaptation` shows what adaptation changed: the attributions of the meta-learned
start ``theta`` and of ``phi_K`` after ``K`` inner steps on one task (the adaptation of
:func:`metarl_jax.evaluation.adapted_params`) on the same states.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.algorithms.inner import adapt
from metarl_jax.learners.pg import CustomLossLearner
from metarl_jax.learners.q_learning import QLearner
from metarl_jax.networks import (
    CategoricalPolicy,
    GaussianPolicy,
    SeparateActorCritic,
    SharedActorCritic,
    TabularPolicy,
)
from metarl_jax.validation import check_choice, check_int, is_int, require

#: Quadrature rules of the path integral.
QUADRATURE_RULES = ("gauss_legendre", "trapezoid")
#: What :func:`scalar_output` can attribute (``"auto"``: the natural output of the learner).
OUTPUTS = ("auto", "mean_action", "log_prob", "logit", "value", "q_value")


# ----------------------------------------------------------------------------- integrated gradients


def quadrature(num_steps: int, rule: str = "gauss_legendre") -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``a [S]`` in ``[0, 1]`` and weights ``w [S]`` (``sum w = 1``) of ``int_0^1 g(a) da``.

    * ``"gauss_legendre"``: the ``S``-point Gauss-Legendre rule mapped from ``[-1, 1]`` to
      ``[0, 1]``; exact for polynomials of degree ``<= 2S - 1``, error
      ``(S!)^4 / ((2S + 1) ((2S)!)^3) g^(2S)(xi)``: faster than any power of ``1/S`` for a smooth
      network (tanh, elu). Interior nodes only.
    * ``"trapezoid"``: ``S >= 2`` equally spaced points ``a_s = s / (S - 1)`` including both ends,
      error ``-(g'(1) - g'(0)) / (12 (S - 1)^2) + O(S^-4)``, i.e. ``O(1/S^2)``.

    For a ReLU network the path gradient is piecewise constant in ``a`` (it jumps where a unit
    switches), and both rules converge as ``O(1/S)``: expect gaps of a few tenths of a percent of
    the output change at ``S = 64``, and use a few hundred points where that matters. Either rule
    is exact for a linear ``f``. Read-only arrays, cached per ``(S, rule)``.
    """
    check_choice("rule", rule, QUADRATURE_RULES)
    check_int("num_steps", num_steps, minimum=2 if rule == "trapezoid" else 1)
    return _quadrature(int(num_steps), rule)


@functools.lru_cache(maxsize=32)
def _quadrature(num_steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    if rule == "gauss_legendre":
        nodes, weights = gauss_legendre(num_steps)
        nodes, weights = 0.5 * (nodes + 1.0), 0.5 * weights
    else:
        nodes = np.linspace(0.0, 1.0, num_steps)
        weights = np.full(num_steps, 1.0 / (num_steps - 1))
        weights[[0, -1]] *= 0.5
    nodes.setflags(write=False)
    weights.setflags(write=False)
    return nodes, weights


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n``-point Gauss-Legendre nodes (ascending) and weights on ``[-1, 1]``, float64.

    Newton's method on ``P_n`` (three-term recurrence ``j P_j = (2j - 1) x P_{j-1} - (j - 1) P_{j-2}``,
    ``P_n' = n (x P_n - P_{n-1}) / (x^2 - 1)``) from Tricomi's guesses ``cos(pi (k - 1/4) / (n + 1/2))``;
    weights ``2 / ((1 - x^2) P_n'(x)^2)``. ``O(n^2)`` work (numpy's ``leggauss`` solves an
    ``n x n`` eigenproblem, ``O(n^3)``: seconds at ``n = 1024``) and the same values.
    """
    check_int("n", n, minimum=1)
    x = np.cos(np.pi * (np.arange(1, n + 1) - 0.25) / (n + 0.5))

    def legendre_and_derivative(x):
        p_prev, p = np.ones_like(x), x
        for j in range(2, n + 1):
            p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
        return p, n * (x * p - p_prev) / (x * x - 1.0)

    for _ in range(100):
        p, dp = legendre_and_derivative(x)
        step = p / dp
        x = x - step
        if np.max(np.abs(step)) < 1e-15:
            break
    _, dp = legendre_and_derivative(x)
    return x[::-1].copy(), (2.0 / ((1.0 - x * x) * dp * dp))[::-1].copy()


def integrated_gradients(fn: Callable[[jax.Array], jax.Array], x: jax.Array, baseline: jax.Array,
                         num_steps: int = 64, rule: str = "gauss_legendre") -> jax.Array:
    """``IG(x) = (x - x') * sum_s w_s grad f(x' + a_s (x - x'))``: ``[F]`` attributions of a scalar ``f``.

    Args:
      fn: ``f: [F] -> []``, differentiable in its input.
      x: ``[F]`` the observation explained; baseline: ``[F]`` the reference input ``x'``.
      num_steps: ``S`` path points, all differentiated at once (``jax.vmap(jax.grad(fn))`` over
        ``[S, F]``); rule: :data:`QUADRATURE_RULES` (see :func:`quadrature` for the error orders).

    Completeness: ``sum_i IG_i = f(x) - f(x')`` up to the quadrature error, which
    :func:`completeness_gap` measures. Pure and traceable (jit / vmap it freely).
    """
    x = jnp.asarray(x)
    baseline = jnp.asarray(baseline)
    chex.assert_rank(x, 1)
    chex.assert_equal_shape([x, baseline])
    require(jnp.issubdtype(x.dtype, jnp.floating), "x.dtype", str(x.dtype), "must be a floating dtype")
    out = jax.eval_shape(fn, x)
    require(out.shape == (), "fn(x).shape", out.shape, "must be () (a scalar output of one observation [F])")
    nodes, weights = quadrature(num_steps, rule)
    nodes, weights = jnp.asarray(nodes, x.dtype), jnp.asarray(weights, x.dtype)
    delta = x - baseline.astype(x.dtype)
    path = baseline[None, :] + nodes[:, None] * delta[None, :]  # [S, F]
    grads = jax.vmap(jax.grad(fn))(path)  # [S, F]
    chex.assert_shape(grads, (nodes.shape[0], x.shape[0]))
    return delta * jnp.tensordot(weights, grads, axes=1)


def completeness_gap(fn: Callable[[jax.Array], jax.Array], x: jax.Array, baseline: jax.Array,
                     attributions: jax.Array) -> jax.Array:
    """``sum_i IG_i - (f(x) - f(x'))``: ``[]``, the quadrature error of :func:`integrated_gradients`."""
    chex.assert_equal_shape([x, baseline, attributions])
    return jnp.sum(attributions) - (fn(x) - fn(baseline))


def batched_integrated_gradients(fn: Callable[..., jax.Array], xs: jax.Array, baselines: jax.Array,
                                 targets: jax.Array | None = None, num_steps: int = 64,
                                 rule: str = "gauss_legendre") -> jax.Array:
    """:func:`integrated_gradients` vmapped over ``N`` states: ``[N, F]`` attributions.

    Args:
      fn: ``f(z) -> []``, or ``f(z, t) -> []`` when ``targets`` is given: ``t`` is the state's
        entry of ``targets`` (e.g. the action explained, chosen at the state and held fixed along
        its path), ``z`` a point of the path ``[F]``.
      xs: ``[N, F]``; baselines: ``[F]`` (shared) or ``[N, F]`` (one per state).
      targets: ``None`` or an array with a leading ``[N]`` axis.

    Row ``n`` equals ``integrated_gradients(lambda z: fn(z, targets[n]), xs[n], baselines[n])``.
    """
    xs = jnp.asarray(xs)
    chex.assert_rank(xs, 2)
    baselines = _per_state(baselines, xs)
    if targets is None:
        return jax.vmap(lambda x, b: integrated_gradients(fn, x, b, num_steps, rule))(xs, baselines)
    targets = jnp.asarray(targets)
    chex.assert_axis_dimension(targets, 0, xs.shape[0])
    one = lambda x, b, t: integrated_gradients(lambda z: fn(z, t), x, b, num_steps, rule)
    return jax.vmap(one)(xs, baselines, targets)


def _per_state(baselines: jax.Array, xs: jax.Array) -> jax.Array:
    """A shared ``[F]`` baseline broadcast to ``[N, F]``; a ``[N, F]`` one checked against ``xs``."""
    baselines = jnp.asarray(baselines, xs.dtype)
    require(baselines.shape in (xs.shape[1:], xs.shape), "baseline.shape", baselines.shape,
            f"must be [F]={xs.shape[1:]} (shared) or [N, F]={xs.shape} (one per state)")
    return jnp.broadcast_to(baselines, xs.shape)


def resolve_baseline(baseline: Any, states: jax.Array) -> jax.Array:
    """The baseline per state, ``[N, F]``.

    ``None`` or ``"zeros"``: the zero observation. For features normalised to zero mean (running
    normalisation, :mod:`metarl_jax.preprocessing`) zero *is* the mean state; for one-hot states and
    the bandit's constant ``[1.]`` it is "no state", where a softmax policy over a logit table is
    uniform. ``"mean"``: the mean of ``states`` (for raw features, where zero is an arbitrary point).
    An array: ``[F]`` shared or ``[N, F]`` one per state.
    """
    states = jnp.asarray(states)
    chex.assert_rank(states, 2)
    if baseline is None or (isinstance(baseline, str) and baseline == "zeros"):
        return jnp.zeros_like(states)
    if isinstance(baseline, str):
        check_choice("baseline", baseline, ("zeros", "mean"))
        return jnp.broadcast_to(jnp.mean(states, axis=0), states.shape)
    return _per_state(baseline, states)


# ----------------------------------------------------------------------------- what to attribute


class _Heads(NamedTuple):
    """A learner's outputs at one observation ``[F]`` (``None``: the learner has no such output)."""

    mean: Callable | None = None  # [F] -> [A]  Gaussian mean action
    logits: Callable | None = None  # [F] -> [A]  categorical logits
    log_probs: Callable | None = None  # [F] -> [A]  log pi(. | x), when not the log-softmax of logits
    value: Callable | None = None  # [F] -> []   critic V(x)
    q: Callable | None = None  # [F] -> [A]  Q(x, .)


def _model_heads(model, params) -> _Heads:
    """The outputs of a policy-like model of :mod:`metarl_jax.networks` (isinstance dispatch)."""
    if isinstance(model, SeparateActorCritic):
        return _model_heads(model.actor, params["actor"])._replace(value=lambda o: model.value(params, o))
    if isinstance(model, SharedActorCritic):
        head = lambda o: model.network.apply(params, o)[0]
        value = lambda o: model.value(params, o)
        return _Heads(mean=head, value=value) if model.continuous else _Heads(logits=head, value=value)
    if isinstance(model, GaussianPolicy):
        return _Heads(mean=lambda o: model.mean(params, o))
    if isinstance(model, (CategoricalPolicy, TabularPolicy)):
        return _Heads(logits=lambda o: model.logits(params, o))
    raise ValueError(f"policy={model!r} is invalid: attributions are defined for GaussianPolicy, CategoricalPolicy, "
                     "TabularPolicy, SeparateActorCritic, SharedActorCritic and Q-learners; pass output=a function "
                     "(params, obs [F]) -> [] for another model")


def _heads(learner, params) -> _Heads:
    """The outputs of ``learner`` at ``params``: Q-learners by their Q-network, a
    :class:`CustomLossLearner` by its base, every other learner by its ``acting_policy()``."""
    if isinstance(learner, CustomLossLearner):
        return _heads(learner.base, params)
    if isinstance(learner, QLearner):
        behaviour = learner.behaviour_policy
        log_probs = None
        if behaviour.kind == "boltzmann":  # the other behaviours are piecewise constant in x: no gradient
            log_probs = lambda o: behaviour.log_probs_all(params["online"], o)
        return _Heads(q=lambda o: learner.q_values(params, o), log_probs=log_probs)
    return _model_heads(learner.acting_policy(), params)


@dataclasses.dataclass(frozen=True)
class ScalarOutput:
    """A scalar output of a learner's parameters at one observation, with the choice it explains.

    ``fn(z [F], t []) -> []``: the output at a path point ``z`` for the choice ``t`` (an action, or
    a mean-action dimension); ``target(x [F]) -> []`` (int32): the choice made at the explained
    state ``x``, held fixed along its path. ``name`` says what is attributed.
    """

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    target: Callable[[jax.Array], jax.Array]


def scalar_output(learner, params, output: Any = "auto", *, dim: int = 0, action: int | None = None) -> ScalarOutput:
    """What is attributed for ``learner`` at ``params`` (a learner's whole parameters, ``meta_params["policy"]``).

    ``output`` (:data:`OUTPUTS`):

    * ``"mean_action"``: ``mu_dim(x)`` of a Gaussian policy (also an actor-critic's Gaussian actor);
    * ``"log_prob"``: ``log pi(a | x)`` of a categorical / tabular policy (also an actor-critic's
      actor, or a Q-learner's Boltzmann behaviour policy ``softmax(Q / temperature)``);
    * ``"logit"``: the logit ``l_a(x)`` of a categorical / tabular policy;
    * ``"value"``: an actor-critic's ``V(x)``; ``"q_value"``: a Q-learner's ``Q(x, a)``;
    * ``"auto"``: ``"q_value"`` for a Q-learner, ``"value"`` for an actor-critic, else
      ``"mean_action"`` (continuous actions) or ``"log_prob"`` (discrete);
    * a function ``(params, obs [F]) -> []``: that function (any other learner or quantity).

    The action ``a`` is ``action`` when given, else the greedy action at the explained state
    (``argmax`` of the logits, or of ``Q``), held fixed along the path.
    """
    if callable(output):
        name = getattr(output, "__name__", "custom")
        return ScalarOutput(name, lambda z, t: output(params, z), lambda x: jnp.zeros((), jnp.int32))
    check_choice("output", output, OUTPUTS)
    heads = _heads(learner, params)
    if output == "auto":
        output = ("q_value" if heads.q is not None else "value" if heads.value is not None
                  else "mean_action" if heads.mean is not None else "log_prob")
    available = [name for name, ok in (("mean_action", heads.mean), ("log_prob", heads.logits or heads.log_probs),
                                       ("logit", heads.logits), ("value", heads.value), ("q_value", heads.q))
                 if ok is not None]
    require(output in available, "output", output,
            f"{type(learner).__name__} offers {available} (or pass a function (params, obs [F]) -> [])")
    obs = jax.ShapeDtypeStruct((learner.env.obs_dim(),), jnp.float32)
    if output == "mean_action":
        check_int("dim", dim, minimum=0)
        fixed = jnp.asarray(dim, jnp.int32)
        size = jax.eval_shape(heads.mean, obs).shape[-1]
        require(dim < size, "dim", dim, f"must be < action_dim={size}")
        return ScalarOutput(f"mean_action[{dim}]", lambda z, t: heads.mean(z)[t], lambda x: fixed)
    if output == "value":
        return ScalarOutput("value", lambda z, t: heads.value(z), lambda x: jnp.zeros((), jnp.int32))
    scores = heads.q if output == "q_value" or heads.logits is None else heads.logits
    if output == "q_value":
        per_action = heads.q
    elif output == "logit":
        per_action = heads.logits
    else:
        per_action = heads.log_probs or (lambda o: jax.nn.log_softmax(heads.logits(o), axis=-1))
    if action is None:
        choose = lambda x: jnp.argmax(scores(x), axis=-1).astype(jnp.int32)
        label = "greedy action"
    else:
        num_actions = jax.eval_shape(per_action, obs).shape[-1]
        require(is_int(action) and 0 <= action < num_actions, "action", action,
                f"must be None (greedy) or an action index in [0, {num_actions})")
        fixed = jnp.asarray(action, jnp.int32)
        choose = lambda x: fixed
        label = f"action {action}"
    return ScalarOutput(f"{output} of the {label}", lambda z, t: per_action(z)[t], choose)


def attribute(learner, params, states: jax.Array, baseline: Any = None, output: Any = "auto", *,
              num_steps: int = 64, rule: str = "gauss_legendre", dim: int = 0, action: int | None = None) -> dict:
    """Integrated-gradients attributions of ``learner``'s output at ``params`` on ``N`` states.

    ``states [N, F]``; ``baseline`` as :func:`resolve_baseline`; ``output``, ``dim``, ``action`` as
    :func:`scalar_output`. Returns arrays: ``attributions [N, F]``, ``outputs [N]`` (``f(x)``),
    ``baseline_outputs [N]`` (``f(x')``, same choice), ``gaps [N]`` (``sum IG - (f(x) - f(x'))``,
    the quadrature error), ``targets [N]`` (the choice explained at each state), ``baselines [N, F]``.
    Traceable (the caller jits).
    """
    states = jnp.asarray(states)
    chex.assert_rank(states, 2)
    baselines = resolve_baseline(baseline, states)
    out = scalar_output(learner, params, output, dim=dim, action=action)
    targets = jax.vmap(out.target)(states)
    attributions = batched_integrated_gradients(out.fn, states, baselines, targets, num_steps, rule)
    outputs = jax.vmap(out.fn)(states, targets)
    baseline_outputs = jax.vmap(out.fn)(baselines, targets)
    chex.assert_equal_shape([attributions, states])
    return {"attributions": attributions, "outputs": outputs, "baseline_outputs": baseline_outputs,
            "gaps": jnp.sum(attributions, axis=-1) - (outputs - baseline_outputs), "targets": targets,
            "baselines": baselines}


def explain_adaptation(learner, maml_config, meta_params: dict, task, key: jax.Array, states: jax.Array,
                       steps: int | None = None, baseline: Any = None, output: Any = "auto", *,
                       num_steps: int = 64, rule: str = "gauss_legendre", dim: int = 0,
                       action: int | None = None) -> dict:
    """What adaptation changed in a decision: attributions before and after ``steps`` inner steps.

    ``before``: the meta-learned start ``theta = meta_params["policy"]``; ``after``: ``phi_K``, ``K =
    steps`` (default ``maml_config.inner_steps``) first-order inner steps on ``task`` with ``key``
    (:func:`metarl_jax.algorithms.inner.adapt`, as :func:`metarl_jax.evaluation.adapted_params`
    adapts: fresh data at every step, Meta-SGD rates when learned). Both are explained on the same
    ``states [N, F]`` against the same baseline (default zeros, see :func:`resolve_baseline`).
    With the default ``action=None`` each explains its own decision (the greedy action of its own
    parameters at each state: ``targets_before`` / ``targets_after`` say which); give ``action``
    to explain the same action in both.

    Returns numpy arrays: ``before``, ``after``, ``difference = after - before`` (``[N, F]``);
    ``outputs_before``, ``outputs_after``, ``baseline_outputs_before``, ``baseline_outputs_after``,
    ``gap_before``, ``gap_after``, ``targets_before``, ``targets_after`` (``[N]``); ``baselines``
    (``[N, F]``); ``params_after`` (``phi_K``, the learner's parameter pytree); and ``output`` (what
    was attributed, in words), ``steps``, ``num_steps``, ``rule``.
    """
    steps = int(maml_config.inner_steps if steps is None else check_int("steps", steps, minimum=1))
    cfg = dataclasses.replace(maml_config, inner_steps=steps, estimator="first_order")
    states = jnp.asarray(states)
    chex.assert_rank(states, 2)
    require(states.shape[1] == learner.env.obs_dim(), "states.shape", states.shape,
            f"must be [N, obs_dim={learner.env.obs_dim()}]")
    baselines = resolve_baseline(baseline, states)
    quadrature(num_steps, rule)  # validates num_steps and rule before tracing
    kwargs = dict(num_steps=num_steps, rule=rule, dim=dim, action=action)
    name = scalar_output(learner, meta_params["policy"], output, dim=dim, action=action).name  # validates them

    @jax.jit
    def run(meta_params, task, key, states, baselines):
        phi, _ = adapt(learner, cfg, meta_params, task, key)
        return (attribute(learner, meta_params["policy"], states, baselines, output, **kwargs),
                attribute(learner, phi, states, baselines, output, **kwargs), phi)

    before, after, phi = jax.device_get(run(meta_params, task, key, states, baselines))
    result = {"before": before["attributions"], "after": after["attributions"],
              "difference": after["attributions"] - before["attributions"], "baselines": before["baselines"]}
    for field, new in (("outputs", "outputs"), ("baseline_outputs", "baseline_outputs"), ("gaps", "gap"),
                       ("targets", "targets")):
        result[f"{new}_before"] = before[field]
        result[f"{new}_after"] = after[field]
    result.update(params_after=phi, output=name, steps=steps, num_steps=int(num_steps), rule=rule)
    return result
