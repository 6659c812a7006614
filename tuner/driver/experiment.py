"""Running an experiment on Ray Tune: one trial per (market, seed), then the end steps
(:mod:`tuner.driver.finish`: retention, the summary, the report). Entered from
``python -m tuner.run`` once the options are checked."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from checkpointing.errors import usage_error
from tuner.driver.experiments import load_experiment
from tuner.driver.finish import EXIT_FAILED_TRIALS, finish, job_lines
from tuner.driver.options import RunOptions

__all__ = ["EXIT_FAILED_TRIALS", "run_experiment"]


def _cluster_address(opts: RunOptions) -> str | None:
    """--address, or the cluster a ``ray job submit`` job runs in (``RAY_ADDRESS``)."""
    return opts.address or os.environ.get("RAY_ADDRESS") or None


def _init_ray(opts: RunOptions) -> None:
    import ray

    address = _cluster_address(opts)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:  # a private Ray on this machine, bound to loopback, even beside a `ray start` one
        ray.init(
            address="local",
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

    if opts.models_uri is not None or opts.storage_uri is not None:
        from tuner.driver.remote import keep_credentials_on_their_nodes

        keep_credentials_on_their_nodes()
    _init_ray(opts)
    progress = Progress()
    flag_name = f"stop-flag:{opts.name}"
    flag = ray.remote(num_cpus=0)(StopFlag).options(name=flag_name).remote()
    stopper = StopHandler(flag, progress)
    _announce(opts)
    for line in job_lines(opts):
        print(line, flush=True)
    stopper.install()
    try:
        try:
            _tuner(opts, settings, flag_name, progress.callback).fit()
            if opts.search is not None and stopper.signum is None:
                confirm = _confirm_tuner(opts, flag_name, progress.callback)
                if confirm is not None:
                    confirm.fit()
        except _CannotRestore as exc:
            ray.shutdown()
            return usage_error(exc)
        # The outcome is read from the files below, as the browser reads it.
    finally:
        stopper.restore()
    with _held_signals() as late:  # a Ctrl+C now would leave Ray half shut down
        ray.shutdown()  # every trial process is gone: their files are final
    return finish(opts, settings, stopper.signum or late.signum)


class _Late:
    signum: int | None = None


@contextlib.contextmanager
def _held_signals() -> Iterator[_Late]:
    """SIGINT and SIGTERM noted, not acted on, for the duration; the first one noted is in
    the yielded object's ``signum`` (the run then ends as interrupted)."""
    late = _Late()

    def note(signum: int, frame: Any) -> None:
        late.signum = late.signum or signum

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield late
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _announce(opts: RunOptions) -> None:
    phases = ",".join(map(str, opts.phases))
    if opts.search is None:
        n_trials = len(opts.markets) * len(opts.seeds)
        print(
            f"experiment {opts.name}: {n_trials} trials ({', '.join(opts.markets)} x seeds "
            f"{', '.join(map(str, opts.seeds))}), phases {phases}{_trainer_note(opts)}",
            flush=True,
        )
    else:
        s = opts.search
        print(
            f"search {opts.name}: {s.num_samples} configurations per market of "
            f"{', '.join(opts.markets)} ({s.searcher}, scheduler {s.scheduler}, seed "
            f"{opts.seeds[0]}, by {s.metric}), phases {phases}{_trainer_note(opts)}; then the "
            f"best {s.confirm_top} per market on seeds {', '.join(map(str, opts.seeds))} "
            f"({opts.confirm_name})",
            flush=True,
        )
    models = opts.models_uri or opts.models_root
    results = opts.experiment_dir if opts.storage_uri is None else opts.storage_uri.child(opts.name)
    print(f"checkpoints under {models}, Tune results under {results}")
    if opts.models_uri is not None:
        where = opts.staging_dir or "each node's ~/.cache/futures-rl-tuner/staging"
        print(f"each trial commits to a staging folder on its node ({where}) and uploads")


def _trainer_note(opts: RunOptions) -> str:
    if opts.trainer == "sb3":
        return ""
    runners = opts.env_runner_cpus
    return f", trainer {opts.trainer} ({runners} env runner{'s' if runners != 1 else ''} a trial)"


class _CannotRestore(Exception):
    """Tune cannot restore the experiment (what the resume check cannot see)."""


def _trial_base(opts: RunOptions, flag_name: str) -> dict[str, Any]:
    """The trial config every trial of the experiment shares, as Tune's dict."""
    from dataclasses import asdict

    from tuner.driver.trial_config import TrialConfig

    trial = TrialConfig(
        market="",  # set per trial: a grid search, the searcher or a confirmation case
        seed=0,
        phases=opts.phases,
        experiment=opts.name,
        config_dir=os.fspath(opts.config_dir),
        models_root=str(opts.models_uri) if opts.models_uri else os.fspath(opts.models_root),
        staging_dir=None if opts.staging_dir is None else os.fspath(opts.staging_dir),
        upload_timeout=opts.upload_timeout,
        timesteps=opts.timesteps,
        base_interval=opts.base_interval,
        cpus=opts.cpus_per_trial,
        stop_flag=flag_name,
        training=dict(opts.training_overlay),
        # On a bucket, the trial's own folder, which Tune uploads (tuner.driver.remote).
        curves_root=None if opts.storage_uri else os.fspath(opts.experiment_dir),
        trainer=opts.trainer,
        env_runners=opts.env_runners,
    )
    base = asdict(trial)
    base["phases"] = list(trial.phases)
    return base


