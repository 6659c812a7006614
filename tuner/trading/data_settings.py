"""How to read a market's data file: the ``data:`` keys beside ``file:`` in ``markets.yaml``.

Every key is optional; the loader (:func:`tuner.trading.ohlcv.load_ohlcv`) detects the rest
from the file's shape and refuses what it cannot settle. ::

    data:
      file: ../data/ES_5min.csv    # a US platform's Date,Time export
      timezone: America/Chicago    # the zone of times written without one
      dayfirst: false              # 03/01/2023 is 1 March (or: timestamp_format)

    data:
      file: ../data/glbx-mdp3.ohlcv-1m.csv   # every NQ contract of the year
      roll: volume                 # one continuous series (or: calendar)
      adjust: backward             # the default: ratio back-adjusted (or: none)

Keys:
    format: ``auto`` (detect), ``ninjatrader`` (no header, ``;``, ``yyyyMMdd HHmmss``), ``ib``
        (Interactive Brokers: ``yyyyMMdd  HH:mm:ss`` with an optional zone name), ``databento``
        (``ts_event`` in nanoseconds since the epoch, integer prices of 1e-9); a declared
        format holds the file's timestamps to that platform's form.
    columns: which column holds what: ``time`` (or ``date`` and ``time``), ``open``,
        ``high``, ``low``, ``close`` (``last`` is taken as ``close``), ``volume``, ``symbol``;
        each a column name, or a 1-based column number.
    timestamp_format: a ``strptime`` format every timestamp must match (for separate date and
        time columns: both joined by one space).
    dayfirst: ``true`` for 03/01/2023 = 3 January, ``false`` for 1 March.
    timezone: IANA zone (``America/Chicago``) of timestamps written without a zone.
    price_scale: factor applied to open, high, low and close (``1.0e-9`` for integer prices;
        in YAML ``1e-9`` without a dot is text).
    header: ``false`` when the file has no header line, ``true`` when it has one.
    symbol: keep only the rows of this contract (``symbol`` or ``instrument_id`` column).
    roll: ``volume`` or ``calendar``: join the contracts of the file into one continuous
        series instead (:mod:`tuner.trading.rolls`); not with ``symbol``.
    roll_days_before_expiry: ``roll: calendar`` only: calendar days before the held
        contract's last day in the file that the series moves to the next (default 8).
    adjust: with ``roll``: ``backward`` (default; ratio back-adjusted prices) or ``none``
        (raw prices, rolls marked so no gap counts as a move).
    roll_gap: with ``adjust: none``: ``skip`` (default) or ``keep``, which leaves each gap in
        the series as a price move (roll handling off: to see what it is worth).

Validation follows every config file: unknown keys get the closest known one, bad values are
named with what is allowed (``markets.NQ.data.timezone must be an IANA time zone ...``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import UTC, datetime

from checkpointing.errors import ConfigError
from checkpointing.validation import Section, suggest

__all__ = [
    "ADJUSTMENTS",
    "COLUMN_ROLES",
    "DATA_KEYS",
    "FORMATS",
    "ROLLS",
    "ROLL_GAPS",
    "DataSettings",
    "parse_data_settings",
]

FORMATS = ("auto", "ninjatrader", "ib", "databento")
ROLLS = ("volume", "calendar")
ADJUSTMENTS = ("backward", "none")
ROLL_GAPS = ("skip", "keep")
_ROLL_KEYS = ("roll_days_before_expiry", "adjust", "roll_gap")
COLUMN_ROLES = ("time", "date", "open", "high", "low", "close", "volume", "symbol")
DATA_KEYS = (
    "format",
    "columns",
    "timestamp_format",
    "dayfirst",
    "timezone",
    "price_scale",
    "header",
    "symbol",
    "roll",
    *_ROLL_KEYS,
)


@dataclass(frozen=True)
class DataSettings:
    """What the loader cannot detect in a data file (module docstring); defaults detect all.

    Attributes:
        format: One of :data:`FORMATS`.
        columns: ``(role, column)`` pairs in :data:`COLUMN_ROLES` order; a column is a name
            or a 1-based number.
        timestamp_format: ``strptime`` format of the timestamps, or None.
        dayfirst: True (31/12/2023), False (12/31/2023), or None (the file must settle it).
        timezone: IANA zone of naive timestamps, or None (taken as UTC).
        price_scale: Factor applied to prices, or None (1; Databento integers: 1e-9).
        header: Whether the first line names the columns; None detects it.
        symbol: The contract to keep in a file holding several, or None.
        roll: ``volume`` or ``calendar`` (:data:`ROLLS`): join the contracts; None: one only.
        roll_days_before_expiry: ``roll: calendar``'s days before the expiry.
        adjust: ``backward`` or ``none`` (:data:`ADJUSTMENTS`).
        roll_gap: ``skip`` or ``keep`` (:data:`ROLL_GAPS`); ``keep`` with ``adjust: none`` only.
    """

    format: str = "auto"
    columns: tuple[tuple[str, str | int], ...] = ()
    timestamp_format: str | None = None
    dayfirst: bool | None = None
    timezone: str | None = None
    price_scale: float | None = None
    header: bool | None = None
    symbol: str | None = None
    roll: str | None = None
    roll_days_before_expiry: int = 8
    adjust: str = "backward"
    roll_gap: str = "skip"

    def column(self, role: str) -> str | int | None:
        """The column configured for ``role`` (one of :data:`COLUMN_ROLES`), or None."""
        return dict(self.columns).get(role)


def parse_data_settings(sec: Section) -> DataSettings:
    """Read the ``data:`` keys of a file market from ``sec`` (other keys are the caller's).

    Raises:
        ConfigError: naming the key path, the value and what is allowed.
    """
    if sec.has("timestamp_format") and sec.has("dayfirst"):
        raise ConfigError(
            f"{sec.path} sets both timestamp_format and dayfirst; keep one "
            "(timestamp_format already says where the day is)"
        )
    roll = _parse_roll(sec)
    return DataSettings(
        format=sec.one_of("format", FORMATS, "auto"),
        columns=_parse_columns(sec) if sec.has("columns") else (),
        timestamp_format=_parse_format(sec) if sec.has("timestamp_format") else None,
        dayfirst=sec.get_bool("dayfirst") if sec.has("dayfirst") else None,
        timezone=_parse_timezone(sec) if sec.has("timezone") else None,
        price_scale=_parse_scale(sec),
        header=sec.get_bool("header") if sec.has("header") else None,
        symbol=_parse_symbol(sec) if sec.has("symbol") else None,
        roll=roll,
        roll_days_before_expiry=sec.get_int("roll_days_before_expiry", 8, ge=0, le=366),
        adjust=sec.one_of("adjust", ADJUSTMENTS, "backward"),
        roll_gap=sec.one_of("roll_gap", ROLL_GAPS, "skip"),
    )


def _parse_roll(sec: Section) -> str | None:
    """``roll:``, after refusing the keys that do not go with it."""
    if not sec.has("roll"):
        for key in _ROLL_KEYS:
            if sec.has(key):
                raise ConfigError(
                    f"{sec.where(key)} applies to contracts joined by roll; set "
                    f"{sec.path}.roll to volume or calendar, or remove {key}"
                )
        return None
    roll = sec.one_of("roll", ROLLS)
    if sec.has("symbol"):
        raise ConfigError(
            f"{sec.path} sets both symbol and roll; keep one (symbol keeps one contract, "
            "roll joins them all into one series)"
        )
    if sec.has("roll_days_before_expiry") and roll != "calendar":
        raise ConfigError(
            f"{sec.where('roll_days_before_expiry')} applies to roll: calendar; this market "
            f"rolls by {roll}"
        )
    if sec.raw("roll_gap", "skip") == "keep" and sec.raw("adjust", "backward") != "none":
        raise ConfigError(
            f"{sec.where('roll_gap')} is keep, which needs {sec.path}.adjust: none: "
            "back-adjusted prices have no gap to keep"
        )
    return roll


def _parse_columns(sec: Section) -> tuple[tuple[str, str | int], ...]:
    columns = sec.section("columns")
    pairs: dict[str, str | int] = {}
    for role in columns.names():
        where = columns.where(role)
        if role not in (*COLUMN_ROLES, "last"):
            raise ConfigError(
                f"unknown key {where}{suggest(role, COLUMN_ROLES)}; "
                f"known keys: {', '.join(COLUMN_ROLES)} (and last, taken as close)"
            )
        name = "close" if role == "last" else role
        if name in pairs:
            raise ConfigError(f"{columns.path} gives close twice (close and last); keep one")
        value = columns.raw(role)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(
                f"{where} must be a column name or a 1-based column number, got {value!r}"
            )
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"{where} must be a column name or a number >= 1, got {value!r}")
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{where} must be a non-empty column name, got {value!r}")
        pairs[name] = value
    return tuple((role, pairs[role]) for role in COLUMN_ROLES if role in pairs)


def _parse_format(sec: Section) -> str:
    fmt = sec.get_str("timestamp_format")
    probe = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
    try:
        ok = "%" in fmt and datetime.strptime(probe.strftime(fmt), fmt) is not None
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            f"{sec.where('timestamp_format')} must be a strptime format such as "
            f"'%m/%d/%Y %H:%M:%S', got {fmt!r}"
        )
    return fmt


def _parse_scale(sec: Section) -> float | None:
    value = sec.raw("price_scale", None)
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            pass
        else:  # YAML 1.1 reads 1e-9 (no dot) as text
            raise ConfigError(
                f"{sec.where('price_scale')} must be a number, got {value!r}: YAML reads a "
                "number without a dot as text, write 1.0e-9"
            )
    return sec.get_float_or_none("price_scale", None, gt=0.0)


def _parse_timezone(sec: Section) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

    zone = sec.get_str("timezone")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(zone, sorted(available_timezones()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{sec.where('timezone')} must be an IANA time zone such as 'America/Chicago', "
            f"got {zone!r}{hint}"
        ) from None
    return zone


def _parse_symbol(sec: Section) -> str:
    value = sec.raw("symbol")
    if isinstance(value, int) and not isinstance(value, bool):  # an instrument_id
        return str(value)
    return sec.get_str("symbol")
