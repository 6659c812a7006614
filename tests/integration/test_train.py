"""The single-run trainer, end to end on tiny configs: CLI errors, determinism, curriculum,
continue and resume, and runs that never mix."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from checkpointing import list_checkpoints, read_checkpoint_metadata
from checkpointing.store import CheckpointInfo
from tests.tiny_config import PROJECT_ROOT, tiny_config_dir
from tuner.train import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_dir(tmp_path_factory.mktemp("cfg"), markets={"BAD": {**_bad_market()}})


def _bad_market() -> dict[str, object]:
    return {
        "tick_size": 0.25,
        "tick_value": 5.0,
        "commission_per_side": 1.0,
        "slippage_ticks": 1,
        "session": "none",
        "data": {"file": "does_not_exist.csv"},
    }


def cli_env() -> dict[str, str]:
    """The environment of a ``tuner.train`` process: this checkout's code first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


def run_cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner.train", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--market", "XX"], "unknown market 'XX'"),
        (["--market", "../NQ"], "invalid market name '../NQ'"),
        (["--market", "BAD"], "does_not_exist.csv"),
        (["--market", "NQ", "--phase", "4"], "--phase must be 1, 2 or 3, got 4"),
        (["--market", "NQ", "--phases", "1,3"], "--phases must be consecutive"),
        (["--market", "NQ", "--resume-from", "best:sharp"], "unknown metric 'sharp'"),
        (["--market", "NQ", "--continue"], "--continue and --model-path go together"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path,
    config_dir: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "models"
    assert main([*args, "--config-dir", str(config_dir), "--models-root", str(root)]) == 2
    assert message in capsys.readouterr().err
    assert not root.exists()


def test_cli_process_exit_code_for_a_bad_config_dir(tmp_path: Path) -> None:
    done = run_cli("--market", "NQ", "--config-dir", str(tmp_path / "nope"))
    assert done.returncode == 2 and "config folder not found" in done.stderr


def test_the_checkpoint_configs_target_timesteps_is_how_long_each_phase_trains(
    tmp_path: Path,
) -> None:
    """No --timesteps: each phase trains for checkpointing.phaseN.target_timesteps, and phase 3
    for llm_config.yaml's override (every target a multiple of the 2 x 64-step rollout)."""
    config = tiny_config_dir(
        tmp_path / "cfg",
        checkpoint={
            "phase1": {"target_timesteps": 384},
            "phase2": {"target_timesteps": 640},
            "phase3": {"target_timesteps": 1024},
        },
    )
    llm = yaml.safe_load((config / "llm_config.yaml").read_text())
    llm["checkpointing"]["target_timesteps"] = 768
    (config / "llm_config.yaml").write_text(yaml.safe_dump(llm, sort_keys=False))
    root = tmp_path / "models"
    args = ["--market", "NQ", "--seed", "42", "--phases", "1,2,3", "--models-root", str(root)]
    done = run_cli(*args, "--config-dir", str(config))
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {1: ("phase1", 384), 2: ("phase2", 640), 3: ("phase3_hybrid", 768)}
    for phase, (folder, steps) in expected.items():
        assert f"NQ seed 42 phase {phase}: done at {steps:,} steps" in done.stdout, done.stdout
        ends = [
            i.timesteps
            for i in list_checkpoints(root / folder / "NQ/checkpoints")
            if i.name.event == "phase_end"  # type: ignore[union-attr]
        ]
        assert ends == [steps]


def names(folder: Path) -> list[str]:
    return [i.path.name for i in list_checkpoints(folder)]


def test_same_seed_same_metrics_and_names(tmp_path: Path, config_dir: Path) -> None:
    for run in ("a", "b"):
        assert (
            main(
                [
                    "--market",
                    "NQ",
                    "--seed",
                    "3",
                    "--run-id",
                    "same-run",
                    "--timesteps",
                    "1200",
                    "--quiet",
                    "--config-dir",
                    str(config_dir),
                    "--models-root",
                    str(tmp_path / run),
                ]
            )
            == 0
        )
    a = names(tmp_path / "a/phase1/NQ/checkpoints")
    b = names(tmp_path / "b/phase1/NQ/checkpoints")
    assert a == b and len(a) >= 2
    assert all(name.endswith("_seed-3_run-same-run.zip") for name in a)
    last_a = read_checkpoint_metadata(tmp_path / "a/phase1/NQ/checkpoints" / a[-1])
    last_b = read_checkpoint_metadata(tmp_path / "b/phase1/NQ/checkpoints" / b[-1])
    assert last_a is not None and last_b is not None
    for key in ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown", "total_return"):
        assert last_a[key] == last_b[key] or (
            last_a[key] != last_a[key] and last_b[key] != last_b[key]
        )


def test_curriculum_chains_phases_and_carries_vecnormalize(
    tmp_path: Path, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "m"
    code = main(
        [
            "--market",
            "ES",
            "--seed",
            "7",
            "--phases",
            "1,2,3",
            "--timesteps",
            "1000",
            "--config-dir",
            str(config_dir),
            "--models-root",
            str(root),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    (run_id,) = re.findall(r"ES seed 7 phase 1: run (\S+) \(new\), from scratch", out)
    # Every phase is the same run, each starting from the previous phase's phase_end.
    assert re.search(
        rf"ES seed 7 phase 2: run {run_id}, from \S+_run-{run_id}\.zip "
        r"\(phase 1 phase_end\)",
        out,
    ), out
    assert re.search(
        rf"ES seed 7 phase 3: run {run_id}, from \S+_run-{run_id}\.zip "
        r"\(phase 2 phase_end\)",
        out,
    ), out
    assert f"checkpoints: {root / 'phase3_hybrid/ES/checkpoints'}/ (run {run_id})" in out

    def stats(folder: Path, event: str) -> tuple[float, Path]:
        info = next(i for i in list_checkpoints(folder) if i.name.event == event)  # type: ignore[union-attr]
        vecnorm = pickle.loads(info.vecnormalize_path.read_bytes())
        return float(vecnorm.obs_rms.count), info.path

    count1, end1 = stats(root / "phase1/ES/checkpoints", "phase_end")
    count2, _ = stats(root / "phase2/ES/checkpoints", "periodic")
    assert count2 > count1  # phase 2 kept accumulating phase 1's statistics
    meta3 = read_checkpoint_metadata(
        next(iter(list_checkpoints(root / "phase3_hybrid/ES/checkpoints"))).path
    )
    assert meta3 is not None and meta3["phase"] == 3
    assert {"reasoning_usage_rate", "rl_llm_agreement_rate", "risk_veto_count"} <= meta3.keys()
    # The legacy final model of each phase in the run's own folder, best_model per market.
    assert (root / f"phase1/ES/runs/{run_id}/phase1_foundational_final.zip").exists()
    assert (root / f"phase2/ES/runs/{run_id}/phase2_position_mgmt_final.zip").exists()
    assert (root / f"phase3_hybrid/ES/runs/{run_id}/phase3_hybrid_final.zip").exists()
    assert (root / "phase2/ES/best_model.zip").exists()
    assert not list(root.glob("phase*/*.zip"))  # nothing at a path shared by two markets
    assert end1.exists()


def test_continue_from_model_path_and_resume_from_best(
    tmp_path: Path, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "m"
    common = [
        "--market",
        "NQ",
        "--seed",
        "5",
        "--config-dir",
        str(config_dir),
        "--models-root",
        str(root),
    ]
    assert main([*common, "--timesteps", "1100"]) == 0
    folder = root / "phase1/NQ/checkpoints"
    periodic = [i for i in list_checkpoints(folder) if i.name.event == "periodic"]  # type: ignore[union-attr]
    start = periodic[0]
    first_run = start.name.run_id  # type: ignore[union-attr]
    before = {i.path.name: i.path.read_bytes() for i in list_checkpoints(folder)}
    capsys.readouterr()
    # The seed note's resume: --continue --model-path, VecNormalize from the companion. The
    # market and seed come from the checkpoint; an older checkpoint of a run starts a new run.
    cont = ["--config-dir", str(config_dir), "--models-root", str(root)]
    assert main([*cont, "--timesteps", "2000", "--continue", "--model-path", str(start.path)]) == 0
    out = capsys.readouterr().out
    (new_run,) = re.findall(
        rf"NQ seed 5 phase 1: run (\S+) \(new\), from {re.escape(start.path.name)} of run "
        rf"{first_run} \(--model-path\)",
        out,
    )
    assert new_run != first_run
    for name, data in before.items():  # the first run's files are untouched
        assert (folder / name).read_bytes() == data
    meta = json.loads(start.metadata_path.read_text())
    state = meta["callback_state"]
    added = [i for i in list_checkpoints(folder) if i.path.name not in before]
    assert added, "continuing should add checkpoints"
    assert {i.name.run_id for i in added} == {new_run}  # type: ignore[union-attr]
    # The restored callback state: the next periodic save is where the first run planned it.
    assert min(i.timesteps for i in added) >= state["next_save_step"]
    assert max(i.timesteps for i in added) >= 2000

    capsys.readouterr()
    assert main([*common, "--timesteps", "2500", "--resume-from", "best:sharpe_ratio"]) == 0
    assert "(best:sharpe_ratio)" in capsys.readouterr().out


# --------------------------------------------------------------------------- runs that never mix

FOLDER = "phase1/NQ/checkpoints"
# The command of the first run of NQ seed 42: a periodic checkpoint at 500, phase_end at 1,152.
FIRST = ["--market", "NQ", "--seed", "42", "--timesteps", "1100", "--quiet"]


def at(config_dir: Path, root: Path) -> list[str]:
    return ["--config-dir", str(config_dir), "--models-root", str(root)]


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def files_of(root: Path, run_id: str) -> dict[str, bytes]:
    """The files of one run under ``root``: its checkpoints and ``runs/<run_id>/``."""
    return {k: v for k, v in files(root).items() if run_id in k}


def run_ids(folder: Path) -> set[str | None]:
    return {i.name.run_id for i in list_checkpoints(folder)}  # type: ignore[union-attr]


def of_run(folder: Path, run_id: str | None) -> list[CheckpointInfo]:
    return [i for i in list_checkpoints(folder) if i.name.run_id == run_id]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, config_dir: Path) -> tuple[Path, str]:
    """A models root holding one finished run of NQ seed 42, and that run's id."""
    root = tmp_path_factory.mktemp("first") / "models"
    assert main([*FIRST, *at(config_dir, root)]) == 0
    (run_id,) = run_ids(root / FOLDER)
    assert run_id is not None
    return root, run_id


@pytest.fixture
def root(first_run: tuple[Path, str], tmp_path: Path) -> Path:
    """A copy of the first run's models root, for one test to write into (a space in its path:
    the printed resume command must quote it)."""
    return Path(shutil.copytree(first_run[0], tmp_path / "my models"))


@pytest.mark.parametrize(
    ("flag", "given", "theirs"),
    [("--seed", "7", "42"), ("--market", "ES", "NQ"), ("--phase", "2", "1")],
)
def test_continue_refuses_a_flag_that_contradicts_the_checkpoint(
    root: Path,
    config_dir: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    given: str,
    theirs: str,
) -> None:
    path = list_checkpoints(root / FOLDER)[0].path
    before = files(root)
    code = main([flag, given, "--continue", "--model-path", str(path), *at(config_dir, root)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{flag} {given} contradicts {path.name}, whose {flag[2:]} is {theirs}" in err
    assert files(root) == before


def test_a_v2_checkpoint_without_its_metadata_is_refused(root: Path, config_dir: Path) -> None:
    info = list_checkpoints(root / FOLDER)[0]
    info.metadata_path.unlink()
    before = files(root)
    done = run_cli("--continue", "--model-path", str(info.path), *at(config_dir, root))
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"{info.metadata_path.name} is missing" in done.stderr
    assert "Traceback" not in done.stderr
    assert files(root) == before


def v1_checkpoint(info: CheckpointInfo, folder: Path) -> Path:
    """A v1 checkpoint as SB3's CheckpointCallback names it (``phase1_<steps>_steps.zip`` and
    ``phase1_vecnormalize_<steps>_steps.pkl``, no metadata): a real checkpoint's files."""
    folder.mkdir()
    path = folder / f"phase1_{info.timesteps}_steps.zip"
    shutil.copy(info.path, path)
    shutil.copy(info.vecnormalize_path, folder / f"phase1_vecnormalize_{info.timesteps}_steps.pkl")
    return path


def test_a_v1_checkpoint_continues_at_its_timesteps_as_a_new_run(
    root: Path, first_run: tuple[Path, str], config_dir: Path, tmp_path: Path
) -> None:
    v1_info = list_checkpoints(root / FOLDER)[0]
    v1 = v1_checkpoint(v1_info, tmp_path / "v1")
    first_files = files_of(root, first_run[1])
    args = ["--market", "NQ", "--seed", "42", "--timesteps", "1100"]
    done = run_cli(*args, "--continue", "--model-path", str(v1), *at(config_dir, root))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{v1} is a v1 checkpoint without metadata" in done.stderr
    (run_id,) = re.findall(
        rf"NQ seed 42 phase 1: run (\S+) \(new\), from {re.escape(v1.name)} of a run without "
        r"an id \(--model-path\)",
        done.stdout,
    )
    assert run_id != first_run[1]
    added = of_run(root / FOLDER, run_id)
    assert added and run_ids(root / FOLDER) == {first_run[1], run_id}
    assert added[0].timesteps > v1_info.timesteps  # the schedule went on from the v1 steps
    meta = read_checkpoint_metadata(added[0].path)
    assert meta is not None and meta["started_from"] == str(v1)
    assert "started_from_run" not in meta  # a v1 checkpoint has no run
    assert files_of(root, first_run[1]) == first_files


@pytest.mark.parametrize("given", [[], ["--market", "NQ"], ["--seed", "42"]])
def test_a_v1_checkpoint_without_market_and_seed_is_refused(
    root: Path,
    config_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    given: list[str],
) -> None:
    v1 = v1_checkpoint(list_checkpoints(root / FOLDER)[0], tmp_path / "v1")
    before = files(root)
    assert main([*given, "--continue", "--model-path", str(v1), *at(config_dir, root)]) == 2
    err = capsys.readouterr().err
    assert f"{v1.name} is a v1 checkpoint" in err and "give --market and --seed" in err
    assert files(root) == before


@dataclass(frozen=True)
class TwoRuns:
    """The first run's command run again into (a copy of) its models root, no --run-id."""

    root: Path
    first: str
    second: str
    first_files: dict[str, bytes]  # before the second run
    out: str  # the second run's output


@pytest.fixture(scope="module")
def two_runs(
    first_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory, config_dir: Path
) -> TwoRuns:
    root = Path(shutil.copytree(first_run[0], tmp_path_factory.mktemp("two") / "models"))
    first = first_run[1]
    before = files_of(root, first)
    done = run_cli(*FIRST, *at(config_dir, root))
    assert done.returncode == 0, done.stderr[-2000:]
    (second,) = re.findall(r"NQ seed 42 phase 1: run (\S+) \(new\), from scratch", done.stdout)
    return TwoRuns(root, first, second, before, done.stdout)


def test_two_runs_of_one_command_never_overwrite_each_other(two_runs: TwoRuns) -> None:
    root, first, second = two_runs.root, two_runs.first, two_runs.second
    assert second != first and run_ids(root / FOLDER) == {first, second}
    # Same seed, same metrics: the names differ only by their run.
    mine = [i.path.name for i in of_run(root / FOLDER, first)]
    theirs = [i.path.name for i in of_run(root / FOLDER, second)]
    assert len(mine) >= 2 and [n.replace(second, first) for n in theirs] == mine
    assert any(k.startswith(f"phase1/NQ/runs/{first}/") for k in two_runs.first_files)
    assert files_of(root, first) == two_runs.first_files


def test_each_run_ends_with_a_retention_pass_and_its_own_final_model(two_runs: TwoRuns) -> None:
    root = two_runs.root
    assert two_runs.out.splitlines()[-1] == "retention: 1 folders pruned, 0 checkpoints deleted"
    for run_id in (two_runs.first, two_runs.second):
        final = root / f"phase1/NQ/runs/{run_id}/phase1_foundational_final.zip"
        meta = read_checkpoint_metadata(final)
        assert meta is not None and meta["run_id"] == run_id  # a copy of its own run's model
    assert (root / "phase1/NQ/best_model.zip").exists()


def test_run_id_of_a_run_that_has_checkpoints_is_refused(
    root: Path, first_run: tuple[Path, str], config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = first_run[1]
    before = files(root)
    assert main([*FIRST, "--run-id", first, *at(config_dir, root)]) == 2
    err = capsys.readouterr().err
    assert f"run {first!r} already has checkpoints of NQ seed 42" in err
    assert f"(--resume-from latest --run-id {first})" in err
    assert files(root) == before


def interrupt_after_first_checkpoint(
    args: list[str], folder: Path, others: set[str | None]
) -> subprocess.CompletedProcess[str]:
    """Run ``tuner.train`` and send it SIGINT once a checkpoint of a run not in ``others``
    has been committed, as a user pressing Ctrl+C."""
    cmd = [sys.executable, "-m", "tuner.train", *args]
    with subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            deadline = time.monotonic() + 120
            while not run_ids(folder) - others:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no checkpoint within 120 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_resume_latest_picks_the_run_written_to_last(
    root: Path,
    first_run: tuple[Path, str],
    config_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, folder = first_run[1], root / FOLDER
    most = max(i.timesteps for i in list_checkpoints(folder))
    args = ["--market", "NQ", "--seed", "42", "--timesteps", "3000", *at(config_dir, root)]
    done = interrupt_after_first_checkpoint(args, folder, {first})
    assert done.returncode == 130, done.stderr[-2000:]
    (second,) = run_ids(folder) - {first}
    (stopped,) = [i for i in of_run(folder, second) if i.name.event == "interrupt"]  # type: ignore[union-attr]
    assert stopped.timesteps < most  # the first run's newest has more timesteps
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("resume with: ")]
    assert f"--run-id {second}" in line
    command = shlex.split(line.removeprefix("resume with: "))
    assert command[:3] == ["python", "-m", "tuner.train"]
    first_files = files_of(root, first)

    # Without --run-id, latest is the newest of the run written to last: the stopped one.
    other = Path(shutil.copytree(root, tmp_path / "other"))
    without = [a for a in command[3:] if a not in ("--run-id", second)]
    without[without.index("--models-root") + 1] = str(other)
    assert main(without) == 0
    assert f"run {second}, continued from {stopped.path.name} (latest)" in capsys.readouterr().out
    assert run_ids(other / FOLDER) == {first, second}

    # The printed command continues the stopped run, and leaves the first run alone.
    assert main(command[3:]) == 0
    out = capsys.readouterr().out
    assert f"run {second}, continued from {stopped.path.name} (latest)" in out
    assert run_ids(folder) == {first, second}
    assert max(i.timesteps for i in of_run(folder, second)) >= 3000
    assert files_of(root, first) == first_files


def test_resume_from_the_best_of_any_run_starts_a_new_run_from_it(
    tmp_path: Path, config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, folder = tmp_path / "models", tmp_path / "models" / FOLDER
    nq = ["--market", "NQ", "--seed", "42", "--quiet", *at(config_dir, root)]
    # Run "a" peaks early and goes on; run "b", written last, is another history.
    assert main([*nq, "--run-id", "a", "--timesteps", "600"]) == 0
    assert main([*nq, "--run-id", "a", "--resume-from", "latest", "--timesteps", "1300"]) == 0
    assert main([*nq, "--run-id", "b", "--timesteps", "1100"]) == 0

    def sharpe(info: CheckpointInfo) -> float:
        meta = read_checkpoint_metadata(info.path)
        assert meta is not None
        return float(meta["sharpe_ratio"])

    best = max((i for i in list_checkpoints(folder) if math.isfinite(sharpe(i))), key=sharpe)
    best_run = best.name.run_id  # type: ignore[union-attr]
    newest = max(i.timesteps for i in of_run(folder, best_run))
    # What makes the case: the best is in a run not written last, and not its run's newest.
    assert best_run == "a" and best.timesteps < newest, [
        (i.path.name, sharpe(i)) for i in list_checkpoints(folder)
    ]
    capsys.readouterr()

    assert (
        main([*nq, "--resume-from", "best:sharpe_ratio", "--any-run", "--timesteps", "1300"]) == 0
    )
    out = capsys.readouterr().out
    started = re.findall(
        rf"run (\S+) \(new\), from {re.escape(best.path.name)} of run a \(best:sharpe_ratio\)", out
    )
    assert len(started) == 1, out
    (new,) = started
    assert new not in ("a", "b") and run_ids(folder) == {"a", "b", new}
    for info in of_run(folder, new):
        meta = read_checkpoint_metadata(info.path)
        assert meta is not None and meta["started_from_run"] == "a"
        assert meta["started_from"] == f"{FOLDER}/{best.path.name}"


def test_training_config_overlay_trains_with_the_settings_it_names(
    tmp_path: Path, config_dir: Path
) -> None:
    """``--training-config``: what a search chose, laid over training.yaml, is what the run
    trains with, and what every checkpoint's metadata says."""
    overlay = tmp_path / "chosen.yaml"
    overlay.write_text(
        yaml.safe_dump({"training": {"phase1": {"ppo": {"learning_rate": 0.00091}}}})
    )
    root = tmp_path / "models"
    args = ["--market", "NQ", "--seed", "4", "--timesteps", "256", "--models-root", str(root)]
    args += ["--config-dir", str(config_dir), "--training-config", str(overlay)]
    assert main(args) == 0
    infos = list_checkpoints(root / "phase1" / "NQ" / "checkpoints")
    assert infos
    for info in infos:
        meta = read_checkpoint_metadata(info.path) or {}
        assert meta["learning_rate"] == pytest.approx(0.00091)
