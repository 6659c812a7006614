"""One OHLCV export into :class:`~tuner.trading.bars.Bars`: :func:`load_ohlcv`.

The exports futures traders have, as the platforms write them: NinjaTrader (no header, ``;``,
``20230301 083000``), Interactive Brokers (``20230301  08:30:00``, with or without a zone
name), Databento OHLCV (``ts_event`` in nanoseconds, integer prices of 1e-9, several
contracts per file), TradingView, Sierra Chart, MetaStock-style ``<DATE>,<TIME>``, and any CSV
or Parquet file with named OHLC columns; gzip too. Three modules share the work:
:mod:`~tuner.trading.ohlcv_table` reads the table and finds its columns,
:mod:`~tuner.trading.ohlcv_times` reads the timestamps into one clock (UTC), and this one
keeps one contract, reads the prices, drops exact duplicate rows and builds the bars; a file
of several contracts is joined into one series by :mod:`~tuner.trading.rolls` (``roll:``). What
detection cannot know comes from :class:`~tuner.trading.data_settings.DataSettings`. A bad
file is refused with the file and the line. pandas is used only in these modules.

:func:`load_ohlcv_report` returns, beside the bars, a :class:`LoadReport` of what detection
decided (the layout, the columns, the date order and what settled it, the duplicates dropped,
the contract kept, the rolls), for ``python -m tuner.data inspect``; it loads exactly as
:func:`load_ohlcv` does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuner.trading.bars import Bars, DataError, estimate_bars_per_year, infer_bar_interval
from tuner.trading.data_settings import DataSettings
from tuner.trading.ohlcv_table import Columns, Rows, read_table
from tuner.trading.ohlcv_times import parse_stamps, to_utc
from tuner.trading.rolls import Joined, Roll, join_contracts

if TYPE_CHECKING:
    import pandas as pd  # imported when a file is read: validating a config needs none of it

__all__ = ["LoadReport", "load_ohlcv", "load_ohlcv_report"]

log = logging.getLogger(__name__)

_PRICES = ("open", "high", "low", "close")
_SHOWN_CONTRACTS = 8
_POSITIVE = "prices must be > 0"


@dataclass(frozen=True)
class LoadReport:
    """What the loader made of a file: what it detected and what it dropped.

    Attributes:
        file: The file.
        format: ``ninjatrader``, ``ib``, ``databento`` or ``generic`` (``format:`` or detected).
        header: Whether the first line named the columns; None for Parquet.
        columns: ``(role, column)`` pairs, roles as ``columns:`` names them: ``time`` (or
            ``date`` and ``time``), ``open``, ``high``, ``low``, ``close``, ``volume`` (absent:
            zeros), ``symbol`` (a symbol or instrument_id column); a headerless file's columns
            read ``Close (column 5)``.
        dayfirst: True day-first, False month-first, None where dates have no such question.
        dates: How the timestamps were read and what settled it
            (``month-first: settled by the file (line 14 reads '03/13/2023,08:30')``).
        rows: Data rows in the file (blank lines not counted).
        symbol: The contract kept (``symbol:``, or the only one a contract column holds; with
            ``roll:``, the first one held), or None when the file has no contract column.
        duplicates: Exact duplicate rows dropped.
        roll: ``roll:`` (``volume`` or ``calendar``), or None.
        adjust: ``adjust:`` with ``roll:`` (``backward`` or ``none``), else None.
        rolls: The rolls of the joined series (:class:`~tuner.trading.rolls.Roll`), in order.
    """

    file: str
    format: str
    header: bool | None
    columns: tuple[tuple[str, str], ...]
    dayfirst: bool | None
    dates: str
    rows: int
    symbol: str | None
    duplicates: int
    roll: str | None = None
    adjust: str | None = None
    rolls: tuple[Roll, ...] = ()


def load_ohlcv(
    path: str | os.PathLike[str], settings: DataSettings | None = None, *, market: str = ""
) -> Bars:
    """Load bars from a CSV or Parquet OHLCV export.

    Detection and the ``data:`` keys are described in :mod:`~tuner.trading.ohlcv_table`
    (columns), :mod:`~tuner.trading.ohlcv_times` (timestamps, day-first or month-first, the
    clock) and :mod:`~tuner.trading.data_settings` (the keys). Rows may be in any order.
    Exact duplicate rows (same time and values) are dropped with a warning; two different
    bars at one time are refused.

    Args:
        path: The file (``.csv``, ``.txt``, ``.csv.gz``, ``.parquet``).
        settings: What detection cannot know; the defaults detect everything.
        market: Market name recorded on the bars, and named in hints
            (``markets.NQ.data.dayfirst``).

    Raises:
        DataError: naming the file and the line (CSV, 1-based, as an editor shows it) or row
            (Parquet, 1-based) of the first missing, non-numeric or non-positive value, bar
            with High < Low, bad or ambiguous timestamp, or bar that conflicts with another.
    """
    return load_ohlcv_report(path, settings, market=market)[0]


def load_ohlcv_report(
    path: str | os.PathLike[str], settings: DataSettings | None = None, *, market: str = ""
) -> tuple[Bars, LoadReport]:
    """:func:`load_ohlcv`, and what it detected and dropped (:class:`LoadReport`).

    Raises:
        DataError: as :func:`load_ohlcv`.
    """
    settings = settings or DataSettings()
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    table = read_table(file, settings, keys=f"markets.{market}.data" if market else "data")
    rows, columns = table.rows, table.columns
    frame = _one_contract(table.frame, columns, settings, rows)
    prices = _prices(frame, columns, settings, rows)
    if settings.roll is not None:  # which contract each row is: part of what makes a row
        prices["contract"] = frame[columns.contract[0]].astype(str).str.strip()
    stamps = parse_stamps(frame, columns, settings, rows)
    unique = _drop_exact_duplicates(stamps.wall, prices, rows)
    stamps = replace(
        stamps,
        wall=stamps.wall[unique],
        zones=None if stamps.zones is None else stamps.zones[unique],
        text=stamps.text[unique],
    )
    prices = prices[unique]
    times = to_utc(stamps, settings, rows)
    _refuse_conflicts(times, rows, prices.get("contract"))

    order = np.argsort(times.to_numpy(), kind="stable")
    timestamps = times.to_numpy()[order]
    values = {name: prices[name].to_numpy()[order] for name in (*_PRICES, "volume")}
    joined = None
    if settings.roll is not None:
        contracts = prices["contract"].to_numpy()[order]
        joined = join_contracts(timestamps, contracts, values, settings, str(file))
        timestamps = timestamps[joined.rows]
        values = {name: getattr(joined, name) for name in values}
    bars = _bars(file, market, columns.kind, timestamps, values, joined)
    report = LoadReport(
        file=str(file),
        format=columns.kind,
        header=None if rows.first_line is None else rows.first_line == 2,
        columns=_roles(columns),
        dayfirst=stamps.dayfirst,
        dates=stamps.dates,
        rows=len(table.frame),
        symbol=_kept(frame, columns) if joined is None else joined.first,
        duplicates=int((~unique).sum()),
        roll=settings.roll,
        adjust=None if joined is None else settings.adjust,
        rolls=() if joined is None else joined.rolls,
    )
    return bars, report


def _bars(
    file: Path,
    market: str,
    kind: str,
    timestamps: np.ndarray,
    values: dict[str, np.ndarray],
    joined: Joined | None,
) -> Bars:
    if len(timestamps) < 2:
        raise DataError(f"{file}: need at least 2 bars, got {len(timestamps)}")
    bars = Bars(
        market=market,
        timestamps=timestamps,
        open=values["open"],
        high=values["high"],
        low=values["low"],
        close=values["close"],
        volume=values["volume"],
        bar_interval=infer_bar_interval(timestamps),
        bars_per_year=estimate_bars_per_year(timestamps),
        source=str(file),
        roll_gap=np.zeros(0) if joined is None else joined.roll_gap,
    )
    log.info(
        "%s (%s): %d bars %s .. %s UTC, interval %s, %.0f bars/year",
        file,
        kind,
        len(bars),
        timestamps[0],
        timestamps[-1],
        bars.bar_interval,
        bars.bars_per_year,
    )
    return bars


def _roles(columns: Columns) -> tuple[tuple[str, str], ...]:
    """The columns a file's roles came from, in reading order."""
    times = [("time", columns.time)]
    if columns.clock is not None:  # as columns: names them: date + time
        times = [("date", columns.time), ("time", columns.clock)]
    prices = [(role, getattr(columns, role)) for role in _PRICES]
    volume = [] if columns.volume is None else [("volume", columns.volume)]
    return (*times, *prices, *volume, *(("symbol", c) for c in columns.contract[:1]))


