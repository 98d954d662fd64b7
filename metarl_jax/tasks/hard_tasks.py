"""Task families with rare hard tasks, for studying task selection.

:class:`RareBestArmBandit`: a K-armed Bernoulli bandit whose best arm is
usually one of the first ``C = common_arms`` arms (``C = 1``: always arm 0) and,
with probability ``rare_fraction``, the last one. A meta-learned initial policy that fits the common tasks puts
little mass on the last arm, so one or two policy-gradient steps on a rare task
rarely even pull it: the rare tasks are the hard ones, and uniform task
sampling shows them to the meta-learner only a ``rare_fraction`` of the time.

Task distribution (``U`` uniform, ``b`` the best arm):

    rare ~ Bernoulli(rare_fraction)
    b    = K - 1                       if rare
         ~ U{0, ..., C - 1}            otherwise   (1 <= C <= K - 1)
    p_a  ~ U[0, low_max]   for a != b,     p_b ~ U[best_low, 1]

with ``low_max < best_low`` so ``b`` is the unique best arm. The exact optimum
is the bandit's ``R* = H max_a p_a`` (inherited).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarl_jax.tasks.bandit import BanditParams, BernoulliBandit
from metarl_jax.validation import check_int, check_real, require


class RareBestArmBandit(BernoulliBandit):
    """Bernoulli bandit whose best arm is the last arm in a rare ``rare_fraction`` of the tasks."""

    def __init__(self, num_arms: int = 5, horizon: int = 10, rare_fraction: float = 0.1,
                 common_arms: int | None = None, low_max: float = 0.5, best_low: float = 0.75):
        super().__init__(num_arms=num_arms, horizon=horizon)
        check_int("num_arms", num_arms, minimum=3)
        common_arms = self.num_arms - 1 if common_arms is None else common_arms
        self.common_arms = check_int("common_arms", common_arms, minimum=1, maximum=self.num_arms - 1)
        for field, value in (("rare_fraction", rare_fraction), ("low_max", low_max), ("best_low", best_low)):
            check_real(field, value, minimum=0.0, maximum=1.0, min_open=True, max_open=True)
        require(low_max < best_low, "best_low", best_low, f"must be > low_max={low_max!r}")
        self.rare_fraction = float(rare_fraction)
        self.low_max = float(low_max)
        self.best_low = float(best_low)

    def _config(self) -> tuple:
        return (*super()._config(), self.rare_fraction, self.common_arms, self.low_max, self.best_low)

    def sample_params(self, key: jax.Array) -> BanditParams:
        """One task (see the module docstring): ``probs [K]`` float32."""
        k = self.num_arms
        key_rare, key_best, key_low, key_high = jax.random.split(key, 4)
        rare = jax.random.bernoulli(key_rare, self.rare_fraction)
        best = jnp.where(rare, k - 1, jax.random.randint(key_best, (), 0, self.common_arms))
        low = jax.random.uniform(key_low, (k,), jnp.float32, 0.0, self.low_max)
        high = jax.random.uniform(key_high, (), jnp.float32, self.best_low, 1.0)
        probs = jnp.where(jnp.arange(k) == best, high, low)
        return BanditParams(probs=probs, max_steps_in_episode=self.horizon)

    def is_rare(self, params: BanditParams) -> jax.Array:
        """Whether the task's best arm is the last one (works on batches: ``[..., K] -> [...]``)."""
        return jnp.argmax(params.probs, axis=-1) == self.num_arms - 1

    @property
    def name(self) -> str:
        return f"RareBestArmBandit-{self.num_arms}arms-{self.common_arms}common-{self.rare_fraction:g}rare"
