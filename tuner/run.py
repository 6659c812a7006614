"""The multi-market driver: ``python -m tuner.run --markets NQ,ES --seeds 42,7``.

One Ray Tune trial per (market, seed), each through the requested phases. Everything is
validated before Ray starts. Ctrl+C or SIGTERM (also ``ray job stop``): every running trial
saves an ``interrupt`` checkpoint, the experiment state is saved, and ``--resume`` continues.
After all trials: retention over every folder the trials touched, then a cross-trial summary
(screen, ``<models_root>/summaries/<experiment>.json`` and ``.csv``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.naming import validate_market, validate_seed

__all__ = ["RunOptions", "build_parser", "main", "parse_options"]

log = logging.getLogger(__name__)

EXIT_FAILED_TRIALS = 1
_EXPERIMENT_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_]|[.-](?=[A-Za-z0-9_]))*\Z", re.ASCII)


@dataclass(frozen=True)
class RunOptions:
    markets: tuple[str, ...]
    seeds: tuple[int, ...]
    phases: tuple[int, ...]
    timesteps: int | None
    base_interval: int | None
    config_dir: Path
    models_root: Path
    storage_path: Path
    name: str
    cpus_per_trial: float
    max_concurrent: int | None
    max_failures: int
    resume: bool
    address: str | None
    num_cpus: int | None

    @property
    def experiment_dir(self) -> Path:
        return self.storage_path / self.name


def build_parser() -> argparse.ArgumentParser:
    from tuner.train import add_run_arguments

    p = argparse.ArgumentParser(
        prog="python -m tuner.run",
        description="Train PPO agents on several futures markets and seeds with Ray Tune.",
    )
    p.add_argument("--markets", required=True, help="comma-separated markets, e.g. NQ,ES")
    p.add_argument("--seeds", default="42", help="comma-separated seeds (default 42)")
    add_run_arguments(p)
    p.add_argument("--storage-path", default="ray_results", help="Ray Tune results folder")
    p.add_argument("--name", help="experiment name (default from markets, seeds, phases)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as CPUs allow)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial")
    p.add_argument("--resume", action="store_true", help="continue an interrupted experiment")
    p.add_argument("--address", help="Ray cluster address (default: start Ray on this machine)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    return p


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"--{what} needs at least one value, got {text!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"--{what} lists a value twice: {text!r}")
    return items


def parse_options(argv: Sequence[str] | None = None) -> tuple[RunOptions, Any]:
    """Parse and validate the command line and every config, before Ray starts.

    Returns the options and the loaded settings. Raises ConfigError / CheckpointNameError /
    DataError naming the culprit.
    """
    args = build_parser().parse_args(argv)  # --help exits here, before anything heavy loads

    from tuner.settings import check_path_argument, load_settings
    from tuner.train import PhaseJob, parse_phases, prepare

    markets = [validate_market(m) for m in _split(args.markets, "markets")]
    seeds: list[int] = []
    for text in _split(args.seeds, "seeds"):
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"--seeds must be integers, got {text!r}") from None
        seeds.append(validate_seed(value))
    phases = parse_phases(args.phases) if args.phases else parse_phases(str(args.phase or 1))
    if args.timesteps is not None and args.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {args.timesteps!r}")
    if args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial!r}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {args.max_concurrent!r}")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures!r}")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus!r}")
    if args.num_cpus is not None and (args.address or os.environ.get("RAY_ADDRESS")):
        raise ConfigError(
            "--num-cpus applies to a Ray started here; a cluster (--address or RAY_ADDRESS) "
            "has its own CPUs"
        )

    settings = load_settings(args.config_dir)
    models_root = (
        check_path_argument(args.models_root, "--models-root", folder=True)
        if args.models_root is not None
        else Path(settings.checkpoint.paths.root)
    )
    storage = check_path_argument(args.storage_path, "--storage-path", folder=True)
    name = args.name or (
        f"{'-'.join(markets)}_s{'-'.join(map(str, seeds))}_p{''.join(map(str, phases))}"
    )
    if not _EXPERIMENT_RE.match(name) or len(name) > 120:
        raise ConfigError(
            f"--name must be letters, digits, '_' and inner '.'/'-' (at most 120), got {name!r}"
        )
    for market in markets:  # market names known, data loadable: nothing is written yet
        for phase in phases:
            prepare(PhaseJob(market, seeds[0], phase, args.timesteps, args.base_interval), settings)

    opts = RunOptions(
        markets=tuple(markets),
        seeds=tuple(seeds),
        phases=tuple(phases),
        timesteps=args.timesteps,
        base_interval=args.base_interval,
        config_dir=settings.config_dir.resolve(),
        models_root=models_root.resolve(),
        storage_path=storage.resolve(),
        name=name,
        cpus_per_trial=args.cpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        resume=args.resume,
        address=args.address,
        num_cpus=args.num_cpus,
    )
    state = opts.experiment_dir / "tuner.pkl"
    if opts.resume and not state.exists():
        raise ConfigError(
            f"--resume: no experiment {name!r} in {os.fspath(opts.storage_path)} (nothing to "
            "resume; run without --resume to start it)"
        )
    if opts.resume:  # Tune would restart every trial from scratch on a damaged state
        from tuner.experiment_state import check_resumable

        check_resumable(opts.experiment_dir, opts.models_root)
    if not opts.resume and opts.experiment_dir.exists():
        raise ConfigError(
            f"experiment {name!r} already exists in {os.fspath(opts.storage_path)}: add "
            "--resume to continue it, or choose another --name"
        )
    return opts, settings


# --------------------------------------------------------------------------- progress


class _Progress:
    """One line per trial result, at most every ``every`` seconds per trial; stop tracking."""

    def __init__(self, every: float = 10.0) -> None:
        from ray import tune

        outer = self

        class Callback(tune.Callback):
            def on_trial_start(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.add(trial.trial_id)
                outer.say(f"[start]  {outer.label(trial)}")

            def on_trial_result(
                self,
                iteration: int,
                trials: list[Any],
                trial: Any,
                result: dict[str, Any],
                **info: Any,
            ) -> None:
                outer.last[trial.trial_id] = result
                now = time.monotonic()
                if result.get("finished"):
                    return  # on_trial_complete prints it
                if now - outer.shown.get(trial.trial_id, 0.0) >= outer.every:
                    outer.shown[trial.trial_id] = now
                    outer.say(f"[train]  {outer.label(trial)}  {outer.metrics(result)}")

            def on_trial_complete(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.discard(trial.trial_id)
                last = outer.last.get(trial.trial_id, {})
                outer.say(f"[done]   {outer.label(trial)}  {outer.metrics(last)}")

            def on_trial_error(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.running.discard(trial.trial_id)
                where = getattr(trial, "local_path", None) or ""
                outer.say(f"[failed] {outer.label(trial)}  (error log in {where})")

            def on_trial_recover(
                self, iteration: int, trials: list[Any], trial: Any, **info: Any
            ) -> None:
                outer.say(
                    f"[retry]  {outer.label(trial)}: crashed, resuming from its last checkpoint"
                )

        self.callback = Callback()
        self.every = every
        self.running: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.shown: dict[str, float] = {}

    @staticmethod
    def label(trial: Any) -> str:
        cfg = trial.config
        return f"{cfg.get('market')} seed {cfg.get('seed')}"

    @staticmethod
    def metrics(result: dict[str, Any]) -> str:
        parts = [f"phase {result.get('phase', '?')}", f"{int(result.get('timesteps', 0)):,} steps"]
        for key, short in (("val_reward", "val"), ("sharpe_ratio", "sharpe"), ("win_rate", "win")):
            if key in result and isinstance(result[key], (int, float)):
                parts.append(f"{short}={result[key]:+.3f}")
        return "  ".join(parts)

    def say(self, line: str) -> None:
        print(line, flush=True)


# --------------------------------------------------------------------------- stop handling


class _StopHandler:
    """Ctrl+C / SIGTERM: ask trials to save interrupt checkpoints, then end the Tune run.

    The first signal sets the stop flag; once every running trial has acknowledged its
    interrupt save (or after ``grace`` seconds) the driver sends itself SIGUSR1, Tune's own
    "stop and save the experiment state" signal. A second signal skips the wait.
    """

    def __init__(self, flag: Any, progress: _Progress, grace: float = 120.0) -> None:
        self.flag = flag
        self.progress = progress
        self.grace = grace
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._watcher: threading.Thread | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        self.signum = signum
        self.progress.say(
            f"{signal.Signals(signum).name}: asking running trials to save interrupt "
            "checkpoints (again to stop at once) ..."
        )
        self.flag.set.remote()
        self._watcher = threading.Thread(target=self._wait_then_stop, daemon=True)
        self._watcher.start()

    def _wait_then_stop(self) -> None:
        import ray

        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            try:
                acks = ray.get(self.flag.acks.remote(), timeout=10)
            except Exception:
                break
            running = {name for name in self.progress.running}
            if len(acks) >= len(running):
                break
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)


# --------------------------------------------------------------------------- main


def _cluster_address(opts: RunOptions) -> str | None:
    """--address, or the cluster a ``ray job submit`` job runs in (``RAY_ADDRESS``)."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


