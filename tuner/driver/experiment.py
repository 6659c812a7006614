"""Running an experiment on Ray Tune: one trial per (market, seed), then retention and the
cross-trial summary. Entered from ``python -m tuner.run`` once the options are checked."""

from __future__ import annotations

import os
import signal
from typing import Any

from checkpointing.errors import usage_error
from tuner.driver.options import RunOptions

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
    from ray import tune

    from checkpointing.registry import Registry
    from checkpointing.retention import prune_tree
    from tuner.driver.progress import Progress, StopHandler
    from tuner.driver.result_logs import result_loggers
    from tuner.driver.summary import TrialOutcome, build_summary, format_table, write_summary
    from tuner.driver.trainable import StopFlag, train_trial

    _init_ray(opts)
    progress = Progress()
    flag_name = f"stop-flag:{opts.name}"
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=flag_name).remote()
    stopper = StopHandler(flag, progress)
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
