"""An OHLCV export read into a table, with the columns that hold time, prices and contract.

Detection, in this order (each step only where the ``data:`` keys leave it open):

1. File type by suffix: Parquet (``.parquet``, ``.pq``), else CSV (``.csv``, ``.txt``, either
   gzipped). CSV separator: the one of ``;`` ``,`` tab ``|`` the first line has most of
   (``;`` on a tie with ``,``).
2. Header: ``header:``; else ``format: ninjatrader`` has none; else the first line is data
   when four of its fields or more are numbers (a header names its columns).
3. Kind, for the timestamp grammar and messages: ``format:``; else ``databento`` when a
   ``ts_event`` column exists, ``ib`` when ``date`` and ``barCount`` do, ``ninjatrader`` for a
   headerless file whose first field is ``yyyyMMdd HHmmss``; else ``generic``.
4. Columns: ``columns:`` first; then, without a header, by position (time, open, high, low,
   close, volume; date, time, open ... when the second field is a time of day); with one, by
   name in any case, ignoring spaces, ``_`` and ``<>``: ``ts_event``, ``Datetime``,
   ``Timestamp``, ``Gmt time``, ``Local time``, ``Date`` + ``Time``, ``Date`` or ``Time``;
   ``Open``, ``High``, ``Low``, ``Close`` or ``Last``; ``Volume`` (``Vol``, ``TickVol``;
   zeros when absent); the contract in ``symbol`` or ``instrument_id``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.validation import suggest
from tuner.trading.bars import DataError
from tuner.trading.data_settings import DataSettings

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Columns", "Rows", "Table", "read_table"]

_TIMESTAMP_NAMES = ("tsevent", "datetime", "timestamp", "gmttime", "localtime", "ts")
_PRICE_NAMES = {"open": ("open",), "high": ("high",), "low": ("low",), "close": ("close", "last")}
_VOLUME_NAMES = ("volume", "vol", "tickvol", "tickvolume")
_CONTRACT_NAMES = ("symbol", "instrumentid")
_CLOCK = re.compile(r"^\d{1,2}:\d{2}(?::\d{2})?$")
_NINJATRADER_TIME = re.compile(r"^\d{8}(?: \d{6})?$")
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$")


@dataclass(frozen=True)
class Rows:
    """Names a table's rows in messages, as an editor shows them.

    Attributes:
        file: The file.
        first_line: Line of the first data row (2 below a header, 1 without); None for
            Parquet, whose rows are numbered from 1.
        keys: Key path of the ``data:`` settings (``markets.NQ.data``), for hints.
    """

    file: Path
    first_line: int | None
    keys: str = "data"

    def at(self, index: Any) -> str:
        if self.first_line is None:
            return f"row {int(index) + 1}"
        return f"line {int(index) + self.first_line}"

    def where(self, index: Any) -> str:
        return f"{self.file}, {self.at(index)}"

    def key(self, name: str) -> str:
        return f"{self.keys}.{name}"

    def fail(self, mask: pd.Series, what: str | Callable[[Any], str]) -> None:
        """Raise DataError naming the first row where ``mask`` is True."""
        if not mask.any():
            return
        bad = mask[mask].index
        more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
        raise DataError(f"{self.where(bad[0])}: {what(bad[0]) if callable(what) else what}{more}")


@dataclass(frozen=True)
class Columns:
    """Which column of a table holds what.

    Attributes:
        kind: ``ninjatrader``, ``ib``, ``databento`` or ``generic``.
        time: The timestamp column, or the date column when ``clock`` is set.
        clock: The time-of-day column joined to ``time`` (Date + Time exports), or None.
        open, high, low, close: Price columns.
        volume: Volume column, or None.
        contract: Columns naming the contract of each row (symbol first), possibly none.
    """

    kind: str
    time: str
    clock: str | None
    open: str
    high: str
    low: str
    close: str
    volume: str | None
    contract: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Table:
    """A file's rows as text (CSV) or typed values (Parquet); the index numbers the rows."""

    frame: pd.DataFrame
    rows: Rows
    columns: Columns


