"""Running an experiment on Ray Tune: one trial per (market, seed), then retention and the
cross-trial summary. Entered from ``python -m tuner.run`` once the options are checked."""

from __future__ import annotations

import os
import shlex
import signal
from typing import Any

from checkpointing.errors import usage_error
from tuner.driver.experiments import load_experiment
from tuner.driver.options import RunOptions
from tuner.driver.summary import build_summary, format_table, write_summary
from tuner.job_paths import job_notes
from tuner.training.trainer import retention_pass

__all__ = ["EXIT_FAILED_TRIALS", "run_experiment"]

EXIT_FAILED_TRIALS = 1


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


def run_experiment(opts: RunOptions, settings: Any) -> int:
    """Run (or resume) the experiment; returns the exit code."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours asks trials to save first
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's default loggers include TensorBoardX, which imports torch into the driver (~5 s
    # before the first trial starts); the JSON and CSV loggers come from tuner.driver.result_logs.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    import ray

    from tuner.driver.progress import Progress, StopHandler
    from tuner.driver.trainable import StopFlag

    _init_ray(opts)
    progress = Progress()
    flag_name = f"stop-flag:{opts.name}"
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=flag_name).remote()
    stopper = StopHandler(flag, progress)
    n_trials = len(opts.markets) * len(opts.seeds)
    print(
        f"experiment {opts.name}: {n_trials} trials ({', '.join(opts.markets)} x seeds "
        f"{', '.join(map(str, opts.seeds))}), phases {','.join(map(str, opts.phases))}",
        flush=True,
    )
    print(f"checkpoints under {opts.models_root}, Tune results under {opts.experiment_dir}")
    for line in _job_notes(opts):
        print(line, flush=True)
    stopper.install()
    try:
        try:
            tuner = _tuner(opts, flag_name, progress.callback)
        except _CannotRestore as exc:
            ray.shutdown()
            return usage_error(exc)
        tuner.fit()  # the outcome is read from the files below, as the browser reads it
    finally:
        stopper.restore()
    ray.shutdown()  # every trial process is gone: their files are final
    return _finish(opts, settings, stopper.signum)


class _CannotRestore(Exception):
    """Tune cannot restore the experiment (what the resume check cannot see)."""


def _tuner(opts: RunOptions, flag_name: str, progress: Any) -> Any:
    """A new Tuner of one trial per (market, seed), or the experiment restored (--resume)."""
    from ray import tune

    from tuner.driver.result_logs import result_loggers
    from tuner.driver.trainable import TrialConfig, train_trial

    trainable = tune.with_resources(train_trial, {"cpu": opts.cpus_per_trial})
    trial = TrialConfig(
        market="",  # one trial per (market, seed): grid searches in the param space
        seed=0,
        phases=opts.phases,
        experiment=opts.name,
        config_dir=os.fspath(opts.config_dir),
        models_root=os.fspath(opts.models_root),
        timesteps=opts.timesteps,
        base_interval=opts.base_interval,
        cpus=opts.cpus_per_trial,
        stop_flag=flag_name,
    )
    param_space = trial.param_space(list(opts.markets), list(opts.seeds))
    if opts.resume:
        try:
            return tune.Tuner.restore(
                os.fspath(opts.experiment_dir),
                trainable=trainable,
                param_space=param_space,
                resume_unfinished=True,
                resume_errored=True,
            )
        except Exception as exc:  # e.g. a tuner.pkl that unpickles into nonsense
            raise _CannotRestore(
                f"--resume: Tune cannot restore experiment {opts.name!r} from "
                f"{os.fspath(opts.experiment_dir)} ({type(exc).__name__}: {exc}); start it "
                "again without --resume under another --name (checkpoints under "
                f"{os.fspath(opts.models_root)} are untouched)"
            ) from None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # A reused actor has torch and SB3 imported already: each trial after the first few
        # starts in well under a second instead of paying ~5 s of imports.
        tune_config=tune.TuneConfig(max_concurrent_trials=opts.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=opts.name,
            storage_path=os.fspath(opts.storage_path),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # Every Tune checkpoint is a pointer of a few hundred bytes; keeping them all
            # avoids the experiment-state snapshot Tune forces after num_to_keep checkpoints.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[progress, *result_loggers()],
            verbose=0,
        ),
    )


def _finish(opts: RunOptions, settings: Any, signum: int | None) -> int:
    """Retention over every folder the trials touched, the summary, and the exit code."""
    print(retention_pass(settings.checkpoint, opts.models_root, opts.phases, opts.markets))
    experiment = load_experiment(opts.storage_path, opts.name)
    summary = build_summary(experiment, phases=opts.phases)
    json_path, csv_path = write_summary(summary, opts.models_root / "summaries")
    print()
    print(format_table(summary))
    print()
    print(f"summary: {json_path}")
    print(f"         {csv_path}")
    browse = f"--storage-path {opts.storage_path} --experiment {opts.name}"
    print(f"browse:  python -m tuner.browse {browse}")
    for line in _job_notes(opts):
        print(line, flush=True)
    statuses = {(t.market, t.seed): t.status for t in experiment.trials}
    missing = [(m, s) for m in opts.markets for s in opts.seeds if (m, s) not in statuses]
    if signum is not None or missing or summary["unfinished"]:
        print(
            "interrupted: every running trial saved an interrupt checkpoint. Resume with:\n"
            f"  python -m tuner.run {shlex.join(_resume_args(opts))} --resume",
            flush=True,
        )
        return 128 + (signum or signal.SIGINT)
    if summary["failed"]:
        print(f"{len(summary['failed'])} trial(s) failed: " + ", ".join(summary["failed"]))
        return EXIT_FAILED_TRIALS
    return 0


def _job_notes(opts: RunOptions) -> list[str]:
    """Where the files are when the driver runs as a Ray job (nothing otherwise)."""
    return job_notes({"checkpoints": opts.models_root, "Tune results": opts.experiment_dir})


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
