"""The driver end to end with a real Ray on loopback: four trials, a crash, Ctrl+C and
--resume, and arguments refused before Ray starts."""

from __future__ import annotations

import csv
import json
import shlex
import signal
import statistics
from pathlib import Path

import pytest

from checkpointing import list_checkpoints
from checkpointing.naming import CheckpointName
from tests.ray.conftest import Driver, common, crash_trial, results_so_far, trial_results, wait_for
from tuner.run import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--markets", "NQ,XX"], "unknown market 'XX'"),
        (["--markets", "../NQ"], "invalid market name '../NQ'"),
        (["--markets", "NQ", "--seeds", "1,x"], "--seeds must be integers, got 'x'"),
        (["--markets", "NQ", "--seeds", "-3"], "seed must be in [0,"),
        (["--markets", "NQ,NQ"], "--markets lists a value twice"),
        (["--markets", "NQ", "--phases", "2,1"], "--phases must be consecutive"),
        (["--markets", "NQ", "--name", "../escape"], "--name must be letters"),
        (["--markets", "NQ", "--name", "/abs"], "--name must be letters"),
        (["--markets", "NQ", "--timesteps", "0"], "--timesteps must be >= 1"),
        (["--markets", "NQ", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--markets", "NQ", "--resume"], "nothing to resume"),
        (["--markets", "NQ", "--models-root", "a\x00b"], "without NUL"),
    ],
)
def test_bad_arguments_fail_before_ray_starts(
    tmp_path: Path,
    tiny_configs: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    full = (
        [*args, *common(tiny_configs, tmp_path)]
        if "--models-root" not in args
        else [
            *args,
            "--config-dir",
            str(tiny_configs),
            "--storage-path",
            str(tmp_path / "ray_results"),
        ]
    )
    assert main(full) == 2
    assert message in capsys.readouterr().err
    assert not ray.is_initialized()
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "models").exists()