def read_table(file: Path, settings: DataSettings, keys: str = "data") -> Table:
    """Read ``file`` and find its columns (module docstring).

    Raises:
        DataError: unreadable file, unsupported type, missing columns.
    """
    name = file.name.lower()
    if name.endswith((".parquet", ".pq")):
        if settings.header is not None:
            raise DataError(f"{file}: {keys}.header applies to CSV files; remove it")
        frame, rows, header = _read_parquet(file, keys), Rows(file, None, keys), True
    elif name.endswith((".csv", ".txt", ".csv.gz", ".txt.gz")):
        frame, header = _read_csv(file, settings)
        rows = Rows(file, 2 if header else 1, keys)
    else:
        raise DataError(f"{file}: unsupported file type; use .csv, .txt, .csv.gz or .parquet")
    if frame.empty:
        raise DataError(f"{file}: no data rows")
    columns = _locate(frame, settings, rows, header)
    if not header:
        frame, columns = _label(frame, columns)
    return Table(frame=frame, rows=rows, columns=columns)


def _label(frame: pd.DataFrame, columns: Columns) -> tuple[pd.DataFrame, Columns]:
    """Name the columns of a headerless file by what they hold: 'Close (column 5)'."""
    labels = {
        "time": "Date" if columns.clock else "Time",
        "clock": "Time",
        "open": "Open",
        "high": "High",
        "low": "Low",
        "close": "Close",
        "volume": "Volume",
    }
    renamed = {
        column: f"{label} ({column})"
        for role, label in labels.items()
        if (column := getattr(columns, role)) is not None
    }

    def new(column: str) -> str:
        return renamed.get(column, column)

    return frame.rename(columns=renamed), replace(
        columns,
        time=new(columns.time),
        clock=None if columns.clock is None else new(columns.clock),
        open=new(columns.open),
        high=new(columns.high),
        low=new(columns.low),
        close=new(columns.close),
        volume=None if columns.volume is None else new(columns.volume),
    )


# --- reading ------------------------------------------------------------------------------


def _read_parquet(file: Path, keys: str) -> pd.DataFrame:
    import pandas as pd

    try:
        frame = pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataError(f"{file}: cannot read Parquet file: {exc}") from exc
    if not isinstance(frame.index, pd.RangeIndex):  # e.g. saved with a DatetimeIndex
        if frame.index.name is None and isinstance(frame.index, pd.DatetimeIndex):
            frame.index.name = "timestamp"
        frame = frame.reset_index()
    return frame.reset_index(drop=True)


def _first_line(file: Path) -> str:
    opener = gzip.open if file.name.lower().endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8-sig", errors="replace") as fh:
            return fh.readline()
    except OSError as exc:  # e.g. a .gz that is not gzip
        raise DataError(f"{file}: cannot read CSV file: {exc}") from exc


def _separator(line: str) -> str:
    counts = {sep: line.count(sep) for sep in (";", ",", "\t", "|")}
    best = max(counts, key=lambda sep: counts[sep])  # the first on a tie: ';' before ','
    return best if counts[best] > 0 else ","


