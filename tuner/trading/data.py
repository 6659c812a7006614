"""OHLCV bars: the seeded synthetic generator, the CSV/Parquet loader and the split.

Bars are held as numpy arrays (:class:`Bars`); pandas is used only to read and parse files.

Annualization. :attr:`Bars.bar_interval` is the median time between bars. Because futures
data has session breaks, weekends and holidays, ``year / bar_interval`` would overstate the
number of bars in a year (5-minute CME bars: 105,192 instead of about 70,000, which inflates a
Sharpe ratio by about 22 %). :attr:`Bars.bars_per_year` therefore counts the bars the data
actually has per year of calendar time; for data without gaps both figures agree. Data
spanning less than 30 days falls back to ``365.25 days / bar_interval``.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from tuner.trading.markets import FileSource, MarketSpec, SplitSpec, SyntheticSource

if TYPE_CHECKING:
    import pandas as pd  # imported where files are read: synthetic data needs none of it

__all__ = [
    "SPLIT_NAMES",
    "Bars",
    "DataError",
    "SplitRanges",
    "estimate_bars_per_year",
    "generate_synthetic",
    "infer_bar_interval",
    "load_bars",
    "load_ohlcv",
    "split_ranges",
]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
_YEAR = timedelta(days=365.25)
_WEEKDAYS_PER_YEAR = 365.25 * 5 / 7


class DataError(ValueError):
    """Bars cannot be loaded or split: bad file, bad values, too few bars."""


@dataclass(frozen=True, eq=False)
class Bars:
    """A market's bars in time order, as read-only numpy arrays.

    Attributes:
        market: Market name.
        timestamps: ``datetime64[ns]``, strictly increasing (naive, UTC for zoned input).
        open, high, low, close, volume: ``float64`` arrays of the same length.
        bar_interval: Median time between consecutive bars.
        bars_per_year: Bars per year of calendar time, for annualizing (module docstring).
        source: Where the bars came from (file path or generator description).

    The arrays are made read-only, so bars can be shared by many environments.
    """

    market: str
    timestamps: NDArray[np.datetime64]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.float64]
    bar_interval: timedelta
    bars_per_year: float
    source: str

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        for name in ("open", "high", "low", "close", "volume"):
            array = getattr(self, name)
            if len(array) != n:
                raise ValueError(f"Bars.{name} has {len(array)} values, timestamps has {n}")
        for array in self._arrays():
            array.flags.writeable = False

    def _arrays(self) -> Iterator[np.ndarray]:
        yield from (self.timestamps, self.open, self.high, self.low, self.close, self.volume)

    def __len__(self) -> int:
        return len(self.timestamps)

    def slice(self, part: slice) -> Bars:
        """Return the bars in ``part`` (views, no copy); interval and annualization are kept."""
        return Bars(
            market=self.market,
            timestamps=self.timestamps[part],
            open=self.open[part],
            high=self.high[part],
            low=self.low[part],
            close=self.close[part],
            volume=self.volume[part],
            bar_interval=self.bar_interval,
            bars_per_year=self.bars_per_year,
            source=self.source,
        )


@dataclass(frozen=True)
class SplitRanges:
    """Index ranges of the chronological train / validation / test parts of a dataset."""

    train: slice
    validation: slice
    test: slice

    def __getitem__(self, name: str) -> slice:
        if name not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {name!r}")
        part: slice = getattr(self, name)
        return part


def split_ranges(n_bars: int, split: SplitSpec, market: str = "") -> SplitRanges:
    """Cut ``n_bars`` bars into train, gap, validation, gap, test (in that order).

    The fractions apply to the bars left after removing the gaps. A part with a fraction of
    zero (only ``test`` may have one) is empty and has no gap before it.

    Raises:
        DataError: if the train or validation part would have fewer than 2 bars.
    """
    n_gaps = 2 if split.test > 0 else 1
    usable = n_bars - n_gaps * split.gap_bars
    n_train = int(usable * split.train)
    n_val = int(usable * split.validation)
    if split.test <= 0:
        n_val = usable - n_train
    if n_train < 2 or n_val < 2:
        who = f"market {market!r}: " if market else ""
        raise DataError(
            f"{who}{n_bars} bars are too few for the split {split} "
            f"(train {n_train}, validation {n_val} bars; each needs at least 2)"
        )
    train = slice(0, n_train)
    val_start = n_train + split.gap_bars
    validation = slice(val_start, val_start + n_val)
    test_start = validation.stop + split.gap_bars if split.test > 0 else n_bars
    return SplitRanges(train=train, validation=validation, test=slice(test_start, n_bars))


# --- annualization ------------------------------------------------------------------------


def infer_bar_interval(timestamps: NDArray[np.datetime64]) -> timedelta:
    """Median time between consecutive bars.

    Raises:
        DataError: with fewer than 2 timestamps.
    """
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    if len(ts) < 2:
        raise DataError(f"need at least 2 bars to infer the bar interval, got {len(ts)}")
    deltas = np.diff(ts).astype(np.int64)
    return timedelta(microseconds=float(np.median(deltas)) / 1000.0)


def estimate_bars_per_year(timestamps: NDArray[np.datetime64]) -> float:
    """Bars per year of calendar time, as observed in ``timestamps`` (see module docstring)."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    interval = infer_bar_interval(ts)
    span = timedelta(microseconds=float((ts[-1] - ts[0]).astype(np.int64)) / 1000.0)
    if span < timedelta(days=30):
        return _YEAR / interval
    return (len(ts) - 1) / (span / _YEAR)


