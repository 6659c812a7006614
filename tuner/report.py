"""The experiment report: ``python -m tuner.report --experiment NAME``.

    python -m tuner.report --experiment NQ-ES_s42-7_p1 [--storage-path ray_results]
        [--models-root DIR] [--out FILE]

Writes one self-contained HTML page (inline CSS and SVG, no script, nothing fetched: it opens
offline) beside the summary, ``<models_root>/summaries/<experiment>_report.html``: the markets
side by side, the checkpoints chosen on validation with their held-out test figures and the
baselines, every trial's learning curves and checkpoint events (and which retention kept),
disk use and what retention freed, and for a search the metric against each hyperparameter.
Reads the files only (Ray is not started, torch never imported); ``tuner.run`` writes it at
the end of every experiment. Tune's results and the checkpoints may be in a bucket
(``s3://...``): the results are read from a cache copy, the checkpoint folders are listed
(nothing downloaded), and the page also goes to the bucket's ``summaries/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from checkpointing.errors import ConfigError, usage_error
from checkpointing.locations import StoreURI, parse_location

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner.report",
        description="Write an experiment's report: one self-contained HTML page.",
    )
    p.add_argument("--experiment", required=True, help="the tuner.run experiment")
    p.add_argument(
        "--storage-path",
        default="ray_results",
        help="Tune results folder, or s3://bucket/prefix (default ray_results)",
    )
    p.add_argument(
        "--models-root",
        help="read checkpoints and summaries here instead of the root the trials recorded: a "
        "folder, or s3://bucket/prefix",
    )
    p.add_argument(
        "--out", help="the page to write (default <models_root>/summaries/<name>_report.html)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from tuner.cli import check_path_argument
    from tuner.driver.experiments import BrowseError
    from tuner.reporting import write_report

    try:
        root: Path | StoreURI | None = None
        if args.models_root is not None:
            root = parse_location(args.models_root, "--models-root")
            if isinstance(root, Path) and not root.is_dir():
                raise BrowseError(f"--models-root: no such folder {args.models_root!r}")
        out = check_path_argument(args.out, "--out") if args.out is not None else None
        path = write_report(args.storage_path, args.experiment, models_root=root, out=out)
    except (BrowseError, ConfigError, ValueError, OSError) as exc:
        return usage_error(exc)
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
