"""Adaptation curves: return after k = 0..K inner steps on held-out tasks.

``adaptation_curve`` runs the same ``adapt`` as meta-training (vmapped over
tasks, no meta-gradient) with ``K`` inner steps and reports the mean
undiscounted return of the policy after each step: index 0 is the
meta-learned start ``theta``, index ``k`` is ``phi_k``. Compare against a
random initialisation, a multi-task initialisation and the exact optimum
(``family.optimal_return``) where the family has one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.algorithms.inner import adapt
from metarl_jax.algorithms.maml import MAMLConfig
from metarl_jax.tasks.base import num_tasks_in


def adaptation_returns(learner, config: MAMLConfig, meta_params, tasks, key: jax.Array, num_steps: int):
    """Returns ``[N, num_steps + 1]``: mean episode return of ``phi_0..phi_K`` on each of ``N`` tasks."""
    cfg = dataclasses.replace(config, inner_steps=int(num_steps), estimator="first_order")

    def one_task(task, k):
        key_inner, key_outer = jax.random.split(k)
        phi, info = adapt(learner, cfg, meta_params, task, key_inner)
        final = learner.mean_return(learner.collect_outer(key_outer, phi, task).traj)
        return jnp.concatenate([info.inner_returns, final[None]])

    keys = jax.random.split(key, num_tasks_in(tasks))
    return jax.vmap(one_task)(tasks, keys)


def mean_and_ci95(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the normal-approximation 95% confidence interval along ``axis``."""
    values = np.asarray(values, np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    half = 1.96 * values.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, half


def optimal_returns(family, tasks, horizon: int):
    """``[N]`` exact optimal returns, or ``None`` when the family has no exact solver."""
    if not getattr(family, "has_optimum", False):
        return None
    return jax.vmap(lambda t: family.optimal_return(t, horizon))(tasks)


def headroom_closed(adapted: np.ndarray, reference: np.ndarray, optimum: np.ndarray, num_bootstrap: int = 2000,
                    seed: int = 0) -> dict[str, Any]:
    """The fraction of the adaptation headroom closed after each inner step, with a 95% bootstrap CI.

    Args:
      adapted: ``[N, K+1]`` per-task returns of the adapted policy after ``k = 0..K`` steps.
      reference: ``[N]`` per-task returns of the best single (multi-task) policy, not adapted.
      optimum: ``[N]`` per-task optimal returns.

    The headroom is what a per-task optimum gains over the best single policy,
    ``H = mean(R*) - mean(R_ref)``; after ``k`` steps the closed fraction is
    ``f_k = (mean(R_k) - mean(R_ref)) / H`` (1: the optimum, 0: no better than the single
    policy, < 0: worse). The same tasks are used for every column, so the CI resamples
    tasks (paired bootstrap, ``num_bootstrap`` resamples, percentiles 2.5 and 97.5).
    Returns ``{"headroom", "fraction": [K+1], "ci_low": [K+1], "ci_high": [K+1]}``.
    """
    adapted, reference, optimum = (np.asarray(x, np.float64) for x in (adapted, reference, optimum))
    n = adapted.shape[0]
    if reference.shape != (n,) or optimum.shape != (n,):
        raise ValueError(f"reference and optimum must have shape ({n},): got {reference.shape}, {optimum.shape}")

    def fraction(idx):  # idx [..., n] task indices -> [..., K+1]
        ref = reference[idx].mean(-1)[..., None]
        return (adapted[idx].mean(-2) - ref) / (optimum[idx].mean(-1)[..., None] - ref)

    samples = fraction(np.random.default_rng(seed).integers(0, n, (num_bootstrap, n)))  # [B, K+1]
    return {"headroom": float(optimum.mean() - reference.mean()), "fraction": fraction(np.arange(n)).tolist(),
            "ci_low": np.percentile(samples, 2.5, axis=0).tolist(),
            "ci_high": np.percentile(samples, 97.5, axis=0).tolist()}


def summarize_curve(curve: np.ndarray) -> dict[str, Any]:
    mean, half = mean_and_ci95(curve, axis=0)
    return {"mean": mean.tolist(), "ci95": half.tolist()}


@dataclasses.dataclass(frozen=True)
class ModePolicy:
    """The deterministic version of a policy: the Gaussian mean or the most likely action."""

    policy: Any

    def sample(self, key, params, obs):
        del key
        if hasattr(self.policy, "mean"):
            return self.policy.mean(params, obs)
        return jnp.argmax(self.policy.logits(params, obs), axis=-1).astype(jnp.int32)

    def log_prob(self, params, obs, action):
        return self.policy.log_prob(params, obs, action)


def adapted_params(learner, config: MAMLConfig, meta_params, tasks, key: jax.Array, num_steps: int):
    """``phi_K`` for each task (a pytree with a leading task axis) after ``num_steps`` inner steps."""
    cfg = dataclasses.replace(config, inner_steps=int(num_steps), estimator="first_order")
    keys = jax.random.split(key, num_tasks_in(tasks))
    return jax.vmap(lambda t, k: adapt(learner, cfg, meta_params, t, k)[0])(tasks, keys)
