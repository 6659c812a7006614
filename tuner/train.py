"""One training run, no Ray: ``python -m tuner.train --market NQ --seed 42 --phase 1``.

The command line only: arguments in, :func:`tuner.training.trainer.train_phase` called for each
phase, lines out.

Examples::

    python -m tuner.train --market NQ --seed 42 --phase 1 --timesteps 50000
    python -m tuner.train --market NQ --seed 42 --phases 1,2,3
    python -m tuner.train --phase 1 --market NQ --continue \\
        --model-path models/phase1/NQ/checkpoints/<name>.zip
    python -m tuner.train --market NQ --seed 42 --phase 2 --resume-from best:sharpe_ratio
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from tuner.cli import add_run_arguments, check_path_argument
from tuner.training.job import PhaseJob, PhaseResult, parse_phases, prepare, tag
from tuner.training.trainer import train_phase

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.train",
        description="Train one (market, seed) through one phase or the curriculum, no Ray.",
    )
    parser.add_argument("--market", required=True, help="market name from markets.yaml, e.g. NQ")
    parser.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    add_run_arguments(parser)
    parser.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="continue from --model-path (with its companion VecNormalize)",
    )
    parser.add_argument("--model-path", help="checkpoint zip to continue from")
    parser.add_argument(
        "--resume-from", help="pick a checkpoint: latest, phase_end or best:<metric>"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="only the final lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from checkpointing import TrainingInterrupted
    from checkpointing.loading import parse_resume_spec
    from tuner.trading.data import DataError
    from tuner.training.settings import load_settings

    try:
        phases = parse_phases(args.phases) if args.phases else [args.phase or 1]
        if args.continue_ != (args.model_path is not None):
            raise ConfigError("--continue and --model-path go together")
        if args.model_path and args.resume_from:
            raise ConfigError("use either --continue --model-path or --resume-from, not both")
        if args.resume_from:
            parse_resume_spec(args.resume_from)
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads!r}")
        settings = load_settings(args.config_dir)
        models_root = (
            check_path_argument(args.models_root, "--models-root", folder=True)
            if args.models_root is not None
            else None
        )
        model_path = (
            check_path_argument(args.model_path, "--model-path")
            if args.model_path is not None
            else None
        )
        jobs = [
            PhaseJob(
                market=args.market,
                seed=args.seed,
                phase=phase,
                timesteps=args.timesteps,
                base_interval=args.base_interval,
                models_root=models_root,
                model_path=model_path if i == 0 else None,
                resume_from=args.resume_from if i == 0 else None,
                torch_threads=args.threads,
                quiet=args.quiet,
            )
            for i, phase in enumerate(phases)
        ]
        for job in jobs:
            prepare(job, settings)  # every phase checked before the first one trains
    except (ConfigError, CheckpointNameError, DataError, ValueError) as exc:
        return usage_error(exc)

    def say(line: str) -> None:
        print(line, flush=True)

    results: list[PhaseResult] = []
    for job in jobs:
        try:
            result = train_phase(job, settings, report=say)
        except TrainingInterrupted as exc:
            print(f"{tag(job)}: {exc}", flush=True)
            root = f" --models-root {args.models_root}" if args.models_root else ""
            rest = ",".join(str(j.phase) for j in jobs[jobs.index(job) :])
            print(
                f"resume with: python -m tuner.train --market {job.market} --seed {job.seed} "
                f"--phases {rest} --resume-from latest{root}",
                flush=True,
            )
            return exc.exit_code
        except (ConfigError, CheckpointNameError, DataError) as exc:
            return usage_error(exc)
        results.append(result)
        metrics = "  ".join(
            f"{k}={v:+.3f}"
            for k, v in result.metrics.items()
            if k in ("val_reward", "sharpe_ratio", "win_rate") and not math.isnan(v)
        )
        say(
            f"{tag(job)}: done at {result.timesteps:,} steps in {result.elapsed_seconds:.0f}s"
            + (f"  {metrics}" if metrics else "")
        )
        say(f"checkpoints: {result.folder}/")
        if result.phase_end is not None:
            say(f"phase_end:   {result.phase_end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
