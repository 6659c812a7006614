"""Retention: decide which checkpoints of a folder to keep, and delete the rest.

What to keep is a policy (:mod:`checkpointing.policies`; the default is
:func:`~checkpointing.policies.build_policy` of ``checkpointing.retention``). This module
applies it to a folder:

- :func:`~checkpointing.plan.plan` lists the folder (names only: no metadata file is opened)
  and asks the policy; every row says keep or delete and why (``kept_by``);
  :func:`~checkpointing.plan.apply` deletes the rows marked delete, zip first.
- :func:`prune_folder` does sweep + plan + apply under the folder lock, so a commit and a
  prune never interleave and two prunes give the result of one; the checkpoint manager calls
  it every ``prune_frequency`` saves. :func:`prune_tree` does it for every folder of a models
  root (the driver, once, after all trials).

Never touched: foreign files, ``best_model*``, the legacy final models and, unless asked
(``include_legacy``), legacy v1 checkpoints. Leftovers of interrupted commits (companions
without a zip, temporaries whose writer is gone or older than ``orphan_grace_seconds``) are
swept and reported.

**A models root in a bucket** (``--root s3://bucket/prefix``): each folder is planned from one
listing of its objects (names, sizes, upload times; no object is read, no zip downloaded) by
the same policies, and what the plan deletes is deleted there, zip first, then its companions.
A bucket has no lock, and none is needed for what the policies keep: a checkpoint still being
uploaded has no zip yet, so it is not in the plan, and every rule keeps in a subset what it
keeps in the whole (the last N, the top K, events, interrupts until a later ``phase_end``, the
first of each window), so a plan made while new checkpoints arrive never deletes one that the
rules keep once they are there. Companions without a zip are swept once older than
``orphan_grace_seconds`` (younger ones may be an upload in flight). The registry shards are
left as they are: their readers keep only the checkpoints the listing shows
(:mod:`checkpointing.shards`).

CLI::

    python -m checkpointing.retention --phase 1 --market NQ --dry-run
    python -m checkpointing.retention --phase 2 [--root models|s3://b/p] [--config FILE] [--json]
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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.cleanup import SweepReport, sweep
from checkpointing.config import CheckpointConfig, RetentionConfig, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.folders import BucketFolder, BucketRoot
from checkpointing.layout import PHASES
from checkpointing.locations import StoreURI, parse_location, shown
from checkpointing.naming import validate_market
from checkpointing.plan import PlanRow, RetentionPlan, apply, plan
from checkpointing.policies import RetentionPolicy, build_policy
from checkpointing.registry import Registry
from checkpointing.store import LOCK_NAME, folder_lock
from checkpointing.summary import CheckpointRetentionManager, human_bytes

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


# --------------------------------------------------------------------------- prune


@dataclass(frozen=True)
class PruneReport:
    """The result of a retention pass over one folder (``plan`` is None when ``skipped``).

    ``deleted_rows``: the checkpoints deleted (in a dry run: that the plan would delete).
    ``folder`` is a path, or a URI for a folder in a bucket.
    """

    folder: Path | StoreURI
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
            "folder": shown(self.folder),
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
    folder: str | os.PathLike[str] | BucketFolder,
    retention_cfg: RetentionConfig,
    *,
    dry_run: bool = False,
    registry: Registry | None = None,
    include_legacy: bool = False,
    policy: RetentionPolicy | None = None,
) -> PruneReport:
    """Sweep leftovers, plan and delete, all under the folder lock; the in-run entry point.

    Args:
        folder: a checkpoint folder, or one in a bucket (see the module: no lock there; the
            registry is not told).
        retention_cfg: ``checkpointing.retention``; nothing happens when ``enabled`` is false.
        dry_run: plan and report only (under a shared lock); nothing is deleted.
        registry: told what was deleted (:meth:`Registry.forget`), under the folder lock.
        include_legacy: let the policy delete legacy v1 checkpoints too.
        policy: replaces ``build_policy(retention_cfg)``.

    Never call it while holding the folder's lock (it is not re-entrant).
    """
    if isinstance(folder, BucketFolder):
        return _prune_bucket_folder(
            folder, retention_cfg, dry_run=dry_run, include_legacy=include_legacy, policy=policy
        )
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


def _prune_bucket_folder(
    folder: BucketFolder,
    retention_cfg: RetentionConfig,
    *,
    dry_run: bool,
    include_legacy: bool,
    policy: RetentionPolicy | None,
) -> PruneReport:
    """:func:`prune_folder` of a folder in a bucket: its listing (as the folder holds it: list
    it anew, or :meth:`~checkpointing.folders.BucketFolder.refresh` it, for a later pass), the
    same policy, deletions zip first; orphan companions older than the grace period swept."""
    where = folder.uri
    if not retention_cfg.enabled:
        return PruneReport(where, dry_run, None, skipped="retention is disabled")
    policy = policy if policy is not None else build_policy(retention_cfg)
    try:
        orphans = folder.orphans(retention_cfg.orphan_grace_seconds, time.time())
        the_plan = plan(folder, policy, include_legacy=include_legacy)
    except OSError as exc:
        message = f"cannot list {folder.location}: {exc}"
        log.error("%s", message)
        return PruneReport(where, dry_run, None, skipped=message, errors=(message,))
    errors: list[str] = []
    if dry_run:
        deleted = list(the_plan.to_delete)
    else:
        deleted, errors = apply(the_plan)
        try:
            folder.remove(orphans)
        except OSError as exc:
            errors.append(f"cannot sweep the orphan companions of {folder.location}: {exc}")
    swept = SweepReport(orphans=[Path(name) for name in orphans])
    report = PruneReport(where, dry_run, the_plan, tuple(deleted), swept, tuple(errors))
    if not dry_run and (report.deleted or swept.count):
        log.info(
            "%s: kept %d, deleted %d (%d bytes), swept %d leftovers",
            where,
            report.kept,
            report.deleted,
            report.bytes_freed,
            swept.count,
        )
    return report


def prune_tree(
    root: str | os.PathLike[str] | StoreURI,
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
    (default: all found) under the models ``root``, a folder or a bucket (``s3://...``: its
    folders listed, none downloaded; ``registry`` is not told); the driver's
    end-of-experiment pass.

    Raises:
        OSError: a bucket root whose folders cannot be listed.
    """
    targets: list[tuple[str | os.PathLike[str] | BucketFolder, int | None, str | None]]
    if isinstance(root, StoreURI):
        found = BucketRoot(root, config).folders(phases, markets)
        targets = [(f, f.phase, f.market) for f in found]
        registry = None
    else:
        targets = [
            (f.path, f.phase, f.market) for f in config.layout(root).folders(phases, markets)
        ]
    reports = []
    for folder, phase, market in targets:
        report = prune_folder(
            folder,
            config.retention,
            dry_run=dry_run,
            registry=registry,
            include_legacy=include_legacy,
            policy=policy,
        )
        reports.append(dataclasses.replace(report, phase=phase, market=market))
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
    dry = "  (dry run: nothing is deleted)" if report.dry_run else ""
    print(f"{shown(report.folder)}{dry}")
    if report.plan is None:
        print(f"  skipped: {report.skipped}")
        return
    if not report.plan.rows:
        print(f"  no checkpoints in {shown(report.folder)}")
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m checkpointing.retention",
        description=(
            "Prune the checkpoints of a phase (every market folder, or one with --market): keep, "
            "of each run, the last N periodic, the top K by Sharpe and by val_reward, phase_end "
            "and phase_boundary_* checkpoints, and unresolved interrupts; delete the rest."
        ),
    )
    parser.add_argument("--phase", type=int, choices=PHASES, required=True, help="phase 1, 2 or 3")
    parser.add_argument("--market", help="one market (default: every market folder of the phase)")
    parser.add_argument(
        "--root",
        "--models-root",
        dest="root",
        help="models root: a folder, or s3://bucket/prefix (planned from a listing, deleted "
        "there zip first; no checkpoint downloaded); default: checkpointing.paths.root",
    )
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
    return parser


