"""Choosing a checkpoint to continue from, and the run that continues.

A checkpoint folder holds every run of its (phase, market): reruns, other configurations, the
trials of a search. A choice is made **within one run** unless the caller asks to cross runs:

- ``run_id="..."``: within that run;
- ``any_run=True``: across every run of the market and seed (the legacy run included);
- neither: within the run of the market and seed that was written to last (the run a user who
  just stopped training means), among the runs that have a candidate for the spec.

Specs: ``latest`` (the most timesteps; ``interrupt`` and ``phase_end`` first on ties),
``phase_end`` (the newest ``phase_end``), ``best:<metric>`` (the best by the metric in the
verified metadata, by the one ranking rule of :mod:`checkpointing.ranking`). A checkpoint that
fails verification is skipped with a warning, so a damaged file never stops a resume.

With a ``mirror`` (:class:`checkpointing.fetch.BucketMirror`: the models root is on a bucket
and ``folder`` is its staging copy), the candidates are those of staging and of the bucket;
one that is not staged, or fails verification there, is fetched from the bucket and verified
before it is chosen (a bit-flipped or truncated object is skipped with a warning naming it).

Which run continues (:func:`run_to_continue`): resuming from the newest checkpoint of a run
continues that run; resuming from any other checkpoint (an older best, another run's, a legacy
one) starts a new run from it, so no two histories ever share a file name.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.errors import CheckpointCorruptError, CheckpointNameError
from checkpointing.naming import CheckpointName, new_run_id, parse_name, validate_run_id
from checkpointing.ranking import METRICS, rank
from checkpointing.store import CheckpointInfo, list_checkpoints, verify_checkpoint

if TYPE_CHECKING:
    from checkpointing.fetch import BucketMirror

__all__ = [
    "RunChoice",
    "checkpoints_of",
    "find_resume_checkpoint",
    "parse_resume_spec",
    "run_to_continue",
    "runs_in",
]

log = logging.getLogger(__name__)

# Events that end a stretch of training: first among checkpoints of equal timesteps.
_ENDS = ("interrupt", "phase_end")


def parse_resume_spec(spec: str) -> tuple[str, str | None]:
    """``latest`` -> ("latest", None); ``best:sharpe_ratio`` -> ("best", "sharpe_ratio");
    ``phase_end`` -> ("phase_end", None). Raises ValueError otherwise."""
    if spec in ("latest", "phase_end"):
        return spec, None
    if spec.startswith("best:"):
        metric = spec[len("best:") :]
        if metric not in METRICS:
            raise ValueError(
                f"unknown metric {metric!r} in {spec!r}; choose one of {', '.join(METRICS)}"
            )
        return "best", metric
    raise ValueError(f"resume spec must be 'latest', 'phase_end' or 'best:<metric>', got {spec!r}")


def checkpoints_of(
    folder: str | os.PathLike[str],
    seed: int | None = None,
    market: str | None = None,
    run_id: str | None = None,
    mirror: BucketMirror | None = None,
) -> list[CheckpointInfo]:
    """The committed v2 checkpoints in ``folder`` of ``seed``, ``market`` and ``run_id`` (None:
    any), oldest first. With ``mirror``, those on the bucket too (a checkpoint in both is
    listed once, as staged).

    Raises:
        OSError: the bucket cannot be listed.
    """
    listed = list_checkpoints(folder, include_legacy=False)
    if mirror is not None:
        staged = {info.filename for info in listed}
        remote = [i for i in mirror.checkpoints(folder) if i.filename not in staged]
        listed = sorted([*listed, *remote], key=lambda i: (i.timesteps, i.filename))
    out = []
    for info in listed:
        name = info.name
        assert isinstance(name, CheckpointName)
        if seed is not None and name.seed != seed:
            continue
        if market is not None and name.market != market:
            continue
        if run_id is not None and name.run_id != run_id:
            continue
        out.append(info)
    return out


def runs_in(infos: Sequence[CheckpointInfo]) -> dict[tuple[str, int, str | None], list[int]]:
    """Indices of ``infos`` per run ``(market, seed, run_id)``; run_id None is the legacy run."""
    runs: dict[tuple[str, int, str | None], list[int]] = {}
    for i, info in enumerate(infos):
        name = info.name
        if isinstance(name, CheckpointName):
            runs.setdefault((name.market, name.seed, name.run_id), []).append(i)
    return runs


def _last_written_run(infos: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
    """The checkpoints of the run whose newest file was written last."""
    runs = runs_in(infos)
    if not runs:
        return []

    def written(members: list[int]) -> tuple[float, str]:
        newest = max(members, key=lambda i: (infos[i].mtime, infos[i].filename))
        return infos[newest].mtime, infos[newest].filename

    chosen = max(runs.values(), key=written)
    return [infos[i] for i in chosen]


def _verified(info: CheckpointInfo, mirror: BucketMirror | None = None) -> dict[str, object] | None:
    """The checkpoint's metadata if it verifies: in staging, else (with ``mirror``) fetched
    from the bucket and verified there first; None, with a warning, if neither."""
    if mirror is None or info.path.is_file():
        try:
            return verify_checkpoint(info.path)
        except CheckpointCorruptError as exc:
            log.warning("skipping checkpoint that fails verification: %s", exc)
            if mirror is None:
                return None
    try:
        return mirror.fetch(info.path)
    except CheckpointCorruptError as exc:
        log.warning("skipping checkpoint on the bucket that fails verification: %s", exc)
    except FileNotFoundError:
        pass  # only staged, and not verified there: warned above
    except OSError as exc:
        log.warning("skipping %s: cannot fetch it (%s)", mirror.uri_of(info.path), exc)
    return None


def find_resume_checkpoint(
    folder: str | os.PathLike[str],
    spec: str = "latest",
    *,
    seed: int | None = None,
    market: str | None = None,
    run_id: str | None = None,
    any_run: bool = False,
    mirror: BucketMirror | None = None,
) -> Path | None:
    """The checkpoint to resume from, skipping any that fails verification.

    See the module for the specs, which run is searched and ``mirror``. Returns None when
    nothing qualifies. The chosen file's name says its run (``parse_name(path.name).run_id``);
    with ``mirror`` it is in staging, verified, when this returns.

    Raises:
        ValueError: a bad spec, or both ``run_id`` and ``any_run``.
        OSError: the bucket cannot be listed.
    """
    kind, metric = parse_resume_spec(spec)
    if run_id is not None and any_run:
        raise ValueError("give either run_id or any_run, not both")
    if run_id is not None:
        validate_run_id(run_id)
    infos = checkpoints_of(folder, seed, market, run_id, mirror)
    if kind == "phase_end":
        infos = [i for i in infos if i.name.event == "phase_end"]  # type: ignore[union-attr]
    if run_id is None and not any_run:
        infos = _last_written_run(infos)
    if kind in ("latest", "phase_end"):
        ordered = sorted(
            infos,
            key=lambda i: (i.timesteps, i.name.event in _ENDS, i.mtime),  # type: ignore[union-attr]
            reverse=True,
        )
        return next((info.path for info in ordered if _verified(info, mirror) is not None), None)
    assert metric is not None
    return _best(infos, metric, mirror)


def _best(infos: Sequence[CheckpointInfo], metric: str, mirror: BucketMirror | None) -> Path | None:
    """The best of ``infos`` by ``metric`` that verifies. Without a mirror every candidate is
    verified first; with one, candidates are ranked by their metadata as read (the bucket's
    without downloading the checkpoints) and verified (fetched) best first."""
    candidates = []
    for info in infos:
        meta = _verified(info) if mirror is None else _unverified_metadata(info, mirror)
        if meta is None:
            continue
        try:
            value = float(meta.get(metric, math.nan))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        name = info.name
        assert isinstance(name, CheckpointName)
        candidates.append((value, info.timesteps, info.filename, name.model, info))
    if mirror is None:
        ranked = rank(candidates, k=1)
        return ranked[0].item.path if ranked else None
    for place in rank(candidates):
        for info in place.items:
            if _verified(info, mirror) is not None:
                return info.path
    return None


def _unverified_metadata(info: CheckpointInfo, mirror: BucketMirror) -> dict[str, object] | None:
    """The metadata of a staged checkpoint, else of its copy on the bucket; None if neither
    reads."""
    from checkpointing.metadata import decode_metadata, metadata_path_for

    path = metadata_path_for(info.path)
    staged = info.path.is_file()
    where = os.fspath(path) if staged else str(mirror.uri_of(path))  # the one read
    try:
        raw = path.read_bytes() if staged else mirror.metadata_bytes(info.path)
        return decode_metadata(raw, where)
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: cannot read its metadata (%s)", info.filename, exc)
        return None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


@dataclass(frozen=True)
class RunChoice:
    """The run a training that starts from a checkpoint writes as.

    ``continues``: True when it is the checkpoint's own run (the checkpoint is that run's
    newest), False for a new run started from it (``started_from`` names the checkpoint).
    """

    run_id: str
    continues: bool
    started_from: Path | None = None
    from_run: str | None = None


def run_to_continue(
    folder: str | os.PathLike[str],
    market: str,
    seed: int,
    checkpoint: str | os.PathLike[str] | None = None,
    requested: str | None = None,
    mirror: BucketMirror | None = None,
) -> RunChoice:
    """Which run a training of (market, seed) into ``folder`` writes as, when it starts from
    ``checkpoint`` (None: from scratch).

    - ``checkpoint`` is in ``folder`` and the newest of a run with an id, and ``requested``
      is None or that id: that run continues;
    - otherwise a new run, with the first of these ids that has no checkpoint of the market
      and seed in ``folder``: ``requested``, the checkpoint's run id (a phase continued from
      the previous phase's checkpoint keeps its run's id), a fresh id.

    With ``mirror``, the checkpoints of ``folder`` on the bucket count as in ``folder``.

    Raises:
        CheckpointNameError: ``requested`` is not a valid run id, or names a run that already
            has checkpoints in ``folder`` while not continuing from its newest.
        OSError: the bucket cannot be listed.
    """
    if requested is not None:
        validate_run_id(requested)
    folder = Path(folder)
    path = None if checkpoint is None else Path(checkpoint)
    name = None if path is None else parse_name(path.name)
    own = name.run_id if isinstance(name, CheckpointName) else None
    if (
        path is not None
        and isinstance(name, CheckpointName)
        and own is not None
        and requested in (None, own)
        and _same_folder(path.parent, folder)
    ):
        mine = checkpoints_of(folder, name.seed, name.market, own, mirror)
        if not any(i.timesteps > name.timesteps for i in mine):
            return RunChoice(own, continues=True, started_from=path, from_run=own)

    def taken(run_id: str) -> bool:
        return bool(checkpoints_of(folder, seed, market, run_id, mirror))

    if requested is not None:
        if taken(requested):
            raise CheckpointNameError(
                f"run {requested!r} already has checkpoints of {market} seed {seed} in "
                f"{os.fspath(folder)}"
                + (f", newer than {path.name}" if path is not None and own == requested else "")
                + ": continue it from its newest checkpoint (--resume-from latest --run-id "
                f"{requested}), or leave out --run-id to start a new run"
            )
        run_id = requested
    elif own is not None and not ((folder.is_dir() or mirror is not None) and taken(own)):
        run_id = own
    else:
        run_id = new_run_id()
    return RunChoice(run_id, continues=False, started_from=path, from_run=own)
