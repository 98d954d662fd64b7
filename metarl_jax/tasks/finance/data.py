"""Market data for the risk-control family: load, clean, compute features, normalise.

Everything here runs once on the host with numpy (float64), and everything downstream is plain
arrays: :class:`MarketData` (dates, prices ``[T, A]``) -> :func:`clean_prices` ->
:func:`market_features` (features ``[T, A, F]``, next-day returns ``[T, A]``) ->
:func:`fit_normalizer` / :func:`normalize_features` -> the task family's jnp constants.

Sources.

* :func:`load_arch`: the daily series the ``arch`` package ships (optional extra ``finance``):
  ``sp500`` and ``nasdaq`` (index closes, 1999-01-04..2018-12-31, 5,031 trading days, no gaps in
  the values), ``wti`` (WTI spot, FRED ``DCOILWTICO``, 1986-01-02..2019-01-03, every weekday, NaN
  on holidays), ``vix`` (CBOE VIX level, 2014-01-03..2019-01-03: an index, not a traded price), and
  the monthly ``brent_monthly`` / ``wti_monthly`` (``arch.data.crude``, 1987-05..2020-01, the 15th of
  each month). ``arch.data.default`` (AAA / BAA corporate bond *yields*) is not offered: a yield is
  not a price, so a position times its log-change is no P&L. Daily and monthly series are never
  mixed in one :class:`MarketData`.
* :func:`load_csv`: a user's own file of closing prices (a date column, one close column per
  asset).

Cleaning (:func:`clean_prices`), per asset, counted in a :class:`CleaningReport`:

1. NaN / +-inf (counted with :func:`metarl_jax.preprocessing.clean`) and non-positive prices
   become *missing*;
2. the leading dates before every asset has a valid price are dropped (nothing earlier to fill
   from; filling backward would look ahead);
3. a missing price is forward-filled from the last valid one;
4. an *outlier* is a day whose log-return ``r_t`` leaves the robust band of the returns before it,
   ``|r_t - med| > k * 1.4826 * MAD`` (median and median absolute deviation of the previous
   ``mad_window`` observed returns; ``1.4826 * MAD`` estimates a normal standard deviation), or
   exceeds ``max_abs_log_return`` in absolute value, *and reverts the next day*
   (``r_t r_{t+1} < 0`` and ``|r_t + r_{t+1}| <= revert_tolerance * |r_t|``): an isolated spike, the
   signature of a bad print, not of a move the market kept. Its price is replaced by the previous
   day's. Deciding that day ``t`` was a spike needs day ``t + 1``: this is a correction of the
   historical record (what a data vendor does), made before any feature is computed; the features
   and the task family themselves never look ahead.

Features (:func:`market_features`): for day ``t`` and asset ``a``, from prices up to day ``t`` only,

* ``log_return``  ``r_t = log p_t - log p_{t-1}``;
* ``volatility``  ``sigma_t = sqrt(mean(r_{t-w+1}^2, ..., r_t^2))`` (realised volatility of the last
  ``w = vol_window`` returns, daily units);
* ``drawdown``    ``p_t / max_{s <= t} p_s - 1`` (in ``(-1, 0]``);
* ``log_price_to_ma``  ``log(p_t / mean(p_{t-m+1}, ..., p_t))`` with ``m = momentum_window``
  (momentum: above its moving average the price has been rising);

and ``next_returns[t] = r_{t+1}`` (what a position held from the close of ``t`` to the close of
``t + 1`` earns, in log-return units; only the reward may read it). Days before ``first_valid``
(no full window yet) hold NaN.

Normalisation (:func:`fit_normalizer`, :func:`normalize_features`): per-feature mean and variance
pooled over the chosen assets and the days ``first_valid <= t < train_end`` only, with
:class:`metarl_jax.preprocessing.RunningMeanStd`; later days are normalised with those statistics,
so a test period never informs its own normalisation.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import functools
import importlib
import os
import re
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.preprocessing import RunningMeanStd, clean, normalize, running_stats_init, running_stats_update
from metarl_jax.validation import check_int, check_optional_real, check_real, require

#: How to install what :func:`load_arch` needs.
FINANCE_EXTRA = "pip install 'metarl-jax[finance]'"

#: ``{name: (arch.data module, column, frequency)}``: the series :func:`load_arch` offers.
ARCH_SERIES: dict[str, tuple[str, str, str]] = {
    "sp500": ("sp500", "Adj Close", "daily"),
    "nasdaq": ("nasdaq", "Adj Close", "daily"),
    "wti": ("wti", "DCOILWTICO", "daily"),
    "vix": ("vix", "vix", "daily"),
    "brent_monthly": ("crude", "Brent", "monthly"),
    "wti_monthly": ("crude", "WTI", "monthly"),
}

#: Feature names, in the order of the last axis of :attr:`Features.values`.
FEATURE_NAMES: tuple[str, ...] = ("log_return", "volatility", "drawdown", "log_price_to_ma")

#: Cells :func:`load_csv` reads as a missing price (compared case-insensitively, after stripping).
MISSING_TOKENS = frozenset({"", ".", "na", "n/a", "nan", "null", "none"})

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _readonly(x: np.ndarray) -> np.ndarray:
    x.setflags(write=False)
    return x


# --------------------------------------------------------------------------- containers


@dataclasses.dataclass(frozen=True, eq=False)
class MarketData:
    """Daily closes of ``A`` assets on ``T`` common dates.

    Attributes:
      dates: ``datetime64[D] [T]``, strictly increasing.
      prices: ``float64 [T, A]``; NaN, +-inf or non-positive entries are *missing* values
        (:func:`clean_prices` fills them).
      assets: ``A`` distinct non-empty names.

    The arrays are copied and made read-only at construction (a cached instance is shared).
    """

    dates: np.ndarray
    prices: np.ndarray
    assets: tuple[str, ...]

    def __post_init__(self):
        dates = np.asarray(self.dates)
        require(dates.ndim == 1 and np.issubdtype(dates.dtype, np.datetime64), "dates", _short(dates),
                "must be a 1-D datetime64 array")
        days = dates.astype("datetime64[D]")
        require(bool(np.all(days == dates)), "dates", _short(dates), "must be whole days (no time of day)")
        steps = np.diff(days).astype(np.int64)
        if np.any(steps <= 0):
            i = int(np.argmax(steps <= 0)) + 1
            require(False, "dates", _short(dates),
                    f"must strictly increase (dates[{i}]={days[i]} follows dates[{i - 1}]={days[i - 1]})")
        assets = tuple(self.assets) if isinstance(self.assets, (tuple, list)) else self.assets
        require(isinstance(assets, tuple) and len(assets) >= 1
                and all(isinstance(a, str) and a for a in assets) and len(set(assets)) == len(assets),
                "assets", self.assets, "must be a non-empty sequence of distinct non-empty names")
        try:
            prices = np.array(self.prices, dtype=np.float64)
        except (TypeError, ValueError):
            require(False, "prices", _short(self.prices), "must be an array of numbers")
        require(prices.shape == (days.shape[0], len(assets)), "prices", f"<array of shape {prices.shape}>",
                f"must have shape [T, A] = ({days.shape[0]}, {len(assets)}) (one row per date, one column "
                "per asset)")
        object.__setattr__(self, "dates", _readonly(days.copy()))
        object.__setattr__(self, "prices", _readonly(prices))
        object.__setattr__(self, "assets", assets)

    @property
    def num_days(self) -> int:
        return int(self.dates.shape[0])

    @property
    def num_assets(self) -> int:
        return len(self.assets)

    def asset_index(self, asset: str | int) -> int:
        """Column of ``asset`` (a name, or an index checked to be in range)."""
        return _asset_index(self.assets, asset)

    def day_index(self, date) -> int:
        """Index of the first date on or after ``date`` (``"2010-01-04"``, a ``datetime64``...)."""
        return _day_index(self.dates, date)


@dataclasses.dataclass(frozen=True)
class CleaningReport:
    """What :func:`clean_prices` changed, per asset (tuples in the order of ``assets``).

    Attributes:
      assets: the asset names.
      nonfinite: NaN / +-inf prices in the input (empty CSV cells included).
      non_positive: prices ``<= 0`` in the input.
      forward_filled: missing prices (``nonfinite`` or ``non_positive``) after the dropped leading
        dates, each replaced by the last valid price.
      outliers: reverting spikes repaired (see the module docstring).
      leading_dates_dropped: dates dropped at the start, before every asset had a valid price.
      long_gaps: intervals between consecutive kept dates longer than ``max_gap_days`` calendar days
        (counted, not filled: the exchange calendar is not known).
    """

    assets: tuple[str, ...]
    nonfinite: tuple[int, ...]
    non_positive: tuple[int, ...]
    forward_filled: tuple[int, ...]
    outliers: tuple[int, ...]
    leading_dates_dropped: int
    long_gaps: int

    def as_dict(self) -> dict:
        """``{"per_asset": {asset: {kind: count}}, "leading_dates_dropped": n, "long_gaps": n}`` (JSON-able)."""
        kinds = ("nonfinite", "non_positive", "forward_filled", "outliers")
        per_asset = {a: {k: int(getattr(self, k)[i]) for k in kinds} for i, a in enumerate(self.assets)}
        return {"per_asset": per_asset, "leading_dates_dropped": self.leading_dates_dropped,
                "long_gaps": self.long_gaps}

    def __str__(self) -> str:
        parts = [f"{a}: {self.nonfinite[i]} NaN/inf, {self.non_positive[i]} non-positive, "
                 f"{self.forward_filled[i]} forward-filled, {self.outliers[i]} outliers"
                 for i, a in enumerate(self.assets)]
        return "; ".join(parts) + (f"; {self.leading_dates_dropped} leading dates dropped, "
                                   f"{self.long_gaps} gaps longer than the limit")


@dataclasses.dataclass(frozen=True, eq=False)
class Features:
    """Per-day, per-asset features and the next day's returns (see the module docstring).

    Attributes:
      dates: ``datetime64[D] [T]``.
      assets: ``A`` names.
      feature_names: ``F`` names (the last axis of ``values``).
      values: ``float [T, A, F]``: what the agent observes (raw, or normalised by
        :func:`normalize_features`); NaN on days ``< first_valid``.
      next_returns: ``float64 [T, A]``: ``r_{t+1}``; NaN on the last day. Read only by rewards.
      volatility: ``float64 [T, A]``: the raw (never normalised) rolling volatility ``sigma_t``,
        for volatility targeting and evaluation; NaN on days ``< first_valid``.
      first_valid: the first day whose features are all defined.
      normalized: whether ``values`` were normalised.
    """

    dates: np.ndarray
    assets: tuple[str, ...]
    feature_names: tuple[str, ...]
    values: np.ndarray
    next_returns: np.ndarray
    volatility: np.ndarray
    first_valid: int
    normalized: bool = False

    def __post_init__(self):
        t, a, f = len(self.dates), len(self.assets), len(self.feature_names)
        require(np.shape(self.values) == (t, a, f), "values", f"<array of shape {np.shape(self.values)}>",
                f"must have shape [T, A, F] = ({t}, {a}, {f})")
        for name in ("next_returns", "volatility"):
            shape = np.shape(getattr(self, name))
            require(shape == (t, a), name, f"<array of shape {shape}>", f"must have shape [T, A] = ({t}, {a})")
        check_int("first_valid", self.first_valid, minimum=1, maximum=max(t - 2, 1))
        for name in ("values", "next_returns", "volatility"):
            object.__setattr__(self, name, _readonly(np.array(getattr(self, name))))

    @property
    def num_days(self) -> int:
        return int(len(self.dates))

    def asset_index(self, asset: str | int) -> int:
        """Column of ``asset`` (a name, or an index checked to be in range)."""
        return _asset_index(self.assets, asset)

    def day_index(self, date) -> int:
        """Index of the first date on or after ``date`` (``"2010-01-04"``, a ``datetime64``...)."""
        return _day_index(self.dates, date)

    def fingerprint(self) -> str:
        """A digest of the arrays and names: equal for equal features (families compare with it)."""
        import hashlib

        digest = hashlib.sha1()
        for x in (self.dates, self.values, self.next_returns, self.volatility):
            digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(repr((self.assets, self.feature_names, self.first_valid, self.normalized)).encode())
        return digest.hexdigest()


def _short(x) -> str:
    """A value as it appears in an error message (arrays by shape only)."""
    shape = getattr(x, "shape", None)
    return f"<array of shape {shape}>" if shape is not None else repr(x)


def _asset_index(assets: tuple[str, ...], asset) -> int:
    if isinstance(asset, str):
        require(asset in assets, "asset", asset, f"must be one of {', '.join(map(repr, assets))}")
        return assets.index(asset)
    return check_int("asset", asset, minimum=0, maximum=len(assets) - 1)


def _day_index(dates: np.ndarray, date) -> int:
    try:
        day = np.datetime64(date, "D")
    except (TypeError, ValueError):
        require(False, "date", date, "must be a date such as '2010-01-04' or a numpy datetime64")
    return int(np.searchsorted(dates, day, side="left"))


# --------------------------------------------------------------------------- loading


def _import_optional(module: str):
    """Import ``module`` (part of arch or pandas), or raise one line naming the ``finance`` extra."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("arch", "pandas", "statsmodels", "scipy"):
            raise ImportError(f"the arch market data needs the optional package {err.name.split('.')[0]!r}: "
                              f"{FINANCE_EXTRA}") from None
        raise


