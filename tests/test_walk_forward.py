"""Walk-forward evaluation of risk control: the metrics' formulas, adaptation that never reads the
window it is evaluated on, the hindsight bound, and the finance experiment end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax import walk_forward
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params
from metarl_jax.evaluation import adapted_params
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.networks import GaussianPolicy
from metarl_jax.tasks.finance import MarketData, RiskControl, fit_normalizer, market_features, normalize_features

HORIZON = 10


def _business_days(n: int) -> np.ndarray:
    days = np.arange(np.datetime64("2020-01-06"), np.datetime64("2020-01-06") + 2 * n, dtype="datetime64[D]")
    return days[np.is_busday(days)][:n]


def _family(prices: np.ndarray, period=(100, 200)) -> RiskControl:
    data = MarketData(dates=_business_days(len(prices)), prices=prices, assets=("a", "b"))
    features = market_features(data, vol_window=10, momentum_window=20)
    return RiskControl(normalize_features(features, fit_normalizer(features, 100)), horizon=HORIZON, period=period)


def _prices(seed: int = 0, num_days: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (num_days, 2)), axis=0))


def _learner(family):
    config = PGConfig(num_inner_episodes=2, num_outer_episodes=2, horizon=HORIZON, normalize="step")
    return PolicyGradientLearner(family, GaussianPolicy(1, hidden_sizes=(8,), init_log_std=-1.0), config)


def test_window_metrics_follow_their_formulas():
    rng = np.random.default_rng(3)
    pnl, cost = rng.normal(0.001, 0.01, 30), rng.uniform(0, 1e-4, 30)
    breach, reward = rng.uniform(size=30) < 0.2, rng.normal(size=30)
    got = {k: float(v) for k, v in walk_forward.window_metrics(jnp.asarray(pnl), jnp.asarray(cost),
                                                               jnp.asarray(breach), jnp.asarray(reward)).items()}
    net = pnl - cost
    equity = np.cumsum(net)
    drawdown = max(max(0.0, equity[: t + 1].max()) - equity[t] for t in range(30))
    assert got["return"] == pytest.approx(net.sum(), rel=1e-5)
    assert got["volatility"] == pytest.approx(net.std() * np.sqrt(252), rel=1e-5)
    assert got["sharpe"] == pytest.approx(net.mean() / net.std() * np.sqrt(252), rel=1e-4)
    assert got["max_drawdown"] == pytest.approx(1 - np.exp(-drawdown), rel=1e-5)
    assert got["breach_rate"] == pytest.approx(breach.mean())
    assert got["reward"] == pytest.approx(reward.sum(), rel=1e-5)
    flat = walk_forward.window_metrics(jnp.zeros(5), jnp.zeros(5), jnp.zeros(5, bool), jnp.zeros(5))
    assert float(flat["sharpe"]) == 0.0 and float(flat["max_drawdown"]) == 0.0  # flat: no division by zero


def test_each_evaluation_window_adapts_on_the_window_just_before_it_inside_the_period():
    family = _family(_prices())
    adapt, evaluate = walk_forward.evaluation_windows(family, jax.random.PRNGKey(0), 64)
    start, adapt_start = np.asarray(evaluate.start), np.asarray(adapt.start)
    np.testing.assert_array_equal(adapt_start, start - HORIZON)
    assert adapt_start.min() >= family.first_start and start.max() <= family.last_start
    for field in ("asset", "risk_aversion", "cost", "risk_limit"):  # the same task, earlier
        np.testing.assert_array_equal(np.asarray(getattr(adapt, field)), np.asarray(getattr(evaluate, field)))


def test_adaptation_reads_no_price_of_the_window_it_is_evaluated_on():
    """Perturb every price after the first day of the evaluation window: the adapted parameters are unchanged.

    (The window's first day's close is known when its first position is set.)"""
    prices = _prices()
    family = _family(prices)
    adapt, evaluate = walk_forward.evaluation_windows(family, jax.random.PRNGKey(1), 8)
    first = jax.tree.map(lambda x: x[:1], adapt)
    day = int(evaluate.start[0])
    shocked = prices.copy()
    shocked[day + 1:] *= np.exp(np.linspace(0.5, -0.5, len(prices) - day - 1))[:, None]
    learner_a, learner_b = _learner(family), _learner(_family(shocked))
    config = MAMLConfig(inner_steps=2, inner_lr=0.5)
    meta = init_meta_params(jax.random.PRNGKey(2), learner_a, config)
    phi_a = adapted_params(learner_a, config, meta, first, jax.random.PRNGKey(3), 2)
    phi_b = adapted_params(learner_b, config, meta, first, jax.random.PRNGKey(3), 2)
    for a, b in zip(jax.tree.leaves(phi_a), jax.tree.leaves(phi_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
               zip(jax.tree.leaves(meta["policy"]), jax.tree.leaves(phi_a)))  # adaptation did move them


def test_walk_forward_rows_and_the_hindsight_bound():
    family = _family(_prices(5))
    learner = _learner(family)
    config = MAMLConfig(inner_steps=1, inner_lr=0.1)
    meta = init_meta_params(jax.random.PRNGKey(0), learner, config)
    results = walk_forward.walk_forward(family, learner, config, meta, jax.random.PRNGKey(1), num_windows=16,
                                        multitask_params=meta)
    names = {"cash", "buy_and_hold", "volatility_targeting", "hindsight_fixed", "multitask", "maml k=0", "maml k=1"}
    assert names <= set(results)
    for metric in walk_forward.METRICS:
        assert np.all(results["cash"][metric] == 0.0)
    # The hindsight position is the best constant one: no constant strategy earns more reward on any window.
    assert np.all(results["hindsight_fixed"]["reward"] >= results["buy_and_hold"]["reward"] - 1e-5)
    assert np.all(results["hindsight_fixed"]["reward"] >= results["cash"]["reward"] - 1e-5)
    np.testing.assert_array_equal(results["multitask"]["reward"], results["maml k=0"]["reward"])  # same parameters
    assert results["maml k=1"]["position"].shape == (16, HORIZON)
    summary = walk_forward.summarize(results)
    assert set(summary) == names and summary["cash"]["return"] == {"mean": 0.0, "ci95": 0.0}
    table = walk_forward.format_table(summary).splitlines()
    assert len(table) == 2 + len(names) and table[0].startswith("| strategy | return %")
    paired = walk_forward.paired_difference(results, "hindsight_fixed", "cash")
    assert paired["mean"] >= 0.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_finance_experiment_runs_end_to_end_on_real_data(tmp_path):
    """``python -m experiments.maml_finance`` on a tiny budget: the walk-forward table, its JSON, the plots."""
    from metarl_jax.experiments import maml_finance

    out = str(tmp_path / "out")
    status = maml_finance.main(["--num-iterations", "2", "--meta-batch", "2", "--num-episodes", "1", "--eval-tasks", "2",
                                "--eval-windows", "4", "--hidden-sizes", "8", "--assets", "sp500", "--out-dir", out])
    assert status == 0
    (name,) = os.listdir(os.path.join(out, "maml_finance"))
    run_dir = os.path.join(out, "maml_finance", name)
    for file in ("walk_forward.md", "equity_curves.png", "positions.png", "attributions.png"):
        assert os.path.getsize(os.path.join(run_dir, file)) > 0
    with open(os.path.join(run_dir, "walk_forward.json")) as f:
        payload = json.load(f)
    assert {"cash", "buy_and_hold", "multitask", "maml k=0", "maml k=1", "hindsight_fixed"} <= set(payload["summary"])
    starts = payload["windows"]["adapt_start"]
    assert min(starts) >= maml_finance.FinanceConfig().split_day()[0]  # held-out period only, adaptation included
    with open(os.path.join(run_dir, "summary.json")) as f:
        assert "walk_forward" in json.load(f)


def test_finance_config_splits_time_and_assets_with_statistics_of_the_training_side_only():
    from metarl_jax.experiments.maml_finance import FinanceConfig
    from metarl_jax.tasks.finance import load_arch

    config = FinanceConfig(train_assets=("sp500", "nasdaq"), test_assets=("wti",))
    train, test = config.make_family("train"), config.make_family("test")
    split, num_days = config.split_day()
    data = load_arch(config.assets)
    assert str(data.dates[split]) == "2011-01-03"  # the first trading day on or after train_end
    assert train.period == (0, split) and test.period == (split, num_days)
    assert [data.assets[i] for i in train.asset_ids] == ["sp500", "nasdaq"]
    assert [data.assets[i] for i in test.asset_ids] == ["wti"]
    # Normalised with training days of the training assets: their pooled training values have mean ~0, WTI's need not.
    values = train.features.values[train.features.first_valid:split]
    assert np.abs(np.nanmean(values[:, :2].reshape(-1, values.shape[-1]), axis=0)).max() < 1e-3
    everything = FinanceConfig().make_family("test").features.values
    assert not np.allclose(everything[split:], test.features.values[split:], equal_nan=True)
    with pytest.raises(ValueError, match=r"test_assets=\('vix',\) is invalid: must be None or a non-empty subset"):
        FinanceConfig(test_assets=("vix",))


def test_metric_and_family_edges_a_mutation_run_found_untested():
    """Drawdown counts from the window's start (a window that only loses has one); a period too short
    for an adaptation window and its evaluation window is refused; an empty period is refused; with
    zero volatility, volatility targeting is fully invested."""
    losing = walk_forward.window_metrics(jnp.full(5, -0.01), jnp.zeros(5), jnp.zeros(5, bool), jnp.zeros(5))
    assert float(losing["max_drawdown"]) == pytest.approx(1 - np.exp(-0.05), rel=1e-5)
    with pytest.raises(ValueError, match="must hold two consecutive windows of horizon=10"):
        walk_forward.evaluation_windows(_family(_prices(), period=(100, 120)), jax.random.PRNGKey(0), 4)
    prices = _prices()
    data = MarketData(dates=_business_days(len(prices)), prices=prices, assets=("a", "b"))
    features = normalize_features(market_features(data, vol_window=10, momentum_window=20),
                                  fit_normalizer(market_features(data, vol_window=10, momentum_window=20), 100))
    with pytest.raises(ValueError, match=r"period\[1\]=120 is invalid"):
        RiskControl(features, horizon=HORIZON, period=(120, 120))
    from metarl_jax.tasks.finance import run_episode, volatility_targeting_policy

    flat = np.full((200, 2), 50.0)  # constant prices: zero volatility every day
    family = _family(flat)
    record = run_episode(family, family.default_params, volatility_targeting_policy(family, 0.01), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(record["position"]), 1.0)
