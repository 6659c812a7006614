"""Trading metrics: pure functions over numpy arrays, one definition each.

Conventions:

* ``equity`` is an equity curve in dollars: the value before the first bar, then after each
  bar. Per-bar returns are ``equity[i + 1] / equity[i] - 1``.
* Undefined results are NaN (no trades -> ``win_rate`` NaN; fewer than two returns ->
  ``sharpe_ratio`` NaN). A curve whose returns have zero variance (e.g. a policy that never
  trades) has a Sharpe ratio of **0.0**, not NaN or infinity: it earned no risk premium, it
  stays comparable with other checkpoints, and checkpoint names stay readable.
* Percentages are percent (``total_return`` 5.0 = +5 %); ``max_drawdown`` is a fraction <= 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "buy_and_hold_return",
    "buy_hold_gap",
    "exposure",
    "max_drawdown",
    "n_trades",
    "sharpe_ratio",
    "total_return",
    "val_reward",
    "win_rate",
]

# Relative to the mean return, a standard deviation below this is zero (float noise).
_ZERO_VARIANCE = 1e-12


def _equity(equity: ArrayLike) -> NDArray[np.float64]:
    curve = np.asarray(equity, dtype=np.float64)
    if curve.ndim != 1 or len(curve) == 0:
        raise ValueError(f"equity must be a non-empty 1-D array, got shape {curve.shape}")
    if not np.all(np.isfinite(curve)):
        raise ValueError("equity must be finite")
    if np.any(curve[:-1] <= 0):
        raise ValueError("equity must stay > 0 (only the last value may reach 0 or below)")
    return curve


def val_reward(episode_rewards: Sequence[float] | ArrayLike) -> float:
    """Mean total reward per evaluation episode (NaN without episodes)."""
    rewards = np.asarray(episode_rewards, dtype=np.float64)
    return float(rewards.mean()) if rewards.size else math.nan


def sharpe_ratio(equity: ArrayLike, bars_per_year: float) -> float:
    """Annualized Sharpe ratio of an equity curve, risk-free rate 0.

    ``sqrt(bars_per_year) * mean(r) / std(r)`` with ``r`` the per-bar returns and ``std`` the
    sample standard deviation (``ddof=1``).

    Returns:
        NaN with fewer than two returns; 0.0 when the returns have zero variance.

    Raises:
        ValueError: for a non-finite or non-positive equity curve or ``bars_per_year <= 0``.
    """
    if not (math.isfinite(bars_per_year) and bars_per_year > 0):
        raise ValueError(f"bars_per_year must be > 0, got {bars_per_year!r}")
    curve = _equity(equity)
    if len(curve) < 3:
        return math.nan
    returns = curve[1:] / curve[:-1] - 1.0
    mean = float(returns.mean())
    std = float(returns.std(ddof=1))
    if std <= _ZERO_VARIANCE * max(abs(mean), 1e-12):
        return 0.0
    return math.sqrt(bars_per_year) * mean / std


def max_drawdown(equity: ArrayLike) -> float:
    """Deepest fall from a running peak, as a fraction <= 0 (-0.25 = 25 % below the peak)."""
    curve = _equity(equity)
    peaks = np.maximum.accumulate(curve)
    return float(np.min(curve / peaks - 1.0))


def total_return(equity: ArrayLike) -> float:
    """Return from the first to the last value of the curve, in percent."""
    curve = _equity(equity)
    return float((curve[-1] / curve[0] - 1.0) * 100.0)


def win_rate(trade_pnls: ArrayLike) -> float:
    """Share of closed round trips with a positive net PnL; NaN when there were none."""
    pnls = np.asarray(trade_pnls, dtype=np.float64)
    return float(np.mean(pnls > 0.0)) if pnls.size else math.nan


def n_trades(trade_pnls: ArrayLike) -> int:
    """Number of closed round trips."""
    return int(np.asarray(trade_pnls).size)


def exposure(positions: ArrayLike) -> float:
    """Share of bars with a non-zero position; NaN without bars."""
    held = np.asarray(positions)
    return float(np.mean(held != 0)) if held.size else math.nan


def buy_and_hold_return(
    closes: ArrayLike, point_value: float, initial_capital: float, contracts: int = 1
) -> float:
    """Return in percent of holding ``contracts`` long from the first to the last close.

    The same capital and bars as the strategy, no costs: ``contracts * (last - first) *
    point_value / initial_capital * 100``.
    """
    prices = np.asarray(closes, dtype=np.float64)
    if prices.ndim != 1 or len(prices) == 0:
        raise ValueError(f"closes must be a non-empty 1-D array, got shape {prices.shape}")
    if not initial_capital > 0:
        raise ValueError(f"initial_capital must be > 0, got {initial_capital!r}")
    return float(contracts * (prices[-1] - prices[0]) * point_value / initial_capital * 100.0)


def buy_hold_gap(equity: ArrayLike, closes: ArrayLike, point_value: float) -> float:
    """Strategy return minus 1-contract buy-and-hold return over the same bars (points of %).

    ``closes`` are the closes at the times of the equity values; the capital is
    ``equity[0]``.
    """
    curve = _equity(equity)
    prices = np.asarray(closes, dtype=np.float64)
    if len(prices) != len(curve):
        raise ValueError(f"closes has {len(prices)} values, equity {len(curve)}; they must match")
    return total_return(curve) - buy_and_hold_return(prices, point_value, float(curve[0]))
