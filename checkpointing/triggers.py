"""The `best` trigger: which monitored metrics improved enough since their previous best."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["BestTracker", "improved_enough"]


def improved_enough(new: float, best: float, threshold: float, floor: float) -> bool:
    """``new`` beats ``best`` by at least ``threshold * max(|best|, floor)``.

    All monitored metrics are "higher is better" (``max_drawdown`` is <= 0, so closer to zero
    is higher). The floor keeps the rule meaningful for baselines at or near zero. NaN never
    improves anything.
    """
    if math.isnan(new) or math.isnan(best):
        return False
    required = threshold * max(abs(best), floor)
    return new > best and (new - best) >= required * (1 - 1e-12)


@dataclass
class BestTracker:
    """Bests so far per metric; the first finite value of a metric is its baseline."""

    metrics: tuple[str, ...]
    threshold: float = 0.02
    floor: float = 0.01
    bests: dict[str, float] = field(default_factory=dict)

    def update(self, values: Mapping[str, float]) -> list[str]:
        """Record an evaluation; return the monitored metrics that improved enough.

        A metric that improved but by less than the threshold does not move its best, so
        many small steps that add up to the threshold still trigger a save eventually.
        """
        improved: list[str] = []
        for name in self.metrics:
            raw = values.get(name)
            if raw is None:
                continue
            value = float(raw)
            if math.isnan(value):
                continue
            best = self.bests.get(name)
            if best is None:
                self.bests[name] = value  # the baseline: no save for it
            elif improved_enough(value, best, self.threshold, self.floor):
                self.bests[name] = value
                improved.append(name)
        return improved

    def state(self) -> dict[str, float]:
        return dict(self.bests)

    def load(self, bests: Mapping[str, float] | Iterable[tuple[str, float]]) -> None:
        self.bests = {str(k): float(v) for k, v in dict(bests).items()}
