"""Runs that never mix: two ``tuner.run`` experiments and a ``tuner.train`` run in one models
root, and ``python -m tuner.browse`` on them.

The module builds one models root once, with a real Ray on loopback, as a user who runs the
same markets and seeds again would:

- ``long``: NQ, ES x seeds 42, 7, 36,000 steps, finished; the worker of its NQ seed-42 trial is
  SIGKILLed mid-run and Tune retries the trial;
- ``short``: the same markets and seeds, 30,000 steps (fewer than ``long``), stopped with
  SIGINT while its seed-42 trials run (the seed-7 trials never start), then ``--resume``d to
  the end;
- ``solo``: ``tuner.train --market NQ --seed 42``, 6,000 steps, stopped with SIGINT and resumed
  with the command it printed.

Every resume, retry, retention pass, summary and browser view must keep to its own run: a run
never resumes from, prunes or overwrites another's checkpoints, and the summary and the browser
name the same best checkpoints. Expected results come from the checkpoint files themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import CheckpointName
from checkpointing.store import list_checkpoints
from tests.ray.conftest import Crash, Driver, crash_trial, driver_env, trial_results
from tests.tiny_config import tiny_config_dir
from tuner.browse import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MARKETS = ("ES", "NQ")
SEEDS = (7, 42)
LONG, SHORT, SOLO = 36_000, 30_000, 6_000
KEEP_LAST_N = 8  # the shipped retention: last 8 periodic of each run


# --------------------------------------------------------------------------- the root


@dataclass(frozen=True)
class Built:
    workdir: Path
    storage: Path
    models: Path
    long_out: str
    short_out: str
    resume_out: str
    crash: Crash
    interrupts: dict[str, CheckpointName]  # short's, per market, from its SIGINT
    solo_run: str
    solo_interrupt: CheckpointName
    solo_out: str
    solo_resumed_out: str
    while_running: dict[str, Any]  # the browser's JSON on `short` just before the SIGINT
    after_sigint: dict[str, Any]  # ... and just after it
    long_files: dict[str, str]  # every file of `long`'s runs when it ended -> sha256
    short_files: dict[str, str]  # every file of `short`'s runs when it ended


def _browse_quietly(storage: Path, *args: str) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--storage-path", str(storage), *args])
    assert code == 0
    return json.loads(out.getvalue())


def _checkpoints(models: Path, market: str) -> list[Any]:
    return list_checkpoints(models / "phase1" / market / "checkpoints")


def _name(info: Any) -> CheckpointName:
    assert isinstance(info.name, CheckpointName)
    return info.name


def _files_of(models: Path, runs: set[str]) -> dict[str, str]:
    """Every checkpoint file (zip and companions) of ``runs`` under ``models``, and its sha256."""
    out = {}
    for market in MARKETS:
        for info in _checkpoints(models, market):
            if _name(info).run_id in runs:
                for path in (info.path, info.vecnormalize_path, info.metadata_path):
                    out[os.fspath(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _runs_of(storage: Path, experiment: str) -> set[str]:
    rows = trial_results(storage / experiment)
    return {r[-1]["run_id"] for r in rows.values()}


def _interrupt_short(short: Driver, models: Path, storage: Path) -> dict[str, Any]:
    """Wait for `short`'s seed-42 trials to save and report, then return the browser's view."""
    deadline = time.monotonic() + 240

    def saved(market: str) -> int:
        return sum(
            1 for i in _checkpoints(models, market) if (_name(i).run_id or "").startswith("short-")
        )

    while True:
        if short.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"`short` never ran to be interrupted:\n{short.output[-3000:]}")
        if all(saved(m) >= 2 for m in MARKETS):
            view = _browse_quietly(storage, "--experiment", "short", "--json")
            if all(t["status"] == "running" for t in view["trial_rows"] if t["seed"] == 42):
                return view  # a trial's first result may lag its first checkpoint
        time.sleep(0.2)


def _solo(workdir: Path, args: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.train", *args],
        cwd=workdir,
        env=driver_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, []


def _interrupted_solo(workdir: Path, models: Path, args: list[str]) -> tuple[str, str, str]:
    """Run ``tuner.train`` until its run has 3 checkpoints, SIGINT it; returns its run id,
    its output and the resume command it printed."""
    proc, lines = _solo(workdir, args)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        lines.append(first)
        match = re.search(r"phase 1: run (\S+) \(new\), from scratch", first)
        assert match, first
        run_id = match[1]
        deadline = time.monotonic() + 120
        while sum(1 for i in _checkpoints(models, "NQ") if _name(i).run_id == run_id) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines) + out
    assert proc.returncode == 130, output
    resume = next(line for line in output.splitlines() if line.startswith("resume with: "))
    return run_id, output, resume[len("resume with: ") :]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    workdir = tmp_path_factory.mktemp("runs")
    config_dir = tiny_config_dir(workdir / "config")
    storage, models = workdir / "ray_results", workdir / "models"
    common = [
        *("--markets", "NQ,ES", "--seeds", "42,7"),
        *("--config-dir", str(config_dir), "--models-root", str(models)),
        *("--storage-path", str(storage)),
        # Two trials at a time: the seed-7 trials of `short` are still pending at its SIGINT.
        *("--num-cpus", "2"),
    ]
    drivers: list[Driver] = []
    try:
        long = Driver([*common, "--timesteps", str(LONG), "--name", "long"], workdir, "long.log")
        drivers.append(long)
        crash = crash_trial(long, models / "phase1/NQ/checkpoints", "NQ", 42, saves=3)
        assert long.wait(600) == 0, long.output[-3000:]
        long_files = _files_of(models, _runs_of(storage, "long"))

        short_args = [*common, "--timesteps", str(SHORT), "--name", "short"]
        short = Driver(short_args, workdir, "short.log")
        drivers.append(short)
        while_running = _interrupt_short(short, models, storage)
        short.signal(signal.SIGINT)  # the driver alone, as Ctrl+C would
        assert short.wait(240) == 128 + signal.SIGINT, short.output[-3000:]
        after_sigint = _browse_quietly(storage, "--experiment", "short", "--json", "--top", "100")
        interrupts = {
            m: _name(i)
            for m in MARKETS
            for i in _checkpoints(models, m)
            if _name(i).event == "interrupt" and (_name(i).run_id or "").startswith("short-")
        }
        resumed = Driver([*short_args, "--resume"], workdir, "resume.log")
        drivers.append(resumed)
        assert resumed.wait(600) == 0, resumed.output[-3000:]
        short_files = _files_of(models, _runs_of(storage, "short"))

        solo_args = ["--market", "NQ", "--seed", "42", "--timesteps", str(SOLO)]
        solo_args += ["--config-dir", str(config_dir), "--models-root", str(models)]
        solo_run, solo_out, resume = _interrupted_solo(workdir, models, solo_args)
        (solo_interrupt,) = [
            _name(i)
            for i in _checkpoints(models, "NQ")
            if _name(i).run_id == solo_run and _name(i).event == "interrupt"
        ]
        again = subprocess.run(
            [sys.executable, *shlex.split(resume)[1:]],
            cwd=workdir,
            env=driver_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        yield Built(
            workdir,
            storage,
            models,
            long.output,
            short.output,
            resumed.output,
            crash,
            interrupts,
            solo_run,
            solo_interrupt,
            solo_out,
            again.stdout,
            while_running,
            after_sigint,
            long_files,
            short_files,
        )
    finally:
        for d in drivers:
            d.kill()


# --------------------------------------------------------------------------- helpers


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots``, with size and mtime: any write changes it."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[os.fspath(p)] = (st.st_size, st.st_mtime_ns)
    return out


def browse(built: Built, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the browser in-process on the module's storage path; nothing may change on disk."""
    before = _tree(built.storage, built.models)
    capsys.readouterr()
    code = main(["--storage-path", str(built.storage), *args])
    out, err = capsys.readouterr()
    assert _tree(built.storage, built.models) == before, "the browser changed files on disk"
    return code, out, err


