"""DynamicCheckpointManager: decides, names, writes and tracks the checkpoints of one run.

One manager serves one run: one training of one (phase, market, seed), named by its run id,
which every checkpoint name and metadata carries. It owns the adaptive schedule, the best
tracker, the disk guard and the background writer; the SB3 callback
(:class:`checkpointing.callback.MetricTrackingEvalCallback`) only tells it what happened.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.cleanup import sweep
from checkpointing.config import CheckpointConfig, load_config
from checkpointing.disk import (
    METADATA_ROOM,
    DiskGuard,
    checkpoint_bytes_on_disk,
    estimated_checkpoint_bytes,
)
from checkpointing.errors import ConfigError
from checkpointing.files import link_or_copy
from checkpointing.metadata import build_metadata
from checkpointing.naming import (
    BOUNDARY_PREFIX,
    LEGACY_FINAL_NAMES,
    CheckpointName,
    new_run_id,
    validate_market,
    validate_run_id,
    validate_seed,
)
from checkpointing.publish import publish
from checkpointing.ranking import METRICS
from checkpointing.run_state import STATE_VERSION, RunState
from checkpointing.schedule import AdaptiveSchedule
from checkpointing.selection import checkpoints_of
from checkpointing.snapshot import take_snapshot
from checkpointing.store import commit_files
from checkpointing.trainers import CheckpointSource, Snapshot
from checkpointing.triggers import BestTracker
from checkpointing.writer import AsyncWriter

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecNormalize

__all__ = ["DynamicCheckpointManager", "SB3Source", "SaveOutcome"]

log = logging.getLogger(__name__)

BEST_MODEL = "best_model"
# The run's own metadata fields besides run_id (a Tune trial's experiment and trial id, the
# checkpoint a run started from).
RUN_FIELDS = (
    "experiment",
    "trial_id",
    "started_from",
    "started_from_run",
    "config_id",
    "hyperparameters",
    "exploited",
    "start_metrics",
)


@dataclass
class SaveOutcome:
    """What became of one save request (filled in by the writer)."""

    events: tuple[str, ...]
    timesteps: int
    paths: list[Path] = field(default_factory=list)
    skipped: str | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is None and self.error is None and bool(self.paths)


@dataclass
class SB3Source:
    """An SB3 model and its VecNormalize (``buffers``: the manager's reusable tensor memory)."""

    model: BaseAlgorithm
    vec_normalize: VecNormalize | None
    buffers: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    trainer: str = "sb3"

    @property
    def algorithm(self) -> str:
        return type(self.model).__name__

    @property
    def timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def estimated_bytes(self) -> int:
        return estimated_checkpoint_bytes(self.model)

    def snapshot(self) -> Snapshot:
        return take_snapshot(self.model, self.vec_normalize, self.buffers)


class DynamicCheckpointManager:
    """Saves the checkpoints of one run of (phase, market, seed) into the market's folder.

    Args:
        config: a :class:`CheckpointConfig`, a path to a YAML file, or None for
            ``config/checkpoint_config.yaml``.
        phase: 1, 2 or 3.
        market: market name (letters, digits, inner ``.``/``-``).
        seed: the run's seed.
        run_id: the run's id (letters, digits, inner ``.``/``-``); None makes a new one
            (``manager.run_id``). To continue a run, pass its id (see
            :func:`checkpointing.selection.run_to_continue`).
        run_info: more about the run for every checkpoint's metadata: ``experiment`` and
            ``trial_id`` of a Tune trial, ``started_from`` (the checkpoint it started from)
            and ``started_from_run``.
        models_root: moves ``paths.root`` (e.g. ``./models``) elsewhere.
        target_timesteps: overrides the phase's ``target_timesteps`` (the schedule's 100%).
        async_saves: overrides ``performance.async_saves``.
        on_commit: called as ``on_commit(zip_path, metadata)`` under the folder lock after
            each commit (the registry uses it).
        pruner: called as ``pruner(folder)`` every ``retention.prune_frequency`` saves and
            when the disk runs short; returns anything (what a report with ``deleted`` and
            ``bytes_freed`` counts adds up in :meth:`take_pruned`).

    Raises:
        CheckpointNameError: bad market or seed, before any path is built.
        ConfigError: bad config.
    """

    def __init__(
        self,
        config: CheckpointConfig | str | os.PathLike[str] | None = None,
        *,
        phase: int,
        market: str,
        seed: int,
        run_id: str | None = None,
        run_info: Mapping[str, Any] | None = None,
        models_root: str | os.PathLike[str] | None = None,
        target_timesteps: int | None = None,
        async_saves: bool | None = None,
        on_commit: Callable[[Path, dict[str, Any]], None] | None = None,
        pruner: Callable[[Path], Any] | None = None,
    ) -> None:
        self.market = validate_market(market)
        self.seed = validate_seed(seed)
        self.run_id = new_run_id() if run_id is None else validate_run_id(run_id)
        unknown = set(run_info or {}) - set(RUN_FIELDS)
        if unknown:
            raise ValueError(f"run_info: unknown fields {sorted(unknown)}; known: {RUN_FIELDS}")
        self.run_info = {k: v for k, v in dict(run_info or {}).items() if v is not None}
        self.config = config if isinstance(config, CheckpointConfig) else load_config(config)
        schedule = self.config.phase(phase)
        if target_timesteps is not None:
            if isinstance(target_timesteps, bool) or not isinstance(target_timesteps, int):
                raise ConfigError(f"target_timesteps must be an integer, got {target_timesteps!r}")
            if target_timesteps < 1:
                raise ConfigError(f"target_timesteps must be >= 1, got {target_timesteps!r}")
            schedule = replace(schedule, target_timesteps=target_timesteps)
        self.phase = phase
        self.phase_schedule = schedule
        layout = self.config.layout(models_root)
        self.models_root = layout.root
        self.folder = layout.checkpoint_dir(phase, market)
        self.market_dir = layout.market_dir(phase, market)
        self.run_dir = layout.run_dir(phase, market, self.run_id)
        self.schedule = AdaptiveSchedule(schedule)
        events = self.config.events
        self.tracker = BestTracker(
            events.monitored_metrics, events.metric_improvement_threshold, events.improvement_floor
        )
        self.on_commit = on_commit
        self.pruner = pruner
        use_async = self.config.performance.async_saves if async_saves is None else async_saves
        self.writer = AsyncWriter(enabled=use_async)
        self.state = RunState(next_save_step=self.schedule.next_after(0))
        self.disk = DiskGuard(self.folder, self.config.performance, self._prune_now)
        self._buffers: dict[tuple[Any, ...], Any] = {}
        self._state_lock = threading.Lock()
        # The file names of the latest save, one per event (empty when the disk guard skipped
        # it): a report after an evaluation names every checkpoint the evaluation led to.
        self.last_saved: tuple[str, ...] = ()
        self._pruned = (0, 0)  # checkpoints and bytes retention deleted, since take_pruned()
        self._swept = False
        # Before this step no boundary can be due: boundaries_due() is a single comparison on
        # most training steps (the callback asks on every one).
        self._boundaries_quiet_until: float = 0

    # ------------------------------------------------------------------ schedule

    @property
    def next_save_step(self) -> int:
        return self.state.next_save_step

    @property
    def target_timesteps(self) -> int:
        return self.phase_schedule.target_timesteps

    def periodic_due(self, timesteps: int) -> bool:
        return timesteps >= self.state.next_save_step

    def boundaries_due(self, timesteps: int) -> list[str]:
        """Names of the configured boundaries crossed by ``timesteps`` and not yet saved."""
        if timesteps < self._boundaries_quiet_until:
            return []
        if not self.config.events.fires("phase_boundary"):
            self._boundaries_quiet_until = math.inf
            return []
        fired = self.state.fired_boundaries
        due = [b.name for b in self.schedule.boundaries_crossed(timesteps, fired)]
        if not due:
            target = self.target_timesteps
            self._boundaries_quiet_until = min(
                (b.step(target) for b in self.phase_schedule.boundaries if b.name not in fired),
                default=math.inf,
            )
        return due

    def start_at(self, timesteps: int) -> None:
        """Continue the schedule from ``timesteps`` without a saved state (a checkpoint that
        carries none, e.g. v1): the next periodic save is one interval after it."""
        self.state.next_save_step = self.schedule.next_after(timesteps)

    def record_evaluation(self, metrics: Mapping[str, float], timesteps: int) -> list[str]:
        """Remember an evaluation; return the monitored metrics that improved enough."""
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        self.state.last_metrics = clean
        self.state.last_metrics_timesteps = timesteps
        if not self.config.events.fires("best"):
            self.tracker.update(clean)  # keep bests current even when best saves are off
            return []
        return self.tracker.update(clean)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The manager's own state, stored in every checkpoint's metadata."""
        return {
            "version": STATE_VERSION,
            "phase": self.phase,
            "market": self.market,
            "seed": self.seed,
            "run_id": self.run_id,
            "target_timesteps": self.target_timesteps,
            **self.state.to_dict(),
            "bests": self.tracker.state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume): next save, bests, counters.
        The run id stays this manager's (see :func:`checkpointing.selection.run_to_continue`)."""
        self.state = RunState.from_dict(state)
        self._boundaries_quiet_until = 0
        self.tracker.load({k: v for k, v in dict(state.get("bests", {})).items() if v is not None})

    # ------------------------------------------------------------------ saving

    def save(
        self,
        model: BaseAlgorithm,
        vec_normalize: VecNormalize | None,
        events: str | Sequence[str],
        *,
        metrics: Mapping[str, float] | None = None,
        metrics_timesteps: int | None = None,
        improved: Sequence[str] = (),
        runtime: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> Future[SaveOutcome]:
        """Save the SB3 model under one or more events (e.g. ``["periodic", "best"]``).

        The snapshot is taken now, on the caller's thread; serialization and the commit run
        on the background writer. With ``wait=True`` (interrupt, phase end) it returns after
        the commit. Every extra event of the same snapshot is committed as a hard link of
        the first one's files. The returned future never raises: errors land in the
        :class:`SaveOutcome`.
        """
        return self.save_from(
            SB3Source(model, vec_normalize, self._buffers),
            events,
            metrics=metrics,
            metrics_timesteps=metrics_timesteps,
            improved=improved,
            runtime=runtime,
            wait=wait,
        )

    def save_from(
        self,
        source: CheckpointSource,
        events: str | Sequence[str],
        *,
        metrics: Mapping[str, float] | None = None,
        metrics_timesteps: int | None = None,
        improved: Sequence[str] = (),
        runtime: Mapping[str, Any] | None = None,
        wait: bool = False,
    ) -> Future[SaveOutcome]:
        """:meth:`save` for any trainer: ``source`` says the trainer, the algorithm and the
        timesteps, and takes the snapshot (see :mod:`checkpointing.trainers`)."""
        names = [events] if isinstance(events, str) else list(events)
        timesteps = int(source.timesteps)
        if metrics is None:
            metrics, metrics_timesteps = self.state.last_metrics, self.state.last_metrics_timesteps
        outcome = SaveOutcome(tuple(names), timesteps)
        self.last_saved = ()
        self._advance_schedule(names, timesteps)
        if self.disk.expected_bytes is None:  # no save of this run written yet
            self.disk.expect(self._first_save_bytes(source))
        if self._skipped_for_disk(outcome):
            done: Future[SaveOutcome] = Future()
            done.set_result(outcome)
            return done
        prune_now = self._count_save(names)

        clean = {k: float(v) for k, v in (metrics or {}).items() if _is_number(v)}
        val = clean.get("val_reward", math.nan)
        checkpoint_names = [
            CheckpointName(
                self.market,
                timesteps,
                name,
                val,
                clean.get("sharpe_ratio", math.nan),
                self.seed,
                self.run_id,
            )
            for name in names
        ]
        self.state.last_checkpoint = checkpoint_names[0].filename
        self.last_saved = tuple(n.filename for n in checkpoint_names)
        documents = self._documents(
            checkpoint_names, clean, metrics_timesteps, improved, source, runtime
        )
        compression = self.disk.compression()

        # One save in flight: the previous snapshot is written before its buffers are reused.
        self.writer.flush()
        snapshot = source.snapshot()

        def job() -> SaveOutcome:
            try:
                self._write(snapshot, checkpoint_names, documents, outcome, val, compression)
            except BaseException as exc:
                self._failed(outcome, exc, checkpoint_names[0].filename)
                return outcome
            finally:
                snapshot.close()
            if prune_now and self.pruner is not None:
                self._prune(f"every {self.config.retention.prune_frequency} saves")
            return outcome

        future = self.writer.submit(job)
        if wait:
            self.writer.flush()
        return future

    def _advance_schedule(self, names: Sequence[str], timesteps: int) -> None:
        """Periodic and boundary bookkeeping, done before the save so that the state stored
        with this checkpoint (and any resume from it) already points at the next save."""
        if "periodic" in names:
            self.state.next_save_step = self.schedule.next_after(timesteps)
        for name in names:
            if name.startswith(BOUNDARY_PREFIX):
                self.state.fired_boundaries.append(name[len(BOUNDARY_PREFIX) :])

    def _skipped_for_disk(self, outcome: SaveOutcome) -> bool:
        """The disk guard: True (and the outcome says why) when a periodic or best save is
        skipped for lack of room; interrupt and phase_end saves are tried anyway."""
        shortage = self.disk.shortage()
        if shortage is None:
            return False
        events = "+".join(outcome.events)
        if any(n in ("interrupt", "phase_end") for n in outcome.events):
            log.warning("%s; trying the %s save anyway", shortage, events)
            return False
        self.state.skipped_saves += 1
        outcome.skipped = shortage
        log.warning(
            "skipping %s save at %d steps of %s seed %d: %s (%d skipped so far)",
            events,
            outcome.timesteps,
            self.market,
            self.seed,
            shortage,
            self.state.skipped_saves,
        )
        return True

    def _count_save(self, names: Sequence[str]) -> bool:
        """Count a save (per event kind too); True when retention is due after it."""
        self.state.saves += 1
        for name in names:
            kind = "phase_boundary" if name.startswith(BOUNDARY_PREFIX) else name
            self.state.saves_by_event[kind] = self.state.saves_by_event.get(kind, 0) + 1
        self.state.saves_since_prune += 1
        if self.state.saves_since_prune < self.config.retention.prune_frequency:
            return False
        self.state.saves_since_prune = 0
        return True

    def _documents(
        self,
        names: Sequence[CheckpointName],
        metrics: Mapping[str, float],
        metrics_timesteps: int | None,
        improved: Sequence[str],
        source: CheckpointSource,
        runtime: Mapping[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """The metadata of each checkpoint of one save (they differ only in their event)."""
        callback_state = self.state_dict()
        llm: dict[str, float | int] = {
            k: int(metrics[k]) if k.endswith("_count") else metrics[k]
            for k in self.config.llm_metadata
            if k in metrics and math.isfinite(metrics[k])
        }
        other = {k: v for k, v in metrics.items() if k not in METRICS and k not in llm}
        return [
            build_metadata(
                name=cname,
                phase=self.phase,
                metrics={**{k: metrics[k] for k in METRICS if k in metrics}, **other},
                metrics_timesteps=metrics_timesteps,
                runtime={
                    "algorithm": source.algorithm,
                    "trainer": source.trainer,
                    **dict(runtime or {}),
                },
                llm=llm if self.phase == 3 or llm else None,
                improved_metrics=list(improved) if cname.event == "best" else [],
                callback_state=callback_state,
                extra=self.run_info,
            )
            for cname in names
        ]

    def _failed(self, outcome: SaveOutcome, exc: BaseException, filename: str) -> None:
        outcome.error = exc
        with self._state_lock:
            self.state.failed_saves += 1
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            log.warning(
                "disk full while saving %s: nothing was committed, older checkpoints are "
                "intact, training goes on",
                filename,
            )
        else:
            log.error("saving %s failed: %r", filename, exc)

    def _write(
        self,
        snapshot: Snapshot,
        names: list[CheckpointName],
        documents: list[dict[str, Any]],
        outcome: SaveOutcome,
        val_reward: float,
        compression: tuple[str, int],
    ) -> None:
        method, level = compression
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            from checkpointing.store import folder_lock

            with folder_lock(self.folder):
                sweep(self.folder, grace_seconds=self.config.retention.orphan_grace_seconds)
        first: Path | None = None
        for cname, doc in zip(names, documents, strict=True):
            write_zip: Callable[[Path], None]
            if first is None:
                write_zip = functools.partial(
                    _write_snapshot_zip, snapshot, method == "deflate", level
                )
            else:
                write_zip = functools.partial(link_or_copy, first)

            path, _ = commit_files(
                self.folder,
                cname.filename,
                write_zip,
                snapshot.vecnormalize,
                doc,
                on_commit=self.on_commit,
            )
            outcome.paths.append(path)
            if first is None:
                first = path
                self.disk.expect(
                    path.stat().st_size + len(snapshot.vecnormalize or b"") + METADATA_ROOM
                )
                log.info("saved %s", path)
        assert first is not None
        if math.isfinite(val_reward) and val_reward > self.state.best_val_reward:
            # Compared again with best_model_metadata.json on disk: the market's other runs
            # share it.
            publish(first, self.market_dir, BEST_MODEL, only_if_better=True)
            with self._state_lock:
                self.state.best_val_reward = val_reward
        if "phase_end" in outcome.events:
            publish(first, self.run_dir, LEGACY_FINAL_NAMES[self.phase], only_if_better=False)

    # ------------------------------------------------------------------ disk

    def _first_save_bytes(self, source: CheckpointSource) -> int:
        """The expected size of the run's first save: its newest checkpoint in the folder (a
        resumed run), else the checkpoint it started from, else the model's guess (which
        leaves room for an uncompressed zip)."""
        try:
            mine = checkpoints_of(self.folder, self.seed, self.market, self.run_id)
        except OSError:  # an unreadable folder: guess from the model instead
            mine = []
        if mine:
            size = checkpoint_bytes_on_disk(mine[-1].path)  # oldest first
        elif "started_from" in self.run_info:
            size = checkpoint_bytes_on_disk(self.models_root / str(self.run_info["started_from"]))
        else:
            size = None
        return size or source.estimated_bytes()

    def _prune_now(self, why: str) -> None:
        """A retention pass before the next save (the disk guard asks when short of room)."""
        if self.pruner is not None:
            self.writer.flush()
            self._prune(why)

    def _prune(self, why: str) -> None:
        if self.pruner is None:
            return
        try:
            report = self.pruner(self.folder)
            log.debug("pruned %s (%s)", self.folder, why)
        except Exception as exc:  # pruning must never stop training
            log.warning("retention pass on %s failed: %s", self.folder, exc)
            return
        deleted, freed = getattr(report, "deleted", 0), getattr(report, "bytes_freed", 0)
        if isinstance(deleted, int) and isinstance(freed, int):
            with self._state_lock:
                count, total = self._pruned
                self._pruned = (count + deleted, total + freed)

    def take_pruned(self) -> tuple[int, int]:
        """The checkpoints and bytes this manager's retention passes deleted from its folder
        (any run's) since the previous call; a report to Tune carries them, so that what
        retention freed adds up over the reports."""
        with self._state_lock:
            pruned, self._pruned = self._pruned, (0, 0)
        return pruned

    # ------------------------------------------------------------------ lifecycle

    def flush(self) -> None:
        """Wait for the save in flight."""
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _write_snapshot_zip(snapshot: Snapshot, compress: bool, level: int, tmp: Path) -> None:
    snapshot.write_zip(tmp, compress=compress, level=level)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