def _init_ray(opts: RunOptions) -> None:
    import ray

    address = _cluster_address(opts)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:  # a private Ray on this machine, bound to loopback
        ray.init(
            num_cpus=opts.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )


def run(opts: RunOptions, settings: Any) -> int:
    """Run (or resume) the experiment; returns the exit code."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours asks trials to save first
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's default loggers include TensorBoardX, which imports torch into the driver (~5 s
    # before the first trial starts); the JSON and CSV loggers come from tuner.result_logs.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    import ray
    from ray import tune

    from checkpointing.registry import Registry
    from checkpointing.retention import prune_tree
    from tuner.result_logs import result_loggers
    from tuner.summary import TrialOutcome, build_summary, format_table, write_summary
    from tuner.trainable import StopFlag, train_trial

    _init_ray(opts)
    progress = _Progress()
    flag_name = f"stop-flag:{opts.name}"
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=flag_name).remote()
    stopper = _StopHandler(flag, progress)
    trainable = tune.with_resources(train_trial, {"cpu": opts.cpus_per_trial})
    param_space = {
        "market": tune.grid_search(list(opts.markets)),
        "seed": tune.grid_search(list(opts.seeds)),
        "phases": list(opts.phases),
        "timesteps": opts.timesteps,
        "base_interval": opts.base_interval,
        "config_dir": os.fspath(opts.config_dir),
        "models_root": os.fspath(opts.models_root),
        "cpus": opts.cpus_per_trial,
        "stop_flag": flag_name,
    }
    run_config = tune.RunConfig(
        name=opts.name,
        storage_path=os.fspath(opts.storage_path),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        # Every Tune checkpoint is a pointer of a few hundred bytes; keeping them all avoids
        # the experiment-state snapshot Tune forces after num_to_keep checkpoints.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[progress.callback, *result_loggers()],
        verbose=0,
    )
    n_trials = len(opts.markets) * len(opts.seeds)
    print(
        f"experiment {opts.name}: {n_trials} trials ({', '.join(opts.markets)} x seeds "
        f"{', '.join(map(str, opts.seeds))}), phases {','.join(map(str, opts.phases))}",
        flush=True,
    )
    print(f"checkpoints under {opts.models_root}, Tune results under {opts.experiment_dir}")
    stopper.install()
    try:
        if opts.resume:
            try:
                tuner = tune.Tuner.restore(
                    os.fspath(opts.experiment_dir),
                    trainable=trainable,
                    param_space=param_space,
                    resume_unfinished=True,
                    resume_errored=True,
                )
            except Exception as exc:  # what check_resumable cannot see, e.g. a bad tuner.pkl
                ray.shutdown()
                return usage_error(
                    f"--resume: Tune cannot restore experiment {opts.name!r} from "
                    f"{os.fspath(opts.experiment_dir)} ({type(exc).__name__}: {exc}); start it "
                    "again without --resume under another --name (checkpoints under "
                    f"{os.fspath(opts.models_root)} are untouched)"
                )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                # A reused actor has torch and SB3 imported already: each trial after the
                # first few starts in well under a second instead of paying ~5 s of imports.
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=opts.max_concurrent, reuse_actors=True
                ),
                run_config=run_config,
            )
        results = tuner.fit()
    finally:
        stopper.restore()

    by_trial: dict[tuple[str, int], TrialOutcome] = {}
    for index in range(len(results)):
        result = results[index]
        cfg = result.config or {}
        if "market" not in cfg:
            continue
        metrics = dict(result.metrics or {})
        status = (
            "ERROR"
            if result.error is not None
            else ("TERMINATED" if metrics.get("finished") else "INTERRUPTED")
        )
        key = (str(cfg["market"]), int(cfg["seed"]))
        by_trial[key] = TrialOutcome(
            market=key[0],
            seed=key[1],
            status=status,
            last_result=metrics,
            error=str(result.error) if result.error is not None else None,
        )
    # Trials that never started (stopped before their turn) are listed as pending.
    outcomes = [
        by_trial.get((m, s)) or TrialOutcome(m, s, "PENDING")
        for m in opts.markets
        for s in opts.seeds
    ]

    # Retention over every folder the trials touched, then the summary.
    registry = Registry(opts.models_root, settings.checkpoint)
    reports = prune_tree(
        opts.models_root, settings.checkpoint, opts.phases, opts.markets, registry=registry
    )
    deleted = sum(r.deleted for r in reports)
    print(f"retention: {len(reports)} folders pruned, {deleted} checkpoints deleted")
    summary = build_summary(
        opts.name,
        outcomes,
        config=settings.checkpoint,
        models_root=opts.models_root,
        phases=opts.phases,
    )
    json_path, csv_path = write_summary(summary, opts.models_root / "summaries")
    print()
    print(format_table(summary))
    print()
    print(f"summary: {json_path}")
    print(f"         {csv_path}")
    ray.shutdown()

    if stopper.signum is not None or any(o.status in ("INTERRUPTED", "PENDING") for o in outcomes):
        print(
            "interrupted: every running trial saved an interrupt checkpoint. Resume with:\n"
            f"  python -m tuner.run {' '.join(_resume_args(opts))} --resume",
            flush=True,
        )
        return 128 + (stopper.signum or signal.SIGINT)
    failed = [o for o in outcomes if o.status == "ERROR"]
    if failed:
        print(
            f"{len(failed)} trial(s) failed: " + ", ".join(f"{o.market}/{o.seed}" for o in failed)
        )
        return EXIT_FAILED_TRIALS
    return 0


def _resume_args(opts: RunOptions) -> list[str]:
    args = [
        "--markets",
        ",".join(opts.markets),
        "--seeds",
        ",".join(map(str, opts.seeds)),
        "--phases",
        ",".join(map(str, opts.phases)),
        "--name",
        opts.name,
        "--storage-path",
        os.fspath(opts.storage_path),
        "--models-root",
        os.fspath(opts.models_root),
        "--config-dir",
        os.fspath(opts.config_dir),
    ]
    if opts.timesteps:
        args += ["--timesteps", str(opts.timesteps)]
    if opts.base_interval:
        args += ["--base-interval", str(opts.base_interval)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts, settings = parse_options(argv)
    except (ConfigError, CheckpointNameError, ValueError) as exc:  # tuner.data.DataError too
        return usage_error(exc)
    return run(opts, settings)


if __name__ == "__main__":
    sys.exit(main())
