"""When to save: the adaptive interval and the named curriculum boundaries of a phase."""

from __future__ import annotations

import math
from collections.abc import Iterable

from checkpointing.config import Boundary, PhaseSchedule

__all__ = ["AdaptiveSchedule", "count_periodic_saves"]


class AdaptiveSchedule:
    """``interval = base * (1 + (max_multiplier - 1) * progress)``, progress capped at 1.

    The next periodic save is due ``interval(t)`` steps after the save made at ``t``.
    """

    def __init__(self, phase: PhaseSchedule) -> None:
        self.phase = phase

    def progress(self, timesteps: int) -> float:
        return min(max(timesteps, 0) / self.phase.target_timesteps, 1.0)

    def interval(self, timesteps: int) -> int:
        p = self.phase
        value = p.base_interval * (
            1.0 + (p.max_interval_multiplier - 1.0) * self.progress(timesteps)
        )
        return max(1, math.floor(value))

    def next_after(self, timesteps: int) -> int:
        """The step of the periodic save that follows a save (or a start) at ``timesteps``."""
        return timesteps + self.interval(timesteps)

    def boundaries_crossed(self, timesteps: int, fired: Iterable[str]) -> list[Boundary]:
        """Boundaries reached by ``timesteps`` that have not fired yet, in order."""
        done = set(fired)
        return [
            b
            for b in self.phase.boundaries
            if b.name not in done and timesteps >= b.step(self.phase.target_timesteps)
        ]


def count_periodic_saves(
    phase: PhaseSchedule, total_timesteps: int | None = None, step: int = 1
) -> int:
    """How many periodic saves a run of ``total_timesteps`` makes, checking every ``step``.

    ``step`` is the granularity at which training reports (``n_envs`` for SB3).
    """
    schedule = AdaptiveSchedule(phase)
    total = phase.target_timesteps if total_timesteps is None else total_timesteps
    due = schedule.next_after(0)
    saves = 0
    t = 0
    while True:
        t = max(t + step, math.ceil(due / step) * step)
        if t > total:
            return saves
        saves += 1
        due = schedule.next_after(t)
