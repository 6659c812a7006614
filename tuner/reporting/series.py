"""Downsampling a series for a chart: at most ``max_points`` of its points, its shape kept.

One rule for every curve the report draws and for the equity curves the held-out test
evaluation keeps in its JSON: the first and last points, and in each of ``max_points // 2``
buckets of consecutive points the lowest and the highest (a drawdown or a spike survives,
which a plain stride would drop). Pure Python, no numpy: the report runs in the driver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["downsample"]


def _key(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else math.nan


def downsample(values: Sequence[float | None], max_points: int) -> list[int]:
    """The indices of the points of ``values`` to draw, ascending, at most ``max_points``
    (>= 2) of them: all of them when there are no more.

    Raises:
        ValueError: ``max_points`` below 2.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points!r}")
    n = len(values)
    if n <= max_points:
        return list(range(n))
    buckets = (max_points - 2) // 2
    keep = {0, n - 1}
    for b in range(buckets):
        start = 1 + (n - 2) * b // buckets
        stop = 1 + (n - 2) * (b + 1) // buckets
        finite = [i for i in range(start, stop) if not math.isnan(_key(values[i]))]
        if not finite:
            keep.add(start)
            continue
        keep.add(min(finite, key=lambda i: _key(values[i])))
        keep.add(max(finite, key=lambda i: _key(values[i])))
    return sorted(keep)
