"""Running an experiment on Ray Tune: one trial per (market, seed), then retention and the
cross-trial summary. Entered from ``python -m tuner.run`` once the options are checked."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Iterator
from typing import Any

from checkpointing.errors import usage_error
from tuner.driver.experiments import load_experiment
from tuner.driver.options import RunOptions
from tuner.driver.summary import (
    attach_test,
    build_summary,
    format_table,
    format_test_table,
    write_summary,
)
from tuner.job_paths import job_notes
from tuner.training.trainer import retention_line, retention_reports

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
    for line in _job_notes(opts):
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
    return _finish(opts, settings, stopper.signum or late.signum)


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

    from tuner.driver.trainable import TrialConfig

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


def _retention(opts: RunOptions, settings: Any) -> list[Any]:
    """The driver's retention pass over every folder the trials touched (none on a bucket:
    each trial pruned its staging folder and the bucket as it ran)."""
    if opts.models_uri is not None:
        print(
            f"retention: each trial pruned its staging folder and {opts.models_uri} as it "
            "ran; no pass over the whole bucket from the driver yet"
        )
        return []
    pruned = retention_reports(settings.checkpoint, opts.models_root, opts.phases, opts.markets)
    print(retention_line(pruned))
    return pruned


def _models_roots(opts: RunOptions, roots: list[str]) -> list[str]:
    """The summary's models roots: with an object-store root, its URI (not a path made of
    it, ``s3:/...``)."""
    return roots if opts.models_uri is None else [str(opts.models_uri)]


def _download_results(opts: RunOptions) -> None:
    """With Tune's storage on a bucket: the experiment's results copied into the driver's
    copy, which the end steps read (as they read a local storage path)."""
    if opts.storage_uri is None:
        return
    from tuner.driver.remote import download_experiment

    for name in [opts.name] + ([opts.confirm_name] if opts.search else []):
        download_experiment(opts.storage_uri, name, opts.storage_path / name)


def _finish(opts: RunOptions, settings: Any, signum: int | None) -> int:
    """Retention over every folder the trials touched, the summary, the report, and the
    exit code."""
    pruned = _retention(opts, settings)
    _download_results(opts)
    names = [opts.name]
    if opts.search is not None and (opts.storage_path / opts.confirm_name).is_dir():
        names.append(opts.confirm_name)
    experiments = {n: load_experiment(opts.storage_path, n) for n in names}
    summaries = {n: build_summary(e, phases=opts.phases) for n, e in experiments.items()}
    if signum is None and opts.test_eval:  # a search: its confirmation stage, after the choice
        _test_split(opts, names[-1], summaries[names[-1]])
    for summary in summaries.values():  # what the driver's pass freed, for the report
        summary["retention"] = [_pruned(r) for r in pruned]
        summary["models_roots"] = _models_roots(opts, summary["models_roots"])
    for name, summary in summaries.items():
        json_path, csv_path = write_summary(summary, opts.models_root / "summaries")
        _upload_summaries(opts, [json_path, csv_path])
        print()
        print(format_table(summary))
        if any((r.get("test") or {}).get("best") for r in summary["trials"]):
            print()
            print(format_test_table(summary))
        print()
        print(f"summary: {json_path}")
        print(f"         {csv_path}")
        browse = f"--storage-path {opts.storage_uri or opts.storage_path} --experiment {name}"
        print(f"browse:  python -m tuner.browse {browse}")
    for line in _job_notes(opts):
        print(line, flush=True)
    if opts.search is not None:
        _finish_search(opts, experiments, summaries)
    if opts.report:
        _report(opts)
    unfinished = [u for s in summaries.values() for u in s["unfinished"]]
    failed = [f for s in summaries.values() for f in s["failed"]]
    if signum is not None or _missing(opts, experiments[opts.name]) or unfinished:
        print(
            "interrupted: every running trial saved an interrupt checkpoint. Resume with:\n"
            f"  python -m tuner.run {shlex.join(_resume_args(opts))} --resume",
            flush=True,
        )
        return 128 + (signum or signal.SIGINT)
    if failed:
        print(f"{len(failed)} trial(s) failed: " + ", ".join(failed))
        return EXIT_FAILED_TRIALS
    return 0


def _upload_summaries(opts: RunOptions, paths: list[Any]) -> None:
    """With an object-store models root, the summary files go to ``<uri>/summaries/`` too
    (a failure is reported; the run's outcome stands)."""
    if opts.models_uri is None:
        return
    from checkpointing.errors import ObjectStoreError
    from tuner.driver.remote import upload_files

    try:
        for uri in upload_files(opts.models_uri, "summaries", paths):
            print(f"uploaded: {uri}")
    except ObjectStoreError as exc:
        print(f"summary: not uploaded ({exc}); it is in {opts.models_root / 'summaries'}")


def _test_split(opts: RunOptions, name: str, summary: dict[str, Any]) -> None:
    """Measure each trial's checkpoint chosen on validation on the held-out test split, in a
    process of its own (``python -m tuner.evaluate``: the driver never imports torch), and
    add the figures to the summary. A failure is reported; the run's outcome stands."""
    import json
    import subprocess
    import sys

    if opts.models_uri is not None or opts.storage_uri is not None:
        print(
            "test split: not measured (python -m tuner.evaluate reads local folders only so "
            "far; the checkpoints and results are on the bucket)",
            flush=True,
        )
        return
    print(f"test split: measuring the chosen checkpoints of {name} (python -m tuner.evaluate)")
    command = [sys.executable, "-m", "tuner.evaluate", "--experiment", name, "--json"]
    command += ["--storage-path", os.fspath(opts.storage_path), "--config-dir"]
    command += [os.fspath(opts.config_dir), "--metric", "sharpe_ratio"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        doc = json.loads(done.stdout) if done.returncode == 0 else None
    except ValueError:
        doc = None
    if doc is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        print("test split: not measured (" + " / ".join(tail) + ")", flush=True)
        return
    attach_test(summary, doc)


def _pruned(report: Any) -> dict[str, Any]:
    """One folder of the driver's retention pass, as the summary keeps it."""
    return {
        "phase": report.phase,
        "market": report.market,
        "folder": os.fspath(report.folder),
        "kept": report.kept,
        "deleted": report.deleted,
        "bytes_freed": report.bytes_freed,
    }


def _report(opts: RunOptions) -> None:
    """The experiment's HTML report beside the summary (``python -m tuner.report``); a
    failure is reported, the run's outcome stands."""
    from tuner.reporting import default_report_path, write_report

    out = default_report_path(opts.models_root, opts.name)
    try:
        path = write_report(opts.storage_path, opts.name, models_root=opts.models_root, out=out)
    except Exception as exc:  # the report must never cost the run its exit code
        print(f"report:  not written ({type(exc).__name__}: {exc})", flush=True)
        return
    print(f"report:  {path}", flush=True)


def _missing(opts: RunOptions, experiment: Any) -> list[tuple[str, int]]:
    """Trials of a grid Tune never created (the driver stopped before it got to them)."""
    if opts.search is not None:
        return []
    statuses = {(t.market, t.seed): t.status for t in experiment.trials}
    return [(m, s) for m in opts.markets for s in opts.seeds if (m, s) not in statuses]


def _finish_search(
    opts: RunOptions, experiments: dict[str, Any], summaries: dict[str, Any]
) -> None:
    import json

    from tuner.driver.experiments import json_ready
    from tuner.driver.search import format_search, search_summary, write_overlays

    verdict = search_summary(
        opts, experiments[opts.name], experiments.get(opts.confirm_name), summaries
    )
    folder = opts.models_root / "summaries"
    path = folder / f"{opts.name}_search.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_ready(verdict), indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)
    print()
    print(format_search(verdict))
    print()
    print(f"search:  {path}")
    for overlay in write_overlays(verdict, folder):
        print(f"chosen:  {overlay}  (train with --training-config {overlay})")


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
        str(opts.storage_uri) if opts.storage_uri else os.fspath(opts.storage_path),
        "--models-root",
        str(opts.models_uri) if opts.models_uri else os.fspath(opts.models_root),
        "--config-dir",
        os.fspath(opts.config_dir),
    ]
    if opts.staging_dir is not None:
        args += ["--staging-dir", os.fspath(opts.staging_dir)]
    if opts.training_config is not None:
        args += ["--training-config", os.fspath(opts.training_config)]
    if opts.trainer != "sb3":
        args += ["--trainer", opts.trainer]
    if opts.env_runners is not None:
        args += ["--env-runners", str(opts.env_runners)]
    if opts.search is not None:
        s = opts.search
        args += ["--search", os.fspath(s.path), "--num-samples", str(s.num_samples)]
        args += ["--searcher", s.searcher, "--scheduler", s.scheduler, "--metric", s.metric]
        args += ["--confirm-top", str(s.confirm_top), "--search-seed", str(s.seed)]
    if opts.timesteps:
        args += ["--timesteps", str(opts.timesteps)]
    if opts.base_interval:
        args += ["--base-interval", str(opts.base_interval)]
    return args