# --- synthetic generator ------------------------------------------------------------------

# (name, drift offset in units of the annual volatility, volatility multiplier,
#  persistence multiplier). Regimes switch with probability 1 / mean_regime_bars per bar,
# to one of the other regimes uniformly, so each regime takes a third of the time on average
# and the long-run drift is the market's annual_drift.
_REGIMES = (
    ("bull", +1.0, 0.8, 1.0),
    ("bear", -1.0, 1.4, 1.0),
    ("range", 0.0, 1.0, -0.5),
)


def _market_seed(market: str, seed: int) -> np.random.Generator:
    # crc32 is stable across processes and Python versions, unlike hash().
    return np.random.default_rng([seed, zlib.crc32(market.encode("utf-8"))])


def _weekday_timestamps(start: datetime, interval: timedelta, n: int) -> NDArray[np.datetime64]:
    step = int(interval.total_seconds())
    if step <= 0 or 86400 % step != 0:
        raise DataError(f"synthetic bar_interval must divide one day exactly, got {interval}")
    per_day = 86400 // step
    first_day = np.datetime64(start.date(), "D")
    offsets = np.arange(per_day, dtype=np.int64) * step
    start_ns = np.datetime64(start, "ns")
    stamps: NDArray[np.datetime64] = np.empty(0, dtype="datetime64[ns]")
    n_days = n // per_day + 2
    while len(stamps) < n:
        days = np.busday_offset(first_day, np.arange(n_days), roll="forward")
        grid = days.astype("datetime64[ns]")[:, None] + offsets.astype("timedelta64[s]")[None, :]
        stamps = grid.ravel()
        stamps = stamps[stamps >= start_ns]
        n_days *= 2
    return stamps[:n]


def generate_synthetic(
    market: str,
    params: SyntheticSource,
    tick_size: float,
    *,
    seed: int | None = None,
    n_bars: int | None = None,
) -> Bars:
    """Generate regime-switching OHLCV bars, deterministic for (market, seed).

    Log returns follow an AR(1) process whose drift, volatility and persistence depend on a
    hidden regime (bull, bear, range; see ``_REGIMES``). Prices are rounded to the tick size;
    bars are on weekdays, around the clock, every ``params.bar_interval``.

    Args:
        market: Market name (part of the random stream, so markets differ for one seed).
        params: Generator parameters from ``config/markets.yaml``.
        tick_size: Prices are multiples of it.
        seed: Data seed; defaults to ``params.seed``.
        n_bars: Number of bars; defaults to ``params.n_bars``.
    """
    n = params.n_bars if n_bars is None else n_bars
    if n < 2:
        raise ValueError(f"n_bars must be >= 2, got {n!r}")
    rng = _market_seed(market, params.seed if seed is None else seed)
    timestamps = _weekday_timestamps(params.start, params.bar_interval, n)
    bars_per_year = _WEEKDAYS_PER_YEAR * (timedelta(days=1) / params.bar_interval)

    k = len(_REGIMES)
    switch = rng.random(n) < 1.0 / params.mean_regime_bars
    hops = np.where(switch, rng.integers(1, k, size=n), 0)
    regime = (rng.integers(k) + np.cumsum(hops)) % k
    table = np.array([r[1:] for r in _REGIMES])
    drift = (params.annual_drift + table[regime, 0] * params.annual_volatility) / bars_per_year
    sigma = params.annual_volatility * table[regime, 1] / math.sqrt(bars_per_year)
    phi = np.clip(params.trend_persistence * table[regime, 2], -0.95, 0.95)
    shocks = sigma * np.sqrt(1.0 - phi**2) * rng.standard_normal(n)

    returns = np.empty(n)
    prev = 0.0
    for i, (mu, p, e) in enumerate(zip(drift.tolist(), phi.tolist(), shocks.tolist(), strict=True)):
        prev = mu + p * (prev - mu) + e
        returns[i] = prev
    returns[0] = 0.0

    raw_close = params.start_price * np.exp(np.cumsum(returns))
    close = np.maximum(np.round(raw_close / tick_size) * tick_size, tick_size)
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    wick = np.abs(rng.standard_normal((2, n))) * 0.5 * sigma * raw_close
    high = np.ceil((np.maximum(open_, close) + wick[0]) / tick_size - 1e-9) * tick_size
    low = np.floor((np.minimum(open_, close) - wick[1]) / tick_size + 1e-9) * tick_size
    high = np.maximum(high, np.maximum(open_, close))
    low = np.maximum(np.minimum(low, np.minimum(open_, close)), tick_size)
    volume = np.round(
        1000.0 * table[regime, 1] * (1.0 + np.abs(returns) / sigma) * rng.lognormal(0, 0.3, n)
    )
    return Bars(
        market=market,
        timestamps=timestamps,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        bar_interval=params.bar_interval,
        bars_per_year=bars_per_year,
        source=f"synthetic(seed={params.seed if seed is None else seed})",
    )