def _tuner(opts: RunOptions, settings: Any, flag_name: str, progress: Any) -> Any:
    """A new Tuner (one trial per (market, seed), or the search stage of ``--search``), or
    the experiment restored (--resume)."""
    from ray import tune

    base = _trial_base(opts, flag_name)
    tune_kwargs: dict[str, Any] = {}
    if opts.search is None:
        param_space = {
            **base,
            "market": tune.grid_search(list(opts.markets)),
            "seed": tune.grid_search(list(opts.seeds)),
        }
    else:
        from tuner.driver.search import search_tune_config

        param_space, tune_kwargs = search_tune_config(opts, settings, base)
    return _new_or_restored(opts, opts.name, param_space, tune_kwargs, progress)


def _confirm_tuner(opts: RunOptions, flag_name: str, progress: Any) -> Any:
    """The confirmation stage of a search: its top configurations on every seed (None when
    every such run exists already)."""
    from tuner.driver.search import confirm_cases, confirm_param_space

    base = _trial_base(opts, flag_name)
    base["experiment"] = opts.confirm_name
    if opts.storage_uri is None:
        base["curves_root"] = os.fspath(opts.storage_path / opts.confirm_name)
    else:  # the search stage's results, as the bucket has them
        from tuner.driver.remote import download_experiment

        download_experiment(opts.storage_uri, opts.name, opts.experiment_dir)
    restoring = _restoring(opts, opts.confirm_name)
    cases = [] if restoring else confirm_cases(opts, load_experiment(opts.storage_path, opts.name))
    if not restoring and not cases:
        print("confirmation: every top configuration has run on every seed already", flush=True)
        return None
    if not restoring:
        print(f"confirmation {opts.confirm_name}: {len(cases)} trials", flush=True)
    param_space = confirm_param_space(base, cases)
    return _new_or_restored(opts, opts.confirm_name, param_space, {}, progress)


def _new_or_restored(
    opts: RunOptions,
    name: str,
    param_space: dict[str, Any],
    tune_kwargs: dict[str, Any],
    progress: Any,
) -> Any:
    from ray import tune

    from tuner.driver.result_logs import result_loggers
    from tuner.driver.trainable import train_trial

    trainable = tune.with_resources(train_trial, _trial_resources(opts))
    experiment_dir = opts.storage_path / name
    storage: dict[str, Any] = {"storage_path": os.fspath(opts.storage_path)}
    if opts.storage_uri is not None:
        from tuner.driver.remote import tune_storage

        storage = tune_storage(opts.storage_uri)
    if _restoring(opts, name):  # --resume (a new experiment was refused)
        try:
            return tune.Tuner.restore(
                f"{storage['storage_path']}/{name}",
                storage_filesystem=storage.get("storage_filesystem"),
                trainable=trainable,
                param_space=param_space if "case" not in param_space else None,
                resume_unfinished=True,
                resume_errored=True,
            )
        except Exception as exc:  # e.g. a tuner.pkl that unpickles into nonsense
            raise _CannotRestore(
                f"--resume: Tune cannot restore experiment {name!r} from "
                f"{os.fspath(experiment_dir)} ({type(exc).__name__}: {exc}); start it "
                "again without --resume under another --name (checkpoints under "
                f"{os.fspath(opts.models_root)} are untouched)"
            ) from None
    return tune.Tuner(
        trainable,
        param_space=param_space,
        # A reused actor has torch and SB3 imported already: each trial after the first few
        # starts in well under a second instead of paying ~5 s of imports.
        tune_config=tune.TuneConfig(
            max_concurrent_trials=opts.max_concurrent, reuse_actors=True, **tune_kwargs
        ),
        run_config=tune.RunConfig(
            name=name,
            **storage,
            # On a bucket, the trials' TensorBoard files are uploaded with their results.
            sync_config=tune.SyncConfig(sync_artifacts=opts.storage_uri is not None),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            # Every Tune checkpoint is a pointer of a few hundred bytes; keeping them all
            # avoids the experiment-state snapshot Tune forces after num_to_keep checkpoints.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            callbacks=[progress, *result_loggers()],
            verbose=0,
        ),
    )


def _trial_resources(opts: RunOptions) -> Any:
    """A trial's CPUs; with RLlib env runners, a placement group of the trial's bundle and one
    bundle per runner. RLlib's runners are the trial's child actors, so Ray schedules them into
    those bundles, on this node or any other of the cluster (PACK: together when they fit)."""
    if not opts.env_runner_cpus:
        return {"cpu": opts.cpus_per_trial}
    from ray import tune

    return tune.PlacementGroupFactory(opts.trial_bundles(), strategy="PACK")


def _restoring(opts: RunOptions, name: str) -> bool:
    """Whether experiment ``name`` is restored (its state exists: --resume) or new."""
    if opts.storage_uri is not None and not opts.resume:
        return False  # a new one (refused if the bucket has it); the driver's copy is stale
    return (opts.storage_path / name / "tuner.pkl").exists()
