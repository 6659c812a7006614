"""Timestamps of OHLCV exports, read into one clock: UTC.

Grammars, in the order they are tried on the timestamp column:

1. ``timestamp_format`` (``strptime``) when set: every row must match it.
2. Unix epochs, 9 to 19 digits (seconds, ms, us or ns by magnitude; Databento's
   ``ts_event``), and typed datetimes of Parquet files.
3. Year-first: ISO 8601 (``2023-03-01T08:30:00.250``, with ``Z`` or an offset),
   ``2023.03.01``, ``2023/03/01``, and compact ``20230301`` followed by ``083000``
   (NinjaTrader) or ``08:30:00`` (Interactive Brokers: one or two spaces, then optionally a zone
   name such as ``US/Central``).
4. Day-first or month-first (``31/12/2023 15:30``, ``12/31/2023 3:30 PM``, ``31.12.23``). Never a
   guess: a day above 12 in the first position makes the column day-first, in the second
   month-first; a column with both is refused; ``dayfirst:`` (or ``timestamp_format``) settles
   a column with neither, and a row that contradicts it is refused naming its line; without
   either, a column whose dates read both ways is refused with two examples read both ways.

``format: ninjatrader`` and ``format: ib`` accept only the compact form, ``format: databento``
only epochs and ISO 8601; a detected kind restricts nothing (an IB file saved by a library may
hold ISO times).

The clock is UTC, naive (``datetime64[ns]``), converted once here so that the split, the
features (time of day) and bars per year all see one clock without daylight-saving jumps or
repeats. Times with an offset or a zone name are converted from it; epochs are UTC; times
written without a zone are read in ``timezone:`` when set (daylight saving time included: a
time that does not exist there is refused, one that happens twice is placed by the rows around
it), else taken as UTC as they are written. ``timezone:`` on a file whose times carry their own
zone is refused rather than ignored.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tuner.trading.bars import DataError
from tuner.trading.data_settings import DataSettings
from tuner.trading.ohlcv_table import Columns, Rows

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Stamps", "parse_stamps", "to_utc"]

log = logging.getLogger(__name__)

_HMS = (
    r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
    r"(?:\s*(?P<p>[AaPp][Mm]))?"  # 2:30:00 PM
)
_SUFFIX = r"(?:\s*(?P<off>Z|[+-]\d{2}(?::?\d{2})?)|\s+(?P<zone>[A-Za-z][\w+\-/]*))?\s*$"
_GRAMMARS = {
    "compact": re.compile(
        r"^\s*(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})"
        r"(?:[ T]+(?P<H>\d{1,2}):?(?P<M>\d{2})(?::?(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
        + _SUFFIX
    ),
    "year-first": re.compile(
        r"^\s*(?P<y>\d{4})(?P<s>[-/.])(?P<m>\d{1,2})(?P=s)(?P<d>\d{1,2})(?:[ T]+"
        + _HMS
        + ")?"
        + _SUFFIX
    ),
    "day-month": re.compile(
        r"^\s*(?P<a>\d{1,2})(?P<s>[-/.])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?:[ T]+"
        + _HMS
        + ")?"
        + _SUFFIX
    ),
}
_EXAMPLES = {
    "compact": "20230301 083000 or 20230301 08:30:00",
    "year-first": "2023-03-01 08:30:00",
    "day-month": "01/03/2023 08:30 (or 8:30 AM)",
}
_ALLOWED = {
    "ninjatrader": ("compact",),
    "ib": ("compact",),
    "databento": ("year-first",),
}
_COMPACT_FORMATS = ("%Y%m%d %H%M%S", "%Y%m%d  %H:%M:%S", "%Y%m%d %H:%M:%S", "%Y%m%d")
_ZONED_ISO = r"\d(?:[.,]\d+)?\s*(?:Z|[+-]\d{2}(?::?\d{2})?)$"


@dataclass(frozen=True, eq=False)
class Stamps:
    """A timestamp column parsed, before it is put on the clock (:func:`to_utc`).

    Attributes:
        wall: ``datetime64[ns]``, naive: UTC when ``utc``, else the time as written.
        utc: The text said the zone (epochs, offsets, zoned datetimes): ``wall`` is UTC.
        zones: The zone name written on each row (IB), or None.
        text: The timestamps as written, for messages.
        dayfirst: True day-first, False month-first, None when the form has no such question
            (year-first, epochs, typed datetimes, ``timestamp_format``).
        dates: How the dates were read and what settled it, for people
            (``month-first: settled by the file (line 14 reads '03/13/2023 08:30')``).
    """

    wall: pd.Series
    utc: bool
    zones: pd.Series | None
    text: pd.Series
    dayfirst: bool | None = None
    dates: str = ""


def parse_stamps(
    frame: pd.DataFrame, columns: Columns, settings: DataSettings, rows: Rows
) -> Stamps:
    """Parse the timestamp column(s) of ``frame`` (module docstring).

    Raises:
        DataError: naming the file and line of a missing or unparsable timestamp, an invalid
            date, or dates that contradict each other or ``dayfirst:``.
    """
    import pandas as pd

    values = _values(frame, columns, rows)
    text = values.astype(str).str.strip()
    if pd.api.types.is_datetime64_any_dtype(values):
        _no_dayfirst(settings, rows, text, "typed datetimes")
        if settings.timestamp_format is not None:
            raise DataError(
                f"{rows.file}: {rows.key('timestamp_format')} is set, but column "
                f"{columns.time!r} holds typed datetimes, not text; remove timestamp_format"
            )
        zoned = isinstance(values.dtype, pd.DatetimeTZDtype)
        return Stamps(_naive(values), zoned, None, text, dates="typed datetimes")
    if settings.timestamp_format is not None:
        return _strptime(text, settings.timestamp_format, rows)
    if pd.api.types.is_numeric_dtype(values) or text.str.fullmatch(r"\d{9,19}").all():
        if settings.format in ("ninjatrader", "ib"):
            raise DataError(
                f"{rows.where(text.index[0])}: timestamp {text.iloc[0]!r} is a Unix epoch; "
                f"format {settings.format} writes {_EXAMPLES['compact']}"
            )
        _no_dayfirst(settings, rows, text, "Unix epochs")
        numbers = values if pd.api.types.is_numeric_dtype(values) else text
        return Stamps(_epoch(numbers.astype(np.int64)), True, None, text, dates="Unix epochs")
    allowed = _ALLOWED.get(settings.format, tuple(_GRAMMARS))  # detected kinds restrict none
    fast = _compact(text) if allowed == ("compact",) else _iso(text, rows)
    if fast is not None:
        _no_dayfirst(settings, rows, text, "year-first")
        return replace(fast, dates="year-first")
    return _by_grammar(text, allowed, columns, settings, rows)


def _values(frame: pd.DataFrame, columns: Columns, rows: Rows) -> pd.Series:
    import pandas as pd

    if columns.clock is None:
        values = frame[columns.time]
        rows.fail(values.isna(), f"missing value in timestamp column {columns.time!r}")
        return values
    date, clock = frame[columns.time], frame[columns.clock]
    rows.fail(
        date.isna() | clock.isna(), f"missing value in column {date.name!r} or {clock.name!r}"
    )
    if pd.api.types.is_datetime64_any_dtype(date):
        date = date.dt.strftime("%Y-%m-%d")
    return date.astype(str).str.strip() + " " + clock.astype(str).str.strip()


def _naive(stamps: pd.Series) -> pd.Series:
    import pandas as pd

    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return stamps.astype("datetime64[ns]")


def _epoch(values: pd.Series) -> pd.Series:
    import pandas as pd

    magnitude = int(values.abs().max())
    unit = "s" if magnitude < 10**11 else "ms" if magnitude < 10**14 else "us"
    if magnitude >= 10**17:
        unit = "ns"
    return pd.to_datetime(values, unit=unit).astype("datetime64[ns]")


def _strptime(text: pd.Series, fmt: str, rows: Rows) -> Stamps:
    import pandas as pd

    zoned = "%z" in fmt or "%Z" in fmt
    stamps = pd.to_datetime(text, format=fmt, errors="coerce", utc=zoned)
    rows.fail(
        stamps.isna(),
        lambda i: f"timestamp {text[i]!r} does not match {rows.key('timestamp_format')} {fmt!r}",
    )
    dates = f"as {rows.key('timestamp_format')} {fmt!r} says"
    return Stamps(_naive(stamps), zoned, None, text, dates=dates)


def _no_dayfirst(settings: DataSettings, rows: Rows, text: pd.Series, what: str) -> None:
    if settings.dayfirst is not None:
        raise DataError(
            f"{rows.where(text.index[0])}: {rows.key('dayfirst')} is set, but the timestamps "
            f"are {what} ({text.iloc[0]!r}), where the day's place is known; remove dayfirst"
        )


def _iso(text: pd.Series, rows: Rows) -> Stamps | None:
    """ISO 8601 in one pass, or None when some row is not ISO 8601."""
    import pandas as pd

    for utc in (False, True):  # utc=True when the offsets differ (daylight saving time)
        try:
            stamps = pd.to_datetime(text, format="ISO8601", utc=utc)
        except (ValueError, OverflowError):
            continue
        if not isinstance(stamps.dtype, pd.DatetimeTZDtype):
            return Stamps(_naive(stamps), False, None, text)
        _refuse_mixed(text.str.contains(_ZONED_ISO), "an offset", text, rows)
        return Stamps(_naive(stamps), True, None, text)
    return None


def _compact(text: pd.Series) -> Stamps | None:
    """NinjaTrader's and IB's usual forms in one pass, or None (the regex path then)."""
    import pandas as pd

    for fmt in _COMPACT_FORMATS:
        try:
            return Stamps(_naive(pd.to_datetime(text, format=fmt)), False, None, text)
        except (ValueError, OverflowError):
            continue
    return None


def _refuse_mixed(has: pd.Series, what: str, text: pd.Series, rows: Rows) -> None:
    """Refuse a column where some times carry ``what`` (a zone) and others do not."""
    if has.any() and not has.all():
        with_it = has[has].index[0]
        rows.fail(
            ~has,
            lambda i: (
                f"timestamp {text[i]!r} has no zone, but {rows.at(with_it)} has {what} "
                f"({text[with_it]!r}); write every time with its zone, or none"
            ),
        )


def _by_grammar(
    text: pd.Series,
    allowed: tuple[str, ...],
    columns: Columns,
    settings: DataSettings,
    rows: Rows,
) -> Stamps:
    matches = {name: text.str.extract(_GRAMMARS[name]) for name in allowed}
    name = max(allowed, key=lambda g: int(matches[g]["y"].notna().sum()))  # first on a tie
    parts = matches[name]
    like = parts["y"].notna()
    example = like[like].index[0] if like.any() else None
    expected = " or ".join(_EXAMPLES[g] for g in allowed)
    rows.fail(
        ~like,
        lambda i: (
            f"cannot parse timestamp {text[i]!r}; expected {expected}"
            + (f", like {rows.at(example)} ({text[example]!r})" if example is not None else "")
        ),
    )
    dayfirst: bool | None = None
    dates = "year-first"
    if name == "day-month":
        dayfirst, dates = _settle_dayfirst(parts, text, columns.time, settings, rows)
        parts = parts.rename(columns={"a": "d", "b": "m"} if dayfirst else {"a": "m", "b": "d"})
    else:
        _no_dayfirst(settings, rows, text, "year-first")
    stamps = _from_parts(parts)
    rows.fail(stamps.isna(), lambda i: f"invalid date or time {text[i]!r}")
    has_offset, has_zone = parts["off"].notna(), parts["zone"].notna()
    _refuse_mixed(has_offset | has_zone, "a zone", text, rows)
    if has_offset.any():
        rows.fail(has_zone, lambda i: f"timestamp {text[i]!r} has a zone name, others an offset")
        return Stamps(stamps - _offsets(parts["off"]), True, None, text, dayfirst, dates)
    zones = _zone_names(parts["zone"], text, rows) if has_zone.any() else None
    return Stamps(stamps, False, zones, text, dayfirst, dates)


def _from_parts(parts: pd.DataFrame) -> pd.Series:
    """Timestamps from the named regex groups; NaT where the date or time is impossible."""
    import pandas as pd

    years = pd.to_numeric(parts["y"])
    years = years.where(years >= 100, years + np.where(years < 70, 2000, 1900))
    hour, minute, second = (pd.to_numeric(parts[g]).fillna(0) for g in ("H", "M", "S"))
    if "p" in parts:  # a 12-hour clock: 12:05 AM is 00:05, 1..12 only
        half = parts["p"].str.lower()
        twelve = half.notna()
        clock = (hour % 12 + np.where(half == "pm", 12, 0)).where(hour.between(1, 12), 99)
        hour = hour.where(~twelve, clock)  # 99: refused below
    fields = {"year": years, "month": pd.to_numeric(parts["m"]), "day": pd.to_numeric(parts["d"])}
    fields.update(hour=hour, minute=minute, second=second)
    stamps = pd.to_datetime(pd.DataFrame(fields), errors="coerce")
    stamps = stamps.where((hour < 24) & (minute < 60) & (second < 60))
    fraction = parts["f"].fillna("0").str.ljust(9, "0")
    stamps = stamps + pd.to_timedelta(pd.to_numeric(fraction), unit="ns")
    return stamps.astype("datetime64[ns]")


def _offsets(offsets: pd.Series) -> pd.Series:
    import pandas as pd

    digits = offsets.str.replace(":", "", regex=False).str.replace("Z", "+0000", regex=False)
    sign = np.where(digits.str[0] == "-", -1, 1)
    hours = pd.to_numeric(digits.str[1:3])
    minutes = pd.to_numeric(digits.str[3:5].replace("", "0")).fillna(0)
    return pd.to_timedelta(sign * (hours * 60 + minutes), unit="min")


def _zone_names(zones: pd.Series, text: pd.Series, rows: Rows) -> pd.Series:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    for zone in zones.unique():
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            rows.fail(
                zones == zone,
                lambda i: f"timestamp {text[i]!r} names an unknown time zone {zones[i]!r}",
            )
    return zones


# --- day-first or month-first -----------------------------------------------------------------


def _settle_dayfirst(
    parts: pd.DataFrame, text: pd.Series, column: str, settings: DataSettings, rows: Rows
) -> tuple[bool, str]:
    """True for day-first, False for month-first, and what settled it; refuses what neither
    the file nor the settings settle, and rows that contradict the settings or each other."""
    import pandas as pd

    first, second = pd.to_numeric(parts["a"]), pd.to_numeric(parts["b"])
    rows.fail(
        (first > 12) & (second > 12), lambda i: f"invalid date {text[i]!r}: no month above 12"
    )
    day_first, month_first = first > 12, second > 12  # rows only one reading fits
    dayfirst = settings.dayfirst
    if dayfirst is not None:
        wrong = month_first if dayfirst else day_first
        rows.fail(wrong, lambda i: _contradiction(text[i], dayfirst, first[i], second[i], rows))
        reading = "day-first" if dayfirst else "month-first"
        return dayfirst, f"{reading}: set by {rows.key('dayfirst')}: {str(dayfirst).lower()}"
    if day_first.any() and month_first.any():
        d, m = day_first[day_first].index[0], month_first[month_first].index[0]
        raise DataError(
            f"{rows.file}: column {column!r} mixes day-first and month-first dates: "
            f"{rows.at(d)} {text[d]!r} can only be day-first, {rows.at(m)} {text[m]!r} only "
            "month-first"
        )
    if day_first.any() or month_first.any():
        settled = bool(day_first.any())
        by = (day_first if settled else month_first).idxmax()
        log.info(
            "%s: dates in column %r are %s (%s reads %r)",
            rows.file,
            column,
            "day-first" if settled else "month-first",
            rows.at(by),
            text[by],
        )
        reading = "day-first" if settled else "month-first"
        return settled, f"{reading}: settled by the file ({rows.at(by)} reads {text[by]!r})"
    differ = first != second  # rows whose two readings are different dates
    if not differ.any():
        return True, "day-first: every date reads the same both ways (01/01, 02/02 ...)"
    raise DataError(_ambiguity(parts, text, column, differ, rows))


def _contradiction(text: str, dayfirst: bool, first: int, second: int, rows: Rows) -> str:
    reading = "day-first" if dayfirst else "month-first"
    month = second if dayfirst else first
    return (
        f"{text!r} cannot be {reading} (there is no month {month}), but "
        f"{rows.key('dayfirst')} is {str(dayfirst).lower()}; check the setting "
        "or the file"
    )


def _ambiguity(
    parts: pd.DataFrame, text: pd.Series, column: str, differ: pd.Series, rows: Rows
) -> str:
    index = differ[differ].index
    dates = parts["a"] + "/" + parts["b"] + "/" + parts["y"]
    other = index[dates[index] != dates[index[0]]]  # a second example on another date
    examples = []
    for i in (index[0], other[-1]) if len(other) else (index[0],):
        one = parts.loc[[i]]
        as_day = _from_parts(one.rename(columns={"a": "d", "b": "m"})).iloc[0]
        as_month = _from_parts(one.rename(columns={"a": "m", "b": "d"})).iloc[0]
        examples.append(
            f"{rows.at(i)} {text[i]!r} is {_show(as_day)} day-first or {_show(as_month)} "
            "month-first"
        )
    return (
        f"{rows.file}: the dates in column {column!r} read both ways: {'; '.join(examples)}. "
        "No date in the column has a day above 12 to settle it: set "
        f"{rows.key('dayfirst')}: false (month-first, as NinjaTrader, TradeStation and most US "
        "platforms write) or true (day-first), or give "
        f"{rows.key('timestamp_format')}"
    )


def _show(stamp: Any) -> str:
    return "an invalid date" if stamp is None or stamp != stamp else f"{stamp.day} {stamp:%b %Y}"


# --- the clock --------------------------------------------------------------------------------


def to_utc(stamps: Stamps, settings: DataSettings, rows: Rows) -> pd.Series:
    """The timestamps on the one clock: naive UTC (module docstring).

    Raises:
        DataError: ``timezone:`` set for times that carry their own zone; a time that does
            not exist in its zone, or happens twice there with nothing to tell which.
    """
    import pandas as pd

    zone = settings.timezone
    if zone is not None and (stamps.utc or stamps.zones is not None):
        first = stamps.text.index[0]
        raise DataError(
            f"{rows.where(first)}: {rows.key('timezone')} is {zone!r}, but the timestamps "
            f"carry their zone or are UTC ({stamps.text[first]!r}); timezone is for times "
            "written without one: remove it"
        )
    if stamps.zones is not None:
        groups = [
            _localize(stamps.wall[stamps.zones == z], str(z), stamps.text, rows)
            for z in stamps.zones.unique()
        ]
        return pd.concat(groups).reindex(stamps.wall.index)
    if zone is not None:
        return _localize(stamps.wall, zone, stamps.text, rows)
    return stamps.wall


def _localize(wall: pd.Series, zone: str, text: pd.Series, rows: Rows) -> pd.Series:
    if wall.empty:
        return wall
    summer = np.ones(len(wall), dtype=bool)
    forward = wall.dt.tz_localize(zone, ambiguous=summer, nonexistent="NaT")
    rows.fail(
        forward.isna(),
        lambda i: (
            f"{text[i]!r} does not exist in {zone}: the clocks jump forward an hour then "
            f"(daylight saving time); are the times in {zone}?"
        ),
    )
    try:
        local = wall.dt.tz_localize(zone, ambiguous="infer")
    except ValueError:
        twice = wall.dt.tz_localize(zone, ambiguous="NaT").isna()
        rows.fail(
            twice,
            lambda i: (
                f"{text[i]!r} happens twice in {zone} (the clocks go back an hour) and the rows "
                "around it do not tell which; keep the rows in time order, or write the times "
                "in UTC or with an offset"
            ),
        )
        raise
    return local.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