# --- file loader --------------------------------------------------------------------------

_TIMESTAMP_NAMES = ("datetime", "timestamp", "gmttime", "localtime", "ts")
_PRICE_NAMES = {"open": ("open",), "high": ("high",), "low": ("low",), "close": ("close", "last")}
_VOLUME_NAMES = ("volume", "vol", "tickvol", "tickvolume")
# year-first (2023-12-31, 2023.12.31) or day-first (31/12/2023, 31.12.23), optional time.
_TIME_PART = r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?\s*$"
_YEAR_FIRST = re.compile(r"^\s*(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})" + _TIME_PART)
_DAY_FIRST = re.compile(r"^\s*(\d{1,2})[-/.](\d{1,2})[-/.](\d{4}|\d{2})" + _TIME_PART)


class _Locator:
    """Turns a DataFrame index into '<file>, line N' (CSV) or '<file>, row N' (Parquet)."""

    def __init__(self, file: Path, is_csv: bool) -> None:
        self.file = file
        self.is_csv = is_csv

    def at(self, index: Any) -> str:
        if self.is_csv:  # header is line 1, the first data row line 2
            return f"{self.file}, line {int(index) + 2}"
        return f"{self.file}, row {int(index) + 1}"

    def fail(self, mask: pd.Series, what: str | Callable[[Any], str]) -> None:
        """Raise DataError naming the first row where ``mask`` is True."""
        if not mask.any():
            return
        bad = mask[mask].index
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"{self.at(bad[0])}: {what(bad[0]) if callable(what) else what}{more}")


def _normalize(name: object) -> str:
    return re.sub(r"[\s_<>]", "", str(name)).lower()


