"""Market features from past bars only, computed once per dataset.

Every feature at bar ``t`` is a function of bars ``0..t`` (trailing windows, recursive
averages); nothing is normalized with statistics of the whole dataset, so changing bar
``t + 1`` or later never changes the features of bar ``t``. Features are scale-free (returns
in units of recent volatility, positions in a range) so one policy can read any market, and
are clipped to ``[-FEATURE_CLIP, FEATURE_CLIP]``.

Rolls. Bars of raw prices across contract rolls (:attr:`Bars.roll_gap
<tuner.trading.bars.Bars.roll_gap>`) are read as one series: each contract's prices are divided
by the ratios of the rolls before it (forward ratio adjustment, past rolls only), so no return,
range or average ever spans a gap, and the ATR is given back in the held contract's prices.
Back-adjusted bars (the default) have no gaps and need none of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from tuner.trading.bars import Bars

__all__ = ["FEATURE_CLIP", "FEATURE_NAMES", "MAX_LOOKBACK", "FeatureSet", "compute_features"]

log = logging.getLogger(__name__)

FEATURE_CLIP = 10.0
_RETURN_LOOKBACKS = (1, 4, 16, 64)
_RANGE_LOOKBACKS = (16, 64)
_VOL_SHORT, _VOL_LONG = 32, 256
_ATR_PERIOD = 14
_EMA_SPAN = 32
#: The longest return / range / volatility window (the 256-bar volatility baseline aside).
MAX_LOOKBACK = 64

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in _RETURN_LOOKBACKS),
    "vol_ratio",
    "range_atr",
    *(f"range_pos_{k}" for k in _RANGE_LOOKBACKS),
    "ema_gap",
    "tod_sin",
    "tod_cos",
)


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Features of every bar of a dataset.

    Attributes:
        values: ``float32`` array ``(n_bars, len(names))``, finite, clipped.
        names: Feature names (:data:`FEATURE_NAMES`).
        atr: ``float64`` average true range in price units per bar (used for stops).
        volatility: ``float64`` rolling standard deviation of 1-bar log returns.
    """

    values: NDArray[np.float32]
    names: tuple[str, ...]
    atr: NDArray[np.float64]
    volatility: NDArray[np.float64]


def compute_features(bars: Bars) -> FeatureSet:
    """Compute the features of every bar from that bar and the bars before it.

    The first bars have short histories: windows use what exists (returns over a lookback
    longer than the history use the first close), and features that cannot be computed yet
    are 0. With ``gap_bars >= MAX_LOOKBACK`` between split parts, the return and range
    windows of one part do not overlap the previous part (the 256-bar volatility baseline of
    ``vol_ratio`` may; it only sets the scale of recent volatility).
    """
    n = len(bars)
    factor = _roll_factor(bars)
    close_values, high_values, low_values = (
        bars.close / factor,
        bars.high / factor,
        bars.low / factor,
    )
    close = pd.Series(close_values, copy=False)  # pandas 3 copies by default
    high = pd.Series(high_values, copy=False)
    low = pd.Series(low_values, copy=False)
    log_close = np.log(close_values)

    log_ret = np.diff(log_close, prepend=log_close[0])
    returns = pd.Series(log_ret)
    vol = returns.rolling(_VOL_SHORT, min_periods=2).std().to_numpy()
    vol_long = returns.rolling(_VOL_LONG, min_periods=2).std().to_numpy()
    # Before two returns exist there is no volatility; a tiny floor keeps ratios finite.
    floor = 1e-8
    vol = np.where(np.isfinite(vol) & (vol > floor), vol, floor)
    vol_long = np.where(np.isfinite(vol_long) & (vol_long > floor), vol_long, floor)

    prev_close = close.shift(1).fillna(close.iloc[0])
    true_range = pd.concat(
        [high - low, (high - prev_close).abs(), (low - prev_close).abs()], axis=1
    ).max(axis=1)
    atr = true_range.ewm(alpha=1.0 / _ATR_PERIOD, adjust=False).mean().to_numpy()
    atr = np.maximum(atr, 1e-12)

    columns: list[NDArray[np.float64]] = []
    for k in _RETURN_LOOKBACKS:
        past = np.concatenate([np.full(min(k, n), log_close[0]), log_close[:-k]])[:n]
        columns.append((log_close - past) / (vol * np.sqrt(k)))
    columns.append(np.log(vol / vol_long))
    columns.append((high_values - low_values) / atr)
    for k in _RANGE_LOOKBACKS:
        highest = high.rolling(k, min_periods=1).max().to_numpy()
        lowest = low.rolling(k, min_periods=1).min().to_numpy()
        width = highest - lowest
        position = np.divide(2.0 * (close_values - lowest), width, out=np.ones(n), where=width > 0)
        columns.append(position - 1.0)
    ema = close.ewm(span=_EMA_SPAN, adjust=False).mean().to_numpy()
    columns.append((close_values - ema) / atr)
    day_ns = 86_400 * 10**9
    seconds = bars.timestamps.astype("datetime64[ns]").astype(np.int64) % day_ns
    angle = 2.0 * np.pi * seconds / day_ns
    columns.append(np.sin(angle))
    columns.append(np.cos(angle))

    values = np.stack(columns, axis=1)
    values = np.clip(
        np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), -FEATURE_CLIP, FEATURE_CLIP
    )
    result = FeatureSet(
        values=np.ascontiguousarray(values, dtype=np.float32),
        names=FEATURE_NAMES,
        atr=atr * factor,  # in the prices of the contract held at each bar
        volatility=vol,
    )
    result.values.flags.writeable = False
    log.debug("computed %d features for %d bars of %s", len(FEATURE_NAMES), n, bars.market)
    return result


def _roll_factor(bars: Bars) -> NDArray[np.float64]:
    """Per bar, the product of the ratios (new over old price) of the rolls at or before it:
    dividing by it joins raw contracts into one series with no gap; ones without rolls."""
    n = len(bars)
    ratio = np.ones(n)
    rolled = np.flatnonzero(bars.roll_gap)
    rolled = rolled[rolled > 0]
    ratio[rolled] = 1.0 + bars.roll_gap[rolled] / bars.close[rolled - 1]
    return np.cumprod(ratio, dtype=np.float64)
