"""A trial's history for the report: its validation metrics over timesteps, every checkpoint
its runs saved, and which of them retention kept.

Where the events come from. A checkpoint's metadata goes with it when retention deletes it,
and the registry forgets it; TensorBoard's markers hold every event but need a protobuf
reader. Tune's ``result.json`` holds them all, as plain JSON: each report after an evaluation
names every checkpoint that evaluation led to (``saved``: the ``periodic`` and its ``best``
twin, a ``phase_boundary_*``, a ``phase_end``), the final report the last ``phase_end``, an
interrupted trial's report its ``interrupt``, and a retried trial keeps its crashed worker's
reports. Results written before ``saved`` existed name one checkpoint (``checkpoint``); the
files on disk of the trial's runs are added either way (a crash's ``interrupt`` is never
reported). Kept: the checkpoint's zip is in its folder now.

Each report also carries what retention deleted since the previous one (``pruned``,
``pruned_bytes``: the run's in-run passes over its folder, any run's checkpoints).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.folders import BucketFolder
from checkpointing.locations import StoreURI
from checkpointing.naming import BOUNDARY_PREFIX, CheckpointName, parse_name
from checkpointing.ranking import METRICS
from checkpointing.store import CheckpointInfo, list_checkpoints
from tuner.driver.experiments import TrialInfo
from tuner.driver.tune_files import (
    RESULT_FILE,
    checkpoint_file_name,
    finite,
    integer,
    read_result_rows,
)

__all__ = [
    "EVENT_KINDS",
    "CheckpointEvent",
    "Folders",
    "Point",
    "TrialHistory",
    "bytes_on_disk",
    "event_kind",
    "metric_series",
    "trial_history",
]

EVENT_KINDS = ("periodic", "best", "phase_end", "interrupt", "boundary")


def event_kind(event: str) -> str:
    """The kind of a checkpoint event: one of :data:`EVENT_KINDS`."""
    return "boundary" if event.startswith(BOUNDARY_PREFIX) else event


@dataclass(frozen=True)
class Point:
    """One evaluation on validation: the trial's timesteps (over all its phases) and metrics."""

    timesteps: int
    phase: int
    metrics: Mapping[str, float | None]


@dataclass(frozen=True)
class CheckpointEvent:
    """One checkpoint a trial's run saved: its file name, event and kind, phase, the trial's
    timesteps at the save, and whether its zip is still there (``path``: where it is or was)."""

    name: str
    event: str
    phase: int
    timesteps: int
    run_id: str | None
    kept: bool
    path: Path | StoreURI | None
    val_reward: float
    sharpe_ratio: float

    @property
    def kind(self) -> str:
        return event_kind(self.event)


@dataclass
class TrialHistory:
    """What the report draws for one trial."""

    trial: TrialInfo
    points: list[Point] = field(default_factory=list)
    events: list[CheckpointEvent] = field(default_factory=list)
    phase_starts: dict[int, int] = field(default_factory=dict)  # phase -> trial timesteps
    pruned: dict[int, tuple[int, int]] = field(default_factory=dict)  # phase -> (n, bytes)
    reports_saved: bool = False  # the results name every checkpoint (``saved``)


class Folders:
    """Checkpoint folders listed once each (many trials share one): folders on this machine,
    or folders in a bucket (one listing each; nothing downloaded)."""

    def __init__(self) -> None:
        self._listed: dict[Path | StoreURI, dict[str, CheckpointInfo]] = {}
        self._buckets: dict[StoreURI, BucketFolder] = {}
        self._stores: dict[tuple[str, str], Any] = {}  # one client per bucket
        self.notes: list[str] = []

    def infos(self, folder: Path | StoreURI) -> dict[str, CheckpointInfo]:
        """File name -> info of every committed checkpoint in ``folder``."""
        if folder not in self._listed:
            if isinstance(folder, StoreURI):
                found = self._bucket_checkpoints(folder)
            else:
                found = list_checkpoints(folder, include_legacy=False)
            self._listed[folder] = {i.filename: i for i in found}
        return self._listed[folder]

    def _bucket_checkpoints(self, folder: StoreURI) -> list[CheckpointInfo]:
        from checkpointing.object_store import ObjectStore

        bucket = (folder.scheme, folder.bucket)
        if bucket not in self._stores:
            self._stores[bucket] = ObjectStore(StoreURI(*bucket))
        listed = BucketFolder(self._stores[bucket], folder.key)
        self._buckets[folder] = listed
        try:
            return listed.checkpoints(include_legacy=False)
        except OSError as exc:
            self.notes.append(f"cannot list {folder} ({exc}): its checkpoints are not shown")
            return []

    def usage(self, folder: Path | StoreURI, names: Iterable[str]) -> tuple[int, int]:
        """Checkpoints and bytes (zip, VecNormalize pkl and metadata) of the checkpoints
        ``names`` that are in ``folder`` (:func:`bytes_on_disk` on this machine; the bucket's
        object sizes from its listing)."""
        infos = self.infos(folder)
        found = [infos[n] for n in sorted(set(names)) if n in infos]
        if isinstance(folder, StoreURI):
            listed = self._buckets[folder]
            return len(found), sum(listed.bytes_of(i) for i in found)
        return bytes_on_disk(found)