@functools.lru_cache(maxsize=16)
def _arch_aligned(assets: tuple[str, ...]) -> tuple[MarketData, tuple[int, ...]]:
    """The series of ``assets`` on their common dates, and how many of its own dates each lost."""
    frames = {}
    for name in assets:
        module, column, _ = ARCH_SERIES[name]
        if module not in frames:
            frames[module] = _import_optional(f"arch.data.{module}").load()
    indexes = [frames[ARCH_SERIES[name][0]].index for name in assets]
    common = indexes[0]
    for index in indexes[1:]:
        common = common.intersection(index)
    columns = [frames[ARCH_SERIES[name][0]][ARCH_SERIES[name][1]].loc[common] for name in assets]
    prices = np.stack([np.asarray(c, dtype=np.float64) for c in columns], axis=1)
    dates = np.asarray(common.values).astype("datetime64[D]")
    lost = tuple(int(len(index) - len(common)) for index in indexes)
    return MarketData(dates=dates, prices=prices, assets=assets), lost


def _check_arch_assets(assets) -> tuple[str, ...]:
    names = tuple(ARCH_SERIES)
    ok = (isinstance(assets, (tuple, list)) and len(assets) >= 1 and all(a in ARCH_SERIES for a in assets)
          and len(set(assets)) == len(assets))
    require(ok, "assets", assets, f"must be a non-empty sequence of distinct names among {', '.join(map(repr, names))}")
    frequencies = {ARCH_SERIES[a][2] for a in assets}
    require(len(frequencies) == 1, "assets", assets,
            "must not mix daily and monthly series (their common dates would be monthly)")
    return tuple(assets)


