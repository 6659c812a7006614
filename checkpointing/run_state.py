"""The state a run keeps with every checkpoint, so that a resumed run neither re-saves nor
forgets: the next save step, the counters, the boundaries fired, the latest evaluation.

:class:`RunState` is held by :class:`checkpointing.manager.DynamicCheckpointManager`, written
into each checkpoint's metadata (``callback_state``, with the manager's identity and the best
tracker's state beside it) and read back on resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STATE_VERSION", "RunState"]

STATE_VERSION = 1


@dataclass
class RunState:
    """The counters and schedule position of one run."""

    next_save_step: int = 0
    saves: int = 0
    saves_by_event: dict[str, int] = field(default_factory=dict)
    skipped_saves: int = 0
    failed_saves: int = 0
    fired_boundaries: list[str] = field(default_factory=list)
    best_val_reward: float = -math.inf
    elapsed_seconds: float = 0.0
    last_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics_timesteps: int | None = None
    saves_since_prune: int = 0
    last_checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (without the version and identity the manager adds)."""
        return {
            "next_save_step": self.next_save_step,
            "saves": self.saves,
            "saves_by_event": dict(self.saves_by_event),
            "skipped_saves": self.skipped_saves,
            "failed_saves": self.failed_saves,
            "fired_boundaries": list(self.fired_boundaries),
            "best_val_reward": (
                self.best_val_reward if math.isfinite(self.best_val_reward) else None
            ),
            "elapsed_seconds": self.elapsed_seconds,
            "last_metrics": dict(self.last_metrics),
            "last_metrics_timesteps": self.last_metrics_timesteps,
            "saves_since_prune": self.saves_since_prune,
            "last_checkpoint": self.last_checkpoint,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> RunState:
        """Read back :meth:`to_dict` (missing counters are 0).

        Raises:
            ValueError: not a state of a version this code knows.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported checkpoint callback state: {state!r:.200}")
        best_val = state.get("best_val_reward")
        last = state.get("last_metrics_timesteps")
        return cls(
            next_save_step=int(state["next_save_step"]),
            saves=int(state.get("saves", 0)),
            saves_by_event={
                str(k): int(v) for k, v in dict(state.get("saves_by_event", {})).items()
            },
            skipped_saves=int(state.get("skipped_saves", 0)),
            failed_saves=int(state.get("failed_saves", 0)),
            fired_boundaries=[str(b) for b in state.get("fired_boundaries", [])],
            best_val_reward=float(best_val) if best_val is not None else -math.inf,
            elapsed_seconds=float(state.get("elapsed_seconds", 0.0)),
            last_metrics={
                str(k): (math.nan if v is None else float(v))
                for k, v in dict(state.get("last_metrics", {})).items()
            },
            last_metrics_timesteps=None if last is None else int(last),
            saves_since_prune=int(state.get("saves_since_prune", 0)),
            last_checkpoint=state.get("last_checkpoint"),
        )