def browse_json(built: Built, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = browse(built, capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def expected_best(
    models: Path, runs: set[str | None], market: str, metric: str, top: int
) -> list[tuple[str, float]]:
    """(path, value) of the best models of ``runs`` in ``market``'s folder, from the files: the
    metric in each checkpoint's metadata, best first (NaN never ranks; ties: more timesteps,
    then the smaller name), a model saved under several events once (its smallest name)."""
    rows = []
    for info in _checkpoints(models, market):
        meta = read_checkpoint_metadata(info.path)
        assert meta is not None
        if meta["run_id"] not in runs or math.isnan(value := float(meta[metric])):
            continue
        rows.append((-value, -info.timesteps, info.path.name, os.fspath(info.path)))
    rows.sort()
    out: list[tuple[str, float]] = []
    models_seen: set[str] = set()
    for neg, _, name, path in rows:
        model = re.sub(r"_evt-[a-z_0-9]+?_val-", "_val-", name)
        if model not in models_seen:
            models_seen.add(model)
            out.append((path, -neg))
    return out[:top]


def runs_of(built: Built, experiment: str) -> set[str | None]:
    return set(_runs_of(built.storage, experiment))


# --------------------------------------------------------------------------- runs never mix


def test_every_checkpoint_names_its_run_and_every_run_is_one_trial_or_the_solo_run(
    built: Built,
) -> None:
    trials = {
        r[-1]["run_id"]: (r[-1]["market"], r[-1]["seed"])
        for exp in ("long", "short")
        for r in trial_results(built.storage / exp).values()
    }
    assert len(trials) == 8  # 2 experiments x 2 markets x 2 seeds, a run each
    for market in MARKETS:
        for info in _checkpoints(built.models, market):
            name = _name(info)
            meta = read_checkpoint_metadata(info.path)
            assert meta is not None and meta["run_id"] == name.run_id
            if name.run_id == built.solo_run:
                assert (market, name.seed) == ("NQ", 42) and "experiment" not in meta
                continue
            assert trials[name.run_id] == (market, name.seed), info.path.name
            experiment, trial_id = meta["experiment"], meta["trial_id"]
            assert name.run_id == f"{experiment}-{trial_id.replace('_', '-')}"


def test_a_later_run_never_touches_an_earlier_runs_files(built: Built) -> None:
    """Neither `short` nor `solo` (saves, their retention passes, the driver's) overwrote or
    deleted a file of `long`'s runs; `solo` none of `short`'s."""
    assert built.long_files and built.short_files
    assert _files_of(built.models, _runs_of(built.storage, "long")) == built.long_files
    assert _files_of(built.models, _runs_of(built.storage, "short")) == built.short_files


def test_a_retried_trial_continues_its_own_run(built: Built) -> None:
    rows = trial_results(built.storage / "long")["NQ/42"]
    run_id = rows[-1]["run_id"]
    after = [r for r in rows if r["pid"] != built.crash.pid]
    assert built.crash.pid in {r["pid"] for r in rows} and after
    # From the newest checkpoint of its run that verified after the crash, not from zero.
    assert built.crash.saved > 0 and int(after[0]["timesteps"]) > built.crash.saved
    steps = [int(r["timesteps"]) for r in after]
    assert steps == sorted(steps) and rows[-1]["finished"] is True
    assert {r["run_id"] for r in rows} == {run_id}
    assert "[retry]  NQ seed 42" in built.long_out


def test_a_resumed_experiment_continues_each_trial_from_its_own_interrupt(built: Built) -> None:
    results = trial_results(built.storage / "short")
    for market, interrupt in built.interrupts.items():
        rows = results[f"{market}/42"]
        assert interrupt.run_id == rows[-1]["run_id"]
        resumed = [r for r in rows if r.get("pid") != rows[0]["pid"]]
        # It went on from its interrupt, below `long`'s checkpoints of the same seed (36,000
        # steps) that a resume across runs would have taken.
        assert resumed and min(int(r["timesteps"]) for r in resumed) > interrupt.timesteps
        assert rows[-1]["finished"] is True and SHORT <= int(rows[-1]["timesteps"]) < LONG
    summary = json.loads((built.models / "summaries" / "short.json").read_text())
    assert {r["status"] for r in summary["trials"]} == {"finished"}


def test_tuner_train_resumes_its_own_run_not_the_newest_of_the_folder(built: Built) -> None:
    run, interrupt = built.solo_run, built.solo_interrupt
    assert f"--resume-from latest --run-id {run}" in built.solo_out
    assert f"run {run}, continued from {interrupt.filename} (latest)" in built.solo_resumed_out
    (end,) = [
        _name(i)
        for i in _checkpoints(built.models, "NQ")
        if _name(i).run_id == run and _name(i).event == "phase_end"
    ]
    assert interrupt.timesteps < end.timesteps < LONG // 2
    assert f"checkpoints: {built.models / 'phase1/NQ/checkpoints'}/ (run {run})" in (
        built.solo_resumed_out
    )


def test_retention_keeps_each_runs_own_history(built: Built) -> None:
    """After every pass (in the runs, the drivers', solo's): each trial's last 8 periodic
    saves (as its results named them) are on disk, with its phase_end; no interrupt is left
    (each run ended with phase_end after its interrupt), and nothing else of a run's."""
    present = {i.filename for m in MARKETS for i in _checkpoints(built.models, m)}
    for experiment in ("long", "short"):
        for rows in trial_results(built.storage / experiment).values():
            periodic = list(
                dict.fromkeys(
                    r["checkpoint"] for r in rows if "_evt-periodic_" in (r.get("checkpoint") or "")
                )
            )
            assert len(periodic) > KEEP_LAST_N  # enough saves for retention to matter
            missing = [n for n in periodic[-KEEP_LAST_N:] if n not in present]
            assert missing == [], f"{experiment}: lost {missing}"
            assert rows[-1]["checkpoint"] in present  # its phase_end
    for market in MARKETS:
        by_run: dict[str | None, list[CheckpointName]] = {}
        for info in _checkpoints(built.models, market):
            by_run.setdefault(_name(info).run_id, []).append(_name(info))
        assert len(by_run) == (5 if market == "NQ" else 4)
        for run, names in by_run.items():
            events = [n.event for n in names]
            assert events.count("phase_end") == 1 and "interrupt" not in events, run
    assert built.interrupts and built.solo_interrupt.event == "interrupt"


@pytest.mark.parametrize("experiment", ["long", "short"])
@pytest.mark.parametrize("metric", ["sharpe_ratio", "val_reward"])
def test_summary_and_browse_name_the_same_bests(
    built: Built, capsys: pytest.CaptureFixture[str], experiment: str, metric: str
) -> None:
    summary = json.loads((built.models / "summaries" / f"{experiment}.json").read_text())
    doc = browse_json(built, capsys, "--experiment", experiment, "--metric", metric, "--top", "1")
    runs = runs_of(built, experiment)
    for market in MARKETS:
        (from_browse,) = doc["best"][market]
        (from_summary,) = [b for b in summary["markets"][market]["best"] if b["metric"] == metric]
        assert from_summary["path"] == from_browse["path"]
        assert from_summary["value"] == from_browse["value"]
        assert [(from_browse["path"], from_browse["value"])] == expected_best(
            built.models, runs, market, metric, 1
        )
    for row in summary["trials"]:  # each trial's best is its own run's best
        best = row["best"][metric]
        assert best["run_id"] == row["run_id"] and best["path"].endswith(
            f"_run-{row['run_id']}.zip"
        )
        mine = {row["run_id"]}
        assert [(best["path"], best["value"])] == expected_best(
            built.models, mine, row["market"], metric, 1
        )


# --------------------------------------------------------------------------- the browser


def test_lists_the_experiments_when_none_is_named(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys)
    assert doc["storage_path"] == os.fspath(built.storage.resolve())
    by_name = {e["name"]: e for e in doc["experiments"]}
    assert set(by_name) == {"long", "short"}
    for e in by_name.values():
        assert e["trials"] == 4
        assert e["markets"] == ["ES", "NQ"]
        assert e["seeds"] == [7, 42]
        assert e["phases"] == [1]
        assert e["models_roots"] == [os.fspath(built.models.resolve())]
        assert e["status"] == {"finished": 4}
        assert datetime.fromisoformat(e["last_update"]).timestamp() <= time.time()
    # Most recently updated first.
    assert [e["name"] for e in doc["experiments"]] == ["short", "long"]

    code, out, err = browse(built, capsys)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("long "))
    assert "finished 4" in line and "ES,NQ" in line and "7,42" in line
    # The command it suggests reads the same results: it repeats the --storage-path given.
    hint = out.splitlines()[-1]
    assert hint.startswith("details: python -m tuner.browse --storage-path ")
    assert shlex.split(hint)[5] == str(built.storage), hint

    assert browse_json(built, capsys, "--market", "CL")["experiments"] == []


@pytest.mark.parametrize("experiment", ["long", "short"])
def test_best_checkpoints_per_market_match_the_files(
    built: Built, capsys: pytest.CaptureFixture[str], experiment: str
) -> None:
    doc = browse_json(built, capsys, "--experiment", experiment)
    assert doc["metric"] == "sharpe_ratio" and doc["top"] == 5
    assert set(doc["best"]) == set(MARKETS)
    trials = {t["run_id"]: t for t in doc["trial_rows"]}
    assert set(trials) == runs_of(built, experiment)
    for market in MARKETS:
        rows = doc["best"][market]
        expected = expected_best(built.models, set(trials), market, "sharpe_ratio", 5)
        assert expected and [(r["path"], r["value"]) for r in rows] == expected
        for rank, r in enumerate(rows, 1):
            meta = read_checkpoint_metadata(r["path"])
            assert meta is not None
            assert (r["rank"], r["market"], r["phase"]) == (rank, market, 1)
            assert (r["seed"], r["run_id"], r["timesteps"], r["event"]) == (
                meta["seed"],
                meta["run_id"],
                meta["timesteps"],
                meta["event_tag"],
            )
            assert r["event"] in r["events"]
            for name in ("val_reward", "sharpe_ratio", "win_rate"):
                value = r["metrics"][name]
                assert value == meta[name] if value is not None else math.isnan(meta[name])
            assert r["trial_id"] == trials[r["run_id"]]["trial_id"]
        # The other experiment (and for NQ the solo run) saved in the same folders.
        assert doc["other_runs_skipped"][market] > 0


def test_a_model_saved_as_best_and_periodic_takes_one_place(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys, "--experiment", "long", "--top", "100")
    for market in MARKETS:
        rows = doc["best"][market]
        models = [(r["run_id"], r["timesteps"]) for r in rows]
        assert len(models) == len(set(models))  # one row per model
        twins = [r for r in rows if len(r["events"]) > 1]
        for r in twins:
            assert r["event"] == r["events"][0] and r["name"].find("_evt-best_") > 0
    assert any(len(r["events"]) > 1 for m in MARKETS for r in doc["best"][m])


def test_all_runs_ranks_every_run_in_the_folders(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys, "--experiment", "short", "--all-runs", "--top", "3")
    everyone = runs_of(built, "long") | runs_of(built, "short") | {built.solo_run}
    for market in MARKETS:
        rows = doc["best"][market]
        expected = expected_best(built.models, everyone, market, "sharpe_ratio", 3)
        assert [(r["path"], r["value"]) for r in rows] == expected
        for r in rows:  # a run outside the experiment has no trial of it
            assert (r["trial_id"] is None) == (r["run_id"] not in runs_of(built, "short"))
    code, out, err = browse(built, capsys, "--experiment", "short", "--all-runs")
    assert code == 0 and "of every run in its folders" in out, err


def test_text_table_shows_the_best_checkpoints(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = browse(built, capsys, "--experiment", "long", "--metric", "val_reward")
    assert code == 0, err
    assert "best checkpoints by val_reward" in out and "--all-runs ranks them too" in out
    for market in MARKETS:
        path, _ = expected_best(built.models, runs_of(built, "long"), market, "val_reward", 1)[0]
        line = next(line for line in out.splitlines() if line.endswith(path))
        assert line.split()[:3] == [market, "1", "1"]


def test_market_top_and_json(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    doc = browse_json(built, capsys, "--experiment", "short", "--market", "NQ", "--top", "2")
    assert doc["selected_markets"] == ["NQ"]
    assert list(doc["best"]) == ["NQ"]
    assert [(r["path"], r["value"]) for r in doc["best"]["NQ"]] == expected_best(
        built.models, runs_of(built, "short"), "NQ", "sharpe_ratio", 2
    )
    assert {t["market"] for t in doc["trial_rows"]} == {"NQ"}

    code, out, err = browse(built, capsys, "--experiment", "short", "--market", "NQ")
    assert code == 0, err
    assert "/ES/" not in out and "ES_ts-" not in out


def test_finished_trials_show_their_final_result(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys, "--experiment", "long")
    summary = json.loads((built.models / "summaries" / "long.json").read_text())
    final = {(r["market"], r["seed"]): r for r in summary["trials"]}
    assert len(doc["trial_rows"]) == 4
    for t in doc["trial_rows"]:
        assert t["status"] == "finished"
        assert t["phase"] == 1 and t["timesteps"] >= LONG
        assert "_evt-phase_end_" in t["checkpoint"] and t["checkpoint"].endswith(
            f"_run-{t['run_id']}.zip"
        )
        assert t["checkpoint_exists"] is True
        assert t["checkpoint_path"].startswith(os.fspath(built.models.resolve()))
        row = final[(t["market"], t["seed"])]
        assert (row["status"], row["run_id"], row["trial_id"]) == (
            "finished",
            t["run_id"],
            t["trial_id"],
        )
        for metric in ("val_reward", "sharpe_ratio", "win_rate"):
            assert t["metrics"][metric] == pytest.approx(row["metrics"][metric])
    assert doc["summaries"] == [os.fspath(built.models.resolve() / "summaries" / "long.json")]


def test_an_interrupted_experiment_and_its_interrupt_checkpoints(built: Built) -> None:
    doc = built.after_sigint
    rows = {(t["market"], t["seed"]): t for t in doc["trial_rows"]}
    assert doc["status"] == {"interrupted": 2, "pending": 2}
    for market in MARKETS:
        assert rows[(market, 7)]["status"] == "pending"
        t = rows[(market, 42)]
        assert t["status"] == "interrupted"
        assert t["checkpoint"] == built.interrupts[market].filename
        assert t["checkpoint_exists"] is True
        # Its run's checkpoints rank; the interrupt does not: it carries the metrics of the
        # evaluation before it, measured on an earlier model.
        ranked = {r["name"]: r for r in doc["best"][market]}
        assert ranked and {r["run_id"] for r in ranked.values()} == {t["run_id"]}
        assert {r["trial_id"] for r in ranked.values()} == {t["trial_id"]}
        assert t["checkpoint"] not in ranked
        # Released by retention once its run, resumed, ended with phase_end.
        assert not Path(t["checkpoint_path"]).exists()


def test_a_running_experiment(built: Built) -> None:
    doc = built.while_running
    rows = {(t["market"], t["seed"]): t for t in doc["trial_rows"]}
    assert doc["status"] == {"running": 2, "pending": 2}
    for market in MARKETS:
        assert rows[(market, 42)]["status"] == "running"
        assert rows[(market, 7)]["status"] == "pending"
        # Its checkpoints so far rank, all from the seed-42 trial's run.
        best = doc["best"][market]
        assert best and {r["trial_id"] for r in best} == {rows[(market, 42)]["trial_id"]}
        assert {r["run_id"] for r in best} == {rows[(market, 42)]["run_id"]}


def test_a_moved_models_root(
    built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    copy = tmp_path / "models-copy"
    shutil.copytree(built.models, copy)
    moved = browse_json(built, capsys, "--experiment", "long", "--models-root", str(copy))
    here = browse_json(built, capsys, "--experiment", "long")
    for market in MARKETS:
        assert [Path(r["path"]).name for r in moved["best"][market]] == [
            Path(r["path"]).name for r in here["best"][market]
        ]
        assert all(r["path"].startswith(os.fspath(copy.resolve())) for r in moved["best"][market])
    assert moved["models_roots"] == [os.fspath(copy.resolve())]

    empty = tmp_path / "empty-models"
    empty.mkdir()
    doc = browse_json(built, capsys, "--experiment", "long", "--models-root", str(empty))
    assert doc["best"] == {"ES": [], "NQ": []}
    assert all(not t["checkpoint_exists"] for t in doc["trial_rows"])
    code, out, err = browse(built, capsys, "--experiment", "long", "--models-root", str(empty))
    assert code == 0, err
    assert out.count("no checkpoint with a measured sharpe_ratio") == 2
    assert out.count("(not on disk)") == 4


def _edit_last_result(trial_dir: Path, drop: int = 1) -> None:
    lines = (trial_dir / "result.json").read_text().splitlines(keepends=True)
    (trial_dir / "result.json").write_text("".join(lines[:-drop]))


def test_errored_and_killed_trials(built: Built, tmp_path: Path) -> None:
    """A copy of `long` where one trial crashed (Tune's error.txt, no final result) and one
    stopped without a word (its last result is an ordinary evaluation, its worker is gone)."""
    storage = tmp_path / "ray_results"
    shutil.copytree(built.storage / "long", storage / "crashed")
    trials = sorted(p for p in (storage / "crashed").iterdir() if (p / "params.json").is_file())
    _edit_last_result(trials[0])
    (trials[0] / "error.txt").write_text("Failure # 1 (occurred at ...)\nRuntimeError: boom\n")
    _edit_last_result(trials[1])
    doc = _browse_quietly(storage, "--experiment", "crashed", "--json")
    by_folder = {t["folder"]: t for t in doc["trial_rows"]}
    assert by_folder[os.fspath(trials[0])]["status"] == "errored"
    assert by_folder[os.fspath(trials[0])]["error_file"] == os.fspath(trials[0] / "error.txt")
    assert by_folder[os.fspath(trials[1])]["status"] == "interrupted"
    assert doc["status"] == {"finished": 2, "interrupted": 1, "errored": 1}
    listing = _browse_quietly(storage, "--json")
    assert listing["experiments"][0]["status"] == doc["status"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metric", "sortino"], "'sortino'"),
        (["--experiment", "long", "--metric", "sortino"], "'sortino'"),
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--experiment", "long", "--market", "N_Q"], "'N_Q'"),
        (["--market", "N/Q"], "'N/Q'"),
        (["--experiment", "long", "--market", "CL"], "market 'CL' is not in experiment 'long'"),
        (["--experiment", "long", "--top", "0"], "--top must be >= 1, got 0"),
        (["--experiment", "long", "--models-root", "/no/such/models"], "'/no/such/models'"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    built: Built, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = browse(built, capsys, *args)
    assert code == 2
    assert message in err and err.startswith("error: ")
    assert out == ""


def test_missing_or_wrong_storage_path_exits_2(
    built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--storage-path", str(missing)]) == 2
    assert repr(str(missing)) in capsys.readouterr().err
    assert main(["--storage-path", str(built.storage / "long")]) == 2
    err = capsys.readouterr().err
    assert "is an experiment folder" in err and "--experiment 'long'" in err
    with pytest.raises(SystemExit) as exc:
        main(["--top", "many"])
    assert exc.value.code == 2
    assert "'many'" in capsys.readouterr().err


def test_the_cli_never_imports_ray_nor_writes(built: Built) -> None:
    """``python -m tuner.browse`` in a fresh interpreter: default storage path (the cwd's
    ``ray_results``), every view; Ray, torch and SB3 are never imported, nothing changes."""
    before = _tree(built.storage, built.models)
    code = (
        "import sys\n"
        "from tuner.browse import main\n"
        "codes = [main([]), main(['--experiment', 'long']), main(['--experiment', 'short',"
        " '--json', '--metric', 'win_rate']), main(['--experiment', 'short', '--market', 'ES',"
        " '--all-runs'])]\n"
        "heavy = sorted(m for m in sys.modules"
        " if m.split('.')[0] in ('ray', 'torch', 'stable_baselines3', 'gymnasium'))\n"
        "print('RESULT', codes, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=built.workdir,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "RESULT [0, 0, 0, 0] []"
    assert "experiments in" in out.stdout and "best checkpoints by sharpe_ratio" in out.stdout
    assert _tree(built.storage, built.models) == before

    helped = subprocess.run(
        [sys.executable, "-m", "tuner.browse", "--help"],
        cwd=built.workdir,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "--all-runs" in helped.stdout


# --------------------------------------------------------------------------- the report


def _expected_history(built: Built, experiment: str) -> dict[str, dict[str, Any]]:
    """Per trial, from the raw files: the checkpoints its reports name (``saved``) and those of
    its runs on disk (every one of them kept), and its evaluated steps."""
    out = {}
    for result in sorted((built.storage / experiment).glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        market, seed = rows[0]["config"]["market"], rows[0]["config"]["seed"]
        runs = {r["run_id"] for r in rows if r.get("run_id")}
        reported = {n for r in rows for n in (r.get("saved") or [])}
        on_disk = {
            i.path.name
            for i in _checkpoints(built.models, market)
            if _name(i).run_id in runs and _name(i).seed == seed
        }
        steps = {r["timesteps"] for r in rows if not r.get("interrupted")}
        out[rows[0]["trial_id"]] = {
            "events": reported | on_disk,
            "kept": on_disk,
            "evaluations": len(steps),
            "interrupts": {n for n in reported if "_evt-interrupt_" in n},
        }
    return out


_PAGE_FACTS = """(() => Array.from(document.querySelectorAll('div.trial')).map(d => ({
  id: d.id.slice(6),
  events: Array.from(d.querySelectorAll('circle.marker')).map(c => c.dataset.name),
  kept: Array.from(d.querySelectorAll('circle.marker.kept')).map(c => c.dataset.name),
  lines: Array.from(d.querySelectorAll('polyline.series')).map(p => p.points.numberOfItems),
})))()"""


@pytest.mark.parametrize("experiment", ["short", "long"])
def test_the_report_opens_offline_in_a_real_browser_with_every_event(
    built: Built, experiment: str, tmp_path: Path
) -> None:
    from tests.browser import kept, open_page
    from tuner.report import main as report
    from tuner.reporting.svg import MAX_LINE_POINTS

    # tuner.run wrote it at its end; a fresh one (elsewhere: the tree stays as it is) reads
    # the files as they are now.
    assert (built.models / "summaries" / f"{experiment}_report.html").is_file()
    page_path = tmp_path / f"{experiment}.html"
    argv = ["--storage-path", str(built.storage), "--experiment", experiment]
    assert report([*argv, "--out", str(page_path)]) == 0
    expected = _expected_history(built, experiment)
    test_doc = json.loads((built.models / "summaries" / f"{experiment}_test.json").read_text())
    with open_page(page_path) as page:
        assert page.errors == []
        assert page.requests == [page.url]  # the page itself, nothing else
        trials = {t["id"]: t for t in page.evaluate(_PAGE_FACTS)}
        curves = page.evaluate(
            "Array.from(document.querySelectorAll('svg.equity-chart polyline'))"
            ".map(p => [p.dataset.label, p.points.numberOfItems])"
        )
        dots = page.evaluate("document.querySelectorAll('svg.market-chart circle.dot').length")
        shot = page.screenshot(kept(f"{experiment}_report.png"))
    print(f"screenshot of the {experiment} report: {shot}")
    assert set(trials) == set(expected)
    for trial_id, want in expected.items():
        got = trials[trial_id]
        assert sorted(got["events"]) == sorted(want["events"]), trial_id
        assert sorted(got["kept"]) == sorted(want["kept"]), trial_id
        assert got["lines"] == [want["evaluations"]] * 2, trial_id
        assert want["interrupts"] <= set(got["events"])
    if experiment == "short":  # stopped with SIGINT: its seed-42 trials saved interrupts
        assert sum(len(w["interrupts"]) for w in expected.values()) == 2
    # Each market's equity chart: its selected checkpoint and buy and hold, every point kept.
    lengths = {min(len(r["curve"]["bar"]), MAX_LINE_POINTS) for r in test_doc["results"]}
    assert [n for label, n in curves if label == "buy and hold"] and all(
        n in lengths for _, n in curves
    )
    assert dots == 3 * len(expected)  # a dot per seed: validation, test Sharpe, test return