def load_arch(assets: Sequence[str] = ("sp500", "nasdaq", "wti")) -> MarketData:
    """The closes of ``assets`` (names of :data:`ARCH_SERIES`) shipped with ``arch``, on common dates.

    Loaded once per asset tuple (cached; the arrays are read-only). The dates are the intersection
    of the series' own dates; values stay raw (NaN where a series has none), so pass the result to
    :func:`clean_prices`. :func:`arch_alignment_losses` says how many dates each series lost. For
    the default assets: 5,031 common dates 1999-01-04..2018-12-31; sp500 and nasdaq lose none, wti
    loses 3,580 of its 8,611 (the years outside 1999-2018 and 185 weekdays the exchanges were shut),
    and 19 of the common dates are NaN in wti (exchange holidays of the oil market).

    Needs the optional extra ``finance`` (``arch`` and ``pandas``), imported here only.
    """
    return _arch_aligned(_check_arch_assets(assets))[0]


def arch_alignment_losses(assets: Sequence[str] = ("sp500", "nasdaq", "wti")) -> dict[str, int]:
    """``{asset: number of its own dates not among the common dates}`` for :func:`load_arch`."""
    assets = _check_arch_assets(assets)
    return dict(zip(assets, _arch_aligned(assets)[1], strict=True))


