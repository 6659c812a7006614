"""Checkpoint summaries: what a folder holds, its best checkpoints and its size.

The seed note's API::

    manager = CheckpointRetentionManager("config/checkpoint_config.yaml")
    summary = manager.get_checkpoint_summary("models/phase1/NQ/checkpoints/")
    summary["total_count"], summary["best_sharpe"]["value"], summary["best_reward"]["timesteps"]

Summaries come from the file names and one ``stat`` per file (no metadata is opened).

CLI::

    python -m checkpointing.summary [--phase 1] [--market NQ] [--root models] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.layout import PHASES
from checkpointing.locations import local_folder
from checkpointing.naming import COMPANION_SUFFIXES, CheckpointName
from checkpointing.policies import RankedMetric
from checkpointing.ranking import rank
from checkpointing.store import CheckpointInfo, list_checkpoints

__all__ = [
    "CheckpointRetentionManager",
    "checkpoint_bytes",
    "human_bytes",
    "main",
    "summarize_folder",
]


def checkpoint_bytes(info: CheckpointInfo) -> int:
    """Bytes a checkpoint takes on disk: its zip plus the companions that exist."""
    total = info.size
    # String paths: this runs for 10,000 files (a dry run of a big folder, a summary).
    base = os.path.join(info.dirname, info.base)
    for suffix in COMPANION_SUFFIXES:
        try:
            st = os.lstat(base + suffix)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


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


def _best(infos: Sequence[CheckpointInfo], metric: RankedMetric) -> dict[str, Any] | None:
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
        "path": os.fspath(info.path),
        "event": name.event,
        "seed": name.seed,
        "run_id": name.run_id,
    }


def summarize_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary of one checkpoint folder (legacy v1 checkpoints included).

    Keys: ``folder``; ``total_count``; ``best_sharpe`` and ``best_reward`` (``value``,
    ``timesteps``, ``path``, ``event``, ``seed``; ``None`` when nothing has that metric);
    ``by_event`` (count per event, legacy v1 checkpoints under ``legacy``); ``seeds``; ``runs``
    (how many runs, a seed's checkpoints without a run id counting as one);
    ``bytes`` (zips plus companions). A missing folder summarizes as empty.
    """
    infos = list_checkpoints(folder)
    events: Counter[str] = Counter(
        info.name.event if isinstance(info.name, CheckpointName) else "legacy" for info in infos
    )
    names = [info.name for info in infos if isinstance(info.name, CheckpointName)]
    seeds = sorted({name.seed for name in names})
    runs = len({(name.seed, name.run_id) for name in names})
    return {
        "folder": os.fspath(folder),
        "total_count": len(infos),
        "best_sharpe": _best(infos, "sharpe_ratio"),
        "best_reward": _best(infos, "val_reward"),
        "by_event": dict(sorted(events.items())),
        "seeds": seeds,
        "runs": runs,
        "bytes": sum(checkpoint_bytes(info) for info in infos),
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


def main(argv: Sequence[str] | None = None) -> int:
    """The summary CLI; returns the exit code (0 ok, 2 bad input or missing folder)."""
    parser = argparse.ArgumentParser(
        prog="python -m checkpointing.summary",
        description="Summarize checkpoint folders: counts per event, best Sharpe and reward, size.",
    )
    parser.add_argument("--phase", type=int, choices=PHASES, help="one phase (default: all)")
    parser.add_argument("--market", help="one market (default: every market folder)")
    parser.add_argument("--root", help="models root (default: checkpointing.paths.root)")
    parser.add_argument(
        "--config",
        help="checkpoint config (default: config/checkpoint_config.yaml if it exists, "
        "else built-in defaults)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args(argv)
    if args.root is not None:
        try:
            local_folder(args.root, "--root", "python -m checkpointing.summary")
        except ConfigError as exc:
            return usage_error(exc)
    try:
        config = resolve_config(args.config)
        root = config.models_root(args.root)
        phases = None if args.phase is None else [args.phase]
        markets = None if args.market is None else [args.market]
        folders = config.layout(root).folders(phases, markets)
        if args.market is not None and args.phase is not None and not folders:
            missing = config.checkpoint_dir(args.phase, args.market, args.root)
            return usage_error(f"checkpoint folder {os.fspath(missing)!r} does not exist")
    except (ConfigError, CheckpointNameError) as exc:
        return usage_error(str(exc))
    if not root.is_dir():
        return usage_error(f"models root {os.fspath(root)!r} does not exist (check --root)")
    rows = [{"phase": f.phase, "market": f.market, **summarize_folder(f.path)} for f in folders]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no checkpoint folders under {os.fspath(Path(root))!r}")
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
