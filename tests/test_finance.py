"""Financial risk control: the data layer (CSV and arch loaders, cleaning counts, features,
training-period normalisation) and the task family (no look-ahead, walk-forward periods, the exact
hindsight optimum, baselines, batched rollouts).

Most tests run on small synthetic price paths (no optional dependency); those on the shipped
series skip when the ``finance`` extra (arch) is missing.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarl_jax.tasks import make_family, sample_tasks
from metarl_jax.tasks.finance import (
    FEATURE_NAMES,
    MarketData,
    RiskControl,
    RiskControlParams,
    arch_alignment_losses,
    baseline_policies,
    clean_prices,
    fit_normalizer,
    fixed_position_reward,
    hindsight_best_fixed_position,
    load_arch,
    load_csv,
    market_features,
    normalize_features,
    run_episode,
)
from metarl_jax.tasks.finance import data as finance_data

ROOT = Path(__file__).resolve().parents[1]


def business_days(n: int, first: str = "2020-01-06") -> np.ndarray:
    """``n`` consecutive weekdays from ``first``."""
    days = np.arange(np.datetime64(first), np.datetime64(first) + 2 * n, dtype="datetime64[D]")
    return days[np.is_busday(days)][:n]


def random_walk(key: int, num_days: int, num_assets: int, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(key)
    return 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, (num_days, num_assets)), axis=0))


def synthetic_market(num_days: int = 300, key: int = 0) -> MarketData:
    return MarketData(dates=business_days(num_days), prices=random_walk(key, num_days, 2), assets=("a", "b"))


def random_policy(params, state, obs, key):
    return jax.random.uniform(key, (1,), minval=-1.5, maxval=1.5)  # beyond [-1, 1]: the step clips


def replay_policy(actions):
    """A policy that plays ``actions[t]`` at step ``t`` (the same actions for two families)."""
    return lambda params, state, obs, key: actions[state.time].reshape((1,))


# Compilation dominates: each helper is one jitted program per (static, hashable) family.


@partial(jax.jit, static_argnums=(0, 2))
def sample(family, key, num_tasks):
    return sample_tasks(family, key, num_tasks)


@partial(jax.jit, static_argnums=0)
def replay(family, params, actions):
    """One window of ``params`` playing ``actions [H]``."""
    return run_episode(family, params, replay_policy(actions), jax.random.key(1))


@partial(jax.jit, static_argnums=0)
def random_rollouts(family, tasks, key):
    """A batch of windows under the random policy."""
    keys = jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0])
    return jax.vmap(lambda p, k: run_episode(family, p, random_policy, k))(tasks, keys)


@pytest.fixture(scope="module")
def synthetic_features():
    features = market_features(synthetic_market(), vol_window=10, momentum_window=20)
    return normalize_features(features, fit_normalizer(features, 150))


# --------------------------------------------------------------------------- CSV loader and cleaning


def test_csv_loader_and_cleaning_count_every_kind_exactly(tmp_path):
    days = business_days(90)
    days = np.concatenate([days[:40], days[41:46] + 14, days[46:] + 14])  # one 2-week hole after row 40
    days = days[:85]
    prices = random_walk(3, len(days), 2)
    prices[60:, 1] *= 1.3  # a level shift that stays: not an outlier
    cells = [[f"{p:.6f}" for p in row] for row in prices]
    cells[0][1] = cells[1][1] = ""  # oil starts late: 2 leading dates dropped
    cells[10][0] = "NaN"
    cells[11][0] = ""
    cells[20][0] = "0"
    cells[30][0] = "-5.5"
    cells[50][0] = f"{prices[50, 0] * 1.5:.6f}"  # a spike that reverts the next day
    cells[70][1] = "."
    lines = ["date,spx,volume,oil"] + [f"{d},{row[0]},123,{row[1]}" for d, row in zip(days, cells, strict=True)]
    path = tmp_path / "prices.csv"
    path.write_text("\n".join(lines) + "\n")

    data = load_csv(path, close_column=("spx", "oil"))
    assert data.assets == ("spx", "oil") and data.prices.shape == (85, 2)
    assert np.isnan(data.prices[10, 0]) and np.isnan(data.prices[70, 1]) and data.prices[30, 0] == -5.5
    cleaned, report = clean_prices(data)

    assert report.nonfinite == (2, 3)  # NaN, empty | 2 leading empty, "."
    assert report.non_positive == (2, 0)
    assert report.forward_filled == (4, 1)  # the leading ones are dropped, not filled
    assert report.outliers == (1, 0)  # the spike; the lasting +30% shift is kept
    assert report.leading_dates_dropped == 2 and report.long_gaps == 1
    assert report.as_dict()["per_asset"]["spx"] == {"nonfinite": 2, "non_positive": 2, "forward_filled": 4,
                                                    "outliers": 1}
    assert "1 outliers" in str(report)

    p, raw = cleaned.prices, data.prices
    assert cleaned.dates[0] == days[2] and p.shape == (83, 2)
    assert np.all(np.isfinite(p)) and np.all(p > 0)
    row = lambda i: i - 2  # noqa: E731  (input row -> cleaned row)
    # Forward filled from the last valid price, never from a later one.
    assert p[row(10), 0] == p[row(11), 0] == raw[9, 0]
    assert p[row(20), 0] == raw[19, 0] and p[row(30), 0] == raw[29, 0]
    assert p[row(70), 1] == raw[69, 1]
    assert p[row(50), 0] == raw[49, 0]  # the spike repaired with the previous day's price
    assert p[row(60), 1] == raw[60, 1] and raw[60, 1] / raw[59, 1] > 1.2  # the lasting jump kept
    untouched = [i for i in range(2, 85) if i not in (10, 11, 20, 30, 50)]
    np.testing.assert_array_equal(p[[row(i) for i in untouched], 0], raw[untouched, 0])
    np.testing.assert_allclose(raw[untouched, 0], prices[untouched, 0], rtol=1e-7)


def test_cleaning_counts_infinities_and_rejects_assets_without_prices():
    prices = random_walk(1, 40, 2)
    prices[5, 0], prices[6, 1] = np.inf, -np.inf
    data = MarketData(dates=business_days(40), prices=prices, assets=("x", "y"))
    cleaned, report = clean_prices(data)
    assert report.nonfinite == (1, 1) and report.non_positive == (0, 0) and report.forward_filled == (1, 1)
    assert cleaned.prices[5, 0] == prices[4, 0] and cleaned.prices[6, 1] == prices[5, 1]
    prices[:, 1] = np.nan
    with pytest.raises(ValueError, match=r"'y' has none"):
        clean_prices(MarketData(dates=business_days(40), prices=prices, assets=("x", "y")))
    with pytest.raises(ValueError, match=r"^mad_threshold=0 is invalid"):
        clean_prices(data, mad_threshold=0)


def test_load_csv_single_asset_is_named_after_the_file(tmp_path):
    path = tmp_path / "gold.csv"
    path.write_text("Date,Close\n2021-01-04, 1.5\n\n2021-01-05,n/a\n2021-01-06,2e0\n")
    data = load_csv(path, date_column="Date", close_column="Close")
    assert data.assets == ("gold",) and data.dates.dtype == np.dtype("datetime64[D]")
    np.testing.assert_array_equal(data.dates, np.array(["2021-01-04", "2021-01-05", "2021-01-06"], "datetime64[D]"))
    np.testing.assert_array_equal(data.prices[:, 0], [1.5, np.nan, 2.0])
    assert load_csv(path, date_column="Date", close_column="Close", asset="au").assets == ("au",)
    assert data.day_index("2021-01-05") == 1 and data.day_index("2021-01-07") == 3


@pytest.mark.parametrize(
    "text, expected",
    [
        ("date,close\n2020-01-01,1\n2020-01-02,2\nabc\n",
         "row 4, column 'close': the row has 1 fields, the header 2"),
        ("date,close\n2020-01-01,1\n2020-01-02,abc\n", "row 3, column 'close': 'abc' is not a number"),
        ("date,close\n2020-01-01,1\n2020-01-02,\"1,234.5\"\n", "row 3, column 'close': '1,234.5' is not a number"),
        ("date,price\n2020-01-01,1\n", "row 1, column 'close': no such column (the header has 'date', 'price')"),
        ("Date,close\n2020-01-01,1\n", "row 1, column 'date': no such column (the header has 'Date', 'close')"),
        ("date,close,close\n2020-01-01,1,2\n", "row 1, column 'close': appears more than once in the header"),
        ("date,close\n2020-01-01,1\n2020-13-01,2\n",
         "row 3, column 'date': '2020-13-01' is not a date (expected YYYY-MM-DD)"),
        ("date,close\n01/02/2020,1\n", "row 2, column 'date': '01/02/2020' is not a date (expected YYYY-MM-DD)"),
        ("date,close\n2020-01-02,1\n2020-01-02,2\n",
         "row 3, column 'date': 2020-01-02 is not after the previous row's date 2020-01-02: "
         "dates must strictly increase"),
        ("date,close\n2020-01-03,1\n2020-01-06,1\n2020-01-02,2\n",
         "row 4, column 'date': 2020-01-02 is not after the previous row's date 2020-01-06: "
         "dates must strictly increase"),
        ("", "row 1: the file is empty: expected a header with 'date' and 'close'"),
        ("date,close\n2020-01-01,1\n", "row 2: 1 data row(s): at least 2 are needed"),
    ],
)
def test_malformed_csv_gets_one_line_naming_row_and_column(tmp_path, text, expected):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_csv(path)
    message = str(err.value)
    assert message == f"{path} {expected}" and "\n" not in message


def test_market_data_validation_names_the_field():
    days = business_days(5)
    with pytest.raises(ValueError, match=r"^dates=.* is invalid: must strictly increase \(dates\[3\]"):
        MarketData(dates=days[[0, 1, 2, 2, 4]], prices=np.ones((5, 1)), assets=("a",))
    with pytest.raises(ValueError, match=r"^prices=.* is invalid: must have shape \[T, A\] = \(5, 2\)"):
        MarketData(dates=days, prices=np.ones((5, 1)), assets=("a", "b"))
    with pytest.raises(ValueError, match=r"^assets=\('a', 'a'\) is invalid"):
        MarketData(dates=days, prices=np.ones((5, 2)), assets=("a", "a"))
    data = MarketData(dates=days, prices=np.ones((5, 1)), assets=("a",))
    with pytest.raises(ValueError):
        data.prices[0, 0] = 2.0  # read-only: a cached instance cannot be changed in place


# --------------------------------------------------------------------------- features and normalisation


def test_features_follow_their_formulas_and_see_no_later_price():
    data = synthetic_market(120)
    features = market_features(data, vol_window=10, momentum_window=20)
    assert features.feature_names == FEATURE_NAMES and features.values.shape == (120, 2, 4)
    assert features.first_valid == 19
    assert np.all(np.isnan(features.values[:19])) and np.all(np.isfinite(features.values[19:]))
    p, t = data.prices[:, 1], 57
    r = np.diff(np.log(p))
    np.testing.assert_allclose(features.values[t, 1], [
        r[t - 1],
        np.sqrt(np.mean(r[t - 10:t] ** 2)),
        p[t] / p[: t + 1].max() - 1,
        np.log(p[t] / p[t - 19: t + 1].mean()),
    ], rtol=1e-12)
    np.testing.assert_allclose(features.next_returns[t, 1], r[t])
    np.testing.assert_allclose(features.volatility[t], features.values[t, :, 1])
    assert np.isnan(features.next_returns[-1]).all()
    # Every feature of day t is a function of prices[: t + 1]: changing day t + 1 on leaves it.
    later = data.prices.copy()
    later[t + 1:] *= 1.7
    moved = market_features(dataclasses.replace(data, prices=later), vol_window=10, momentum_window=20)
    np.testing.assert_array_equal(moved.values[: t + 1], features.values[: t + 1])
    assert not np.allclose(moved.values[t + 1], features.values[t + 1])
    with pytest.raises(ValueError, match="clean_prices first"):
        market_features(MarketData(dates=business_days(60), prices=np.full((60, 1), np.nan), assets=("a",)))


def test_normalisation_statistics_come_from_the_training_period_only():
    data = synthetic_market(200)
    features = market_features(data, vol_window=10, momentum_window=20)
    train_end = 120
    stats = fit_normalizer(features, train_end)
    rows = features.values[19:train_end].reshape(-1, 4)
    np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.variance, rows.var(0), rtol=1e-4, atol=1e-10)
    assert float(stats.count) == rows.shape[0]

    # The test period's data changes; the statistics do not.
    test_changed = data.prices.copy()
    test_changed[train_end:] *= np.exp(np.random.default_rng(9).normal(0, 0.2, (80, 2)).cumsum(0))
    other = market_features(dataclasses.replace(data, prices=test_changed), vol_window=10, momentum_window=20)
    assert not np.allclose(other.values[train_end:], features.values[train_end:])
    other_stats = fit_normalizer(other, train_end)
    for x, y in zip(jax.tree.leaves(stats), jax.tree.leaves(other_stats), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # ... while a change inside the training period does change them.
    train_changed = data.prices.copy()
    train_changed[train_end - 1] *= 1.1
    moved = fit_normalizer(market_features(dataclasses.replace(data, prices=train_changed), 10, 20), train_end)
    assert not np.allclose(np.asarray(moved.mean), np.asarray(stats.mean))

    normalized = normalize_features(features, stats)
    train = normalized.values[19:train_end]
    np.testing.assert_allclose(train.reshape(-1, 4).mean(0), 0.0, atol=1e-5)
    var = rows.var(0)  # normalize divides by sqrt(var + 1e-8)
    np.testing.assert_allclose(train.reshape(-1, 4).std(0), np.sqrt(var / (var + 1e-8)), rtol=1e-4)
    np.testing.assert_array_equal(normalized.next_returns, features.next_returns)  # the reward stays raw
    assert fit_normalizer(features, train_end, assets=("b",)).count == train_end - 19
    with pytest.raises(ValueError, match=r"^train_end=10 is invalid"):
        fit_normalizer(features, 10)


# --------------------------------------------------------------------------- the family: no look-ahead


def test_no_observation_sees_a_price_after_its_day(synthetic_features):
    data = synthetic_market()
    stats = fit_normalizer(market_features(data, 10, 20), 150)
    family = RiskControl(synthetic_features, horizon=30, period=(150, 300))
    params = RiskControlParams(start=jnp.int32(160), asset=jnp.int32(1), risk_aversion=jnp.float32(5.0),
                               cost=jnp.float32(5e-4), risk_limit=jnp.float32(0.015), max_steps_in_episode=30)
    actions = jax.random.uniform(jax.random.key(0), (30,), minval=-1, maxval=1)
    base = replay(family, params, actions)
    rng = np.random.default_rng(4)
    for t in (0, 7, 29):
        perturbed = data.prices.copy()
        day = 160 + t
        perturbed[day + 1:] *= np.exp(rng.normal(0, 0.05, perturbed[day + 1:].shape))
        features = market_features(dataclasses.replace(data, prices=perturbed), 10, 20)
        moved = replay(RiskControl(normalize_features(features, stats), horizon=30, period=(150, 300)), params, actions)
        np.testing.assert_array_equal(moved["obs"][: t + 1], base["obs"][: t + 1])
        np.testing.assert_array_equal(moved["reward"][:t], base["reward"][:t])
        assert moved["reward"][t] != base["reward"][t]  # the price of day + 1 pays the position of day
        if t + 1 < 30:
            assert not np.allclose(moved["obs"][t + 1], base["obs"][t + 1])

    # next_returns reach the rewards and nothing else.
    shifted = dataclasses.replace(synthetic_features, next_returns=synthetic_features.next_returns * -2.0 + 0.01)
    other = replay(RiskControl(shifted, horizon=30, period=(150, 300)), params, actions)
    np.testing.assert_array_equal(other["obs"], base["obs"])
    assert np.all(np.asarray(other["reward"]) != np.asarray(base["reward"]))


def test_sampled_windows_stay_in_the_period_and_read_no_later_price(synthetic_features):
    family = RiskControl(synthetic_features, horizon=25, period=(100, 200), risk_aversion=(2.0, 4.0),
                         cost=3e-4, risk_limit=(0.01, 0.02), assets=("b",))
    assert (family.first_start, family.last_start) == (100, 174)
    tasks = sample(family, jax.random.key(0), 2000)
    start = np.asarray(tasks.start)
    assert start.min() == 100 and start.max() == 174  # start + horizon <= hi - 1
    assert np.all(np.asarray(tasks.asset) == 1)
    ra = np.asarray(tasks.risk_aversion)
    assert ra.min() >= 2.0 and ra.max() <= 4.0 and ra.std() > 0.4
    np.testing.assert_allclose(tasks.cost, 3e-4)
    # The warm-up bounds the first start: a period from day 0 starts at first_valid.
    assert RiskControl(synthetic_features, horizon=25, period=(0, 200)).first_start == synthetic_features.first_valid

    # Prices on or after day hi do not change any task of the family: a walk-forward split.
    data = synthetic_market()
    stats = fit_normalizer(market_features(data, 10, 20), 150)
    later = data.prices.copy()
    later[200:] *= 3.0
    moved = normalize_features(market_features(dataclasses.replace(data, prices=later), 10, 20), stats)
    moved_family = RiskControl(moved, horizon=25, period=(100, 200), risk_aversion=(2.0, 4.0), cost=3e-4,
                               risk_limit=(0.01, 0.02), assets=("b",))
    few = jax.tree.map(lambda x: x[:64], tasks)
    a, b = random_rollouts(family, few, jax.random.key(1)), random_rollouts(moved_family, few, jax.random.key(1))
    for name in ("obs", "reward"):
        np.testing.assert_array_equal(a[name], b[name])


def test_family_arguments_are_validated():
    features = market_features(synthetic_market(120), 10, 20)
    cases = [
        (dict(horizon=0), "horizon=0 is invalid"),
        (dict(period=(0, 40), horizon=25), "period=(0, 40) is invalid: must hold a window"),
        (dict(period=(50, 500)), "period[1]=500 is invalid"),
        (dict(risk_aversion=(2.0, 1.0)), "risk_aversion=(2.0, 1.0) is invalid"),
        (dict(cost=-1e-3), "cost=-0.001 is invalid"),
        (dict(k_tail=-1.0), "k_tail=-1.0 is invalid"),
        (dict(assets=("zzz",)), "asset='zzz' is invalid: must be one of 'a', 'b'"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ValueError) as err:
            RiskControl(features, **kwargs)
        assert str(err.value).startswith(expected), (kwargs, str(err.value))


# --------------------------------------------------------------------------- hindsight optimum and baselines


@partial(jax.jit, static_argnums=(0, 2))
def hindsight_batch(family, key, num_tasks):
    """Tasks (every other one with no risk aversion: a piecewise-linear objective), their hindsight
    optima, their window returns, and the total reward the environment pays for holding ``p*``."""
    tasks = sample_tasks(family, key, num_tasks)
    tasks = tasks.replace(risk_aversion=jnp.where(jnp.arange(num_tasks) % 2 == 1, 0.0, tasks.risk_aversion))
    best_p, best_j = jax.vmap(lambda p: hindsight_best_fixed_position(family, p))(tasks)
    returns = jax.vmap(family.window_returns)(tasks)
    hold = lambda p, q: run_episode(family, p, replay_policy(jnp.full((family.horizon,), q)), key)  # noqa: E731
    totals = jax.vmap(lambda p, q: hold(p, q)["reward"].sum())(tasks, best_p)
    return tasks, best_p, best_j, returns, totals


@pytest.mark.parametrize("horizon", [3, 8])
def test_hindsight_optimum_equals_brute_force_on_short_windows(synthetic_features, horizon):
    family = RiskControl(synthetic_features, horizon=horizon, k_tail=10.0, risk_aversion=(0.0, 400.0),
                         cost=(0.0, 2e-3), risk_limit=(0.002, 0.02))
    n = 32
    batch = hindsight_batch(family, jax.random.key(horizon), n)
    tasks, best_p, best_j, returns, totals = jax.tree.map(np.asarray, batch)
    lam, c, limit = (np.asarray(getattr(tasks, f), np.float64)[:, None]
                     for f in ("risk_aversion", "cost", "risk_limit"))
    returns = np.asarray(returns, np.float64)

    def total(grid):  # [tasks, G] -> J at every grid point, in float64
        pnl = grid[..., None] * returns[:, None, :]
        tail = np.maximum(-pnl - limit[..., None], 0.0)
        return (pnl - lam[..., None] * pnl**2 - 10.0 * tail).sum(-1) - c * np.abs(grid)

    coarse = np.broadcast_to(np.linspace(-1.0, 1.0, 2001), (n, 2001))  # step 1e-3
    centre = coarse[0, total(coarse).argmax(1)][:, None]
    fine = np.clip(centre + np.linspace(-2e-3, 2e-3, 4001), -1.0, 1.0)  # step 1e-6 around it (J is concave)
    brute = total(fine)
    assert np.all(best_j >= brute.max(1) - 1e-6)  # nothing on the grid beats p*
    np.testing.assert_allclose(best_j, brute.max(1), atol=1e-6)
    np.testing.assert_allclose(best_p, fine[np.arange(n), brute.argmax(1)], atol=1e-4)
    # The reported total is what the environment pays for holding p* all window.
    np.testing.assert_allclose(totals, best_j, rtol=1e-5, atol=1e-7)
    interior = np.abs(best_p) < 1.0
    assert interior[::2].any()  # mean-variance: some optima inside (-1, 1)
    # Piecewise linear (no risk aversion): the optimum is a breakpoint, -1, 0, 1 or a kink -L / R_t.
    with np.errstate(divide="ignore"):
        breakpoints = np.concatenate([np.tile([-1.0, 0.0, 1.0], (n, 1)), -limit / returns], axis=1)
    assert np.all(np.min(np.abs(breakpoints - best_p[:, None]), axis=1)[1::2] < 1e-6)
    assert np.any(np.abs(best_p[1::2]) == 1.0)


@partial(jax.jit, static_argnums=0)
def baseline_runs(family, key):
    tasks = sample_tasks(family, key, 16)
    keys = jax.random.split(key, 16)
    runs = {name: jax.vmap(lambda p, k: run_episode(family, p, policy, k))(tasks, keys)
            for name, policy in baseline_policies(family, target_vol=0.008).items()}
    hold = jax.vmap(lambda p: fixed_position_reward(family, p, 1.0))(tasks)
    return tasks, runs, hold


def test_baselines_positions_and_totals(synthetic_features):
    family = RiskControl(synthetic_features, horizon=20, period=(100, 300))
    tasks, runs, hold = baseline_runs(family, jax.random.key(3))
    np.testing.assert_array_equal(runs["cash"]["reward"], 0.0)
    np.testing.assert_array_equal(runs["buy_and_hold"]["position"], 1.0)
    np.testing.assert_allclose(runs["buy_and_hold"]["reward"].sum(1), hold, rtol=1e-5, atol=1e-7)
    positions = np.asarray(runs["volatility_targeting"]["position"])
    days = np.asarray(tasks.start)[:, None] + np.arange(20)
    vol = synthetic_features.volatility[days, np.asarray(tasks.asset)[:, None]]
    np.testing.assert_allclose(positions, np.minimum(1.0, 0.008 / vol), rtol=1e-5)
    assert positions.min() < 0.99  # the target binds somewhere
    # The info fields add up: pnl = position * return, breach = loss beyond the limit.
    run = runs["buy_and_hold"]
    np.testing.assert_allclose(run["pnl"], run["position"] * run["return"], rtol=1e-6)
    np.testing.assert_array_equal(run["breach"], -np.asarray(run["pnl"]) > np.asarray(tasks.risk_limit)[:, None])
    assert np.asarray(run["breach"]).any()
    np.testing.assert_allclose(run["cost"][:, 0], tasks.cost, rtol=1e-6)
    np.testing.assert_array_equal(run["cost"][:, 1:], 0.0)


def test_state_keeps_its_dtypes_under_float64_tasks_and_actions(synthetic_features):
    family = RiskControl(synthetic_features, horizon=10)

    def one_step(key):
        task = family.sample_params(key)
        task = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating)
                            else x, task)
        obs, state = family.reset_env(key, task)
        next_obs, next_state, reward, _, _ = family.step_env(key, state, jnp.ones((1,), jnp.float64), task)
        return obs, state, next_obs, next_state, reward

    with jax.enable_x64(True):
        obs, state, next_obs, next_state, reward = jax.eval_shape(one_step, jax.random.PRNGKey(0))
    assert obs.dtype == next_obs.dtype == jnp.float32 and obs.shape == (6,)
    assert [x.dtype for x in jax.tree.leaves(next_state)] == [x.dtype for x in jax.tree.leaves(state)]
    assert reward.dtype == jnp.float64


# --------------------------------------------------------------------------- the shipped data (needs arch)


def test_arch_data_loads_aligns_and_cleans():
    pytest.importorskip("arch")
    data = load_arch()
    assert data.assets == ("sp500", "nasdaq", "wti") and data.prices.shape == (5031, 3)
    assert str(data.dates[0]) == "1999-01-04" and str(data.dates[-1]) == "2018-12-31"
    assert arch_alignment_losses() == {"sp500": 0, "nasdaq": 0, "wti": 3580}
    assert np.isnan(data.prices).sum(0).tolist() == [0, 0, 19]  # oil-market holidays
    assert load_arch(("sp500", "nasdaq", "wti")) is data  # cached
    cleaned, report = clean_prices(data)
    assert not np.isnan(cleaned.prices).any() and np.all(cleaned.prices > 0)
    assert report.forward_filled == (0, 0, 19) and report.outliers == (0, 0, 0)
    assert report.nonfinite == (0, 0, 19) and report.non_positive == (0, 0, 0)
    assert report.leading_dates_dropped == 0 and report.long_gaps == 1  # 2001-09-10 -> 2001-09-17
    features = market_features(cleaned)
    assert np.all(np.isfinite(features.values[features.first_valid:]))
    assert np.all(np.isfinite(features.next_returns[:-1]))
    with pytest.raises(ValueError, match=r"^assets=\('sp500', 'brent_monthly'\) is invalid: must not mix"):
        load_arch(("sp500", "brent_monthly"))
    with pytest.raises(ValueError, match=r"^assets=\('dow',\) is invalid"):
        load_arch(("dow",))


def test_missing_arch_gets_one_line_naming_the_extra(monkeypatch):
    for name in ["arch", *(m for m in sys.modules if m.startswith("arch."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if arch were not installed
    with pytest.raises(ImportError) as err:
        finance_data._arch_aligned.__wrapped__(("vix",))  # past the cache
    assert str(err.value) == "the arch market data needs the optional package 'arch': pip install 'metarl-jax[finance]'"


def test_arch_and_pandas_are_imported_inside_functions_only():
    """``import metarl_jax.tasks`` (and ``.finance``) never needs the ``finance`` extra: no module of the
    package imports arch or pandas at its top level, and the registry imports the family when built."""
    tasks_dir = ROOT / "metarl_jax" / "tasks"
    files = [tasks_dir / "__init__.py", *sorted((tasks_dir / "finance").glob("*.py"))]
    assert len(files) == 4
    for path in files:
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] in ("arch", "pandas")], path
        if path.name == "__init__.py" and path.parent.name == "tasks":
            assert "metarl_jax.tasks.finance" not in names and "metarl_jax.tasks.finance.risk_control" not in names


def test_a_batch_of_real_tasks_rolls_out_under_jit_and_vmap():
    pytest.importorskip("arch")
    family = make_family("risk_control", horizon=40, period=(0, 3000))
    assert isinstance(family, RiskControl) and family.obs_dim() == 6
    assert make_family("risk_control", horizon=40, period=(0, 3000)) == family  # equal config, same jit cache
    tasks = sample(family, jax.random.key(0), 32)
    assert np.all(np.asarray(tasks.start) + 40 <= 2999)
    record = random_rollouts(family, tasks, jax.random.key(1))
    assert record["obs"].shape == (32, 40, 6) and record["reward"].shape == (32, 40)
    assert record["obs"].dtype == jnp.float32 and record["reward"].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(record["obs"]))) and np.all(np.isfinite(np.asarray(record["reward"])))
    assert np.all(np.abs(np.asarray(record["position"])) <= 1.0) and np.abs(record["position"]).max() == 1.0
    assert len(set(np.asarray(tasks.asset).tolist())) == 3
