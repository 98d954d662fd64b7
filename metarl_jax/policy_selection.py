"""Policy selection: adapt, then choose the best candidate by return on fresh validation episodes.

The pipeline's policy-optimisation stage. From the meta-learned ``theta`` on one task:

    candidates  C = {theta} u { phi_k^(s) : k = 1..K, s in lr_scales }
    phi_k^(s)   = k inner steps of :func:`metarl_jax.algorithms.maml.adapt` with step size s * alpha
    V(c)        = mean return of ``learner.collect_outer`` episodes of c (fresh, per candidate)
    chosen      = argmax_{c in C} V(c)

so adaptation can stop early (``k < K``) when a further step overshoots, or take a
shorter step than the trained one. Every scale's inner steps use the same key, so
the first inner batch (collected with ``theta``) is shared: the adaptation budget is
``E_in * (1 + S (K - 1))`` episodes and validation costs ``E_out * (1 + S K)``
episodes; both are returned beside the result. ``V(chosen)`` is biased upwards (it
is the maximum of noisy estimates): judge the chosen policy on new episodes.

A pure function of ``(meta_params, task, key)``: jit it, vmap it over tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.algorithms.inner import adapt
from metarl_jax.algorithms.maml import MAMLConfig
from metarl_jax.validation import check_optional_int, check_real_sequence, require


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Which candidates to build and how many inner steps.

    Attributes:
      lr_scales: step sizes of the candidates as multiples of the trained inner step size
        (a learned Meta-SGD rate is scaled the same way); each > 0.
      num_steps: ``K`` inner steps per scale; ``None``: the trained ``MAMLConfig.inner_steps``.
    """

    lr_scales: tuple[float, ...] = (0.5, 1.0)
    num_steps: int | None = None

    def __post_init__(self):
        # A tuple, so the config stays hashable (it is a static argument and a cache key).
        require(isinstance(self.lr_scales, tuple), "lr_scales", self.lr_scales, "must be a tuple")
        check_real_sequence("lr_scales", self.lr_scales, minimum=0.0, min_open=True)
        check_optional_int("num_steps", self.num_steps, minimum=1)


class SelectionResult(NamedTuple):
    """What :func:`select_adapted` returns for one task (add a leading task axis under vmap).

    Attributes:
      params: the chosen candidate's policy parameters.
      steps: ``[]`` int32, its number of inner steps ``k`` (0: ``theta`` itself).
      lr_scale: ``[]`` its step-size multiple (``0`` for ``theta``).
      validation_returns: ``[1 + S K]`` validation return of each candidate: ``theta``, then
        scale-major ``(s_1, k=1..K), (s_2, k=1..K), ...``.
      chosen: ``[]`` int32, index of the chosen candidate in ``validation_returns``.
      adaptation_episodes: episodes the inner steps collected (a Python int).
      validation_episodes: episodes spent on validation (a Python int).
    """

    params: Any
    steps: jax.Array
    lr_scale: jax.Array
    validation_returns: jax.Array
    chosen: jax.Array
    adaptation_episodes: int
    validation_episodes: int


def _scaled_rate(meta_params: dict, config: MAMLConfig, scale: float):
    """The inner step size times ``scale``: a Meta-SGD pytree of rates, or the config's scalar."""
    if "inner_lr" in meta_params:
        return dict(meta_params, inner_lr=jax.tree.map(lambda a: a * scale, meta_params["inner_lr"])), config
    return meta_params, dataclasses.replace(config, inner_lr=config.inner_lr * scale)


def adaptation_candidates(learner, config: MAMLConfig, meta_params: dict, task, key: jax.Array,
                          selection: SelectionConfig = SelectionConfig()):
    """The candidates of :func:`select_adapted`: ``(params [C, ...], steps [C], lr_scales [C])``.

    ``C = 1 + S K``: ``theta``, then scale-major ``(s_1, k=1..K), (s_2, k=1..K), ...``; every
    scale's inner steps run :func:`metarl_jax.algorithms.maml.adapt` with ``key`` (no meta-gradient).
    """
    num_steps = int(config.inner_steps if selection.num_steps is None else selection.num_steps)
    cfg = dataclasses.replace(config, inner_steps=num_steps, estimator="first_order")
    paths = []  # per scale: phi_1..phi_K stacked on a leading [K] axis
    for scale in selection.lr_scales:  # a few static scales; each adapt is one lax.scan
        mp, scaled_cfg = _scaled_rate(meta_params, cfg, float(scale))
        phi, info = adapt(learner, scaled_cfg, mp, task, key, keep_path=True)
        # info.path holds phi_0..phi_{K-1}; the candidates are phi_1..phi_K.
        paths.append(jax.tree.map(lambda p, last: jnp.concatenate([p[1:], last[None]], axis=0), info.path, phi))
    stacked = jax.tree.map(lambda theta, *ps: jnp.concatenate([theta[None], *ps], axis=0),
                           meta_params["policy"], *paths)
    steps = np.concatenate([[0], np.tile(np.arange(1, num_steps + 1), len(selection.lr_scales))])
    scales = np.concatenate([[0.0], np.repeat(np.asarray(selection.lr_scales, np.float64), num_steps)])
    return stacked, jnp.asarray(steps, jnp.int32), jnp.asarray(scales, jnp.float32)


def select_adapted(learner, config: MAMLConfig, meta_params: dict, task, key: jax.Array,
                   selection: SelectionConfig = SelectionConfig()) -> SelectionResult:
    """Adapt with every step size of ``selection``, validate every candidate, return the best (module docstring).

    Nothing is differentiated (``estimator="first_order"`` for the inner steps). ``learner``
    provides ``collect``/``collect_outer``/``mean_return``; the inner episodes per step are
    ``learner.config.num_inner_episodes``, validation episodes per candidate
    ``learner.config.num_outer_episodes``. The inner steps use the first half of
    ``jax.random.split(key)``, validation the second.
    """
    num_steps = int(config.inner_steps if selection.num_steps is None else selection.num_steps)
    key_adapt, key_val = jax.random.split(key)
    stacked, steps, scales = adaptation_candidates(learner, config, meta_params, task, key_adapt, selection)
    num_candidates = int(steps.shape[0])
    val_keys = jax.random.split(key_val, num_candidates)
    values = jax.vmap(lambda p, k: learner.mean_return(learner.collect_outer(k, p, task).traj))(stacked, val_keys)
    chex.assert_shape(values, (num_candidates,))
    chosen = jnp.argmax(values).astype(jnp.int32)
    lcfg = learner.config
    return SelectionResult(
        params=jax.tree.map(lambda x: x[chosen], stacked),
        steps=steps[chosen],
        lr_scale=scales[chosen],
        validation_returns=values,
        chosen=chosen,
        adaptation_episodes=int(lcfg.num_inner_episodes) * (1 + len(selection.lr_scales) * (num_steps - 1)),
        validation_episodes=int(lcfg.num_outer_episodes) * num_candidates,
    )
