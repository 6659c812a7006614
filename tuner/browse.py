"""The result browser: ``python -m tuner.browse [--experiment NAME] [--metric M] ...``.

Reads what ``python -m tuner.run`` left on disk, without starting (or importing) Ray: Tune's
experiment folders under the storage path and the checkpoint registry of the models root each
trial wrote to. Without ``--experiment`` it lists the experiments it finds. With one, it shows
per trial its run, latest reported result and status, then the best checkpoints of the
experiment's runs per market and phase by ``--metric`` (``--all-runs``: of every run in those
folders), ranked by the same rule as the driver's summary. Nothing is written (but the cache
copy of a bucket's results).

``--models-root s3://bucket/prefix`` reads the checkpoints from a bucket (also what a trial
that recorded an ``s3://`` models root gets): one listing per checkpoint folder, the registry
shards of the experiment's runs (:mod:`checkpointing.shards`), and the metadata object of a
checkpoint no shard names; no checkpoint is downloaded. ``--storage-path s3://bucket/prefix``
reads Tune's results from a bucket: the experiment's folder (Tune's JSON and CSV files, no
checkpoint) is downloaded into the cache copy :func:`tuner.driver.remote.bucket_copy` keeps.

The command line only: :mod:`tuner.driver.experiments` reads, :mod:`tuner.driver.bests` ranks,
:mod:`tuner.driver.browse_view` formats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.locations import is_uri, parse_location
from checkpointing.naming import validate_market
from checkpointing.ranking import METRICS
from tuner.driver.browse_view import best_checkpoints, format_listing, format_view
from tuner.driver.experiments import (
    BrowseError,
    _storage,
    find_experiments,
    json_ready,
    load_experiment,
)

__all__ = ["build_parser", "main"]

DEFAULT_STORAGE = "ray_results"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tuner.browse``."""
    p = argparse.ArgumentParser(
        prog="python -m tuner.browse",
        description=(
            "Browse the experiments of python -m tuner.run and their best checkpoints per "
            "market, from the files (Ray is not started). Without --experiment, list the "
            "experiments."
        ),
    )
    p.add_argument(
        "--storage-path",
        default=DEFAULT_STORAGE,
        help=f"Ray Tune results folder, or s3://bucket/prefix (default {DEFAULT_STORAGE})",
    )
    p.add_argument(
        "--models-root",
        help="read checkpoints here instead of the models root the trials recorded: a folder, "
        "or s3://bucket/prefix (listed; no checkpoint downloaded) (default: theirs, else "
        "paths.root of config/checkpoint_config.yaml)",
    )
    p.add_argument("--experiment", help="the experiment to show (default: list them)")
    p.add_argument(
        "--metric",
        default="sharpe_ratio",
        help=f"rank by this metric, higher is better: {', '.join(METRICS)} (default sharpe_ratio)",
    )
    p.add_argument("--market", help="only this market, e.g. NQ")
    p.add_argument(
        "--top", type=int, default=5, help="best checkpoints per market and phase (default 5)"
    )
    p.add_argument(
        "--all-runs",
        action="store_true",
        help="rank every run in the experiment's checkpoint folders (reruns, other "
        "experiments, tuner.train), not only the experiment's own",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return p


def _run(args: argparse.Namespace) -> None:
    if args.metric not in METRICS:
        raise BrowseError(f"--metric must be one of {list(METRICS)}, got {args.metric!r}")
    if args.top < 1:
        raise BrowseError(f"--top must be >= 1, got {args.top!r}")
    if args.market is not None:
        try:
            validate_market(args.market)
        except CheckpointNameError as exc:
            raise BrowseError(f"--market: {exc}") from None
    if args.models_root is not None:
        try:
            parse_location(args.models_root, "--models-root")
        except ConfigError as exc:
            raise BrowseError(str(exc)) from None

    if args.experiment is None:
        storage = _storage(args.storage_path)
        where = args.storage_path if is_uri(args.storage_path) else os.fspath(storage)
        experiments = find_experiments(storage)
        if args.market is not None:
            experiments = [e for e in experiments if args.market in e.markets]
        if args.json:
            doc = {
                "storage_path": where,
                "experiments": [e.overview() for e in experiments],
            }
            print(json.dumps(json_ready(doc), indent=2, allow_nan=False))
        else:
            given = None if args.storage_path == DEFAULT_STORAGE else args.storage_path
            print(format_listing(where, experiments, given))
        return

    experiment = load_experiment(args.storage_path, args.experiment)
    view = best_checkpoints(
        experiment,
        args.metric,
        top=args.top,
        markets=None if args.market is None else [args.market],
        models_root=args.models_root,
        all_runs=args.all_runs,
    )
    if args.json:
        print(json.dumps(view.to_json(), indent=2, allow_nan=False))
    else:
        print(format_view(view))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the browser; returns the exit code (2 for bad input, with a message on stderr)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except BrowseError as exc:
        return usage_error(exc)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
