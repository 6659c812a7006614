"""Where a phase starts, and as which run.

In order: ``--continue --model-path P`` (P itself); ``--resume-from SPEC`` (picked within the
job's run, the run written to last, or every run with ``--any-run``); for phases 2 and 3 the
previous phase's ``phase_end`` of the same run (or of the run written to last); else scratch.
The run is :func:`checkpointing.selection.run_to_continue`'s answer: the checkpoint's own run
when it is that run's newest, otherwise a new run that records where it started.

With a models root on a bucket (``mirror``), the checkpoints of the bucket are candidates as
much as the staged ones: the chosen one is fetched into the staging folder and verified
before anything of it is unpickled (:mod:`checkpointing.fetch`), so a run resumed on another
node, or after its staging folder was deleted, continues from the bucket.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.config import CheckpointConfig
from checkpointing.errors import ConfigError
from checkpointing.naming import CheckpointName, parse_name
from checkpointing.selection import RunChoice, find_resume_checkpoint, run_to_continue
from checkpointing.trainers import check_trainer
from tuner.training.job import PhaseJob, tag

if TYPE_CHECKING:
    from checkpointing.fetch import BucketMirror

__all__ = ["Start", "choose_start"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """A phase's starting point: ``how`` (``scratch``, ``--model-path``, a resume spec or
    ``phase N phase_end``), the checkpoint (None from scratch), whether it belongs to an
    earlier phase (its timesteps and counters start again), and the run that trains."""

    how: str
    path: Path | None
    new_phase: bool
    run: RunChoice

    def run_info(self, models_root: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """The run's metadata fields: ``extra`` (a Tune trial's), and for a new run started
        from a checkpoint, that checkpoint (relative to the models root) and its run."""
        info = dict(extra)
        if self.path is not None and not self.run.continues:
            info["started_from"] = _relative(self.path, models_root)
            info["started_from_run"] = self.run.from_run
        return info

    def describe(self) -> str:
        """Which run trains and from what, for the progress output: ``run R (new), from
        scratch``, ``run R, continued from NAME (latest)``, ``run R, from NAME (phase 1
        phase_end)``, ``run S (new), from NAME of run R (best:sharpe_ratio)``."""
        run_id = self.run.run_id
        if self.path is None:
            return f"run {run_id} (new), from scratch"
        if self.run.continues:
            return f"run {run_id}, continued from {self.path.name} ({self.how})"
        if self.run.from_run == run_id:  # the next phase of the same run
            return f"run {run_id}, from {self.path.name} ({self.how})"
        origin = f"run {self.run.from_run}" if self.run.from_run else "a run without an id"
        return f"run {run_id} (new), from {self.path.name} of {origin} ({self.how})"


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix() if _under(path, root) else str(path)
    except ValueError:
        return str(path)


def _under(path: Path, root: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))


def choose_start(
    job: PhaseJob, config: CheckpointConfig, mirror: BucketMirror | None = None
) -> Start:
    """The starting point and run of ``job`` (nothing is loaded; with ``mirror``, the chosen
    checkpoint is fetched into staging, verified).

    Raises:
        ObjectStoreError: the bucket cannot be listed (named).
        ConfigError: ``--resume-from`` finds nothing, ``--model-path`` is missing, or the
            checkpoint was written by the other trainer (both named).
        CheckpointNameError: ``--run-id`` names a run that would mix with another's files.
    """
    folder = config.checkpoint_dir(job.phase, job.market, job.models_root)
    try:
        how, path, new_phase = _starting_checkpoint(job, config, folder, mirror)
        if path is not None:
            check_trainer(path, job.trainer)  # an SB3 zip is no RLlib checkpoint, and the reverse
        try:
            run = run_to_continue(folder, job.market, job.seed, path, job.run_id, mirror)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    except OSError as exc:
        if mirror is None:
            raise
        from checkpointing.errors import ObjectStoreError

        raise ObjectStoreError(f"{mirror.uri_of(folder)}: cannot list the bucket ({exc})") from None
    return Start(how, path, new_phase, run)


def _starting_checkpoint(
    job: PhaseJob, config: CheckpointConfig, folder: Path, mirror: BucketMirror | None
) -> tuple[str, Path | None, bool]:
    if job.model_path is not None:
        if not job.model_path.is_file():
            raise ConfigError(f"--model-path: no such checkpoint {os.fspath(job.model_path)!r}")
        return "--model-path", job.model_path, False
    if job.resume_from is not None:
        path = find_resume_checkpoint(
            folder,
            job.resume_from,
            seed=job.seed,
            market=job.market,
            run_id=job.run_id,
            any_run=job.any_run,
            mirror=mirror,
        )
        if path is None:
            which = f"run {job.run_id}" if job.run_id else "any run" if job.any_run else "the run"
            where = folder if mirror is None else f"{folder} or {mirror.uri_of(folder)}"
            raise ConfigError(
                f"--resume-from {job.resume_from}: no checkpoint of {job.market} seed "
                f"{job.seed} ({which}) that verifies in {where}"
            )
        return job.resume_from, path, False
    if job.phase > 1:
        previous = config.checkpoint_dir(job.phase - 1, job.market, job.models_root)
        path = find_resume_checkpoint(
            previous,
            "phase_end",
            seed=job.seed,
            market=job.market,
            run_id=job.run_id,
            mirror=mirror,
        )
        if path is not None:
            return f"phase {job.phase - 1} phase_end", path, True
        log.warning(
            "%s: no phase %d phase_end checkpoint%s in %s; phase %d starts from scratch",
            tag(job),
            job.phase - 1,
            f" of run {job.run_id}" if job.run_id else "",
            previous,
            job.phase,
        )
    return "scratch", None, False


def continue_target(
    path: Path, market: str | None, seed: int | None, phase: int | None
) -> tuple[str, int, int]:
    """Market, seed and phase of the checkpoint ``--continue --model-path`` continues.

    From its metadata (a v2 checkpoint, ``best_model.zip``, a legacy final model); for a v1
    ``phaseN_<steps>_steps.zip`` the phase is in its name and ``--market`` and ``--seed``
    must be given. A flag that contradicts the checkpoint is refused naming both values.

    Raises:
        ConfigError: a contradicting flag, a v2 checkpoint without its metadata (it cannot be
            verified), unreadable metadata, or a file that is no checkpoint.
    """
    from checkpointing.errors import MetadataError
    from checkpointing.metadata import metadata_path_for, read_checkpoint_metadata
    from checkpointing.naming import LegacyName

    try:
        meta = read_checkpoint_metadata(path, strict=True) or {}
    except MetadataError as exc:
        raise ConfigError(f"--model-path: {exc}") from None
    name = parse_name(path.name)
    if meta.get("source") == "metadata":
        found = (meta.get("market"), meta.get("seed"), meta.get("phase"))
        source = "its metadata"
        if not (
            isinstance(found[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in found[1:])
        ):
            raise ConfigError(
                f"--model-path: {metadata_path_for(path)} does not say the market, seed and "
                f"phase of {path.name} (got {found!r})"
            )
    elif isinstance(name, CheckpointName):
        raise ConfigError(
            f"--model-path: {path.name} has no metadata file ({metadata_path_for(path).name} is "
            "missing), so it cannot be verified before loading. Restore that file beside it, "
            "or continue from another checkpoint (python -m checkpointing.summary lists them)"
        )
    elif isinstance(name, LegacyName):
        if market is None or seed is None:
            raise ConfigError(
                f"--model-path: {path.name} is a v1 checkpoint: its name carries the phase "
                f"({name.phase}) but not the market or the seed; give --market and --seed"
            )
        log.warning(
            "%s is a v1 checkpoint without metadata: it is loaded without verification, "
            "and its schedule and bests start again at %d steps",
            path,
            name.timesteps,
        )
        found, source = (market, seed, name.phase), "its name and your flags"
    else:
        raise ConfigError(
            f"--model-path: {os.fspath(path)!r} has neither metadata nor a checkpoint name "
            "(NQ_ts-..._seed-42_run-....zip or phase1_<steps>_steps.zip)"
        )
    for flag, given, value in zip(
        ("--market", "--seed", "--phase"), (market, seed, phase), found, strict=True
    ):
        if given is not None and given != value:
            raise ConfigError(
                f"{flag} {given} contradicts {path.name}, whose {flag[2:]} is {value} (from "
                f"{source}); leave {flag} out to continue it, or pick a checkpoint of "
                f"{flag[2:]} {given}"
            )
    return str(found[0]), int(found[1]), int(found[2])  # type: ignore[arg-type]
