"""The multi-market driver: ``python -m tuner.run --markets NQ,ES --seeds 42,7``.

One Ray Tune trial per (market, seed), each through the requested phases. Everything is
validated before Ray starts. Ctrl+C or SIGTERM (also ``ray job stop``): every running trial
saves an ``interrupt`` checkpoint, the experiment state is saved, and ``--resume`` continues.
After all trials: retention over every folder the trials touched, then a cross-trial summary
(screen, ``<models_root>/summaries/<experiment>.json`` and ``.csv``) and the HTML report
(``<experiment>_report.html``, :mod:`tuner.report`).

The command line only: arguments in, :func:`tuner.driver.experiment.run_experiment` called.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error

__all__ = ["build_parser", "main", "parse_options", "run_experiment"]


def build_parser() -> argparse.ArgumentParser:
    from tuner.cli import add_run_arguments

    p = argparse.ArgumentParser(
        prog="python -m tuner.run",
        description="Train PPO agents on several futures markets and seeds with Ray Tune.",
    )
    p.add_argument("--markets", required=True, help="comma-separated markets, e.g. NQ,ES")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (default 42)")
    add_run_arguments(p)
    p.add_argument(
        "--storage-path",
        default="ray_results",
        help="Ray Tune results folder, or s3://bucket/prefix (default ray_results)",
    )
    p.add_argument(
        "--staging-dir",
        help="with --models-root s3://...: the local folder each trial commits checkpoints to "
        "before they upload, on its node (default: the node's "
        "~/.cache/futures-rl-tuner/staging/<bucket>/<prefix>)",
    )
    p.add_argument(
        "--upload-timeout",
        type=float,
        default=300.0,
        help="with --models-root s3://...: seconds a trial waits at its end for its pending "
        "uploads (default 300)",
    )
    p.add_argument("--name", help="experiment name (default from markets, seeds, phases)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as CPUs allow)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument(
        "--no-test-eval",
        action="store_true",
        help="skip measuring the chosen checkpoints on the held-out test split at the end",
    )
    p.add_argument(
        "--no-report",
        action="store_true",
        help="skip writing the HTML report (python -m tuner.report) at the end",
    )
    s = p.add_argument_group(
        "hyperparameter search",
        "--search samples configurations per market on the first seed, then trains the best "
        "--confirm-top of each market on every seed and ranks them by mean over the seeds",
    )
    s.add_argument("--search", metavar="PATH", help="a search space, e.g. config/search.yaml")
    s.add_argument("--num-samples", type=int, help="configurations per market (default 8)")
    s.add_argument("--searcher", choices=("random", "optuna"), help="default: optuna (TPE)")
    s.add_argument("--scheduler", choices=("none", "asha", "pbt"), help="default: asha")
    s.add_argument("--metric", help="validation metric to select by (default val_reward)")
    s.add_argument(
        "--confirm-top",
        type=int,
        help="configurations per market confirmed on every seed (default 3)",
    )
    s.add_argument("--search-seed", type=int, help="seed of the sampler (default 0)")
    return p


def parse_options(argv: Sequence[str] | None = None) -> tuple[Any, Any]:
    """Parse and validate the command line and every config, before Ray starts.

    Returns the :class:`~tuner.driver.options.RunOptions` and the loaded settings.
    """
    args = build_parser().parse_args(argv)  # --help exits here, before anything heavy loads
    from tuner.driver.options import options_from_args

    return options_from_args(args)


def run_experiment(opts: Any, settings: Any) -> int:
    """Run (or resume) the experiment on Ray Tune; returns the exit code."""
    from tuner.driver.experiment import run_experiment as run

    return run(opts, settings)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts, settings = parse_options(argv)
    except (ConfigError, CheckpointNameError, ValueError) as exc:  # DataError is a ValueError
        return usage_error(exc)
    return run_experiment(opts, settings)


if __name__ == "__main__":
    sys.exit(main())
