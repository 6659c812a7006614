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
    python -m tuner.train --market NQ --seed 42 --models-root s3://bucket/models

With an ``s3://`` models root, checkpoints are committed to a local staging folder and uploaded
in the background (:mod:`tuner.training.staging`); the run ends once they are on the bucket,
or says which are still only local after ``--upload-timeout`` seconds (exit code 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.errors import EXIT_USAGE, CheckpointNameError, ConfigError, usage_error
from checkpointing.locations import is_uri
from tuner.cli import add_run_arguments, check_path_argument
from tuner.job_paths import check_job_paths, job_notes
from tuner.training.job import PhaseJob, PhaseResult, check, parse_phases, prepare, tag
from tuner.training.staging import RemoteRoot, fetch_model, resolve_models_root
from tuner.training.trainer import retention_pass, train_phase

if TYPE_CHECKING:
    from checkpointing.upload_report import UploadReport
    from checkpointing.uploads import Uploader
    from tuner.training.settings import Settings

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

_COMMAND = "python -m tuner.train"


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
    parser.add_argument(
        "--model-path",
        help="checkpoint zip to continue from: a local path, or s3://bucket/.../<name>.zip "
        "(fetched into the staging folder and verified before it is loaded)",
    )
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
    parser.add_argument(
        "--staging-dir",
        metavar="DIR",
        help="with --models-root s3://...: the local folder checkpoints are committed to before "
        "upload (default ~/.cache/futures-rl-tuner/staging/<bucket>/<prefix>)",
    )
    parser.add_argument(
        "--upload-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --models-root s3://...: how long the end of the run waits for pending "
        "uploads (default 300)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="only the final lines")
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write learning curves (TensorBoard event files) under DIR/<market>_seed<seed>/",
    )
    return parser


def _jobs(args: argparse.Namespace, settings: Settings) -> tuple[list[PhaseJob], RemoteRoot | None]:
    """The phase jobs of the command line, each checked (nothing is written), and the
    object-store models root if ``--models-root`` is a URI."""
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
    if not args.upload_timeout >= 0:
        raise ConfigError(f"--upload-timeout must be >= 0 seconds, got {args.upload_timeout!r}")
    phases = parse_phases(args.phases) if args.phases else [args.phase] if args.phase else []
    market, seed = args.market, args.seed
    models_root, remote = resolve_models_root(args.models_root, args.staging_dir)
    model_path = _model_path(args.model_path, remote)
    if model_path is not None:
        if not model_path.is_file():
            raise ConfigError(f"--model-path: no such checkpoint {args.model_path!r}")
        market, seed, phase = continue_target(
            model_path, market, seed, phases[0] if phases else None
        )
        phases = phases or [phase]
    if market is None:
        raise ConfigError("--market is required (e.g. --market NQ)")
    flag = "--models-root" if remote is None else "--staging-dir"
    check_job_paths(
        {flag: settings.checkpoint.models_root(models_root)}, allow_ephemeral=args.allow_ephemeral
    )
    curves = None
    if args.tensorboard:
        curves = check_path_argument(
            args.tensorboard, "--tensorboard", folder=True, command=_COMMAND
        )
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
    return jobs, remote


def _model_path(text: str | None, remote: RemoteRoot | None) -> Path | None:
    """``--model-path``: a local checkpoint, or one on a bucket fetched and verified."""
    if text is None:
        return None
    if is_uri(text):
        return fetch_model(text, remote)
    return check_path_argument(text, "--model-path", command=_COMMAND)


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
    if args.staging_dir:
        command += ["--staging-dir", args.staging_dir]
    if args.config_dir != "config":
        command += ["--config-dir", args.config_dir]
    if args.training_config:
        command += ["--training-config", args.training_config]
    if args.timesteps:
        command += ["--timesteps", str(args.timesteps)]
    if args.base_interval:
        command += ["--base-interval", str(args.base_interval)]
    return f"resume with: {shlex.join(command)}"


def _done_lines(job: PhaseJob, result: PhaseResult, uploads: Uploader | None) -> list[str]:
    metrics = "  ".join(
        f"{k}={v:+.3f}"
        for k, v in result.metrics.items()
        if k in ("val_reward", "sharpe_ratio", "win_rate") and not math.isnan(v)
    )
    lines = [
        f"{tag(job)}: done at {result.timesteps:,} steps in {result.elapsed_seconds:.0f}s"
        + (f"  {metrics}" if metrics else ""),
        f"checkpoints: {_where(result.folder, uploads)}/ (run {result.run_id})",
    ]
    if uploads is not None:
        lines.append(f"staged in:   {result.folder}/")
    if result.phase_end is not None:
        lines.append(f"phase_end:   {_where(result.phase_end, uploads)}")
    return lines


def _where(path: Path, uploads: Uploader | None) -> str:
    """A staged path as the bucket URI it is uploaded to; a local path as itself."""
    return os.fspath(path) if uploads is None else str(uploads.uri_of(path))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from tuner.trading.data import DataError
    from tuner.training.settings import load_run_settings

    def say(line: str) -> None:
        print(line, flush=True)

    uploads = None
    try:
        settings = load_run_settings(args.config_dir, args.training_config)
        jobs, remote = _jobs(args, settings)
        if remote is not None:  # the bucket checked before anything trains
            from tuner.training.staging import open_uploads

            uploads = open_uploads(remote, settings.checkpoint, say)
    except (ConfigError, CheckpointNameError, DataError, ValueError) as exc:
        return usage_error(exc)

    local = settings.checkpoint.models_root(jobs[0].models_root)
    notes = job_notes({} if remote else {"checkpoints": local})
    for line in notes:
        say(line)
    report, code = None, None
    try:
        code = _train(args, jobs, settings, say, uploads)
    finally:
        if uploads is not None:
            report = _end_uploads(
                args, jobs, settings, say, uploads, prune=code not in (None, EXIT_USAGE)
            )
    assert code is not None
    if report is not None and not report.complete and code == 0:
        code = 1  # the checkpoints are safe, but not where --models-root says
    for line in notes:
        say(line)
    return code


def _train(
    args: argparse.Namespace,
    jobs: list[PhaseJob],
    settings: Settings,
    say: Callable[[str], None],
    uploads: Uploader | None,
) -> int:
    """Train the phases in order, then the retention pass; returns the exit code."""
    from checkpointing import TrainingInterrupted
    from checkpointing.errors import CheckpointCorruptError
    from checkpointing.naming import CheckpointName, parse_name
    from tuner.trading.data import DataError

    phases, market = [job.phase for job in jobs], jobs[0].market
    code = 0
    run_id = jobs[0].run_id
    for i, job in enumerate(jobs):
        if run_id is not None:  # the curriculum goes on as the run its first phase chose
            job = dataclasses.replace(job, run_id=run_id)
        try:
            result = train_phase(job, settings, report=say, uploads=uploads)
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
        for line in _done_lines(job, result, uploads):
            say(line)
    if uploads is None:  # with uploads, once they are done (see _end_uploads)
        say(retention_pass(settings.checkpoint, jobs[0].models_root, phases, [market]))
    return code


def _end_uploads(
    args: argparse.Namespace,
    jobs: list[PhaseJob],
    settings: Settings,
    say: Callable[[str], None],
    uploads: Uploader,
    *,
    prune: bool,
) -> UploadReport:
    """The end of a run to object storage, within ``--upload-timeout``: wait for the uploads,
    then the retention pass (which keeps whatever is still not uploaded), then the deletions
    it made on the bucket; say what is still only local."""
    deadline = time.monotonic() + args.upload_timeout
    uploads.wait(args.upload_timeout, say)
    if prune:
        phases = [job.phase for job in jobs]
        root = jobs[0].models_root
        say(retention_pass(settings.checkpoint, root, phases, [jobs[0].market], uploads))
    remaining = deadline - time.monotonic()
    report = uploads.close(max(remaining, 0.0), say if remaining > 0 else None)
    for line in report.lines():
        say(line)
    return report


if __name__ == "__main__":
    sys.exit(main())
