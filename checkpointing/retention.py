"""Retention: decide which checkpoints of a folder to keep, and delete the rest.

What to keep is a policy (:mod:`checkpointing.policies`; the default is
:func:`~checkpointing.policies.build_policy` of ``checkpointing.retention``). This module
applies it to a folder:

- :func:`plan` lists the folder (names only: no metadata file is opened) and asks the policy;
  every row says keep or delete and why (``kept_by``); each decision is logged on one line.
- :func:`apply` deletes the rows marked delete, each zip first and then its companions.
- :func:`prune_folder` does sweep + plan + apply under the folder lock, so a commit and a
  prune never interleave and two prunes give the result of one; the checkpoint manager calls
  it every ``prune_frequency`` saves. :func:`prune_tree` does it for every folder of a models
  root (the driver, once, after all trials).

Never touched: foreign files, ``best_model*``, the legacy final models and, unless asked
(``include_legacy``), legacy v1 checkpoints. Leftovers of interrupted commits (companions
without a zip, temporaries whose writer is gone or older than ``orphan_grace_seconds``) are
swept and reported.

CLI::

    python -m checkpointing.retention --phase 1 --market NQ --dry-run
    python -m checkpointing.retention --phase 2 [--root models] [--config FILE] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.cleanup import SweepReport, delete_checkpoints, sweep
from checkpointing.config import CheckpointConfig, RetentionConfig, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.layout import PHASES
from checkpointing.naming import validate_market
from checkpointing.policies import AnyPolicy, RetentionPolicy, build_policy
from checkpointing.registry import Registry
from checkpointing.store import LOCK_NAME, CheckpointInfo, folder_lock, list_checkpoints
from checkpointing.summary import CheckpointRetentionManager, checkpoint_bytes, human_bytes

__all__ = [
    "CheckpointRetentionManager",
    "PlanRow",
    "PruneReport",
    "RetentionPlan",
    "apply",
    "main",
    "plan",
    "prune_folder",
    "prune_tree",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- plan


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
    """What a policy decided for every checkpoint of a folder, oldest first."""

    folder: Path
    rows: tuple[PlanRow, ...]

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
    folder: str | os.PathLike[str], policy: RetentionPolicy, *, include_legacy: bool = False
) -> RetentionPlan:
    """Decide, from the file names alone, what ``policy`` keeps in ``folder``.

    Touches nothing. Call it under :func:`~checkpointing.store.folder_lock` when the plan is to
    be applied (:func:`prune_folder` does). Legacy v1 checkpoints are left out of the plan (so
    never deleted) unless ``include_legacy``.

    Cheap on a folder of 10,000 checkpoints: one folder read, no metadata file opened, and a
    ``stat`` only where a rule needs an mtime (phase_end and interrupt checkpoints). A deleted
    row's ``bytes_freed`` is read on first use or learnt by :func:`apply` while deleting; read
    it first if the folder may change otherwise (:func:`prune_folder`'s dry run does).
    """
    folder = Path(folder)
    infos = list_checkpoints(folder, include_legacy=include_legacy)
    rows = tuple(map(PlanRow, infos, _explain(policy, infos)))  # one reason tuple per info
    if log.isEnabledFor(logging.INFO):  # one line per decision: 10,000 in a big folder
        for row in rows:
            if row.keep:
                log.debug("%s: keep %s (%s)", folder, row.name, ", ".join(row.kept_by))
            else:
                log.info("%s: delete %s (no rule keeps it)", folder, row.name)
    return RetentionPlan(folder, rows)


def apply(retention_plan: RetentionPlan) -> tuple[list[PlanRow], list[str]]:
    """Delete what the plan deletes (zip first, then companions); call it under the folder lock.

    Returns the rows deleted and one message per checkpoint that could not be deleted (the
    others are still deleted). The rows deleted learn their ``bytes_freed`` from the deletion.
    """
    to_delete = retention_plan.to_delete
    deleted: list[PlanRow] = []
    errors: list[str] = []
    outcomes = delete_checkpoints([row.info for row in to_delete])
    for row, outcome in zip(to_delete, outcomes, strict=True):
        if isinstance(outcome, OSError):
            errors.append(f"cannot delete {os.fspath(row.info.path)!r}: {outcome}")
            log.error("%s", errors[-1])
        else:
            row._record_freed(outcome)
            deleted.append(row)
    return deleted, errors


# --------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneReport:
    """The result of a retention pass over one folder (``plan`` is None when ``skipped``).

    ``deleted_rows``: the checkpoints deleted (in a dry run: that the plan would delete).
    """

    folder: Path
    dry_run: bool
    plan: RetentionPlan | None
    deleted_rows: tuple[PlanRow, ...] = ()
    swept: SweepReport = field(default_factory=SweepReport)
    errors: tuple[str, ...] = ()
    skipped: str | None = None
    phase: int | None = None
    market: str | None = None

    @property
    def kept(self) -> int:
        return 0 if self.plan is None else self.plan.kept

    @property
    def deleted(self) -> int:
        """Checkpoints deleted (in a dry run: that would be deleted)."""
        return len(self.deleted_rows)

    @property
    def bytes_freed(self) -> int:
        """Bytes freed by the deleted checkpoints (in a dry run: that would be freed)."""
        return sum(r.bytes_freed for r in self.deleted_rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": os.fspath(self.folder),
            "phase": self.phase,
            "market": self.market,
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "rows": [] if self.plan is None else [r.to_dict() for r in self.plan.rows],
            "kept": self.kept,
            "deleted": self.deleted,
            "bytes_freed": self.bytes_freed,
            "swept": {
                "temporaries": [p.name for p in self.swept.temporaries],
                "orphans": [p.name for p in self.swept.orphans],
            },
            "errors": list(self.errors),
        }


def prune_folder(
    folder: str | os.PathLike[str],
    retention_cfg: RetentionConfig,
    *,
    dry_run: bool = False,
    registry: Registry | None = None,
    include_legacy: bool = False,
    policy: RetentionPolicy | None = None,
) -> PruneReport:
    """Sweep leftovers, plan and delete, all under the folder lock; the in-run entry point.

    Args:
        folder: a checkpoint folder.
        retention_cfg: ``checkpointing.retention``; nothing happens when ``enabled`` is false.
        dry_run: plan and report only (under a shared lock); nothing is deleted.
        registry: told what was deleted (:meth:`Registry.forget`), under the folder lock.
        include_legacy: let the policy delete legacy v1 checkpoints too.
        policy: replaces ``build_policy(retention_cfg)``.

    Never call it while holding the folder's lock (it is not re-entrant).
    """
    folder = Path(folder)
    if not retention_cfg.enabled:
        return PruneReport(folder, dry_run, None, skipped="retention is disabled")
    if not folder.is_dir():
        return PruneReport(folder, dry_run, None, skipped="no such folder")
    policy = policy if policy is not None else build_policy(retention_cfg)
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder, shared=dry_run))
        except OSError as exc:
            if dry_run and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                log.warning("cannot lock %s (%s): dry run without the lock", folder, exc)
            else:
                message = f"cannot lock {os.fspath(folder / LOCK_NAME)!r}: {exc.strerror}"
                log.error("%s", message)
                return PruneReport(folder, dry_run, None, skipped=message, errors=(message,))
        swept = sweep(folder, grace_seconds=retention_cfg.orphan_grace_seconds, dry_run=dry_run)
        the_plan = plan(folder, policy, include_legacy=include_legacy)
        if dry_run:
            deleted = list(the_plan.to_delete)
            for row in deleted:  # the sizes as they are now, under the lock
                row._measure()
        else:
            deleted, errors = apply(the_plan)
            if registry is not None and deleted:
                registry.forget(row.info.path for row in deleted)
        report = PruneReport(folder, dry_run, the_plan, tuple(deleted), swept, tuple(errors))
    if not dry_run and (report.deleted or swept.count):
        log.info(
            "%s: kept %d, deleted %d (%d bytes), swept %d leftovers",
            folder,
            report.kept,
            report.deleted,
            report.bytes_freed,
            swept.count,
        )
    return report


def prune_tree(
    root: str | os.PathLike[str],
    config: CheckpointConfig,
    phases: Iterable[int] | None = None,
    markets: Iterable[str] | None = None,
    *,
    dry_run: bool = False,
    registry: Registry | None = None,
    include_legacy: bool = False,
    policy: RetentionPolicy | None = None,
) -> list[PruneReport]:
    """:func:`prune_folder` on every existing checkpoint folder of ``phases`` x ``markets``
    (default: all found) under the models ``root``; the driver's end-of-experiment pass."""
    reports = []
    for folder in config.layout(root).folders(phases, markets):
        report = prune_folder(
            folder.path,
            config.retention,
            dry_run=dry_run,
            registry=registry,
            include_legacy=include_legacy,
            policy=policy,
        )
        reports.append(dataclasses.replace(report, phase=folder.phase, market=folder.market))
    return reports


# --------------------------------------------------------------------------- CLI


def _totals(reports: Sequence[PruneReport]) -> dict[str, int]:
    return {
        "folders": len(reports),
        "kept": sum(r.kept for r in reports),
        "deleted": sum(r.deleted for r in reports),
        "bytes_freed": sum(r.bytes_freed for r in reports),
        "swept": sum(r.swept.count for r in reports),
        "errors": sum(len(r.errors) for r in reports),
    }


def _print_report(report: PruneReport) -> None:
    print(
        f"{os.fspath(report.folder)}"
        + ("  (dry run: nothing is deleted)" if report.dry_run else "")
    )
    if report.plan is None:
        print(f"  skipped: {report.skipped}")
        return
    if not report.plan.rows:
        print(f"  no checkpoints in {os.fspath(report.folder)}")
    width = max((len(r.name) for r in report.plan.rows), default=0)
    for row in report.plan.rows:
        print(f"  {row.action:<6}  {row.name:<{width}}  {', '.join(row.kept_by)}".rstrip())
    if report.swept.count:
        print(
            f"  {'would sweep' if report.dry_run else 'swept'} "
            f"{len(report.swept.orphans)} orphan companion(s), "
            f"{len(report.swept.temporaries)} stale temporary file(s): "
            + ", ".join(p.name for p in [*report.swept.orphans, *report.swept.temporaries])
        )
    for message in report.errors:
        print(f"  error: {message}")
    freed = f"{human_bytes(report.bytes_freed)} ({report.bytes_freed} bytes)"
    if report.dry_run:
        print(f"  would keep {report.kept}, would delete {report.deleted}, would free {freed}")
    else:
        print(f"  kept {report.kept}, deleted {report.deleted}, freed {freed}")


def main(argv: Sequence[str] | None = None) -> int:
    """The retention CLI; returns the exit code (0 ok, 1 a deletion failed, 2 bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m checkpointing.retention",
        description=(
            "Prune the checkpoints of a phase (every market folder, or one with --market): keep "
            "the last N periodic per seed, the top K by Sharpe and by val_reward, phase_end and "
            "phase_boundary_* checkpoints, and unresolved interrupts; delete the rest."
        ),
    )
    parser.add_argument("--phase", type=int, choices=PHASES, required=True, help="phase 1, 2 or 3")
    parser.add_argument("--market", help="one market (default: every market folder of the phase)")
    parser.add_argument("--root", help="models root (default: checkpointing.paths.root)")
    parser.add_argument(
        "--config",
        help="checkpoint config (default: config/checkpoint_config.yaml if it exists, "
        "else built-in defaults)",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan, delete nothing")
    parser.add_argument(
        "--include-legacy", action="store_true", help="also prune legacy phaseN_<steps>_steps.zip"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    args = parser.parse_args(argv)
    if args.root is not None and (not args.root or "\x00" in args.root):
        return usage_error(f"--root must be a non-empty path without NUL, got {args.root!r}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = resolve_config(args.config)
        root = config.models_root(args.root)
    except ConfigError as exc:
        return usage_error(str(exc))
    try:
        if args.market is not None:
            market = validate_market(args.market)
            folder = config.checkpoint_dir(args.phase, market, args.root)
            if not folder.is_dir():
                return usage_error(
                    f"checkpoint folder {os.fspath(folder)!r} does not exist (no checkpoints of "
                    f"market {market!r} in phase {args.phase} under {os.fspath(root)!r}; "
                    "check --root and --market)"
                )
            targets = [(folder, market)]
        else:
            if not root.is_dir():
                return usage_error(f"models root {os.fspath(root)!r} does not exist (check --root)")
            targets = [(f.path, f.market) for f in config.layout(root).folders([args.phase])]
    except (CheckpointNameError, ConfigError) as exc:
        return usage_error(str(exc))

    retention = config.retention
    if not retention.enabled:
        print(
            f"note: checkpointing.retention.enabled is false in {config.source}; "
            "pruning anyway because you asked",
            file=sys.stderr,
        )
        retention = dataclasses.replace(retention, enabled=True)
    registry = Registry(root, config)
    reports = [
        dataclasses.replace(
            prune_folder(
                folder,
                retention,
                dry_run=args.dry_run,
                registry=registry,
                include_legacy=args.include_legacy,
            ),
            phase=args.phase,
            market=market,
        )
        for folder, market in targets
    ]
    totals = _totals(reports)
    if args.json:
        doc = {"dry_run": args.dry_run, "folders": [r.to_dict() for r in reports], "totals": totals}
        print(json.dumps(doc, indent=2))
        if not reports:
            print(
                f"no checkpoint folders of phase {args.phase} under {os.fspath(root)!r}",
                file=sys.stderr,
            )
    elif not reports:
        print(f"no checkpoint folders of phase {args.phase} under {os.fspath(root)!r}")
    else:
        for report in reports:
            _print_report(report)
        if len(reports) > 1:
            freed = f"{human_bytes(totals['bytes_freed'])} ({totals['bytes_freed']} bytes)"
            k, d, n = totals["kept"], totals["deleted"], totals["folders"]
            if args.dry_run:
                print(
                    f"total over {n} folders: would keep {k}, would delete {d}, would free {freed}"
                )
            else:
                print(f"total over {n} folders: kept {k}, deleted {d}, freed {freed}")
    return 1 if totals["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