def _csv_error(path, row: int, column: str | None, what: str) -> ValueError:
    where = f"{path} row {row}" + ("" if column is None else f", column {column!r}")
    return ValueError(f"{where}: {what}")


def _parse_date(path, row: int, column: str, cell: str) -> np.datetime64:
    text = cell.strip()
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        return np.datetime64(datetime.date.fromisoformat(text), "D")
    except ValueError:
        raise _csv_error(path, row, column, f"{cell!r} is not a date (expected YYYY-MM-DD)") from None


def _parse_price(path, row: int, column: str, cell: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING_TOKENS:
        return float("nan")
    if not _NUMBER.fullmatch(text):
        raise _csv_error(path, row, column, f"{cell!r} is not a number")
    return float(text)


def load_csv(
    path: str | os.PathLike,
    date_column: str = "date",
    close_column: str | Sequence[str] = "close",
    asset: str | Sequence[str] | None = None,
) -> MarketData:
    """Closing prices from a CSV file: one row per date, one close column per asset (wide format).

    The first row is the header (names compared exactly, after stripping spaces); other columns
    are ignored. Dates are ``YYYY-MM-DD`` and strictly increase. A price is a decimal number
    (``1234.5``, ``-3``, ``1e3``); an empty cell, ``NaN``, ``NA``, ``N/A``, ``null``, ``None`` or
    ``.`` (FRED's marker) is a missing price, kept as NaN for :func:`clean_prices`; anything else
    (``1,234.5``, ``abc``) is an error. Blank lines are skipped.

    ``close_column`` is one name (one asset, named ``asset`` or the file's stem) or a sequence of
    names (one asset per column, named by ``asset`` or the column names).

    A malformed file raises one ``ValueError`` line naming the row (the file's line number; the
    header is row 1) and the column, e.g. ``prices.csv row 17, column 'close': 'abc' is not a
    number``.
    """
    single = isinstance(close_column, str)
    columns = (close_column,) if single else tuple(close_column)
    require(len(columns) >= 1 and all(isinstance(c, str) and c for c in columns) and len(set(columns)) == len(columns),
            "close_column", close_column, "must be a column name or a non-empty sequence of distinct names")
    require(isinstance(date_column, str) and date_column and date_column not in columns, "date_column", date_column,
            "must be a column name other than the close columns")
    if asset is None:
        names = (os.path.splitext(os.path.basename(os.fspath(path)))[0],) if single else columns
    else:
        names = (asset,) if isinstance(asset, str) else tuple(asset)
        require(len(names) == len(columns), "asset", asset, f"must name the {len(columns)} close column(s)")

    dates, rows = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _csv_error(path, 1, None, f"the file is empty: expected a header with {date_column!r} and "
                                           f"{', '.join(map(repr, columns))}")
        header = [h.strip() for h in header]
        position = {}
        for name in (date_column, *columns):
            if name not in header:
                raise _csv_error(path, 1, name, f"no such column (the header has {', '.join(map(repr, header))})")
            if header.count(name) > 1:
                raise _csv_error(path, 1, name, "appears more than once in the header")
            position[name] = header.index(name)
        previous = None
        for record in reader:
            row = reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                missing = [n for n in (date_column, *columns) if position[n] >= len(record)]
                column = missing[0] if missing else None
                raise _csv_error(path, row, column, f"the row has {len(record)} fields, the header {len(header)}")
            day = _parse_date(path, row, date_column, record[position[date_column]])
            if previous is not None and day <= previous:
                raise _csv_error(path, row, date_column, f"{day} is not after the previous row's date {previous}: "
                                                         "dates must strictly increase")
            previous = day
            dates.append(day)
            rows.append([_parse_price(path, row, c, record[position[c]]) for c in columns])
    if len(rows) < 2:
        raise _csv_error(path, reader.line_num, None, f"{len(rows)} data row(s): at least 2 are needed")
    return MarketData(dates=np.array(dates, dtype="datetime64[D]"), prices=np.array(rows, dtype=np.float64),
                      assets=names)


# --------------------------------------------------------------------------- cleaning


def _forward_fill(prices: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid entry of ``prices [T, A]`` replaced by the last valid one above it (row 0 must be valid)."""
    rows = np.where(valid, np.arange(prices.shape[0])[:, None], 0)
    rows = np.maximum.accumulate(rows, axis=0)
    return np.take_along_axis(prices, rows, axis=0)


def _trailing_robust_scale(returns: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, MAD and count of the non-NaN values among ``returns[t - window : t]``, per ``t``.

    ``returns`` is ``[T, A]``; results are ``[T, A]`` (NaN where no value is available).
    """
    t, a = returns.shape
    padded = np.concatenate([np.full((window, a), np.nan), returns], axis=0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)[:t]  # [T, A, window]
    count = np.sum(~np.isnan(windows), axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN, masked by count below
        median = np.nanmedian(windows, axis=-1)
        mad = np.nanmedian(np.abs(windows - median[..., None]), axis=-1)
    return median, mad, count


def clean_prices(
    data: MarketData,
    max_abs_log_return: float | None = 1.0,
    mad_threshold: float = 20.0,
    mad_window: int = 250,
    min_mad_samples: int = 20,
    revert_tolerance: float = 0.5,
    max_gap_days: int = 5,
) -> tuple[MarketData, CleaningReport]:
    """Missing and bad prices handled as the module docstring says: ``(cleaned data, report)``.

    Args:
      data: raw prices (NaN, inf and non-positive entries allowed).
      max_abs_log_return: a reverting jump with ``|r_t|`` above this is an outlier whatever the
        robust band (``None``: no absolute rule). The default 1 is a 2.7-fold move in a day.
      mad_threshold: ``k`` of the robust band ``|r_t - med| > k * 1.4826 * MAD``. The default 20 is
        twice the largest band distance of a reverting day in the shipped series (10.3: the S&P 500
        on 2011-08-08, -6.9% then +4.6%, a real move after a calm summer); ``k = 10`` would
        "repair" that day.
      mad_window: number of previous days whose observed returns give the median and MAD.
      min_mad_samples: the robust rule applies once this many observed returns are available.
      revert_tolerance: day ``t + 1`` reverts when ``|r_t + r_{t+1}| <= revert_tolerance * |r_t|``
        (and the signs differ).
      max_gap_days: a calendar gap between consecutive dates longer than this is counted.

    Returns cleaned :class:`MarketData` (finite, positive prices; the leading dates without a price
    for every asset dropped) and the :class:`CleaningReport`. A day-``t`` outlier is only found when
    day ``t + 1`` exists, so the last day is never one.
    """
    max_abs_log_return = check_optional_real("max_abs_log_return", max_abs_log_return, minimum=0.0, min_open=True)
    mad_threshold = check_real("mad_threshold", mad_threshold, minimum=0.0, min_open=True)
    mad_window = check_int("mad_window", mad_window, minimum=2)
    min_mad_samples = check_int("min_mad_samples", min_mad_samples, minimum=2, maximum=mad_window)
    revert_tolerance = check_real("revert_tolerance", revert_tolerance, minimum=0.0, maximum=1.0, max_open=True)
    max_gap_days = check_int("max_gap_days", max_gap_days, minimum=1)

    # 1. NaN / inf -> 0 with their count (preprocessing.clean, per asset, in float64), then every
    #    entry <= 0 (the replaced ones and the non-positive prices) is missing.
    with jax.enable_x64(True):
        replaced, nonfinite = jax.vmap(clean, in_axes=1, out_axes=(1, 0))(jnp.asarray(data.prices, jnp.float64))
        replaced, nonfinite = np.asarray(replaced, np.float64), np.asarray(nonfinite, np.int64)
    missing = replaced <= 0.0
    non_positive = missing.sum(axis=0) - nonfinite

    # 2. Drop the leading dates before every asset has a valid price.
    has_price = ~missing
    for i, name in enumerate(data.assets):
        require(bool(has_price[:, i].any()), "data", f"<MarketData of {', '.join(data.assets)}>",
                f"must hold at least one valid price for every asset ({name!r} has none)")
    start = int(np.max(np.argmax(has_price, axis=0)))
    require(data.num_days - start >= 2, "data", f"<MarketData of {', '.join(data.assets)}>",
            "must hold at least 2 dates on which every asset has started")
    dates, prices, has_price = data.dates[start:], replaced[start:], has_price[start:]

    # 3. Forward fill.
    prices = _forward_fill(prices, has_price)
    forward_filled = (~has_price).sum(axis=0)

    # 4. Reverting spikes.
    log_prices = np.log(prices)
    returns = np.zeros_like(log_prices)
    returns[1:] = np.diff(log_prices, axis=0)
    observed = np.where(has_price & np.roll(has_price, 1, axis=0), returns, np.nan)
    observed[0] = np.nan
    median, mad, count = _trailing_robust_scale(observed, mad_window)
    scale = 1.4826 * mad
    robust = (count >= min_mad_samples) & (scale > 0) & (np.abs(returns - median) > mad_threshold * scale)
    jump = robust | (np.abs(returns) > max_abs_log_return if max_abs_log_return is not None else False)
    following = np.zeros_like(returns)
    following[:-1] = returns[1:]
    reverts = (returns * following < 0) & (np.abs(returns + following) <= revert_tolerance * np.abs(returns))
    outlier = jump & reverts & has_price
    outlier[0] = False
    prices = _forward_fill(prices, ~outlier)

    gaps = int(np.sum(np.diff(dates).astype(np.int64) > max_gap_days))
    report = CleaningReport(
        assets=data.assets,
        nonfinite=tuple(int(x) for x in nonfinite),
        non_positive=tuple(int(x) for x in non_positive),
        forward_filled=tuple(int(x) for x in forward_filled),
        outliers=tuple(int(x) for x in outlier.sum(axis=0)),
        leading_dates_dropped=start,
        long_gaps=gaps,
    )
    return MarketData(dates=dates, prices=prices, assets=data.assets), report


# --------------------------------------------------------------------------- features


def _trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """``mean(x[t - window + 1 : t + 1])`` along axis 0 for ``t >= window - 1``; NaN before. ``x`` is ``[T, ...]``."""
    out = np.full(x.shape, np.nan)
    out[window - 1:] = np.lib.stride_tricks.sliding_window_view(x, window, axis=0).mean(axis=-1)
    return out


def market_features(data: MarketData, vol_window: int = 20, momentum_window: int = 50) -> Features:
    """The features of the module docstring for every day and asset of cleaned ``data``.

    ``values [T, A, 4]`` (:data:`FEATURE_NAMES`), ``next_returns [T, A]``, the raw ``volatility
    [T, A]``, and ``first_valid = max(vol_window, momentum_window - 1)``: the first day with a full
    volatility window (``vol_window`` returns, so ``vol_window + 1`` prices) and a full moving
    average (``momentum_window`` prices). Each feature of day ``t`` is a function of
    ``prices[: t + 1]`` only.
    """
    vol_window = check_int("vol_window", vol_window, minimum=2)
    momentum_window = check_int("momentum_window", momentum_window, minimum=2)
    prices = data.prices
    require(bool(np.all(np.isfinite(prices)) and np.all(prices > 0)), "data",
            f"<MarketData of {', '.join(data.assets)}>",
            "must hold finite positive prices only: pass it through clean_prices first")
    first_valid = max(vol_window, momentum_window - 1)
    require(data.num_days >= first_valid + 2, "data", f"<MarketData of {data.num_days} dates>",
            f"must hold at least first_valid + 2 = {first_valid + 2} dates (a full window, then a day with a "
            "next-day return)")
    log_prices = np.log(prices)
    returns = np.full(prices.shape, np.nan)
    returns[1:] = np.diff(log_prices, axis=0)
    volatility = np.full(prices.shape, np.nan)
    volatility[1:] = np.sqrt(_trailing_mean(np.square(returns[1:]), vol_window))
    drawdown = prices / np.maximum.accumulate(prices, axis=0) - 1.0
    to_average = log_prices - np.log(_trailing_mean(prices, momentum_window))
    values = np.stack([returns, volatility, drawdown, to_average], axis=-1)
    values[:first_valid] = np.nan
    volatility[:first_valid] = np.nan
    next_returns = np.full(prices.shape, np.nan)
    next_returns[:-1] = returns[1:]
    return Features(dates=data.dates, assets=data.assets, feature_names=FEATURE_NAMES, values=values,
                    next_returns=next_returns, volatility=volatility, first_valid=first_valid)


def _asset_columns(features: Features, assets) -> list[int]:
    if assets is None:
        return list(range(len(features.assets)))
    require(isinstance(assets, (tuple, list)) and len(assets) >= 1, "assets", assets,
            "must be None or a non-empty sequence of asset names or indices")
    return sorted({features.asset_index(a) for a in assets})


def fit_normalizer(features: Features, train_end: int, assets: Sequence[str | int] | None = None) -> RunningMeanStd:
    """Per-feature statistics ``[F]`` of the days ``first_valid <= t < train_end`` of ``assets`` (all by default).

    Pooled over the assets (so the features keep their cross-asset scale: a volatile asset's
    volatility stays high after normalisation). Nothing on or after ``train_end`` enters them.
    """
    require(not features.normalized, "features", "<normalized Features>", "must be raw (not yet normalised)")
    train_end = check_int("train_end", train_end, minimum=features.first_valid + 2, maximum=features.num_days)
    columns = _asset_columns(features, assets)
    rows = features.values[features.first_valid:train_end][:, columns].reshape(-1, len(features.feature_names))
    stats = running_stats_init((len(features.feature_names),))
    return running_stats_update(stats, jnp.asarray(rows, jnp.float32))


def normalize_features(features: Features, stats: RunningMeanStd, clip: float | None = 10.0) -> Features:
    """``features`` with ``values`` replaced by ``clip((values - mean) / std)`` (float32).

    :func:`metarl_jax.preprocessing.normalize` with ``stats`` from :func:`fit_normalizer`;
    ``next_returns`` and ``volatility`` stay raw. NaN warm-up days stay NaN.
    """
    require(not features.normalized, "features", "<normalized Features>", "must be raw (not yet normalised)")
    clip = check_optional_real("clip", clip, minimum=0.0, min_open=True)
    values = np.asarray(normalize(stats, jnp.asarray(features.values, jnp.float32), clip=clip), np.float32)
    return dataclasses.replace(features, values=values, normalized=True)