def _kept(frame: pd.DataFrame, columns: Columns) -> str | None:
    """The contract of the rows kept, as the contract column writes it."""
    if not columns.contract:
        return None
    return str(frame[columns.contract[0]].astype(str).str.strip().iloc[0])


def _one_contract(
    frame: pd.DataFrame, columns: Columns, settings: DataSettings, rows: Rows
) -> pd.DataFrame:
    """The rows of one contract: ``symbol:``'s, or the only one the file holds; every row
    with ``roll:``."""
    if settings.roll is not None:
        _can_roll(frame, columns, settings, rows)
        return frame
    if not columns.contract:
        if settings.symbol is not None:
            raise DataError(
                f"{rows.file}: {rows.key('symbol')} is {settings.symbol!r}, but the file has no "
                f"symbol or instrument_id column; found columns {list(frame.columns)!r}"
            )
        return frame
    names = {c: frame[c].astype(str).str.strip() for c in columns.contract}
    shown = names[columns.contract[0]]
    if settings.symbol is not None:
        keep = np.logical_or.reduce([n == settings.symbol for n in names.values()])
        if not keep.any():
            raise DataError(
                f"{rows.file}: no rows of {rows.key('symbol')} {settings.symbol!r}; the file "
                f"holds {_contracts(shown)}"
            )
        return frame[keep]
    if shown.nunique() > 1:
        raise DataError(
            f"{rows.file}: the file holds {shown.nunique()} contracts in column "
            f"{columns.contract[0]!r}: {_contracts(shown)}; set {rows.key('symbol')} to the one "
            f"to train on, or {rows.key('roll')} to join them"
        )
    return frame