def test_bad_config_fails_before_ray_starts(
    tmp_path: Path, tiny_configs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    bad = tmp_path / "cfg"
    bad.mkdir()
    for f in tiny_configs.iterdir():
        (bad / f.name).write_text(f.read_text())
    (bad / "training.yaml").write_text(
        (bad / "training.yaml").read_text().replace("n_envs: 2", "n_envs: -2")
    )
    assert main(["--markets", "NQ", *common(bad, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "training.yaml" in err and "training.n_envs must be >= 1, got -2" in err
    assert not ray.is_initialized()


def test_four_trials_finish_in_isolated_folders_with_a_correct_summary(
    tmp_path: Path,
    tiny_configs: Path,
    drivers: list[Driver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = Driver(
        [
            "--markets",
            "NQ,ES",
            "--seeds",
            "42,7",
            "--timesteps",
            "1500",
            "--name",
            "four",
            *common(tiny_configs, tmp_path),
        ],
        tmp_path,
    )
    drivers.append(d)
    assert d.wait() == 0, d.output[-3000:]
    out = d.output
    assert "[done]   NQ seed 42" in out and "[done]   ES seed 7" in out
    models = tmp_path / "models"
    for market in ("NQ", "ES"):
        infos = list_checkpoints(models / "phase1" / market / "checkpoints")
        assert infos, market
        assert {i.name.market for i in infos if isinstance(i.name, CheckpointName)} == {market}
        assert {i.name.seed for i in infos if isinstance(i.name, CheckpointName)} == {42, 7}
        assert {i.name.event for i in infos if isinstance(i.name, CheckpointName)} >= {"phase_end"}
    summary = json.loads((models / "summaries/four.json").read_text())
    rows = {(r["market"], r["seed"]): r for r in summary["trials"]}
    assert set(rows) == {("NQ", 42), ("NQ", 7), ("ES", 42), ("ES", 7)}
    assert all(r["status"] == "finished" for r in rows.values())
    results = trial_results(tmp_path / "ray_results/four")
    for (market, seed), row in rows.items():
        last = results[f"{market}/{seed}"][-1]
        assert row["metrics"]["val_reward"] == pytest.approx(last["val_reward"])
        best = row["best"]["sharpe_ratio"]
        assert best is not None and Path(best["path"]).exists()
        # The trial's own run: its run id is in the name of its best checkpoint.
        assert f"/phase1/{market}/checkpoints/" in best["path"]
        assert best["path"].endswith(f"_seed-{seed}_run-{row['run_id']}.zip")
        assert row["run_id"] == results[f"{market}/{seed}"][-1]["run_id"]
        # Its reports name every checkpoint it saved: each one on disk (a best too) is there.
        reported = {n for r in results[f"{market}/{seed}"] for n in r.get("saved", [])}
        files = {
            i.path.name
            for i in list_checkpoints(models / "phase1" / market / "checkpoints")
            if isinstance(i.name, CheckpointName) and i.name.run_id == row["run_id"]
        }
        assert files and files <= reported, files - reported
    for market in ("NQ", "ES"):
        values = [rows[(market, s)]["metrics"]["sharpe_ratio"] for s in (42, 7)]
        agg = summary["markets"][market]["sharpe_ratio"]
        assert agg["mean"] == pytest.approx(statistics.fmean(values))
        assert agg["std"] == pytest.approx(statistics.stdev(values))
    with open(models / "summaries/four.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert "summary: " + str(models / "summaries/four.json") in out
    # The report, beside the summary (its content: tests/unit/test_report.py, and in a
    # browser tests/ray/test_browse.py); the summary keeps the driver's retention pass.
    assert "report:  " + str(models / "summaries/four_report.html") in out
    assert {(p["market"], p["phase"]) for p in summary["retention"]} == {("NQ", 1), ("ES", 1)}

    # Learning curves: each trial's TensorBoard files in its folder of the storage path, so
    # `tensorboard --logdir ray_results/four` shows every trial.
    curves = sorted((tmp_path / "ray_results/four").glob("*/tensorboard/phase1_*/events.out.*"))
    assert {p.parent.name for p in curves} == {f"phase1_{r['run_id']}" for r in rows.values()}

    # Out of sample, at the end of the run: each trial's checkpoint chosen on validation (the
    # summary's best by Sharpe) and its phase_end, measured once on the test split, in the
    # summary apart from the validation figures (python -m tuner.evaluate --experiment).
    tested = json.loads((models / "summaries/four_test.json").read_text())["results"]
    best_paths = {r["best"]["sharpe_ratio"]["path"] for r in rows.values()}
    assert best_paths <= {t["checkpoint"] for t in tested}
    assert {t["split"] for t in tested} == {"test"}
    assert all(t["run_id"] in {r["run_id"] for r in rows.values()} for t in tested)
    for row in rows.values():
        assert row["test"]["best"]["checkpoint"] == row["best"]["sharpe_ratio"]["path"]
        assert row["test"]["phase_end"]["event"] == "phase_end"
        assert row["test"]["phase_end"]["run_id"] == row["run_id"]
    assert "held-out test split" in out
    from tuner.browse import main as browse

    # The browse command the driver printed, as a user pastes it into a shell.
    printed = next(line for line in out.splitlines() if line.startswith("browse:  "))
    words = shlex.split(printed.removeprefix("browse:  "))
    assert words[:3] == ["python", "-m", "tuner.browse"]
    assert words[3:] == ["--storage-path", str(tmp_path / "ray_results"), "--experiment", "four"]
    assert browse(words[3:]) == 0
    assert (
        browse(["--storage-path", str(tmp_path / "ray_results"), "--experiment", "four", "--json"])
        == 0
    )
    text, doc = capsys.readouterr().out.split("\n{", 1)
    assert "held-out test split" in text
    assert {t["checkpoint"] for t in json.loads("{" + doc)["test"]} == {
        t["checkpoint"] for t in tested
    }
    with open(models / "summaries/four.csv", newline="") as fh:
        assert all(r["test_sharpe"] for r in csv.DictReader(fh))


def test_a_crashed_trial_recovers_from_its_last_checkpoint(
    tmp_path: Path, tiny_configs: Path, drivers: list[Driver]
) -> None:
    d = Driver(
        [
            "--markets",
            "NQ",
            "--seeds",
            "3",
            "--timesteps",
            "12000",
            "--name",
            "crash",
            "--max-failures",
            "2",
            *common(tiny_configs, tmp_path),
        ],
        tmp_path,
    )
    drivers.append(d)
    experiment = tmp_path / "ray_results/crash"
    folder = tmp_path / "models/phase1/NQ/checkpoints"
    crash = crash_trial(d, folder, "NQ", 3, saves=2)  # a real crash of its worker
    victim = crash.pid
    assert d.wait() == 0, d.output[-3000:]
    assert "[retry]  NQ seed 3" in d.output
    rows = trial_results(experiment)["NQ/3"]
    pids = [r["pid"] for r in rows]
    assert victim in pids and pids[-1] != victim
    after = [r for r in rows if r["pid"] != victim]
    # Resumed from the newest checkpoint that verified after the crash, not from zero;
    # timesteps keep growing.
    assert crash.saved > 0 and int(after[0]["timesteps"]) > crash.saved, (crash, after[0])
    steps = [int(r["timesteps"]) for r in after]
    assert steps == sorted(steps) and rows[-1]["finished"] is True
    summary = json.loads((tmp_path / "models/summaries/crash.json").read_text())
    assert summary["trials"][0]["status"] == "finished"


def test_ctrl_c_saves_interrupts_and_resume_completes(
    tmp_path: Path, tiny_configs: Path, drivers: list[Driver]
) -> None:
    args = [
        "--markets",
        "NQ,ES",
        "--seeds",
        "5",
        "--timesteps",
        "30000",
        "--name",
        "stop",
        *common(tiny_configs, tmp_path),
    ]
    d = Driver(args, tmp_path)
    drivers.append(d)
    experiment = tmp_path / "ray_results/stop"
    wait_for(lambda: len(results_so_far(experiment)) == 2, 300, "both trials reporting", d)
    d.signal(signal.SIGINT)
    assert d.wait(300) == 130, d.output[-3000:]
    out = d.output
    assert "asking running trials to save interrupt checkpoints" in out
    assert "--resume" in out and "Resume with" in out
    interrupts = {}
    for market in ("NQ", "ES"):
        found = [
            i
            for i in list_checkpoints(tmp_path / "models/phase1" / market / "checkpoints")
            if isinstance(i.name, CheckpointName) and i.name.event == "interrupt"
        ]
        assert len(found) == 1, market
        interrupts[market] = found[0].timesteps
    summary = json.loads((tmp_path / "models/summaries/stop.json").read_text())
    assert {r["status"] for r in summary["trials"]} == {"interrupted"}

    r = Driver([*args, "--resume"], tmp_path, "resume.log")
    drivers.append(r)
    assert r.wait() == 0, r.output[-3000:]
    summary = json.loads((tmp_path / "models/summaries/stop.json").read_text())
    assert {x["status"] for x in summary["trials"]} == {"finished"}
    results = trial_results(experiment)
    for market, at in interrupts.items():
        rows = results[f"{market}/5"]
        resumed = [x for x in rows if x.get("pid") != rows[0]["pid"]]
        # The resumed trial started from its interrupt checkpoint, not from zero.
        assert min(int(x["timesteps"]) for x in resumed) > at
        assert rows[-1]["finished"] is True and int(rows[-1]["timesteps"]) >= 30000
