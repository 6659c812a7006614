"""Market catalogue: contract specs and data sources loaded from ``config/markets.yaml``.

The YAML file has two top-level sections:

``defaults``
    ``bar_interval``, ``n_bars``, ``seed`` and ``start`` of the synthetic generator, the
    chronological ``split`` (``train``/``validation``/``test`` fractions and ``gap_bars``),
    and ``data_cache``, where the parsed bars of data files and their features are cached
    (:mod:`tuner.trading.data_cache`): ``auto`` (the default: ``.data-cache`` in the run's
    models root), ``false`` (no cache), or a folder (relative to the YAML file's folder).
``markets``
    One entry per market: ``tick_size``, ``tick_value`` (dollars per tick per contract),
    ``commission_per_side`` (dollars per contract on every fill, so a round turn costs twice
    that), ``slippage_ticks`` (ticks lost on every fill), ``session`` and ``data``, which is
    either ``{synthetic: {...}}`` or ``{file: path}`` (CSV or Parquet; a relative path is
    resolved against the YAML file's folder) with, beside ``file:``, the keys of
    :mod:`tuner.trading.data_settings` (``format``, ``columns``, ``timezone`` ...). A market
    may override ``split``; its synthetic block may override ``n_bars``, ``bar_interval`` and
    ``seed``.

Everything is loaded into frozen dataclasses; unknown keys, wrong types, NaN and out-of-range
values are refused with a :class:`ConfigError` naming the key path, the value and what is
allowed, e.g. ``markets.NQ.tick_size must be > 0, got -0.25``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.naming import validate_market
from checkpointing.validation import Section, read_yaml
from tuner.trading.data_settings import DATA_KEYS, DataSettings, parse_data_settings

__all__ = [
    "ConfigError",
    "FileSource",
    "MarketSpec",
    "SplitSpec",
    "SyntheticSource",
    "default_split",
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
        settings: How to read it (the other ``data:`` keys); the defaults detect everything.
        cache: Where its parsed bars are cached (``defaults.data_cache``): True beside the
            run's models root, False nowhere, or a folder.
    """

    path: Path
    configured: str
    settings: DataSettings = field(default_factory=DataSettings)
    cache: Path | bool = True


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
        ConfigError: if the file is missing, is not valid YAML, or any value is invalid; the
            message starts with the file name.
    """
    file = Path(path)
    doc = read_yaml(file)
    if doc is None:
        raise ConfigError(
            f"{os.fspath(file)}: the file is empty; expected 'defaults:' and 'markets:' sections"
        )
    try:
        return _parse_markets_file(Section(doc, "<top level>"), base_dir=file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{os.fspath(file)}: {exc}") from None


def default_split(path: str | os.PathLike[str]) -> SplitSpec:
    """The ``defaults.split`` of a markets file: the split of a market that sets none.

    Raises:
        ConfigError: as :func:`load_markets`; the whole file is validated.
    """
    load_markets(path)
    doc = Section(read_yaml(Path(path)), "<top level>")
    return _parse_split(Section(doc.raw("defaults"), "defaults").section("split"))


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

_DEFAULT_KEYS = ("bar_interval", "n_bars", "seed", "start", "split", "data_cache")
_SPLIT_KEYS = ("train", "validation", "test", "gap_bars")
_MARKET_KEYS = (
    "tick_size",
    "tick_value",
    "commission_per_side",
    "slippage_ticks",
    "session",
    "data",
    "description",
    "split",
)
_SYNTHETIC_KEYS = (
    "start_price",
    "annual_drift",
    "annual_volatility",
    "trend_persistence",
    "mean_regime_bars",
    "n_bars",
    "bar_interval",
    "seed",
)


def _parse_markets_file(top: Section, base_dir: Path) -> dict[str, MarketSpec]:
    top.only("defaults", "markets")
    defaults = Section(top.raw("defaults"), "defaults")
    defaults.only(*_DEFAULT_KEYS)
    split = _parse_split(defaults.section("split"))
    bar_interval = parse_bar_interval(defaults.raw("bar_interval"), defaults.where("bar_interval"))
    n_bars = defaults.get_int("n_bars", ge=100)
    seed = defaults.get_int("seed", ge=0)
    start = _parse_start(defaults.raw("start"), defaults.where("start"))
    cache = _parse_cache(defaults, base_dir)

    listed = Section(top.raw("markets"), "markets")
    if not listed.data:
        raise ConfigError("markets must list at least one market, got {}")
    markets: dict[str, MarketSpec] = {}
    for name in listed.names():
        validate_market_name(name, listed.where(name))
        m = listed.section(name)
        m.only(*_MARKET_KEYS)
        data = _parse_data(
            m.section("data"),
            base_dir=base_dir,
            n_bars=n_bars,
            bar_interval=bar_interval,
            seed=seed,
            start=start,
        )
        if isinstance(data, FileSource):
            data = replace(data, cache=cache)
        markets[name] = MarketSpec(
            name=name,
            tick_size=m.get_float("tick_size", gt=0.0),
            tick_value=m.get_float("tick_value", gt=0.0),
            commission_per_side=m.get_float("commission_per_side", ge=0.0),
            slippage_ticks=m.get_float("slippage_ticks", ge=0.0),
            session=m.get_str("session"),
            data=data,
            split=_parse_split(m.section("split")) if m.has("split") else split,
            description=m.get_str("description", "", allow_empty=True),
        )
    log.debug("loaded %d markets: %s", len(markets), ", ".join(markets))
    return markets


def _parse_split(sec: Section) -> SplitSpec:
    sec.only(*_SPLIT_KEYS)
    train = sec.get_float("train", gt=0.0, lt=1.0)
    validation = sec.get_float("validation", gt=0.0, lt=1.0)
    test = sec.get_float("test", ge=0.0, lt=1.0)
    total = train + validation + test
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{sec.path} must add up to 1 (train + validation + test), got "
            f"{train!r} + {validation!r} + {test!r} = {total!r}"
        )
    gap = sec.get_int("gap_bars", ge=0)
    return SplitSpec(train=train, validation=validation, test=test, gap_bars=gap)


def _parse_cache(defaults: Section, base_dir: Path) -> Path | bool:
    value = defaults.raw("data_cache", "auto")
    if value is True or value == "auto":
        return True
    if value is False:
        return False
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(
            f"{defaults.where('data_cache')} must be auto, false or a folder, got {value!r}"
        )
    folder = Path(value).expanduser()
    return folder if folder.is_absolute() else base_dir / folder


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
    sec: Section,
    *,
    base_dir: Path,
    n_bars: int,
    bar_interval: timedelta,
    seed: int,
    start: datetime,
) -> SyntheticSource | FileSource:
    sec.only("synthetic", "file", *DATA_KEYS)
    if sec.has("synthetic") == sec.has("file"):
        sources = sorted(k for k in sec.data if k in ("synthetic", "file"))
        raise ConfigError(
            f"{sec.path} must have exactly one key, 'synthetic' or 'file', got {sources!r}"
        )
    if sec.has("file"):
        configured = sec.get_str("file")
        path = Path(configured).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        return FileSource(path=path, configured=configured, settings=parse_data_settings(sec))
    for key in DATA_KEYS:
        if sec.has(key):
            raise ConfigError(
                f"{sec.where(key)} is not a setting here: it tells how to read a data file "
                "(beside 'file:'), and this market's data is synthetic"
            )

    s = sec.section("synthetic")
    s.only(*_SYNTHETIC_KEYS)
    return SyntheticSource(
        start_price=s.get_float("start_price", gt=0.0),
        annual_drift=s.get_float("annual_drift", ge=-1.0, le=1.0),
        annual_volatility=s.get_float("annual_volatility", gt=0.0, le=2.0),
        trend_persistence=s.get_float("trend_persistence", ge=0.0, le=0.95),
        mean_regime_bars=s.get_float("mean_regime_bars", ge=1.0),
        n_bars=s.get_int("n_bars", n_bars, ge=100),
        bar_interval=(
            parse_bar_interval(s.raw("bar_interval"), s.where("bar_interval"))
            if s.has("bar_interval")
            else bar_interval
        ),
        seed=s.get_int("seed", seed, ge=0),
        start=start,
    )
