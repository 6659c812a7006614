"""Reading OHLCV exports (CSV, gzip, Parquet) into :class:`~tuner.trading.bars.Bars`.

Column names in any case, ISO or day-first timestamps, Unix epochs, TradingView, Sierra Chart
and MetaStock-style ``<DATE>,<TIME>`` exports, rows in any order; pandas is used only here.
A bad file is refused with the file and the line.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.trading.bars import Bars, DataError, estimate_bars_per_year, infer_bar_interval

if TYPE_CHECKING:
    import pandas as pd  # imported when a file is read: validating a config needs none of it

__all__ = ["load_ohlcv"]

log = logging.getLogger(__name__)


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
