"""Tiny hand-made markets whose PnL can be worked out on paper."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from tuner.trading.bars import Bars
from tuner.trading.env import MarketData
from tuner.trading.markets import FileSource, MarketSpec, SplitSpec

# 20 points per price unit: tick 0.25 worth $5 (like NQ).
TICK_SIZE, TICK_VALUE, POINT_VALUE = 0.25, 5.0, 20.0
COMMISSION, SLIPPAGE_TICKS = 2.0, 1.0  # -> $7 per contract per fill in phases 2-3


def make_spec(name: str = "HM", split: SplitSpec | None = None) -> MarketSpec:
    """A market spec with round numbers; the data source is never read."""
    return MarketSpec(
        name=name,
        tick_size=TICK_SIZE,
        tick_value=TICK_VALUE,
        commission_per_side=COMMISSION,
        slippage_ticks=SLIPPAGE_TICKS,
        session="test",
        data=FileSource(path=Path("/nonexistent.csv"), configured="/nonexistent.csv"),
        split=split or SplitSpec(train=0.5, validation=0.5, test=0.0, gap_bars=0),
    )


def make_bars(
    closes: list[float],
    *,
    half_range: float = 0.5,
    opens: list[float] | None = None,
    lows: list[float] | None = None,
    highs: list[float] | None = None,
) -> Bars:
    """5-minute bars with the given closes; open = previous close, high/low = close +- 0.5."""
    close = np.asarray(closes, dtype=float)
    open_ = np.asarray(opens, dtype=float) if opens else np.concatenate([close[:1], close[:-1]])
    high = np.asarray(highs, dtype=float) if highs else np.maximum(open_, close) + half_range
    low = np.asarray(lows, dtype=float) if lows else np.minimum(open_, close) - half_range
    start = np.datetime64(datetime(2024, 1, 2, 9, 0), "ns")
    stamps = start + np.arange(len(close)) * np.timedelta64(5, "m")
    return Bars(
        market="HM",
        timestamps=stamps.astype("datetime64[ns]"),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=np.full(len(close), 100.0),
        bar_interval=timedelta(minutes=5),
        bars_per_year=252 * 78.0,
        source="hand-made",
    )


def make_data(closes: list[float], **kwargs: list[float]) -> MarketData:
    """MarketData over hand-made bars; train = first half, validation = second half."""
    return MarketData.from_bars(make_spec(), make_bars(closes, **kwargs))  # type: ignore[arg-type]
