"""The end of an experiment, once every trial process is gone: the driver's retention pass,
the cross-trial summary, the held-out test split, the search's verdict, the HTML report and
the exit code.

With object storage the same steps run on the bucket: the retention pass lists and prunes the
bucket's checkpoint folders (zip first; nothing downloaded), the results are read from the
driver's copy of Tune's storage (downloaded), the test split fetches each chosen checkpoint
from the bucket and verifies it before anything is unpickled (``python -m tuner.evaluate``),
and every file written beside the summary is uploaded to ``<models root>/summaries/``.
"""

from __future__ import annotations

import os
import shlex
import signal
from typing import Any

from checkpointing.locations import shown
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

__all__ = ["EXIT_FAILED_TRIALS", "finish", "job_lines"]

EXIT_FAILED_TRIALS = 1


def job_lines(opts: RunOptions) -> list[str]:
    """Where the files are when the driver runs as a Ray job (nothing otherwise)."""
    return job_notes({"checkpoints": opts.models_root, "Tune results": opts.experiment_dir})


def _retention(opts: RunOptions, settings: Any) -> list[Any]:
    """The driver's retention pass over every folder the trials touched: on disk, or every
    checkpoint folder of the experiment's phases and markets on the bucket (listed, pruned
    zip first; each trial's uploads were awaited before it ended). A bucket that cannot be
    listed is reported; the run's outcome stands."""
    if opts.models_uri is None:
        pruned = retention_reports(settings.checkpoint, opts.models_root, opts.phases, opts.markets)
        print(retention_line(pruned))
        return pruned
    from checkpointing.retention import prune_tree

    try:
        pruned = prune_tree(opts.models_uri, settings.checkpoint, opts.phases, opts.markets)
    except OSError as exc:
        print(f"retention: no pass over {opts.models_uri} ({exc})", flush=True)
        return []
    print(f"{retention_line(pruned)} on {opts.models_uri}")
    for report in pruned:
        for error in report.errors:
            print(f"retention: {error}")
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


def finish(opts: RunOptions, settings: Any, signum: int | None) -> int:
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
        browse = ["--storage-path", _storage_arg(opts), "--experiment", name]
        print(f"browse:  python -m tuner.browse {shlex.join(browse)}")
    for line in job_lines(opts):
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

    print(f"test split: measuring the chosen checkpoints of {name} (python -m tuner.evaluate)")
    command = [sys.executable, "-m", "tuner.evaluate", "--experiment", name, "--json"]
    command += ["--storage-path", os.fspath(opts.storage_path), "--config-dir"]
    command += [os.fspath(opts.config_dir), "--metric", "sharpe_ratio"]
    if opts.models_uri is not None:  # the chosen checkpoints are fetched into its staging
        command += ["--staging-dir", os.fspath(opts.models_root)]
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
        "folder": shown(report.folder),
        "kept": report.kept,
        "deleted": report.deleted,
        "bytes_freed": report.bytes_freed,
    }


def _report(opts: RunOptions) -> None:
    """The experiment's HTML report beside the summary (``python -m tuner.report``); with an
    object-store models root it reads the bucket's checkpoint folders and is uploaded with
    the summaries. A failure is reported; the run's outcome stands."""
    from tuner.reporting import default_report_path, write_report

    out = default_report_path(opts.models_root, opts.name)
    bucket = opts.models_uri is not None
    try:
        path = write_report(
            opts.storage_path,
            opts.name,
            models_root=None if bucket else opts.models_root,
            summaries=out.parent,
            out=out,
        )
    except Exception as exc:  # the report must never cost the run its exit code
        print(f"report:  not written ({type(exc).__name__}: {exc})", flush=True)
        return
    print(f"report:  {path}", flush=True)
    _upload_summaries(opts, [path])


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
    overlays = write_overlays(verdict, folder)
    for overlay in overlays:
        print(f"chosen:  {overlay}  (train with --training-config {overlay})")
    _upload_summaries(opts, [path, *overlays])


def _storage_arg(opts: RunOptions) -> str:
    """Tune's storage as the user gave it: the URI, not the driver's local copy of it."""
    return str(opts.storage_uri) if opts.storage_uri else os.fspath(opts.storage_path)


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
        _storage_arg(opts),
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
