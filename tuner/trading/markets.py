"""Market catalogue: contract specs and data sources loaded from ``config/markets.yaml``.

The YAML file has two top-level sections:

``defaults``
    ``bar_interval``, ``n_bars``, ``seed`` and ``start`` of the synthetic generator, and the
    chronological ``split`` (``train``/``validation``/``test`` fractions and ``gap_bars``).
``markets``
    One entry per market: ``tick_size``, ``tick_value`` (dollars per tick per contract),
    ``commission_per_side`` (dollars per contract on every fill, so a round turn costs twice
    that), ``slippage_ticks`` (ticks lost on every fill), ``session`` and ``data``, which is
    either ``{synthetic: {...}}`` or ``{file: path}`` (CSV or Parquet; a relative path is
    resolved against the YAML file's folder). A market may override ``split``; its synthetic
    block may override ``n_bars``, ``bar_interval`` and ``seed``.

Everything is loaded into frozen dataclasses; unknown keys, wrong types, NaN and out-of-range
values are refused with a :class:`ConfigError` naming the key path, the value and what is
allowed, e.g. ``markets.NQ.tick_size must be > 0, got -0.25``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.naming import validate_market

__all__ = [
    "ConfigError",
    "FileSource",
    "MarketSpec",
    "SplitSpec",
    "SyntheticSource",
    "get_market",
    "load_markets",
    "parse_bar_interval",
    "validate_market_name",
]

log = logging.getLogger(__name__)

_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*(s|sec|min|h|d)\s*$")
_INTERVAL_UNITS = {"s": 1, "sec": 1, "min": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class SplitSpec:
    """Chronological split of a market's bars.

    Attributes:
        train: Fraction of the usable bars given to training.
        validation: Fraction given to validation (checkpoint metrics).
        test: Fraction held out for the final test.
        gap_bars: Bars left out between train and validation and between validation and
            test, so that the return and range lookbacks of one part (up to 64 bars) stay
            out of the previous part.
    """

    train: float
    validation: float
    test: float
    gap_bars: int


@dataclass(frozen=True)
class SyntheticSource:
    """Parameters of the seeded regime-switching price generator (see ``tuner.trading.data``).

    Attributes:
        start_price: First close, in price units.
        annual_drift: Long-run drift of log prices per year (0.08 = +8 %/year).
        annual_volatility: Volatility of log returns per year (0.2 = 20 %).
        trend_persistence: Autocorrelation of bar returns in the trending regimes, in
            ``[0, 0.95]``; the range-bound regime mean-reverts with half of it.
        mean_regime_bars: Average number of bars a regime lasts.
        n_bars: Number of bars generated.
        bar_interval: Time between bars (weekdays only, around the clock).
        seed: Data seed (not the training seed): same seed, same bars.
        start: Timestamp of the first bar.
    """

    start_price: float
    annual_drift: float
    annual_volatility: float
    trend_persistence: float
    mean_regime_bars: float
    n_bars: int
    bar_interval: timedelta
    seed: int
    start: datetime


@dataclass(frozen=True)
class FileSource:
    """An OHLCV file (CSV or Parquet) exported from a data vendor.

    Attributes:
        path: Absolute path of the file.
        configured: The path as written in the YAML file (for error messages).
    """

    path: Path
    configured: str


@dataclass(frozen=True)
class MarketSpec:
    """One futures market: its contract, its costs and where its bars come from.

    Attributes:
        name: Market symbol, e.g. ``"NQ"``.
        tick_size: Minimum price increment, in price units.
        tick_value: Dollars per tick per contract.
        commission_per_side: Dollars per contract charged on every fill (entry or exit).
        slippage_ticks: Ticks lost on every fill.
        session: Trading session, free text (informational).
        data: Where the bars come from.
        split: Chronological train/validation/test split.
        description: Free text.
    """

    name: str
    tick_size: float
    tick_value: float
    commission_per_side: float
    slippage_ticks: float
    session: str
    data: SyntheticSource | FileSource
    split: SplitSpec
    description: str = ""

    @property
    def point_value(self) -> float:
        """Dollars per one full price unit per contract (``tick_value / tick_size``)."""
        return self.tick_value / self.tick_size

    @property
    def cost_per_contract_side(self) -> float:
        """Dollars lost per contract on one fill: commission plus slippage."""
        return self.commission_per_side + self.slippage_ticks * self.tick_value

    @property
    def round_turn_cost(self) -> float:
        """Dollars lost per contract on a full round trip (entry and exit)."""
        return 2.0 * self.cost_per_contract_side


def validate_market_name(name: object, where: str = "market name") -> str:
    """Return ``name`` if it is a valid market name, else raise :class:`ConfigError`.

    Args:
        name: The candidate name.
        where: Key path or description used in the error message.
    """
    try:
        return validate_market(name)
    except CheckpointNameError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_bar_interval(value: object, where: str = "bar_interval") -> timedelta:
    """Parse an interval such as ``"5min"``, ``"30s"``, ``"1h"`` or ``"1d"``.

    Raises:
        ConfigError: for anything else, or an interval of zero.
    """
    match = _INTERVAL_RE.match(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(
            f"{where} must be a positive count followed by s, min, h or d "
            f"(e.g. '5min'), got {value!r}"
        )
    return timedelta(seconds=int(match.group(1)) * _INTERVAL_UNITS[match.group(2)])


def load_markets(path: str | os.PathLike[str]) -> dict[str, MarketSpec]:
    """Load and validate a markets file.

    Args:
        path: The YAML file (``config/markets.yaml``).

    Returns:
        Market name -> spec, in file order, with the ``defaults`` merged in.

    Raises:
        ConfigError: if the file is missing, is not valid YAML, or any value is invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or NUL in the path
        raise ConfigError(f"cannot read markets file {str(file)!r}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{str(file)!r} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{str(file)!r} is not valid YAML: nested too deeply") from None
    try:
        return _parse_markets_file(raw, base_dir=file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


def get_market(markets: Mapping[str, MarketSpec], name: str) -> MarketSpec:
    """Return the spec of market ``name``.

    Raises:
        ConfigError: if the name is malformed or not in ``markets`` (the message lists the
            known markets).
    """
    validate_market_name(name)
    try:
        return markets[name]
    except KeyError:
        known = ", ".join(markets) or "(none)"
        raise ConfigError(f"unknown market {name!r}; known markets: {known}") from None


# --- parsing ------------------------------------------------------------------------------

_DEFAULT_KEYS = {"bar_interval", "n_bars", "seed", "start", "split"}
_SPLIT_KEYS = {"train", "validation", "test", "gap_bars"}
_MARKET_REQUIRED = {
    "tick_size",
    "tick_value",
    "commission_per_side",
    "slippage_ticks",
    "session",
    "data",
}
_MARKET_OPTIONAL = {"description", "split"}
_SYNTHETIC_REQUIRED = {
    "start_price",
    "annual_drift",
    "annual_volatility",
    "trend_persistence",
    "mean_regime_bars",
}
_SYNTHETIC_OPTIONAL = {"n_bars", "bar_interval", "seed"}


def _parse_markets_file(raw: object, base_dir: Path) -> dict[str, MarketSpec]:
    top = require_mapping(raw, "(top level)")
    check_keys(top, "(top level)", required={"defaults", "markets"})
    defaults = require_mapping(top["defaults"], "defaults")
    check_keys(defaults, "defaults", required=_DEFAULT_KEYS)
    split = _parse_split(defaults["split"], "defaults.split")
    bar_interval = parse_bar_interval(defaults["bar_interval"], "defaults.bar_interval")
    n_bars = get_int(defaults, "n_bars", "defaults", ge=100)
    seed = get_int(defaults, "seed", "defaults", ge=0)
    start = _parse_start(defaults["start"], "defaults.start")

    markets_raw = require_mapping(top["markets"], "markets")
    if not markets_raw:
        raise ConfigError("markets must list at least one market, got {}")
    markets: dict[str, MarketSpec] = {}
    for name, entry in markets_raw.items():
        if not isinstance(name, str):
            raise ConfigError(
                f"markets: market names must be strings (quote it in YAML), got {name!r}"
            )
        validate_market_name(name, f"markets.{name}")
        where = f"markets.{name}"
        m = require_mapping(entry, where)
        check_keys(m, where, required=_MARKET_REQUIRED, optional=_MARKET_OPTIONAL)
        data = _parse_data(
            m["data"],
            f"{where}.data",
            base_dir=base_dir,
            n_bars=n_bars,
            bar_interval=bar_interval,
            seed=seed,
            start=start,
        )
        markets[name] = MarketSpec(
            name=name,
            tick_size=get_float(m, "tick_size", where, gt=0.0),
            tick_value=get_float(m, "tick_value", where, gt=0.0),
            commission_per_side=get_float(m, "commission_per_side", where, ge=0.0),
            slippage_ticks=get_float(m, "slippage_ticks", where, ge=0.0),
            session=get_str(m, "session", where),
            data=data,
            split=_parse_split(m["split"], f"{where}.split") if "split" in m else split,
            description=get_str(m, "description", where, allow_empty=True)
            if "description" in m
            else "",
        )
    log.debug("loaded %d markets: %s", len(markets), ", ".join(markets))
    return markets


def _parse_split(raw: object, where: str) -> SplitSpec:
    m = require_mapping(raw, where)
    check_keys(m, where, required=_SPLIT_KEYS)
    train = get_float(m, "train", where, gt=0.0, lt=1.0)
    validation = get_float(m, "validation", where, gt=0.0, lt=1.0)
    test = get_float(m, "test", where, ge=0.0, lt=1.0)
    total = train + validation + test
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{where}: train + validation + test must add up to 1, got "
            f"{train!r} + {validation!r} + {test!r} = {total!r}"
        )
    gap = get_int(m, "gap_bars", where, ge=0)
    return SplitSpec(train=train, validation=validation, test=test, gap_bars=gap)


