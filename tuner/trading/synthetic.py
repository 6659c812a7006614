"""The seeded regime-switching generator of synthetic OHLCV bars (the default market data)."""

from __future__ import annotations

import math
import zlib
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from tuner.trading.bars import Bars, DataError
from tuner.trading.markets import SyntheticSource

_WEEKDAYS_PER_YEAR = 365.25 * 5 / 7

__all__ = ["generate_synthetic"]


# (name, drift offset in units of the annual volatility, volatility multiplier,
#  persistence multiplier). Regimes switch with probability 1 / mean_regime_bars per bar,
# to one of the other regimes uniformly, so each regime takes a third of the time on average
# and the long-run drift is the market's annual_drift.
_REGIMES = (
    ("bull", +1.0, 0.8, 1.0),
    ("bear", -1.0, 1.4, 1.0),
    ("range", 0.0, 1.0, -0.5),
)


def _market_seed(market: str, seed: int) -> np.random.Generator:
    # crc32 is stable across processes and Python versions, unlike hash().
    return np.random.default_rng([seed, zlib.crc32(market.encode("utf-8"))])


def _weekday_timestamps(start: datetime, interval: timedelta, n: int) -> NDArray[np.datetime64]:
    step = int(interval.total_seconds())
    if step <= 0 or 86400 % step != 0:
        raise DataError(f"synthetic bar_interval must divide one day exactly, got {interval}")
    per_day = 86400 // step
    first_day = np.datetime64(start.date(), "D")
    offsets = np.arange(per_day, dtype=np.int64) * step
    start_ns = np.datetime64(start, "ns")
    stamps: NDArray[np.datetime64] = np.empty(0, dtype="datetime64[ns]")
    n_days = n // per_day + 2
    while len(stamps) < n:
        days = np.busday_offset(first_day, np.arange(n_days), roll="forward")
        grid = days.astype("datetime64[ns]")[:, None] + offsets.astype("timedelta64[s]")[None, :]
        stamps = grid.ravel()
        stamps = stamps[stamps >= start_ns]
        n_days *= 2
    return stamps[:n]


def generate_synthetic(
    market: str,
    params: SyntheticSource,
    tick_size: float,
    *,
    seed: int | None = None,
    n_bars: int | None = None,
) -> Bars:
    """Generate regime-switching OHLCV bars, deterministic for (market, seed).

    Log returns follow an AR(1) process whose drift, volatility and persistence depend on a
    hidden regime (bull, bear, range; see ``_REGIMES``). Prices are rounded to the tick size;
    bars are on weekdays, around the clock, every ``params.bar_interval``.

    Args:
        market: Market name (part of the random stream, so markets differ for one seed).
        params: Generator parameters from ``config/markets.yaml``.
        tick_size: Prices are multiples of it.
        seed: Data seed; defaults to ``params.seed``.
        n_bars: Number of bars; defaults to ``params.n_bars``.
    """
    n = params.n_bars if n_bars is None else n_bars
    if n < 2:
        raise ValueError(f"n_bars must be >= 2, got {n!r}")
    rng = _market_seed(market, params.seed if seed is None else seed)
    timestamps = _weekday_timestamps(params.start, params.bar_interval, n)
    bars_per_year = _WEEKDAYS_PER_YEAR * (timedelta(days=1) / params.bar_interval)

    k = len(_REGIMES)
    switch = rng.random(n) < 1.0 / params.mean_regime_bars
    hops = np.where(switch, rng.integers(1, k, size=n), 0)
    regime = (rng.integers(k) + np.cumsum(hops)) % k
    table = np.array([r[1:] for r in _REGIMES])
    drift = (params.annual_drift + table[regime, 0] * params.annual_volatility) / bars_per_year
    sigma = params.annual_volatility * table[regime, 1] / math.sqrt(bars_per_year)
    phi = np.clip(params.trend_persistence * table[regime, 2], -0.95, 0.95)
    shocks = sigma * np.sqrt(1.0 - phi**2) * rng.standard_normal(n)

    returns = np.empty(n)
    prev = 0.0
    for i, (mu, p, e) in enumerate(zip(drift.tolist(), phi.tolist(), shocks.tolist(), strict=True)):
        prev = mu + p * (prev - mu) + e
        returns[i] = prev
    returns[0] = 0.0

    raw_close = params.start_price * np.exp(np.cumsum(returns))
    close = np.maximum(np.round(raw_close / tick_size) * tick_size, tick_size)
    open_ = np.empty(n)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    wick = np.abs(rng.standard_normal((2, n))) * 0.5 * sigma * raw_close
    high = np.ceil((np.maximum(open_, close) + wick[0]) / tick_size - 1e-9) * tick_size
    low = np.floor((np.minimum(open_, close) - wick[1]) / tick_size + 1e-9) * tick_size
    high = np.maximum(high, np.maximum(open_, close))
    low = np.maximum(np.minimum(low, np.minimum(open_, close)), tick_size)
    volume = np.round(
        1000.0 * table[regime, 1] * (1.0 + np.abs(returns) / sigma) * rng.lognormal(0, 0.3, n)
    )
    return Bars(
        market=market,
        timestamps=timestamps,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        bar_interval=params.bar_interval,
        bars_per_year=bars_per_year,
        source=f"synthetic(seed={params.seed if seed is None else seed})",
    )
