"""Downsampling a curve: bounded, first and last kept, a spike or a drawdown survives."""

from __future__ import annotations

import math

import pytest

from tuner.reporting.series import downsample


def test_a_short_series_is_kept_whole() -> None:
    assert downsample([3.0, 1.0, 2.0], 10) == [0, 1, 2]
    assert downsample([], 10) == []


@pytest.mark.parametrize(("n", "cap"), [(2001, 2000), (10_000, 2000), (50_000, 500), (7, 2)])
def test_a_long_series_keeps_at_most_the_cap_in_order_with_both_ends(n: int, cap: int) -> None:
    values = [math.sin(i / 50) for i in range(n)]
    kept = downsample(values, cap)
    assert len(kept) <= cap
    assert kept == sorted(set(kept))
    assert kept[0] == 0 and kept[-1] == n - 1


def test_the_lowest_and_highest_points_survive() -> None:
    values = [100.0 + (i % 7) * 0.01 for i in range(20_000)]
    values[12_345] = 40.0  # a drawdown of one bar
    values[777] = 150.0  # a spike
    kept = downsample(values, 300)
    assert 12_345 in kept and 777 in kept


def test_missing_values_never_count_as_extremes() -> None:
    values: list[float | None] = [None if i % 2 else float(i) for i in range(1000)]
    kept = downsample(values, 50)
    assert all(values[i] is not None for i in kept[1:-1])


def test_a_cap_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="max_points must be >= 2, got 1"):
        downsample([1.0, 2.0, 3.0], 1)
