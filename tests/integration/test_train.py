"""The single-run trainer, end to end on tiny configs: CLI errors, determinism, curriculum,
continue and resume."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from checkpointing import list_checkpoints, read_checkpoint_metadata
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


def run_cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuner.train", *args],
        cwd=cwd,
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
