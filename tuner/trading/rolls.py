"""Contract rolls: a file of several contracts joined into one continuous series.

A vendor's futures file (Databento, ...) often holds every contract of a period, each row
naming its own in a ``symbol`` or ``instrument_id`` column. ``data: roll:`` joins them: one
contract is held each day, and the series moves to the next one on the rule's day::

    data:
      file: ../data/glbx-mdp3.ohlcv-1m.csv
      roll: volume          # or: calendar (with roll_days_before_expiry: 8)
      adjust: backward      # the default; or: none

The rules (each a small frozen object whose one method, :meth:`held`, is a pure function of
the contracts' daily volumes, like the retention policies of :mod:`checkpointing.policies`):

* :class:`VolumeRoll` (``roll: volume``): move to a later contract the day after it traded
  more than the one held (known at that day's end, so no bar looks into the future); never
  back to a contract left.
* :class:`CalendarRoll` (``roll: calendar``): move ``days_before_expiry`` calendar days
  before the held contract's expiry (default 8: CME's roll date for the equity index futures,
  the Thursday 8 days before the third-Friday expiry). A contract's expiry is the last day it
  trades in the file; one that trades to the file's end is never rolled off.

Days are UTC dates, the loader's one clock (for CME Globex a day starts an hour or two into
the evening session, when little trades); a move takes effect at the first bar of a day. The
next contract is the one that expires next; among those that trade to the file's end (whose
expiry the file does not show), the one that traded most the day before.

The gap. At a roll the two contracts differ in price by their carry, which nobody earns. It is
measured as ``ratio``, the new contract's close over the old one's at the last time before the
move that both traded (with no such time: the new contract's first open over the old one's
last close, as if the market stood still). ``adjust:`` says what becomes of it:

* ``backward`` (default): ratio back-adjustment. Every bar before a roll is multiplied by its
  ratio, so the series is continuous, returns are exact and prices stay > 0; dollar moves
  before the last roll are off by the product of the later ratios (a few percent).
* ``none``: raw prices. :attr:`Bars.roll_gap <tuner.trading.bars.Bars.roll_gap>` marks each
  roll with the gap ``close[t - 1] * (ratio - 1)``, and the environment and the features take
  it out of the bar's move; ``roll_gap: keep`` leaves it in (no marks: a position held across
  the roll earns or loses the gap, as a naive splice of the contracts would; to see what roll
  handling is worth, never to train on).

:func:`join_contracts` does the joining for :func:`tuner.trading.ohlcv.load_ohlcv` and logs
each roll (INFO); the :class:`Roll` records go into its :class:`~tuner.trading.ohlcv.LoadReport`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tuner.trading.data_settings import DataSettings

__all__ = [
    "CalendarRoll",
    "ContractDays",
    "Joined",
    "Roll",
    "RollRule",
    "VolumeRoll",
    "join_contracts",
    "roll_rule",
]

log = logging.getLogger(__name__)

_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True, eq=False)
class ContractDays:
    """A file's contracts day by day, what a rule decides on.

    Attributes:
        days: UTC dates (days since 1970-01-01) on which any contract has a bar, ascending.
        volume: ``(len(days), n_contracts)``: each contract's volume on each day.
        trades: ``(len(days), n_contracts)``: whether the contract has a bar that day.
    """

    days: NDArray[np.int64]
    volume: NDArray[np.float64]
    trades: NDArray[np.bool_]

    @property
    def first(self) -> NDArray[np.intp]:
        """Index of each contract's first day."""
        return np.argmax(self.trades, axis=0)

    @property
    def last(self) -> NDArray[np.intp]:
        """Index of each contract's last day (its expiry, when before the file's end)."""
        return len(self.days) - 1 - np.argmax(self.trades[::-1], axis=0)

    def next_contract(self, held: int, day: int, left: NDArray[np.bool_]) -> int | None:
        """The contract that comes after ``held`` on ``day``: one that has started trading,
        expires no earlier, and was never held and left; the first to expire, then the one
        most traded the day before. None when there is none."""
        first, last = self.first, self.last
        candidates = (~left) & (first <= day) & (last >= max(day, int(last[held])))
        candidates[held] = False
        if not candidates.any():
            return None
        ranked = np.lexsort((-self.volume[max(day - 1, 0)], last))  # last key sorts first
        return int(next(k for k in ranked if candidates[k]))