def _parse_start(raw: object, where: str) -> datetime:
    value: datetime | None = None
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, date):  # YAML reads 2020-01-06 as a date
        value = datetime(raw.year, raw.month, raw.day)
    elif isinstance(raw, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(raw)
    if value is None:
        raise ConfigError(f"{where} must be an ISO date or timestamp, e.g. 2020-01-06, got {raw!r}")
    return value.replace(tzinfo=None)


def _parse_data(
    raw: object,
    where: str,
    *,
    base_dir: Path,
    n_bars: int,
    bar_interval: timedelta,
    seed: int,
    start: datetime,
) -> SyntheticSource | FileSource:
    m = require_mapping(raw, where)
    if len(m) != 1 or next(iter(m)) not in ("synthetic", "file"):
        raise ConfigError(
            f"{where} must have exactly one key, 'synthetic' or 'file', got {sorted(map(str, m))!r}"
        )
    if "file" in m:
        configured = m["file"]
        if not isinstance(configured, str) or not configured.strip():
            raise ConfigError(f"{where}.file must be a non-empty path string, got {configured!r}")
        if "\x00" in configured:
            raise ConfigError(f"{where}.file must not contain NUL, got {configured!r}")
        path = Path(configured).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        return FileSource(path=path, configured=configured)

    where = f"{where}.synthetic"
    s = require_mapping(m["synthetic"], where)
    check_keys(s, where, required=_SYNTHETIC_REQUIRED, optional=_SYNTHETIC_OPTIONAL)
    return SyntheticSource(
        start_price=get_float(s, "start_price", where, gt=0.0),
        annual_drift=get_float(s, "annual_drift", where, ge=-1.0, le=1.0),
        annual_volatility=get_float(s, "annual_volatility", where, gt=0.0, le=2.0),
        trend_persistence=get_float(s, "trend_persistence", where, ge=0.0, le=0.95),
        mean_regime_bars=get_float(s, "mean_regime_bars", where, ge=1.0),
        n_bars=get_int(s, "n_bars", where, ge=100) if "n_bars" in s else n_bars,
        bar_interval=(
            parse_bar_interval(s["bar_interval"], f"{where}.bar_interval")
            if "bar_interval" in s
            else bar_interval
        ),
        seed=get_int(s, "seed", where, ge=0) if "seed" in s else seed,
        start=start,
    )


# --- validation helpers (shared with tuner.trading.advisor) ---------------------------------------


def require_mapping(value: object, where: str) -> Mapping[str, Any]:
    """Return ``value`` if it is a mapping, else raise :class:`ConfigError`."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    return value


def check_keys(
    mapping: Mapping[str, Any],
    where: str,
    *,
    required: Iterable[str] = (),
    optional: Iterable[str] = (),
) -> None:
    """Refuse unknown keys and report missing required ones."""
    required = set(required)
    allowed = required | set(optional)
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r}; allowed keys: {', '.join(sorted(allowed))}"
            )
    missing = sorted(required - set(mapping))
    if missing:
        raise ConfigError(f"{where}: missing required key(s): {', '.join(missing)}")


def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


def _check_bounds(
    value: float,
    path: str,
    gt: float | None,
    ge: float | None,
    lt: float | None,
    le: float | None,
) -> None:
    ok = (
        (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )
    if not ok:
        raise ConfigError(f"{path} must be {_bounds_text(gt, ge, lt, le)}, got {value!r}")


def get_float(
    mapping: Mapping[str, Any],
    key: str,
    where: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """Read a finite number (int or float, not bool) and check its bounds."""
    path = f"{where}.{key}"
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{path} must be a finite number, got {value!r}")
    _check_bounds(value, path, gt, ge, lt, le)
    return value


def get_int(
    mapping: Mapping[str, Any],
    key: str,
    where: str,
    *,
    ge: int | None = None,
    le: int | None = None,
) -> int:
    """Read an integer (not bool, not float) and check its bounds."""
    path = f"{where}.{key}"
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path} must be an integer, got {value!r}")
    _check_bounds(value, path, None, ge, None, le)
    return value


def get_str(mapping: Mapping[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    """Read a string (non-empty unless ``allow_empty``)."""
    path = f"{where}.{key}"
    value = mapping[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        kind = "a string" if allow_empty else "a non-empty string"
        raise ConfigError(f"{path} must be {kind}, got {value!r}")
    return value


def get_bool(mapping: Mapping[str, Any], key: str, where: str) -> bool:
    """Read a boolean (``true``/``false``)."""
    value = mapping[key]
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value
