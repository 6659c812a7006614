"""Checkpoint summaries: what a folder holds, its best checkpoints and its size.

The seed note's API::

    manager = CheckpointRetentionManager("config/checkpoint_config.yaml")
    summary = manager.get_checkpoint_summary("models/phase1/NQ/checkpoints/")
    summary["total_count"], summary["best_sharpe"]["value"], summary["best_reward"]["timesteps"]

Summaries come from the file names and one ``stat`` per file (no metadata is opened); for a
models root in a bucket (``--root s3://bucket/prefix``), from one listing per phase: names and
sizes of the objects, no object read (:mod:`checkpointing.folders`).

CLI::

    python -m checkpointing.summary [--phase 1] [--market NQ] [--root models|s3://b/p] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.folders import BucketFolder, BucketRoot, Folder, LocalFolder, checkpoint_bytes
from checkpointing.layout import PHASES
from checkpointing.locations import StoreURI, parse_location
from checkpointing.naming import CheckpointName
from checkpointing.policies import RankedMetric
from checkpointing.ranking import rank
from checkpointing.store import CheckpointInfo

__all__ = [
    "CheckpointRetentionManager",
    "checkpoint_bytes",
    "human_bytes",
    "main",
    "summarize_folder",
]


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KB``."""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def _best(
    folder: Folder, infos: Sequence[CheckpointInfo], metric: RankedMetric
) -> dict[str, Any] | None:
    """The best checkpoint of the folder by a metric its names carry, by the ranking rule."""
    ranked = rank(
        (getattr(name, metric), name.timesteps, info.filename, name.model, info)
        for info in infos
        if isinstance(name := info.name, CheckpointName)  # legacy names carry no metrics
    )
    if not ranked:
        return None
    info = ranked[0].item
    name = info.name
    assert isinstance(name, CheckpointName)
    return {
        "value": getattr(name, metric),
        "timesteps": info.timesteps,
        "path": folder.location_of(info),
        "event": name.event,
        "seed": name.seed,
        "run_id": name.run_id,
    }


def summarize_folder(folder: str | os.PathLike[str] | Folder) -> dict[str, Any]:
    """The summary of one checkpoint folder (legacy v1 checkpoints included), local or in a
    bucket (a :class:`~checkpointing.folders.BucketFolder`: paths are then URIs).

    Keys: ``folder``; ``total_count``; ``best_sharpe`` and ``best_reward`` (``value``,
    ``timesteps``, ``path``, ``event``, ``seed``; ``None`` when nothing has that metric);
    ``by_event`` (count per event, legacy v1 checkpoints under ``legacy``); ``seeds``; ``runs``
    (how many runs, a seed's checkpoints without a run id counting as one);
    ``bytes`` (zips plus companions). A missing folder summarizes as empty.
    """
    source = folder if isinstance(folder, (LocalFolder, BucketFolder)) else LocalFolder(folder)
    infos = source.checkpoints()
    events: Counter[str] = Counter(
        info.name.event if isinstance(info.name, CheckpointName) else "legacy" for info in infos
    )
    names = [info.name for info in infos if isinstance(info.name, CheckpointName)]
    seeds = sorted({name.seed for name in names})
    runs = len({(name.seed, name.run_id) for name in names})
    return {
        "folder": source.location,
        "total_count": len(infos),
        "best_sharpe": _best(source, infos, "sharpe_ratio"),
        "best_reward": _best(source, infos, "val_reward"),
        "by_event": dict(sorted(events.items())),
        "seeds": seeds,
        "runs": runs,
        "bytes": sum(source.bytes_of(info) for info in infos),
    }


class CheckpointRetentionManager:
    """The seed note's entry point for browsing checkpoint folders.

    Args:
        config_path: a checkpoint config; ``None`` reads ``config/checkpoint_config.yaml`` if
            it exists, else uses the built-in defaults.

    Raises:
        ConfigError: the config cannot be used.
    """

    def __init__(self, config_path: str | os.PathLike[str] | None = None) -> None:
        self.config: CheckpointConfig = resolve_config(config_path)

    def get_checkpoint_summary(self, folder: str | os.PathLike[str]) -> dict[str, Any]:
        """See :func:`summarize_folder`."""
        return summarize_folder(folder)


# --------------------------------------------------------------------------- CLI


def _fmt_best(best: dict[str, Any] | None, digits: int) -> str:
    if best is None:
        return "-"
    return f"{best['value']:+.{digits}f} @ {best['timesteps']:,}"


def _folders(args: argparse.Namespace, config: CheckpointConfig) -> tuple[str, list[Folder]]:
    """The models root as shown, and the folders to summarize: local ones, or those of a
    bucket (``--root s3://...``, listed; nothing is read).

    Raises:
        ConfigError: a bad root, a missing root or folder; ObjectStoreError (a ConfigError) for
            a bucket that cannot be listed.
        CheckpointNameError: a bad market name.
    """
    phases = None if args.phase is None else [args.phase]
    markets = None if args.market is None else [args.market]
    where = None if args.root is None else parse_location(args.root, "--root")
    if isinstance(where, StoreURI):
        bucket = BucketRoot(where, config)
        bucket.check()
        found: list[Folder] = list(bucket.folders(phases, markets))
        if args.market is not None and args.phase is not None and not found:
            missing = bucket.folder(args.phase, args.market).location
            raise ConfigError(f"checkpoint folder {missing!r} does not exist")
        return str(where), found
    root = config.models_root(where)
    folders = config.layout(root).folders(phases, markets)
    if args.market is not None and args.phase is not None and not folders:
        missing_dir = config.checkpoint_dir(args.phase, args.market, root)
        raise ConfigError(f"checkpoint folder {os.fspath(missing_dir)!r} does not exist")
    if not root.is_dir():
        raise ConfigError(f"models root {os.fspath(root)!r} does not exist (check --root)")
    return os.fspath(Path(root)), [LocalFolder(f.path, f.phase, f.market) for f in folders]


def main(argv: Sequence[str] | None = None) -> int:
    """The summary CLI; returns the exit code (0 ok, 2 bad input or missing folder)."""
    parser = argparse.ArgumentParser(
        prog="python -m checkpointing.summary",
        description="Summarize checkpoint folders: counts per event, best Sharpe and reward, size.",
    )
    parser.add_argument("--phase", type=int, choices=PHASES, help="one phase (default: all)")
    parser.add_argument("--market", help="one market (default: every market folder)")
    parser.add_argument(
        "--root",
        "--models-root",
        dest="root",
        help="models root: a folder, or s3://bucket/prefix (listed, no checkpoint downloaded); "
        "default: checkpointing.paths.root",
    )
    parser.add_argument(
        "--config",
        help="checkpoint config (default: config/checkpoint_config.yaml if it exists, "
        "else built-in defaults)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args.config)
        root, folders = _folders(args, config)
    except (ConfigError, CheckpointNameError) as exc:
        return usage_error(str(exc))
    rows = [{"phase": f.phase, "market": f.market, **summarize_folder(f)} for f in folders]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no checkpoint folders under {root!r}")
        return 0
    header = ("phase", "market", "runs", "count", "best sharpe", "best reward", "size", "events")
    table = [
        (
            str(r["phase"]),
            r["market"],
            str(r["runs"]),
            str(r["total_count"]),
            _fmt_best(r["best_sharpe"], 2),
            _fmt_best(r["best_reward"], 3),
            human_bytes(r["bytes"]),
            ", ".join(f"{event} {n}" for event, n in r["by_event"].items()) or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