@dataclass(frozen=True)
class VolumeRoll:
    """``roll: volume``: move to a later contract the day after it out-trades the one held."""

    def held(self, contracts: ContractDays) -> NDArray[np.intp]:
        """The contract held on each day; never one already left."""
        volume, first, last = contracts.volume, contracts.first, contracts.last
        n_days, n_contracts = volume.shape
        left = np.zeros(n_contracts, dtype=bool)
        held = np.empty(n_days, dtype=np.intp)
        current = int(np.argmax(volume[0]))
        for day in range(n_days):
            if day > 0:
                before = volume[day - 1]
                later = (~left) & (first <= day) & (last >= max(day, int(last[current])))
                later[current] = False
                busier = later & (before > before[current])
                if busier.any() or last[current] < day:
                    best = _most(before, busier if busier.any() else later)
                    if best is not None:
                        left[current] = True
                        current = best
            held[day] = current
        return held


@dataclass(frozen=True)
class CalendarRoll:
    """``roll: calendar``: move ``days_before_expiry`` calendar days before the held
    contract's last day in the file (never, for a contract that trades to the file's end)."""

    days_before_expiry: int = 8

    def held(self, contracts: ContractDays) -> NDArray[np.intp]:
        """The contract held on each day."""
        days, last = contracts.days, contracts.last
        n_days, n_contracts = contracts.volume.shape
        left = np.zeros(n_contracts, dtype=bool)
        held = np.empty(n_days, dtype=np.intp)
        start = np.lexsort((-contracts.volume[0], last))
        current = int(next(k for k in start if contracts.trades[0, k]))
        for day in range(n_days):
            while last[current] < n_days - 1 and (
                days[day] >= days[last[current]] - self.days_before_expiry
            ):
                following = contracts.next_contract(current, day, left)
                if following is None:
                    break
                left[current] = True
                current = following
            held[day] = current
        return held


RollRule = VolumeRoll | CalendarRoll


def _most(volume: NDArray[np.float64], among: NDArray[np.bool_]) -> int | None:
    if not among.any():
        return None
    return int(np.flatnonzero(among)[np.argmax(volume[among])])


def roll_rule(settings: DataSettings) -> RollRule | None:
    """The rule ``settings`` name (``roll:``), or None for a file of one contract."""
    if settings.roll == "volume":
        return VolumeRoll()
    if settings.roll == "calendar":
        return CalendarRoll(settings.roll_days_before_expiry)
    return None


@dataclass(frozen=True)
class Roll:
    """One move of the joined series from a contract to the next.

    Attributes:
        index: The bar of the series where the new contract starts.
        time: Its time (UTC).
        from_contract, to_contract: The contracts, as the file names them.
        gap: The new contract's close minus the old one's where the gap was measured.
        ratio: The new contract's close over the old one's there.
        measured_at: The last time before the move that both traded (UTC), or None: no such
            time, the gap is the jump at the move (the new open over the old close).
    """

    index: int
    time: np.datetime64
    from_contract: str
    to_contract: str
    gap: float
    ratio: float
    measured_at: np.datetime64 | None


@dataclass(frozen=True, eq=False)
class Joined:
    """A continuous series made of several contracts (:func:`join_contracts`).

    Attributes:
        rows: The rows of the input kept, in time order.
        open, high, low, close: Their prices, back-adjusted with ``adjust: backward``.
        volume: Their volumes.
        roll_gap: :attr:`Bars.roll_gap <tuner.trading.bars.Bars.roll_gap>` of the series.
        rolls: The rolls, in time order.
        first: The contract the series starts with.
    """

    rows: NDArray[np.intp]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.float64]
    roll_gap: NDArray[np.float64]
    rolls: tuple[Roll, ...]
    first: str