def _read_csv(file: Path, settings: DataSettings) -> tuple[pd.DataFrame, bool]:
    import pandas as pd

    first = _first_line(file)
    sep = _separator(first)
    header = settings.header
    if header is None:
        numbers = sum(bool(_NUMBER.match(f)) for f in first.split(sep))
        header = settings.format != "ninjatrader" and numbers < 4
    try:
        frame = pd.read_csv(
            file,
            sep=sep,
            header=0 if header else None,
            dtype=str,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read CSV file: {exc}") from exc
    if not header:
        frame.columns = [f"column {i + 1}" for i in range(len(frame.columns))]
    return frame.dropna(how="all"), header  # blank lines; the index keeps the line numbers


# --- columns ------------------------------------------------------------------------------


def _normalize(name: object) -> str:
    return re.sub(r"[\s_<>]", "", str(name)).lower()


def _locate(frame: pd.DataFrame, settings: DataSettings, rows: Rows, header: bool) -> Columns:
    names: dict[str, str] = {}
    for column in frame.columns:
        names.setdefault(_normalize(column), column)
    kind = settings.format if settings.format != "auto" else _kind(frame, names, header)
    found = _by_name(names) if header else _by_position(frame)
    configured = {role: _configured(frame, role, value, rows) for role, value in settings.columns}
    if "time" in configured or "date" in configured:  # the time comes from columns: alone
        found.pop("time", None)
        found.pop("clock", None)
        date, time = configured.pop("date", None), configured.pop("time", None)
        if date is not None and time is not None:
            found["time"], found["clock"] = date, time
        else:
            found["time"] = date if date is not None else str(time)
    contract = [configured.pop("symbol")] if "symbol" in configured else []
    found.update(configured)
    for column in (names.get(n) for n in _CONTRACT_NAMES if header):
        if column is not None and column not in contract:
            contract.append(column)
    _require(frame, found, kind, rows)
    return Columns(
        kind=kind,
        time=found["time"],
        clock=found.get("clock"),
        open=found["open"],
        high=found["high"],
        low=found["low"],
        close=found["close"],
        volume=found.get("volume"),
        contract=tuple(contract),
    )


def _kind(frame: pd.DataFrame, names: dict[str, str], header: bool) -> str:
    if "tsevent" in names:
        return "databento"
    if "date" in names and "barcount" in names:
        return "ib"
    if not header and _NINJATRADER_TIME.match(str(frame.iloc[0, 0]).strip()):
        return "ninjatrader"
    return "generic"


def _by_name(names: dict[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    stamp = next((names[n] for n in _TIMESTAMP_NAMES if n in names), None)
    if stamp is not None:
        found["time"] = stamp
    elif "date" in names and "time" in names:
        found["time"], found["clock"] = names["date"], names["time"]
    elif (single := names.get("date") or names.get("time")) is not None:
        found["time"] = single
    for role, options in (*_PRICE_NAMES.items(), ("volume", _VOLUME_NAMES)):
        column = next((names[n] for n in options if n in names), None)
        if column is not None:
            found[role] = column
    return found


def _by_position(frame: pd.DataFrame) -> dict[str, str]:
    order = ["time", "open", "high", "low", "close", "volume"]
    if len(frame.columns) > 1 and _CLOCK.match(str(frame.iloc[0, 1]).strip()):
        order = ["time", "clock", *order[1:]]
    return dict(zip(order, frame.columns, strict=False))


def _configured(frame: pd.DataFrame, role: str, value: str | int, rows: Rows) -> str:
    key = rows.key(f"columns.{role}")
    columns = [str(c) for c in frame.columns]
    if isinstance(value, int):
        if value > len(columns):
            raise DataError(
                f"{rows.file}: {key} is column {value}, but the file has {len(columns)}"
            )
        return str(frame.columns[value - 1])
    if value in columns:
        return value
    same = [c for c in columns if _normalize(c) == _normalize(value)]
    if same:
        return same[0]
    raise DataError(
        f"{rows.file}: {key} names column {value!r}, which the file does not have"
        f"{suggest(value, columns)}; found columns {columns!r}"
    )


def _require(frame: pd.DataFrame, found: dict[str, str], kind: str, rows: Rows) -> None:
    found_columns = list(frame.columns)
    if "time" not in found:
        expected = (
            "ts_event" if kind == "databento" else "Date, Time, Date + Time, Datetime, Timestamp"
        )
        raise DataError(
            f"{rows.file}: no timestamp column; expected one of {expected}; found columns "
            f"{found_columns!r} (or name it with columns: {{time: ...}} under {rows.keys})"
        )
    for role in ("open", "high", "low", "close"):
        if role not in found:
            raise DataError(
                f"{rows.file}: no {role.capitalize()} column; found columns {found_columns!r} "
                f"(or name it with columns: {{{role}: ...}} under {rows.keys})"
            )
