"""Financial risk control on real market data: the data layer (:mod:`.data`) and the task family
(:mod:`.risk_control`).

Importing this package needs numpy and jax only; :func:`load_arch` (and the family built from the
shipped series, ``make_family("risk_control")``) imports ``arch`` and ``pandas`` when called (the
optional extra ``finance``). The package sits above :mod:`metarl_jax.preprocessing` (whose
cleaning counts and running statistics it uses); nothing in :mod:`metarl_jax.tasks` imports it
eagerly.
"""

from metarl_jax.tasks.finance.data import (
    ARCH_SERIES,
    FEATURE_NAMES,
    CleaningReport,
    Features,
    MarketData,
    arch_alignment_losses,
    clean_prices,
    fit_normalizer,
    load_arch,
    load_csv,
    market_features,
    normalize_features,
)
from metarl_jax.tasks.finance.risk_control import (
    Policy,
    RiskControl,
    RiskControlParams,
    RiskControlState,
    baseline_policies,
    buy_and_hold_policy,
    cash_policy,
    fixed_position_reward,
    hindsight_best_fixed_position,
    risk_control_family,
    run_episode,
    volatility_targeting_policy,
)

__all__ = [
    "ARCH_SERIES",
    "FEATURE_NAMES",
    "CleaningReport",
    "Features",
    "MarketData",
    "Policy",
    "RiskControl",
    "RiskControlParams",
    "RiskControlState",
    "arch_alignment_losses",
    "baseline_policies",
    "buy_and_hold_policy",
    "cash_policy",
    "clean_prices",
    "fit_normalizer",
    "fixed_position_reward",
    "hindsight_best_fixed_position",
    "load_arch",
    "load_csv",
    "market_features",
    "normalize_features",
    "risk_control_family",
    "run_episode",
    "volatility_targeting_policy",
]