def _targets(
    args: argparse.Namespace, config: CheckpointConfig
) -> tuple[Path | StoreURI, list[tuple[Path | BucketFolder, str | None]]]:
    """The models root and (folder, market) of every folder to prune: local folders, or the
    folders of a bucket (``--root s3://...``).

    Raises:
        ConfigError: the market's folder or the models root does not exist; a bucket that
            cannot be listed (ObjectStoreError).
        CheckpointNameError: a bad market name.
    """
    where = None if args.root is None else parse_location(args.root, "--root")
    if isinstance(where, StoreURI):
        bucket = BucketRoot(where, config)
        bucket.check()
        markets = None if args.market is None else [validate_market(args.market)]
        found = bucket.folders([args.phase], markets)
        if args.market is not None and not found:
            raise ConfigError(
                f"checkpoint folder {bucket.folder(args.phase, args.market).location!r} does not "
                f"exist (no checkpoints of market {args.market!r} in phase {args.phase} under "
                f"{str(where)!r}; check --root and --market)"
            )
        return where, [(f, f.market) for f in found]
    root = config.models_root(where)
    if args.market is not None:
        market = validate_market(args.market)
        folder = config.checkpoint_dir(args.phase, market, root)
        if not folder.is_dir():
            raise ConfigError(
                f"checkpoint folder {os.fspath(folder)!r} does not exist (no checkpoints of "
                f"market {market!r} in phase {args.phase} under {os.fspath(root)!r}; "
                "check --root and --market)"
            )
        return root, [(folder, market)]
    if not root.is_dir():
        raise ConfigError(f"models root {os.fspath(root)!r} does not exist (check --root)")
    return root, [(f.path, f.market) for f in config.layout(root).folders([args.phase])]


def _print_all(
    args: argparse.Namespace, reports: Sequence[PruneReport], root: Path | StoreURI
) -> None:
    totals = _totals(reports)
    nothing = f"no checkpoint folders of phase {args.phase} under {shown(root)!r}"
    if args.json:
        doc = {"dry_run": args.dry_run, "folders": [r.to_dict() for r in reports], "totals": totals}
        print(json.dumps(doc, indent=2))
        if not reports:
            print(nothing, file=sys.stderr)
        return
    if not reports:
        print(nothing)
        return
    for report in reports:
        _print_report(report)
    if len(reports) > 1:
        freed = f"{human_bytes(totals['bytes_freed'])} ({totals['bytes_freed']} bytes)"
        k, d, n = totals["kept"], totals["deleted"], totals["folders"]
        if args.dry_run:
            print(f"total over {n} folders: would keep {k}, would delete {d}, would free {freed}")
        else:
            print(f"total over {n} folders: kept {k}, deleted {d}, freed {freed}")


def main(argv: Sequence[str] | None = None) -> int:
    """The retention CLI; returns the exit code (0 ok, 1 a deletion failed, 2 bad input)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = resolve_config(args.config)
        root, targets = _targets(args, config)
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
    # A bucket's registry shards need no update: their readers keep what the listing shows.
    registry = None if isinstance(root, StoreURI) else Registry(root, config)
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
    _print_all(args, reports, root)
    return 1 if _totals(reports)["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