def join_contracts(
    times: NDArray[np.datetime64],
    contracts: NDArray[np.str_] | NDArray[np.object_],
    prices: Mapping[str, NDArray[np.float64]],
    settings: DataSettings,
    source: str = "",
) -> Joined:
    """Join the contracts of a file into one series by ``settings.roll`` (module docstring).

    Args:
        times: Every row's time (UTC), ascending; no contract has two rows at one time.
        contracts: Every row's contract.
        prices: ``open``, ``high``, ``low``, ``close`` and ``volume`` of every row.
        settings: ``roll``, ``roll_days_before_expiry``, ``adjust`` and ``roll_gap``.
        source: The file, for the log.

    Raises:
        ValueError: if ``settings.roll`` is not set.
    """
    rule = roll_rule(settings)
    if rule is None:
        raise ValueError("join_contracts needs settings.roll")
    names, code = np.unique(np.asarray(contracts, dtype=str), return_inverse=True)
    stamps = np.asarray(times, dtype="datetime64[ns]")
    day_number = stamps.astype(np.int64) // _DAY_NS
    days, day = np.unique(day_number, return_inverse=True)
    volume = np.zeros((len(days), len(names)))
    np.add.at(volume, (day, code), prices["volume"])
    trades = np.zeros((len(days), len(names)), dtype=bool)
    trades[day, code] = True
    held = rule.held(ContractDays(days=days, volume=volume, trades=trades))

    rows = np.flatnonzero(held[day] == code)
    kept = code[rows]
    starts = np.flatnonzero(kept[1:] != kept[:-1]) + 1
    by_contract = np.split(np.argsort(code, kind="stable"), np.cumsum(np.bincount(code))[:-1])
    rolls = tuple(_measure(int(t), rows, stamps, code, by_contract, names, prices) for t in starts)
    close = prices["close"][rows]
    ratio = np.ones(len(rows))
    roll_gap = np.zeros(len(rows))
    for roll in rolls:
        ratio[roll.index] = roll.ratio
        if settings.adjust == "none" and settings.roll_gap == "skip":
            roll_gap[roll.index] = close[roll.index - 1] * (roll.ratio - 1.0)
        _log(roll, source)
    factor = np.ones(len(rows))
    if settings.adjust == "backward" and rolls:  # bar i times the ratios of later rolls
        factor[:-1] = np.cumprod(ratio[::-1])[::-1][1:]
    return Joined(
        rows=rows,
        open=prices["open"][rows] * factor,
        high=prices["high"][rows] * factor,
        low=prices["low"][rows] * factor,
        close=close * factor,
        volume=prices["volume"][rows],
        roll_gap=roll_gap,
        rolls=rolls,
        first=str(names[kept[0]]) if len(kept) else "",
    )


def _measure(
    t: int,
    rows: NDArray[np.intp],
    times: NDArray[np.datetime64],
    code: NDArray[np.intp],
    by_contract: list[NDArray[np.intp]],
    names: NDArray[np.str_],
    prices: Mapping[str, NDArray[np.float64]],
) -> Roll:
    """The roll at bar ``t`` of the series: the gap where both contracts last traded."""
    before, after = int(rows[t - 1]), int(rows[t])
    old, new = int(code[before]), int(code[after])

    def until_then(contract: int) -> NDArray[np.intp]:  # its rows up to the old one's last bar
        own = by_contract[contract]
        return own[: np.searchsorted(times[own], times[before], side="right")]

    old_rows, new_rows = until_then(old), until_then(new)
    common = np.intersect1d(times[old_rows], times[new_rows], assume_unique=True)
    close = prices["close"]
    if len(common):
        at = common[-1]
        old_close = float(close[old_rows[np.searchsorted(times[old_rows], at)]])
        new_close = float(close[new_rows[np.searchsorted(times[new_rows], at)]])
        measured_at: np.datetime64 | None = at
    else:
        old_close, new_close, measured_at = float(close[before]), float(prices["open"][after]), None
    return Roll(
        index=t,
        time=times[after],
        from_contract=str(names[old]),
        to_contract=str(names[new]),
        gap=new_close - old_close,
        ratio=new_close / old_close,
        measured_at=measured_at,
    )


def _log(roll: Roll, source: str) -> None:
    where = (
        f"measured at {_when(roll.measured_at)} UTC"
        if roll.measured_at is not None
        else "no bar both traded before: the jump at the roll"
    )
    log.info(
        "%s: roll %s -> %s at %s UTC, gap %+g (%+.3f%%), %s",
        source,
        roll.from_contract,
        roll.to_contract,
        _when(roll.time),
        roll.gap,
        (roll.ratio - 1.0) * 100.0,
        where,
    )


def _when(time: np.datetime64) -> str:
    return np.datetime_as_string(time, unit="s").replace("T", " ")
