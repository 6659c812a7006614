"""The one rule for "the best checkpoints by a metric".

Everything that picks best checkpoints goes through :func:`rank`: retention's top-K, the
registry, ``--resume-from best:<metric>``, the driver's summary and the browser, so they
always agree. The rule:

- every metric of :data:`METRICS` is better when higher (``max_drawdown`` is a fraction <= 0);
- a NaN (not measured) never ranks, and neither does an ``interrupt`` checkpoint: it carries
  the metrics of the evaluation before it, measured on an earlier model than the one it holds;
- ties go to more timesteps, then to the smaller file name, so the order is the same on
  every machine and every run;
- a model counts once, however many events it was saved under: a ``best`` save and its
  ``periodic`` twin (one model, hard-linked) share one place, listed together, the smaller
  file name first (``evt-best`` before ``evt-periodic``).

A candidate is a tuple ``(value, timesteps, file_name, model, item)``: ``model`` is any key
that is equal for the twins of one model (:attr:`CheckpointName.model
<checkpointing.naming.CheckpointName.model>`) and ``item`` whatever the caller ranks::

    ranked = rank((e.metric("sharpe_ratio"), e.timesteps, e.name, e.model, e) for e in entries)
    ranked[0].item        # the best model's first-named checkpoint
    ranked[0].items       # every checkpoint that holds that model
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["METRICS", "Candidate", "Ranked", "check_metric", "rank"]

# The metrics a checkpoint carries and that can be ranked; all are "higher is better".
METRICS = ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown", "total_return")

T = TypeVar("T")
_INTERRUPT = "_evt-interrupt_"
Candidate = tuple[float, int, str, Hashable, T]


@dataclass(frozen=True)
class Ranked(Generic[T]):
    """One model's place in a ranking: its value, timesteps and every checkpoint holding it."""

    value: float
    timesteps: int
    names: tuple[str, ...]
    items: tuple[T, ...]

    @property
    def item(self) -> T:
        """The checkpoint that stands for the model: the first by file name."""
        return self.items[0]


def check_metric(metric: object, what: str = "metric") -> str:
    """Return ``metric`` if it is one of :data:`METRICS`, else raise ValueError naming it."""
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"{what} must be one of {list(METRICS)}, got {metric!r}")
    return metric


def rank(candidates: Iterable[Candidate[T]], k: int | None = None) -> list[Ranked[T]]:
    """The models of ``candidates`` best first (see the module's rule); at most ``k``."""
    # NaN never ranks; nor does an interrupt (its metrics were measured on an earlier model).
    scored = [c for c in candidates if c[0] == c[0] and _INTERRUPT not in c[2]]
    scored.sort(key=lambda c: (-c[0], -c[1], c[2]))
    groups: dict[Hashable, list[Candidate[T]]] = {}
    for candidate in scored:
        members = groups.get(candidate[3])
        if members is None:
            if k is not None and len(groups) >= k:
                continue  # a model past the k-th; its twins of kept models still join below
            groups[candidate[3]] = [candidate]
        else:
            members.append(candidate)
    return [
        Ranked(
            members[0][0],
            members[0][1],
            tuple(c[2] for c in members),
            tuple(c[4] for c in members),
        )
        for members in groups.values()
    ]
