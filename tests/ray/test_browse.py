"""``python -m tuner.browse`` on real experiments of ``python -m tuner.run``.

The module builds two experiments once, with a real Ray on loopback: ``done`` (NQ, ES x seeds
42, 7, 2,000 steps, finished) and ``intr`` (the same markets and seeds, 30,000 steps, stopped
with SIGINT while the seed-42 trials run, so the seed-7 trials never start). Both write to
one models root, as runs with the default ``./models`` do, so each experiment's best
checkpoints must leave out the other's. Expected results are computed from the checkpoint
files themselves (names and metadata) and the wall-clock time each driver ran.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
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
from checkpointing.store import list_checkpoints
from tests.ray.conftest import Driver, driver_env
from tests.tiny_config import tiny_config_dir
from tuner.browse import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MARKETS = ("ES", "NQ")
SEEDS = (7, 42)


# --------------------------------------------------------------------------- the experiments


@dataclass(frozen=True)
class Run:
    """One driver run: its experiment name and the wall-clock span it ran in."""

    name: str
    started: float
    ended: float
    exit_code: int
    output: str


@dataclass(frozen=True)
class Built:
    workdir: Path
    storage: Path
    models: Path
    done: Run
    intr: Run
    while_running: dict[str, Any]  # the browser's JSON on `intr` just before the SIGINT


def _browse_quietly(storage: Path, *args: str) -> Any:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--storage-path", str(storage), *args])
    assert code == 0
    return json.loads(out.getvalue())


def _new_checkpoints(models: Path, market: str, since: float) -> int:
    folder = models / "phase1" / market / "checkpoints"
    return sum(1 for info in list_checkpoints(folder) if info.mtime >= since)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    workdir = tmp_path_factory.mktemp("browse")
    config_dir = tiny_config_dir(workdir / "config")
    storage, models = workdir / "ray_results", workdir / "models"
    common = [
        "--markets",
        "NQ,ES",
        "--seeds",
        "42,7",
        "--config-dir",
        str(config_dir),
        "--models-root",
        str(models),
        "--storage-path",
        str(storage),
        "--num-cpus",
        "2",  # two trials at a time: the seed-7 trials of `intr` are still pending at SIGINT
    ]
    drivers: list[Driver] = []
    try:
        done = Driver([*common, "--timesteps", "2000", "--name", "done"], workdir, "done.log")
        drivers.append(done)
        code = done.wait(300)
        done_run = Run("done", done.started, time.time(), code, done.output)
        assert code == 0, done.output

        intr = Driver([*common, "--timesteps", "30000", "--name", "intr"], workdir, "intr.log")
        drivers.append(intr)
        deadline = time.monotonic() + 180
        while any(_new_checkpoints(models, m, intr.started) < 3 for m in MARKETS):
            if intr.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no checkpoints from `intr` to interrupt:\n{intr.output}")
            time.sleep(0.5)
        while_running = _browse_quietly(storage, "--experiment", "intr", "--json")
        while not all(
            t["status"] == "running" for t in while_running["trial_rows"] if t["seed"] == 42
        ):  # a trial's first result may lag its first checkpoint
            if intr.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`intr` never showed as running: {while_running}")
            time.sleep(0.5)
            while_running = _browse_quietly(storage, "--experiment", "intr", "--json")
        intr.signal(signal.SIGINT)  # the driver alone, as Ctrl+C would
        code = intr.wait(180)
        intr_run = Run("intr", intr.started, time.time(), code, intr.output)
        assert code == 128 + signal.SIGINT, intr.output
        yield Built(workdir, storage, models, done_run, intr_run, while_running)
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


def _saved_at(meta: dict[str, Any]) -> float:
    return datetime.fromisoformat(meta["timestamp"]).timestamp()


def expected_best(
    models: Path, run: Run, market: str, metric: str, top: int
) -> list[tuple[str, float]]:
    """(path, value) of the best checkpoints of ``market`` written while ``run`` ran, from
    the files: every checkpoint of the folder, its metadata, ranked by ``metric`` (NaN never
    ranks; ties: more timesteps, then the smaller name)."""
    rows = []
    for info in list_checkpoints(models / "phase1" / market / "checkpoints"):
        meta = read_checkpoint_metadata(info.path)
        assert meta is not None
        if meta["seed"] not in SEEDS or not run.started <= _saved_at(meta) <= run.ended:
            continue
        value = float(meta[metric])
        if math.isnan(value):
            continue
        rows.append((-value, -info.timesteps, info.path.name, os.fspath(info.path)))
    rows.sort()
    return [(path, -neg) for neg, _, _, path in rows[:top]]


def _run(built: Built, name: str) -> Run:
    return built.done if name == "done" else built.intr


# --------------------------------------------------------------------------- tests


def test_lists_the_experiments_when_none_is_named(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys)
    assert doc["storage_path"] == os.fspath(built.storage.resolve())
    by_name = {e["name"]: e for e in doc["experiments"]}
    assert set(by_name) == {"done", "intr"}
    for e in by_name.values():
        assert e["trials"] == 4
        assert e["markets"] == ["ES", "NQ"]
        assert e["seeds"] == [7, 42]
        assert e["phases"] == [1]
        assert e["models_roots"] == [os.fspath(built.models.resolve())]
        assert datetime.fromisoformat(e["last_update"]).timestamp() <= time.time()
    assert by_name["done"]["status"] == {"finished": 4}
    assert by_name["intr"]["status"] == {"interrupted": 2, "pending": 2}
    # Most recently updated first.
    assert [e["name"] for e in doc["experiments"]] == ["intr", "done"]

    code, out, err = browse(built, capsys)
    assert code == 0, err
    lines = out.splitlines()
    done_line = next(line for line in lines if line.startswith("done "))
    intr_line = next(line for line in lines if line.startswith("intr "))
    assert "finished 4" in done_line and "ES,NQ" in done_line and "7,42" in done_line
    assert "interrupted 2, pending 2" in intr_line

    assert browse_json(built, capsys, "--market", "CL")["experiments"] == []


@pytest.mark.parametrize("experiment", ["done", "intr"])
@pytest.mark.parametrize("metric", ["sharpe_ratio", "val_reward"])
def test_best_checkpoints_per_market_match_the_files(
    built: Built, capsys: pytest.CaptureFixture[str], experiment: str, metric: str
) -> None:
    doc = browse_json(built, capsys, "--experiment", experiment, "--metric", metric)
    assert doc["metric"] == metric and doc["top"] == 5
    assert set(doc["best"]) == set(MARKETS)
    trial_ids = {(t["market"], t["seed"]): t["trial_id"] for t in doc["trial_rows"]}
    for market in MARKETS:
        rows = doc["best"][market]
        expected = expected_best(built.models, _run(built, experiment), market, metric, 5)
        assert expected, f"no checkpoints of {market} from {experiment}"
        assert [(r["path"], r["value"]) for r in rows] == expected
        for rank, r in enumerate(rows, 1):
            meta = read_checkpoint_metadata(r["path"])
            assert meta is not None
            assert r["rank"] == rank and r["market"] == market and r["metric"] == metric
            assert (r["seed"], r["timesteps"], r["event"]) == (
                meta["seed"],
                meta["timesteps"],
                meta["event_tag"],
            )
            for name in ("val_reward", "sharpe_ratio", "win_rate"):
                value = r["metrics"][name]
                assert value == meta[name] if value is not None else math.isnan(meta[name])
            assert r["trial_id"] == trial_ids[(market, r["seed"])]
        # The other experiment wrote checkpoints of the same markets and seeds here too.
        assert doc["other_runs_skipped"][market] > 0


def test_text_table_shows_the_best_checkpoints(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = browse(built, capsys, "--experiment", "done", "--metric", "val_reward")
    assert code == 0, err
    assert "best checkpoints by val_reward" in out
    for market in MARKETS:
        path, _ = expected_best(built.models, built.done, market, "val_reward", 1)[0]
        line = next(line for line in out.splitlines() if line.endswith(path))
        assert line.split()[:2] == [market, "1"]


def test_market_top_and_json(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    doc = browse_json(built, capsys, "--experiment", "intr", "--market", "NQ", "--top", "2")
    assert doc["selected_markets"] == ["NQ"]
    assert list(doc["best"]) == ["NQ"]
    assert [(r["path"], r["value"]) for r in doc["best"]["NQ"]] == expected_best(
        built.models, built.intr, "NQ", "sharpe_ratio", 2
    )
    assert {t["market"] for t in doc["trial_rows"]} == {"NQ"}

    code, out, err = browse(built, capsys, "--experiment", "intr", "--market", "NQ")
    assert code == 0, err
    assert "/ES/" not in out and "ES_ts-" not in out


def test_finished_trials_show_their_final_result(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys, "--experiment", "done")
    summary = json.loads((built.models / "summaries" / "done.json").read_text())
    final = {(r["market"], r["seed"]): r for r in summary["trials"]}
    assert len(doc["trial_rows"]) == 4
    for t in doc["trial_rows"]:
        assert t["status"] == "finished"
        assert t["phase"] == 1 and t["timesteps"] >= 2000
        assert "_evt-phase_end_" in t["checkpoint"]
        assert t["checkpoint_exists"] is True
        assert t["checkpoint_path"].startswith(os.fspath(built.models.resolve()))
        row = final[(t["market"], t["seed"])]
        assert row["status"] == "TERMINATED"
        for metric in ("val_reward", "sharpe_ratio", "win_rate"):
            assert t["metrics"][metric] == pytest.approx(row["metrics"][metric])
    assert doc["summaries"] == [os.fspath(built.models.resolve() / "summaries" / "done.json")]


def test_interrupted_experiment_and_its_interrupt_checkpoints(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = browse_json(built, capsys, "--experiment", "intr", "--top", "1000")
    rows = {(t["market"], t["seed"]): t for t in doc["trial_rows"]}
    assert doc["status"] == {"interrupted": 2, "pending": 2}
    for market in MARKETS:
        assert rows[(market, 7)]["status"] == "pending"
        t = rows[(market, 42)]
        assert t["status"] == "interrupted"
        assert "_evt-interrupt_" in t["checkpoint"] and t["checkpoint"].startswith(market)
        path = Path(t["checkpoint_path"])
        assert t["checkpoint_exists"] and path.is_file()
        assert path.parent == built.models.resolve() / "phase1" / market / "checkpoints"
        meta = read_checkpoint_metadata(path)
        assert meta is not None and meta["event_tag"] == "interrupt"
        # Findable among the ranked checkpoints, with the seed and trial that wrote it.
        ranked = {r["path"]: r for r in doc["best"][market]}
        assert ranked[os.fspath(path)]["event"] == "interrupt"
        assert ranked[os.fspath(path)]["trial_id"] == t["trial_id"]
        # Every checkpoint the interrupted trial wrote (and that retention kept) is ranked.
        assert set(ranked) == {
            p for p, _ in expected_best(built.models, built.intr, market, "sharpe_ratio", 1000)
        }

    code, out, err = browse(built, capsys, "--experiment", "intr")
    assert code == 0, err
    assert "interrupted 2, pending 2" in out
    for market in MARKETS:
        line = next(
            ln for ln in out.splitlines() if ln.startswith(f"{market} ") and " interrupted " in ln
        )
        assert line.split()[1] == "42" and "_evt-interrupt_" in line


def test_a_moved_models_root(
    built: Built, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    copy = tmp_path / "models-copy"
    shutil.copytree(built.models, copy)
    moved = browse_json(built, capsys, "--experiment", "done", "--models-root", str(copy))
    here = browse_json(built, capsys, "--experiment", "done")
    for market in MARKETS:
        assert [Path(r["path"]).name for r in moved["best"][market]] == [
            Path(r["path"]).name for r in here["best"][market]
        ]
        assert all(r["path"].startswith(os.fspath(copy.resolve())) for r in moved["best"][market])
    assert moved["models_roots"] == [os.fspath(copy.resolve())]

    empty = tmp_path / "empty-models"
    empty.mkdir()
    doc = browse_json(built, capsys, "--experiment", "done", "--models-root", str(empty))
    assert doc["best"] == {"ES": [], "NQ": []}
    assert all(not t["checkpoint_exists"] for t in doc["trial_rows"])
    code, out, err = browse(built, capsys, "--experiment", "done", "--models-root", str(empty))
    assert code == 0, err
    assert out.count("no checkpoint with a measured sharpe_ratio") == 2
    assert out.count("(not on disk)") == 4


def test_a_running_experiment(built: Built) -> None:
    doc = built.while_running
    rows = {(t["market"], t["seed"]): t for t in doc["trial_rows"]}
    assert doc["status"] == {"running": 2, "pending": 2}
    for market in MARKETS:
        assert rows[(market, 42)]["status"] == "running"
        assert rows[(market, 7)]["status"] == "pending"
        # Its checkpoints so far rank (the run has no end yet), all from the seed-42 trial.
        best = doc["best"][market]
        assert best and {r["trial_id"] for r in best} == {rows[(market, 42)]["trial_id"]}


def _edit_last_result(trial_dir: Path, drop: int = 1) -> None:
    lines = (trial_dir / "result.json").read_text().splitlines(keepends=True)
    (trial_dir / "result.json").write_text("".join(lines[:-drop]))


def test_errored_and_killed_trials(built: Built, tmp_path: Path) -> None:
    """A copy of `done` where one trial crashed (Tune's error.txt, no final result) and one
    stopped without a word (its last result is an ordinary evaluation, its worker is gone)."""
    storage = tmp_path / "ray_results"
    shutil.copytree(built.storage / "done", storage / "crashed")
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
        (["--experiment", "done", "--metric", "sortino"], "'sortino'"),
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--experiment", "done", "--market", "N_Q"], "'N_Q'"),
        (["--market", "N/Q"], "'N/Q'"),
        (["--experiment", "done", "--market", "CL"], "market 'CL' is not in experiment 'done'"),
        (["--experiment", "done", "--top", "0"], "--top must be >= 1, got 0"),
        (["--experiment", "done", "--models-root", "/no/such/models"], "'/no/such/models'"),
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
    assert main(["--storage-path", str(built.storage / "done")]) == 2
    err = capsys.readouterr().err
    assert "is an experiment folder" in err and "--experiment 'done'" in err
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
        "codes = [main([]), main(['--experiment', 'done']), main(['--experiment', 'intr',"
        " '--json', '--metric', 'win_rate']), main(['--experiment', 'intr', '--market', 'ES'])]\n"
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
    assert helped.returncode == 0 and "--experiment" in helped.stdout