def _can_roll(frame: pd.DataFrame, columns: Columns, settings: DataSettings, rows: Rows) -> None:
    """Refuse ``roll:`` on a file without contracts, and ``roll: volume`` without volumes."""
    if not columns.contract:
        raise DataError(
            f"{rows.file}: {rows.key('roll')} is {settings.roll!r}, but the file has no symbol "
            f"or instrument_id column to roll between; found columns {list(frame.columns)!r}"
        )
    if settings.roll == "volume" and columns.volume is None:
        raise DataError(
            f"{rows.file}: {rows.key('roll')} is 'volume', but the file has no volume column; "
            f"name it with columns: {{volume: ...}} or roll by calendar; found columns "
            f"{list(frame.columns)!r}"
        )


def _contracts(names: pd.Series) -> str:
    counts = names.value_counts(sort=False)
    listed = [f"{name!s} ({_rows(count)})" for name, count in counts.items()]
    more = len(listed) - _SHOWN_CONTRACTS
    return ", ".join(listed[:_SHOWN_CONTRACTS]) + (f" and {more} more" if more > 0 else "")


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count:,} rows"


def _prices(
    frame: pd.DataFrame, columns: Columns, settings: DataSettings, rows: Rows
) -> pd.DataFrame:
    """Open, high, low, close (scaled) and volume (zeros when absent) as float64 columns."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name in _PRICES:
        out[name] = _numeric(frame, getattr(columns, name), rows)
    scale = settings.price_scale
    if scale is None and columns.kind == "databento" and _integers(frame, columns):
        scale = 1e-9
        log.info("%s: Databento fixed-point prices, scaled by 1e-9", rows.file)
    if scale is not None:
        divisor = round(1.0 / scale)  # 1e-9 as a division: 16850500000000 -> 16850.5 exactly
        exact = divisor >= 1 and abs(divisor * scale - 1.0) < 1e-12
        for name in _PRICES:
            out[name] = out[name] / divisor if exact else out[name] * scale
    for name in _PRICES:
        _at_least(out[name], frame, getattr(columns, name), rows, _POSITIVE)
    rows.fail(
        out["high"] < out["low"],
        lambda i: (
            f"{columns.high} {frame.at[i, columns.high]!s} is below "
            f"{columns.low} {frame.at[i, columns.low]!s}"
        ),
    )
    if columns.volume is None:
        out["volume"] = 0.0
    else:
        out["volume"] = _numeric(frame, columns.volume, rows)
        _at_least(out["volume"], frame, columns.volume, rows, "must be >= 0")
    return out


def _at_least(values: pd.Series, frame: pd.DataFrame, column: str, rows: Rows, rule: str) -> None:
    """Refuse values below zero, or of zero too when ``rule`` is "prices must be > 0"."""
    bad = values <= 0 if rule == _POSITIVE else values < 0
    rows.fail(bad, lambda i: f"column {column!r} has {frame.at[i, column]!r}; {rule}")


def _integers(frame: pd.DataFrame, columns: Columns) -> bool:
    import pandas as pd

    for name in _PRICES:
        values = frame[getattr(columns, name)]
        if pd.api.types.is_integer_dtype(values):
            continue
        if pd.api.types.is_numeric_dtype(values) or not values.str.fullmatch(r"\s*\d+\s*").all():
            return False
    return True


def _numeric(frame: pd.DataFrame, column: str, rows: Rows) -> pd.Series:
    import pandas as pd

    raw = frame[column]
    rows.fail(raw.isna(), f"missing value in column {column!r}")
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64)
    rows.fail(
        values.isna() | ~np.isfinite(values),
        lambda i: f"column {column!r} has {raw[i]!r}, which is not a finite number",
    )
    return values


def _drop_exact_duplicates(wall: pd.Series, prices: pd.DataFrame, rows: Rows) -> pd.Series:
    """Rows to keep: all but repeats of an earlier row's time and values (a warning counts
    them). Before the clock, so a glued export's repeats are not mistaken for the hour a
    daylight-saving change repeats."""
    key = prices.assign(time=wall)
    repeated = key.duplicated(keep="first")
    if repeated.any():
        first = repeated.idxmax()
        original = key.index[(key == key.loc[first]).all(axis=1)][0]
        log.warning(
            "%s: dropped %s: exact duplicates (same time and values; e.g. %s repeats %s)",
            rows.file,
            _rows(int(repeated.sum())),
            rows.at(first),
            rows.at(original),
        )
    return ~repeated


def _refuse_conflicts(times: pd.Series, rows: Rows, contracts: pd.Series | None = None) -> None:
    """Two different bars at one time (of one contract): refused naming both lines."""
    same = times if contracts is None else contracts.str.cat(times.astype(str), sep="@")
    clash = same.duplicated(keep=False)
    if clash.any():
        first = same[clash].iloc[0]
        where = same.index[(same == first).to_numpy()]
        of = "" if contracts is None else f" of contract {contracts[where[0]]!r}"
        raise DataError(
            f"{rows.file}: {rows.at(where[0])} and {rows.at(where[1])} have the same timestamp "
            f"{times[where[0]]}{of} but different values; keep one of them"
        )
