"""One training run, no Ray: ``python -m tuner.train --market NQ --seed 42 --phase 1``.

The command line only: arguments in, :func:`tuner.training.trainer.train_phase` called for each
phase, lines out.

Examples::

    python -m tuner.train --market NQ --seed 42 --phase 1 --timesteps 50000
    python -m tuner.train --market NQ --seed 42 --phases 1,2,3
    python -m tuner.train --phase 1 --market NQ --continue \\
        --model-path models/phase1/NQ/checkpoints/<name>.zip
    python -m tuner.train --market NQ --seed 42 --phase 2 --resume-from best:sharpe_ratio
    python -m tuner.train --market NQ --seed 42 --phases 1,2 --trainer rllib --env-runners 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from tuner.cli import add_run_arguments, check_path_argument
from tuner.job_paths import check_job_paths, job_notes
from tuner.training.job import PhaseJob, PhaseResult, check, parse_phases, prepare, tag
from tuner.training.trainer import retention_pass, train_phase

if TYPE_CHECKING:
    from tuner.training.settings import Settings

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.train",
        description="Train one (market, seed) through one phase or the curriculum, no Ray.",
    )
    parser.add_argument(
        "--market", help="market name from markets.yaml, e.g. NQ (with --continue: from P)"
    )
    parser.add_argument(
        "--seed", type=int, help="training seed (default 42; with --continue: from P)"
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--run-id",
        help="the run's id (default: a new one, printed at the start); with --resume-from, "
        "the run to resume",
    )
    parser.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="continue from --model-path P (its market, seed and phase, its VecNormalize)",
    )
    parser.add_argument("--model-path", help="checkpoint zip to continue from")
    parser.add_argument(
        "--resume-from",
        help="pick a checkpoint: latest, phase_end or best:<metric> (of --run-id, else of "
        "the run written to last)",
    )
    parser.add_argument(
        "--any-run",
        action="store_true",
        help="with --resume-from: pick across every run of the market and seed",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="only the final lines")
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write learning curves (TensorBoard event files) under DIR/<market>_seed<seed>/",
    )
    return parser


def _jobs(args: argparse.Namespace, settings: Settings) -> list[PhaseJob]:
    """The phase jobs of the command line, each checked (nothing is written)."""
    from checkpointing.selection import parse_resume_spec
    from tuner.training.start import continue_target

    if args.continue_ != (args.model_path is not None):
        raise ConfigError("--continue and --model-path go together")
    if args.model_path and args.resume_from:
        raise ConfigError("use either --continue --model-path or --resume-from, not both")
    if args.resume_from:
        parse_resume_spec(args.resume_from)
    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads!r}")
    phases = parse_phases(args.phases) if args.phases else [args.phase] if args.phase else []
    market, seed = args.market, args.seed
    model_path = None
    if args.model_path is not None:
        model_path = check_path_argument(args.model_path, "--model-path")
        if not model_path.is_file():
            raise ConfigError(f"--model-path: no such checkpoint {args.model_path!r}")
        market, seed, phase = continue_target(
            model_path, market, seed, phases[0] if phases else None
        )
        phases = phases or [phase]
    if market is None:
        raise ConfigError("--market is required (e.g. --market NQ)")
    models_root = (
        check_path_argument(args.models_root, "--models-root", folder=True)
        if args.models_root is not None
        else None
    )
    check_job_paths(
        {"--models-root": settings.checkpoint.models_root(models_root)},
        allow_ephemeral=args.allow_ephemeral,
    )
    curves = None
    if args.tensorboard:
        curves = check_path_argument(args.tensorboard, "--tensorboard", folder=True)
        curves = curves / f"{market}_seed{42 if seed is None else seed}"
    jobs = [
        PhaseJob(
            market=market,
            seed=42 if seed is None else seed,
            phase=phase,
            timesteps=args.timesteps,
            base_interval=args.base_interval,
            models_root=models_root,
            model_path=model_path if i == 0 else None,
            resume_from=args.resume_from if i == 0 else None,
            run_id=args.run_id,
            any_run=args.any_run and i == 0,
            torch_threads=args.threads,
            quiet=args.quiet,
            curves_dir=curves,
            trainer=args.trainer,
            env_runners=args.env_runners,
        )
        for i, phase in enumerate(phases or [1])
    ]
    for job in jobs[1:]:
        check(job, settings)  # every phase checked before the first one trains
    prepare(jobs[0], settings)  # and the data loaded once (filling the data cache)
    return jobs


def _resume_line(
    args: argparse.Namespace, job: PhaseJob, rest: list[int], run_id: str | None
) -> str:
    """The command that continues an interrupted run (the run written to last when its id
    is unknown: no interrupt checkpoint could be saved), quoted for a shell."""
    command = ["python", "-m", "tuner.train", "--market", job.market, "--seed", str(job.seed)]
    command += ["--phases", ",".join(map(str, rest)), "--resume-from", "latest"]
    if job.trainer != "sb3":
        command += ["--trainer", job.trainer]
    if run_id:
        command += ["--run-id", run_id]
    if args.models_root:
        command += ["--models-root", args.models_root]
    if args.config_dir != "config":
        command += ["--config-dir", args.config_dir]
    if args.training_config:
        command += ["--training-config", args.training_config]
    if args.timesteps:
        command += ["--timesteps", str(args.timesteps)]
    if args.base_interval:
        command += ["--base-interval", str(args.base_interval)]
    return f"resume with: {shlex.join(command)}"


def _done_lines(job: PhaseJob, result: PhaseResult) -> list[str]:
    metrics = "  ".join(
        f"{k}={v:+.3f}"
        for k, v in result.metrics.items()
        if k in ("val_reward", "sharpe_ratio", "win_rate") and not math.isnan(v)
    )
    lines = [
        f"{tag(job)}: done at {result.timesteps:,} steps in {result.elapsed_seconds:.0f}s"
        + (f"  {metrics}" if metrics else ""),
        f"checkpoints: {result.folder}/ (run {result.run_id})",
    ]
    if result.phase_end is not None:
        lines.append(f"phase_end:   {result.phase_end}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from checkpointing import TrainingInterrupted
    from checkpointing.errors import CheckpointCorruptError
    from checkpointing.naming import CheckpointName, parse_name
    from tuner.trading.data import DataError
    from tuner.training.settings import load_run_settings

    try:
        settings = load_run_settings(args.config_dir, args.training_config)
        jobs = _jobs(args, settings)
    except (ConfigError, CheckpointNameError, DataError, ValueError) as exc:
        return usage_error(exc)

    def say(line: str) -> None:
        print(line, flush=True)

    phases, market = [job.phase for job in jobs], jobs[0].market
    notes = job_notes({"checkpoints": settings.checkpoint.models_root(jobs[0].models_root)})
    for line in notes:
        say(line)
    code = 0
    run_id = jobs[0].run_id
    for i, job in enumerate(jobs):
        if run_id is not None:  # the curriculum goes on as the run its first phase chose
            job = dataclasses.replace(job, run_id=run_id)
        try:
            result = train_phase(job, settings, report=say)
        except TrainingInterrupted as exc:
            say(f"{tag(job)}: {exc}")
            saved = parse_name(Path(exc.checkpoint).name) if exc.checkpoint else None
            saved_run = saved.run_id if isinstance(saved, CheckpointName) else None
            say(_resume_line(args, job, phases[i:], saved_run or job.run_id))
            code = exc.exit_code
            break
        except (ConfigError, CheckpointNameError, DataError, CheckpointCorruptError) as exc:
            return usage_error(exc)
        run_id = result.run_id
        for line in _done_lines(job, result):
            say(line)
    say(retention_pass(settings.checkpoint, jobs[0].models_root, phases, [market]))
    for line in notes:
        say(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
