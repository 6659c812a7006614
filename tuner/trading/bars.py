"""OHLCV bars as numpy arrays, their chronological split, and their annualization.

Annualization. :attr:`Bars.bar_interval` is the median time between bars. Because futures
data has session breaks, weekends and holidays, ``year / bar_interval`` would overstate the
number of bars in a year (5-minute CME bars: 105,192 instead of about 70,000, which inflates a
Sharpe ratio by about 22 %). :attr:`Bars.bars_per_year` therefore counts the bars the data
actually has per year of calendar time; for data without gaps both figures agree. Data
spanning less than 30 days falls back to ``365.25 days / bar_interval``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from numpy.typing import NDArray

from tuner.trading.markets import SplitSpec

__all__ = [
    "SPLIT_NAMES",
    "Bars",
    "DataError",
    "SplitRanges",
    "estimate_bars_per_year",
    "infer_bar_interval",
    "split_ranges",
]

SPLIT_NAMES = ("train", "validation", "test")
_YEAR = timedelta(days=365.25)


class DataError(ValueError):
    """Bars cannot be loaded or split: bad file, bad values, too few bars."""


@dataclass(frozen=True, eq=False)
class Bars:
    """A market's bars in time order, as read-only numpy arrays.

    Attributes:
        market: Market name.
        timestamps: ``datetime64[ns]``, naive, strictly increasing; from a file, in UTC
            (:mod:`tuner.trading.ohlcv_times` says how each file's times get there).
        open, high, low, close, volume: ``float64`` arrays of the same length.
        bar_interval: Median time between consecutive bars.
        bars_per_year: Bars per year of calendar time, for annualizing (module docstring).
        source: Where the bars came from (file path or generator description).
        roll_gap: ``float64``: at the first bar of a contract rolled into with raw prices
            (``data: adjust: none``), the new contract's price minus the old one's at the bar
            before (:mod:`tuner.trading.rolls`); 0 everywhere else. The move from bar
            ``t - 1`` to ``t`` that is the market's own is ``close[t] - close[t - 1] -
            roll_gap[t]``: the environment and the features never count the gap. Left out:
            zeros (no rolls, or back-adjusted prices).

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
    roll_gap: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        n = len(self.timestamps)
        if len(self.roll_gap) == 0 and n:
            object.__setattr__(self, "roll_gap", np.zeros(n))
        for name in ("open", "high", "low", "close", "volume", "roll_gap"):
            array = getattr(self, name)
            if len(array) != n:
                raise ValueError(f"Bars.{name} has {len(array)} values, timestamps has {n}")
        for array in self._arrays():
            array.flags.writeable = False

    def _arrays(self) -> Iterator[np.ndarray]:
        yield from (
            self.timestamps,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.roll_gap,
        )

    def __len__(self) -> int:
        return len(self.timestamps)

    def close_without_gaps(self) -> NDArray[np.float64]:
        """The closes with every roll gap taken out (:attr:`roll_gap`): the first bar's close,
        then the market's own moves; the closes themselves when nothing was rolled."""
        if not self.roll_gap.any():
            return self.close
        gaps = np.cumsum(self.roll_gap)
        return self.close - (gaps - gaps[0])

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
            roll_gap=self.roll_gap[part],
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