def _metrics(row: Mapping[str, Any]) -> dict[str, float | None] | None:
    values = {m: finite(row.get(m)) for m in METRICS}
    return values if any(v is not None for v in values.values()) else None


def _names(row: Mapping[str, Any]) -> list[str]:
    saved = row.get("saved")
    names = saved if isinstance(saved, list) else [row.get("checkpoint")]
    out = []
    for value in names:
        name = checkpoint_file_name(value)
        if name is not None and isinstance(parse_name(name), CheckpointName):
            out.append(name)
    return out


class _Reader:
    """One pass over a trial's results."""

    def __init__(self, history: TrialHistory) -> None:
        self.history = history
        self.points: dict[int, Point] = {}
        self.saved: dict[tuple[int, str], int] = {}  # (phase, name) -> trial timesteps

    def take(self, row: Mapping[str, Any]) -> None:
        phase, steps = integer(row.get("phase")), integer(row.get("timesteps"))
        if phase is None or steps is None:
            return
        in_phase = integer(row.get("phase_timesteps"))
        if in_phase is not None:
            self.history.phase_starts.setdefault(phase, steps - in_phase)
        metrics = _metrics(row)
        if metrics is not None and row.get("interrupted") is not True:
            self.points[steps] = Point(steps, phase, metrics)  # a retry's value replaces
        if isinstance(row.get("saved"), list):
            self.history.reports_saved = True
        for name in _names(row):
            self.saved.setdefault((phase, name), steps)
        count, freed = integer(row.get("pruned")), integer(row.get("pruned_bytes"))
        if count is not None and freed is not None:
            n, b = self.history.pruned.get(phase, (0, 0))
            self.history.pruned[phase] = (n + count, b + freed)


def _runs(trial: TrialInfo, rows: Sequence[Mapping[str, Any]]) -> set[str | None]:
    runs: set[str | None] = {trial.run_id}
    runs.update(r["run_id"] for r in rows if isinstance(r.get("run_id"), str))
    return runs


def trial_history(
    trial: TrialInfo, folders: Mapping[int, Path | StoreURI], listing: Folders
) -> TrialHistory:
    """The history of ``trial`` from its ``result.json`` and its checkpoint ``folders`` (per
    phase, :func:`tuner.driver.bests.checkpoint_folders`)."""
    history = TrialHistory(trial)
    rows = read_result_rows(trial.folder / RESULT_FILE)
    reader = _Reader(history)
    for row in rows:
        reader.take(row)
    history.points = [reader.points[t] for t in sorted(reader.points)]
    runs = _runs(trial, rows)
    on_disk: dict[tuple[int, str], CheckpointInfo] = {}
    for phase, folder in folders.items():
        for filename, info in listing.infos(folder).items():
            name = info.name
            if isinstance(name, CheckpointName) and _mine(name, trial, runs):
                on_disk[(phase, filename)] = info
    start = history.phase_starts
    for phase, filename in sorted(set(reader.saved) | set(on_disk)):
        parsed = parse_name(filename)
        assert isinstance(parsed, CheckpointName)
        steps = reader.saved.get((phase, filename), start.get(phase, 0) + parsed.timesteps)
        where = folders.get(phase)
        history.events.append(
            CheckpointEvent(
                name=filename,
                event=parsed.event,
                phase=phase,
                timesteps=steps,
                run_id=parsed.run_id,
                kept=(phase, filename) in on_disk,
                path=_child(where, filename),
                val_reward=parsed.val_reward,
                sharpe_ratio=parsed.sharpe_ratio,
            )
        )
    history.events.sort(key=lambda e: (e.timesteps, EVENT_KINDS.index(e.kind), e.name))
    return history


def _child(folder: Path | StoreURI | None, filename: str) -> Path | StoreURI | None:
    if folder is None:
        return None
    return folder.child(filename) if isinstance(folder, StoreURI) else folder / filename


def _mine(name: CheckpointName, trial: TrialInfo, runs: Iterable[str | None]) -> bool:
    return name.market == trial.market and name.seed == trial.seed and name.run_id in runs


def metric_series(history: TrialHistory, metric: str) -> tuple[list[float], list[float | None]]:
    """Timesteps and ``metric`` of every evaluation (None where it was not measured)."""
    xs = [float(p.timesteps) for p in history.points]
    ys: list[float | None] = []
    for p in history.points:
        v = p.metrics.get(metric)
        ys.append(v if v is not None and math.isfinite(v) else None)
    return xs, ys


def bytes_on_disk(infos: Iterable[CheckpointInfo]) -> tuple[int, int]:
    """Checkpoints and bytes (zip, VecNormalize pkl and metadata) of ``infos``; a file shared
    by hard links (a ``best`` and its ``periodic`` twin) counts once."""
    seen: set[tuple[int, int]] = set()
    total = count = 0
    for info in infos:
        count += 1
        for path in (info.path, info.vecnormalize_path, info.metadata_path):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return count, total