def _sniff_separator(file: Path) -> str:
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    with opener(file, "rt", encoding="utf-8-sig", errors="replace") as fh:
        header = fh.readline()
    counts = {sep: header.count(sep) for sep in (",", ";", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] > 0 else ","


def _read_table(file: Path) -> tuple[pd.DataFrame, _Locator]:
    import pandas as pd

    name = file.name.lower()
    if name.endswith((".parquet", ".pq")):
        try:
            frame = pd.read_parquet(file)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataError(f"{file}: cannot read Parquet file: {exc}") from exc
        if not isinstance(frame.index, pd.RangeIndex):  # e.g. saved with a DatetimeIndex
            if frame.index.name is None and isinstance(frame.index, pd.DatetimeIndex):
                frame.index.name = "timestamp"
            frame = frame.reset_index()
        return frame.reset_index(drop=True), _Locator(file, is_csv=False)
    if not name.endswith((".csv", ".txt", ".csv.gz", ".txt.gz")):
        raise DataError(f"{file}: unsupported file type; use .csv, .txt, .csv.gz or .parquet")
    try:
        frame = pd.read_csv(
            file,
            sep=_sniff_separator(file),
            dtype=str,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read CSV file: {exc}") from exc
    frame = frame.dropna(how="all")  # blank lines; the index keeps the line numbers
    return frame, _Locator(file, is_csv=True)


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _timestamp_strings(frame: pd.DataFrame, columns: dict[str, str], loc: _Locator) -> pd.Series:
    import pandas as pd

    column = _pick(columns, _TIMESTAMP_NAMES)
    date_col, time_col = columns.get("date"), columns.get("time")
    if column is not None:
        values = frame[column]
        what = repr(column)
    elif date_col is not None and time_col is not None:
        both = frame[date_col].isna() | frame[time_col].isna()
        loc.fail(both, f"missing value in column {date_col!r} or {time_col!r}")
        if pd.api.types.is_datetime64_any_dtype(frame[date_col]):
            dates = frame[date_col].dt.strftime("%Y-%m-%d")
        else:
            dates = frame[date_col].astype(str)
        return dates.str.strip() + " " + frame[time_col].astype(str).str.strip()
    elif (column := date_col or time_col) is not None:
        values = frame[column]
        what = repr(column)
    else:
        raise DataError(
            f"{loc.file}: no timestamp column; expected one of Date, Time, Date + Time, "
            f"Datetime, Timestamp; found columns {list(frame.columns)!r}"
        )
    loc.fail(values.isna(), f"missing value in timestamp column {what}")
    return values


def _from_parts(parts: pd.DataFrame, year: int, month: int, day: int) -> pd.Series:
    """Timestamps from regex groups; NaT where the date or time of day is impossible."""
    import pandas as pd

    years = pd.to_numeric(parts[year])
    years = years.where(years >= 100, years + np.where(years < 70, 2000, 1900))
    hour = pd.to_numeric(parts[3]).fillna(0)
    minute = pd.to_numeric(parts[4]).fillna(0)
    second = pd.to_numeric(parts[5]).fillna(0)
    frame = pd.DataFrame(
        {
            "year": years,
            "month": pd.to_numeric(parts[month]),
            "day": pd.to_numeric(parts[day]),
            "hour": hour,
            "minute": minute,
            "second": second,
        }
    )
    stamps = pd.to_datetime(frame, errors="coerce")
    stamps = stamps.where((hour < 24) & (minute < 60) & (second < 60))
    fraction = parts[6].fillna("0").str.ljust(9, "0")
    return stamps + pd.to_timedelta(pd.to_numeric(fraction), unit="ns")


def _parse_timestamps(values: pd.Series, loc: _Locator) -> pd.Series:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values
    elif pd.api.types.is_numeric_dtype(values):
        stamps = _parse_epoch(values.astype(np.int64))
    else:
        text = values.astype(str).str.strip()
        if text.str.fullmatch(r"\d{9,19}").all():
            stamps = _parse_epoch(text.astype(np.int64))
        else:
            stamps = _parse_text_timestamps(text, loc)
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps.astype("datetime64[ns]")


def _parse_epoch(values: pd.Series) -> pd.Series:
    import pandas as pd

    magnitude = int(values.abs().max())
    unit = "s" if magnitude < 10**11 else "ms" if magnitude < 10**14 else "us"
    if magnitude >= 10**17:
        unit = "ns"
    return pd.to_datetime(values, unit=unit)


def _parse_text_timestamps(text: pd.Series, loc: _Locator) -> pd.Series:
    import pandas as pd

    for utc in (False, True):  # utc=True only when zoned and naive times are mixed
        try:
            return pd.to_datetime(text, format="ISO8601", utc=utc)
        except (ValueError, OverflowError):
            continue
    year_first = text.str.extract(_YEAR_FIRST)
    day_first = text.str.extract(_DAY_FIRST)
    # The layout most rows follow wins; the first row that does not follow it is reported.
    use_year_first = year_first[0].notna().sum() >= day_first[0].notna().sum()
    parts = year_first if use_year_first else day_first
    loc.fail(
        parts[0].isna(),
        lambda i: (
            f"cannot parse timestamp {text[i]!r}; expected ISO (2023-12-31 15:30:00) or "
            "day-first (31/12/2023 15:30), with optional seconds and milliseconds"
        ),
    )
    if use_year_first:
        stamps = _from_parts(parts, 0, 1, 2)
    else:
        stamps = _from_parts(parts, 2, 1, 0)
        month_first = _from_parts(parts, 2, 0, 1)
        if stamps.isna().any() and month_first.notna().all():
            log.info("%s: timestamps are month-first (e.g. %r)", loc.file, text.iloc[0])
            stamps = month_first
    loc.fail(stamps.isna(), lambda i: f"invalid date or time {text[i]!r}")
    return stamps


def load_ohlcv(path: str | os.PathLike[str], market: str = "") -> Bars:
    """Load bars from a CSV or Parquet OHLCV export.

    Column names are matched in any case, ignoring spaces, ``_`` and ``<>`` (``Date``,
    ``Time``, ``Datetime``, ``Timestamp``, ``Open``, ``High``, ``Low``, ``Close`` or ``Last``,
    ``Volume``); other columns (``Adj Close`` ...) are ignored, and ``Volume`` may be absent
    (zeros). Separate ``Date`` and ``Time`` columns are combined. Timestamps may be ISO
    (``2023-12-31 15:30:00.250``, ``T`` and zones allowed; zoned times are converted to UTC),
    year-first with ``.`` or ``/``, day-first (``31/12/2023 15:30``, ``31.12.2023``; month-first
    is used only when day-first cannot be right), or Unix epochs. Rows may be in any order.

    Args:
        path: The file (``.csv``, ``.txt``, ``.csv.gz``, ``.parquet``).
        market: Market name recorded on the bars.

    Raises:
        DataError: naming the file and the line (CSV, 1-based, header = line 1) or row
            (Parquet, 1-based) of the first missing, non-numeric or non-positive value,
            duplicated timestamp or bar with High < Low.
    """
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    frame, loc = _read_table(file)
    if frame.empty:
        raise DataError(f"{file}: no data rows")
    columns: dict[str, str] = {}
    for column in frame.columns:
        columns.setdefault(_normalize(column), column)

    prices: dict[str, np.ndarray] = {}
    for field, names in _PRICE_NAMES.items():
        column = _pick(columns, names)
        if column is None:
            raise DataError(
                f"{file}: no {field.capitalize()} column; found columns {list(frame.columns)!r}"
            )
        prices[field] = _numeric(frame, column, loc, positive=True)
    volume_col = _pick(columns, _VOLUME_NAMES)
    volume = (
        _numeric(frame, volume_col, loc, positive=False)
        if volume_col is not None
        else np.zeros(len(frame))
    )
    high_col, low_col = _pick(columns, ("high",)), _pick(columns, ("low",))
    loc.fail(
        pd.Series(prices["high"] < prices["low"], index=frame.index),
        lambda i: (
            f"{high_col} {frame.at[i, high_col]!s} is below {low_col} {frame.at[i, low_col]!s}"
        ),
    )

    stamps = _parse_timestamps(_timestamp_strings(frame, columns, loc), loc)
    duplicated = stamps.duplicated(keep=False)
    if duplicated.any():
        first = stamps[duplicated].iloc[0]
        where = stamps.index[(stamps == first).to_numpy()]
        lines = " and ".join(loc.at(i).split(", ", 1)[1] for i in where[:2])
        raise DataError(f"{file}: {lines} have the same timestamp {first}")

    order = np.argsort(stamps.to_numpy(), kind="stable")
    timestamps = stamps.to_numpy()[order]
    if len(timestamps) < 2:
        raise DataError(f"{file}: need at least 2 bars, got {len(timestamps)}")
    bars = Bars(
        market=market,
        timestamps=timestamps,
        open=prices["open"][order],
        high=prices["high"][order],
        low=prices["low"][order],
        close=prices["close"][order],
        volume=volume[order],
        bar_interval=infer_bar_interval(timestamps),
        bars_per_year=estimate_bars_per_year(timestamps),
        source=str(file),
    )
    log.info(
        "%s: %d bars %s .. %s, interval %s, %.0f bars/year",
        file,
        len(bars),
        timestamps[0],
        timestamps[-1],
        bars.bar_interval,
        bars.bars_per_year,
    )
    return bars


def _numeric(frame: pd.DataFrame, column: str, loc: _Locator, *, positive: bool) -> np.ndarray:
    import pandas as pd

    raw = frame[column]
    loc.fail(raw.isna(), f"missing value in column {column!r}")
    values = pd.to_numeric(raw, errors="coerce")
    loc.fail(
        values.isna() | ~np.isfinite(values),
        lambda i: f"column {column!r} has {raw[i]!r}, which is not a finite number",
    )
    if positive:
        loc.fail(values <= 0, lambda i: f"column {column!r} has {raw[i]!r}; prices must be > 0")
    else:
        loc.fail(values < 0, lambda i: f"column {column!r} has {raw[i]!r}; must be >= 0")
    return values.to_numpy(dtype=np.float64)


def load_bars(spec: MarketSpec, *, seed: int | None = None) -> Bars:
    """Load a market's bars from its configured source.

    Args:
        spec: The market.
        seed: Data seed for a synthetic source (default: the one in ``markets.yaml``);
            ignored for files.

    Raises:
        DataError: if the file is missing or malformed.
    """
    source = spec.data
    if isinstance(source, FileSource):
        if not source.path.is_file():
            raise DataError(
                f"markets.{spec.name}.data.file: no such file {str(source.path)!r} "
                f"(configured as {source.configured!r})"
            )
        return load_ohlcv(source.path, market=spec.name)
    return generate_synthetic(spec.name, source, spec.tick_size, seed=seed)
