"""Checkpoint summaries: the seed note's keys and values, and the summary CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpointing import retention
from checkpointing.config import CheckpointConfig
from checkpointing.errors import ConfigError
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName
from checkpointing.store import commit_files
from checkpointing.summary import CheckpointRetentionManager, summarize_folder

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = CheckpointConfig()
NAN = math.nan

CHECKPOINTS = [
    # (timesteps, event, val_reward, sharpe, seed)
    (25_000, "periodic", 0.112, 1.45, 42),
    (50_000, "periodic", 0.150, 1.92, 42),
    (50_000, "best", 0.238, 1.92, 7),
    (75_000, "periodic", NAN, NAN, 42),
    (100_000, "phase_boundary_warmup", 0.301, 0.80, 42),
    (120_000, "interrupt", 0.089, 0.78, 7),
]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    folder = CONFIG.checkpoint_dir(1, "NQ", tmp_path / "models")
    for ts, event, val, sharpe, seed in CHECKPOINTS:
        name = CheckpointName("NQ", ts, event, val, sharpe, seed)
        payload = b"PK" * (ts // 1000)
        commit_files(
            folder,
            name.filename,
            lambda tmp, payload=payload: tmp.write_bytes(payload),
            b"vecnorm",
            build_metadata(name=name, phase=1, metrics={"val_reward": val, "sharpe_ratio": sharpe}),
        )
    (folder / "phase1_10000_steps.zip").write_bytes(b"legacy")
    (folder / "notes.txt").write_bytes(b"foreign" * 1000)
    (folder / "best_model.zip").write_bytes(b"not a checkpoint of the folder")
    return folder


def test_summary_keys_and_values(folder: Path) -> None:
    summary = CheckpointRetentionManager().get_checkpoint_summary(folder)
    assert summary["total_count"] == 7
    assert summary["best_sharpe"] == {
        "value": 1.92,
        "timesteps": 50_000,  # a tie at 1.92 and 50K: the smaller name (evt-best) wins
        "path": os.fspath(folder / CheckpointName("NQ", 50_000, "best", 0.238, 1.92, 7).filename),
        "event": "best",
        "seed": 7,
        "run_id": None,
    }
    assert summary["best_reward"]["value"] == 0.301
    assert summary["best_reward"]["timesteps"] == 100_000
    assert summary["by_event"] == {
        "best": 1,
        "interrupt": 1,
        "legacy": 1,
        "periodic": 3,
        "phase_boundary_warmup": 1,
    }
    assert summary["seeds"] == [7, 42]
    ours = [
        p
        for p in folder.iterdir()
        if p.name not in ("notes.txt", "best_model.zip", ".checkpoint.lock")
    ]
    assert summary["bytes"] == sum(p.stat().st_size for p in ours)


def test_the_seed_note_snippet_runs(folder: Path) -> None:
    manager = CheckpointRetentionManager(None)
    summary = manager.get_checkpoint_summary(os.fspath(folder) + "/")
    lines = [
        f"Total checkpoints: {summary['total_count']}",
        f"Best Sharpe: {summary['best_sharpe']['value']:.2f} @ "
        f"{summary['best_sharpe']['timesteps']:,} steps",
        f"Best reward: {summary['best_reward']['value']:.3f} @ "
        f"{summary['best_reward']['timesteps']:,} steps",
    ]
    assert lines == [
        "Total checkpoints: 7",
        "Best Sharpe: 1.92 @ 50,000 steps",
        "Best reward: 0.301 @ 100,000 steps",
    ]


def test_empty_and_unranked_folders(tmp_path: Path) -> None:
    summary = summarize_folder(tmp_path / "missing")
    assert summary["total_count"] == 0
    assert summary["best_sharpe"] is None and summary["best_reward"] is None
    assert summary["by_event"] == {} and summary["bytes"] == 0
    (tmp_path / "phase1_10000_steps.zip").write_bytes(b"legacy")
    summary = summarize_folder(tmp_path)
    assert summary["total_count"] == 1 and summary["best_sharpe"] is None


def test_manager_config(tmp_path: Path) -> None:
    assert retention.CheckpointRetentionManager is CheckpointRetentionManager
    config = tmp_path / "c.yaml"
    config.write_text("checkpointing:\n  retention:\n    keep_last_n: 3\n")
    assert CheckpointRetentionManager(config).config.retention.keep_last_n == 3
    with pytest.raises(ConfigError, match="config file not found"):
        CheckpointRetentionManager(tmp_path / "missing.yaml")


def run_summary(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "checkpointing.summary", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_summary(folder: Path) -> None:
    cwd = folder.parents[3]  # models/ is below it
    out = run_summary("--phase", "1", "--market", "NQ", "--json", cwd=cwd)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["phase"], row["market"], row["total_count"]) == (1, "NQ", 7)
    assert row["best_sharpe"]["value"] == 1.92

    out = run_summary(cwd=cwd)
    assert out.returncode == 0, out.stderr
    header, line = out.stdout.splitlines()
    assert header.split()[:4] == ["phase", "market", "runs", "count"]
    assert line.split()[:4] == ["1", "NQ", str(row["runs"]), "7"]
    assert "+1.92 @ 50,000" in line and "+0.301 @ 100,000" in line

    out = run_summary("--phase", "2", "--market", "NQ", cwd=cwd)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = run_summary("--phase", "2", cwd=cwd)
    assert out.returncode == 0 and "no checkpoint folders" in out.stdout
