"""Trading metrics against hand-computed cases (tuner/trading/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuner.trading import metrics

# Equity 100 -> 110 -> 99 -> 108.9: returns +10 %, -10 %, +10 %.
# mean = 1/30 = 0.0333333; deviations 1/15, -2/15, 1/15; sample variance (1+4+1)/225/2 = 1/75;
# std = 0.1154701; mean/std = 0.2886751; x sqrt(252) = 4.5825757.
CURVE = [100.0, 110.0, 99.0, 108.9]


def test_sharpe_ratio_by_hand() -> None:
    assert metrics.sharpe_ratio(CURVE, bars_per_year=252) == pytest.approx(4.5825757, abs=1e-6)
    # annualization follows the bar count: 5-minute bars, 78 a day -> sqrt(19656) = 140.2
    assert metrics.sharpe_ratio(CURVE, bars_per_year=252 * 78) == pytest.approx(
        0.2886751 * 140.2000, rel=1e-4
    )


def test_sharpe_ratio_of_a_losing_curve_is_negative() -> None:
    # 100 -> 90 -> 99 -> 89.1: returns -10 %, +10 %, -10 %: CURVE mirrored, mean -1/30
    assert metrics.sharpe_ratio([100, 90, 99, 89.1], 252) == pytest.approx(-4.5825757, abs=1e-6)
    # 100 -> 95 -> 96 -> 90: returns -0.05, +0.0105263, -0.0625; mean -0.0339912,
    # deviations -0.0160088, +0.0445175, -0.0285088 -> sample std 0.0390566;
    # -0.0339912 / 0.0390566 = -0.870302, x 15.874508 = -13.8156
    assert metrics.sharpe_ratio([100, 95, 96, 90], 252) == pytest.approx(-13.8156, abs=1e-3)


def test_sharpe_zero_variance_policy() -> None:
    # documented: zero variance gives 0.0 (a flat curve: the policy never traded)
    assert metrics.sharpe_ratio([100.0, 100.0, 100.0, 100.0], 252) == 0.0
    # constant growth has zero variance too: 0.0 rather than infinity
    assert metrics.sharpe_ratio([100.0, 110.0, 121.0], 252) == 0.0
    # fewer than two returns: undefined
    assert math.isnan(metrics.sharpe_ratio([100.0, 101.0], 252))
    assert math.isnan(metrics.sharpe_ratio([100.0], 252))


def test_max_drawdown_by_hand() -> None:
    assert metrics.max_drawdown(CURVE) == pytest.approx(-0.1)  # 110 -> 99
    # two drawdowns: 120 -> 90 (-25 %) is deeper than 100 -> 95 (-5 %)
    assert metrics.max_drawdown([100, 95, 120, 90, 130]) == pytest.approx(-0.25)
    assert metrics.max_drawdown([100, 101, 102]) == 0.0


def test_total_return_in_percent() -> None:
    assert metrics.total_return(CURVE) == pytest.approx(8.9)
    assert metrics.total_return([200.0, 150.0]) == pytest.approx(-25.0)


def test_win_rate_counts_positive_net_round_trips() -> None:
    assert metrics.win_rate([50.0, -20.0, 0.0, 10.0]) == 0.5  # a zero trade is no win
    assert math.isnan(metrics.win_rate([]))
    assert metrics.n_trades([50.0, -20.0, 0.0]) == 3
    assert metrics.n_trades([]) == 0


def test_exposure_is_the_share_of_bars_with_a_position() -> None:
    assert metrics.exposure([0, 1, -2, 0]) == 0.5
    assert metrics.exposure(np.array([3, 3], dtype=np.int16)) == 1.0
    assert math.isnan(metrics.exposure([]))


def test_val_reward_is_the_mean_episode_reward() -> None:
    assert metrics.val_reward([1.0, 2.0, -0.5]) == pytest.approx(2.5 / 3)
    assert math.isnan(metrics.val_reward([]))


def test_buy_and_hold_gap_by_hand() -> None:
    # one contract at $20/point from 100 to 105 on $10,000: +$100 = +1 %
    assert metrics.buy_and_hold_return([100, 102, 105], 20.0, 10_000) == pytest.approx(1.0)
    # strategy made +3 % over the same bars: gap +2 points of percent
    gap = metrics.buy_hold_gap([10_000, 10_100, 10_300], [100, 102, 105], 20.0)
    assert gap == pytest.approx(2.0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="bars_per_year must be > 0"):
        metrics.sharpe_ratio(CURVE, 0)
    with pytest.raises(ValueError, match="equity must stay > 0"):
        metrics.total_return([100, 0, 10])
    with pytest.raises(ValueError, match="equity must be finite"):
        metrics.max_drawdown([100, math.nan])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        metrics.total_return([])
    with pytest.raises(ValueError, match="closes has 2 values, equity 3"):
        metrics.buy_hold_gap([1, 2, 3], [1, 2], 1.0)
    # only the last value may hit zero: a ruined account still has a return
    assert metrics.total_return([100, 50, 0]) == -100.0
