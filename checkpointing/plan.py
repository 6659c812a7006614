"""A retention plan: what a policy keeps of a folder and why, and deleting the rest.

- :func:`plan` lists the folder (names only: no metadata file is opened) and asks the policy;
  every row says keep or delete and why (``kept_by``); each decision is logged on one line.
- :func:`apply` deletes the rows marked delete, each zip first and then its companions.

Both are called under the folder lock by :func:`checkpointing.retention.prune_folder`. A folder
in a bucket (:class:`~checkpointing.folders.BucketFolder`) is planned from one listing with the
same policies, and :func:`apply` deletes there, zip first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpointing.cleanup import delete_checkpoints
from checkpointing.folders import BucketFolder, checkpoint_bytes
from checkpointing.locations import StoreURI
from checkpointing.policies import AnyPolicy, RetentionPolicy
from checkpointing.store import CheckpointInfo, list_checkpoints

__all__ = ["PlanRow", "RetentionPlan", "apply", "plan"]

log = logging.getLogger(__name__)


class PlanRow:
    """One checkpoint of a plan: keep it (``kept_by`` says why) or delete it.

    ``PlanRow(info, kept_by, bytes_freed)``; immutable, compared and hashed by those fields.
    ``bytes_freed``: what deleting it frees (the zip plus its companions); 0 when kept. Unless
    given, a deleted row learns it from :func:`apply` (the ``lstat`` made before each unlink,
    no extra I/O), or reads the files on first use (an ``lstat`` each); once known, it stays.
    """

    __slots__ = ("_bytes_freed", "_info", "_kept_by")

    _info: CheckpointInfo
    _kept_by: tuple[str, ...]
    _bytes_freed: int | None

    def __init__(
        self, info: CheckpointInfo, kept_by: tuple[str, ...], bytes_freed: int | None = None
    ) -> None:
        self._info = info
        self._kept_by = tuple(kept_by)
        self._bytes_freed = bytes_freed if bytes_freed is not None else (0 if kept_by else None)

    @property
    def info(self) -> CheckpointInfo:
        return self._info

    @property
    def kept_by(self) -> tuple[str, ...]:
        return self._kept_by

    @property
    def bytes_freed(self) -> int:
        self._measure()
        assert self._bytes_freed is not None
        return self._bytes_freed

    def _measure(self) -> None:
        """Read ``bytes_freed`` now, so that later changes to the files do not alter it."""
        if self._bytes_freed is None:
            self._bytes_freed = checkpoint_bytes(self._info)

    def _record_freed(self, freed: int) -> None:
        """What the deletion freed, unless the row was already asked (a row never changes)."""
        if self._bytes_freed is None:
            self._bytes_freed = freed

    @property
    def name(self) -> str:
        return self._info.filename

    @property
    def keep(self) -> bool:
        return bool(self._kept_by)

    @property
    def action(self) -> str:
        return "keep" if self.keep else "delete"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "kept_by": list(self.kept_by),
            "timesteps": self.info.timesteps,
            "bytes_freed": self.bytes_freed,
        }

    def _key(self) -> tuple[CheckpointInfo, tuple[str, ...], int]:
        return (self._info, self._kept_by, self.bytes_freed)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, PlanRow)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(info={self._info!r}, kept_by={self._kept_by!r}, "
            f"bytes_freed={self.bytes_freed!r})"
        )


@dataclass(frozen=True)
class RetentionPlan:
    """What a policy decided for every checkpoint of a folder, oldest first.

    ``folder`` is a path, or the URI of a folder in a bucket (then ``bucket`` is that folder,
    which :func:`apply` deletes in).
    """

    folder: Path | StoreURI
    rows: tuple[PlanRow, ...]
    bucket: BucketFolder | None = None

    @property
    def kept(self) -> int:
        return sum(1 for r in self.rows if r.keep)

    @property
    def to_delete(self) -> tuple[PlanRow, ...]:
        return tuple(r for r in self.rows if not r.keep)

    @property
    def deleted(self) -> int:
        """How many checkpoints the plan deletes."""
        return len(self.rows) - self.kept

    @property
    def bytes_to_free(self) -> int:
        return sum(r.bytes_freed for r in self.rows)


def _explain(policy: RetentionPolicy, infos: Sequence[CheckpointInfo]) -> list[tuple[str, ...]]:
    if isinstance(policy, AnyPolicy):
        return policy.explain(infos)
    return AnyPolicy((policy,)).explain(infos)


def plan(
    folder: str | os.PathLike[str] | BucketFolder,
    policy: RetentionPolicy,
    *,
    include_legacy: bool = False,
) -> RetentionPlan:
    """Decide, from the file names alone, what ``policy`` keeps in ``folder``.

    Touches nothing. Call it under :func:`~checkpointing.store.folder_lock` when the plan is to
    be applied (:func:`prune_folder` does). Legacy v1 checkpoints are left out of the plan (so
    never deleted) unless ``include_legacy``.

    Cheap on a folder of 10,000 checkpoints: one folder read, no metadata file opened, and a
    ``stat`` only where a rule needs an mtime (phase_end and interrupt checkpoints). A deleted
    row's ``bytes_freed`` is read on first use or learnt by :func:`apply` while deleting; read
    it first if the folder may change otherwise (:func:`prune_folder`'s dry run does). For a
    :class:`~checkpointing.folders.BucketFolder` everything comes from its listing (sizes and
    mtimes included): no object is read.
    """
    if isinstance(folder, BucketFolder):
        infos = folder.checkpoints(include_legacy=include_legacy)
        reasons = _explain(policy, infos)
        rows = tuple(
            PlanRow(info, kept_by, None if kept_by else folder.bytes_of(info))
            for info, kept_by in zip(infos, reasons, strict=True)
        )
        where: Path | StoreURI = folder.uri
    else:
        where = Path(folder)
        infos = list_checkpoints(where, include_legacy=include_legacy)
        rows = tuple(map(PlanRow, infos, _explain(policy, infos)))  # one reason tuple per info
    if log.isEnabledFor(logging.INFO):  # one line per decision: 10,000 in a big folder
        for row in rows:
            if row.keep:
                log.debug("%s: keep %s (%s)", where, row.name, ", ".join(row.kept_by))
            else:
                log.info("%s: delete %s (no rule keeps it)", where, row.name)
    return RetentionPlan(where, rows, folder if isinstance(folder, BucketFolder) else None)


def apply(retention_plan: RetentionPlan) -> tuple[list[PlanRow], list[str]]:
    """Delete what the plan deletes (zip first, then companions); call it under the folder lock.

    Returns the rows deleted and one message per checkpoint that could not be deleted (the
    others are still deleted). The rows deleted learn their ``bytes_freed`` from the deletion.
    """
    to_delete = retention_plan.to_delete
    deleted: list[PlanRow] = []
    errors: list[str] = []
    infos = [row.info for row in to_delete]
    bucket = retention_plan.bucket
    outcomes = delete_checkpoints(infos) if bucket is None else bucket.delete(infos)
    for row, outcome in zip(to_delete, outcomes, strict=True):
        if isinstance(outcome, OSError):
            where = os.fspath(row.info.path) if bucket is None else bucket.location_of(row.info)
            errors.append(f"cannot delete {where!r}: {outcome}")
            log.error("%s", errors[-1])
        else:
            row._record_freed(outcome)
            deleted.append(row)
    return deleted, errors
