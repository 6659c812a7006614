"""Every ``performance.compression`` mode writes a zip that plain ``PPO.load`` reads back.

stored, deflate (fastest and smallest level) and adaptive (stored with room on the disk,
deflated when it runs short): the zip's entries carry the compression asked for, and
``PPO.load`` / ``VecNormalize.load`` restore the exact parameters and statistics.
"""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from stable_baselines3.common.vec_env import VecNormalize

from checkpointing import DynamicCheckpointManager
from checkpointing.config import CheckpointConfig
from tests.integration.same_model import assert_same_state, assert_same_stats, load_with_sb3
from tests.integration.train_script import make_model, make_train_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

GB = 1_000_000_000

# (mode, level, free bytes the disk check sees, the zip's expected compress_type)
CASES = [
    ("stored", 1, 100 * GB, zipfile.ZIP_STORED),
    ("deflate", 1, 100 * GB, zipfile.ZIP_DEFLATED),
    ("deflate", 9, 100 * GB, zipfile.ZIP_DEFLATED),
    ("adaptive", 1, 100 * GB, zipfile.ZIP_STORED),  # plenty of room: stored
    ("adaptive", 9, 1 * GB, zipfile.ZIP_DEFLATED),  # short of room: deflated
]


@pytest.fixture(scope="module")
def trained() -> tuple[Any, VecNormalize]:
    venv = make_train_env()
    model = make_model(venv, net_arch=(64, 64))
    model.learn(256)  # optimizer state and statistics worth comparing
    return model, venv


def _save(
    trained: tuple[Any, VecNormalize],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    level: int,
    free: int,
) -> Path:
    model, venv = trained
    defaults = CheckpointConfig()
    performance = replace(
        defaults.performance, min_disk_space_gb=0.0, compression=mode, compression_level=level
    )
    manager = DynamicCheckpointManager(
        replace(defaults, performance=performance), phase=1, market="NQ", seed=42, models_root=root
    )
    monkeypatch.setattr(manager.disk, "free_bytes", lambda: free)
    try:
        outcome = manager.save(model, venv, "periodic", metrics={"val_reward": 1.0}, wait=True)
        result = outcome.result()
    finally:
        manager.close()
    assert result.ok, result
    return result.paths[0]


@pytest.mark.parametrize(
    ("mode", "level", "free", "compress_type"),
    CASES,
    ids=[f"{m}-{lvl}-{f // GB}GB" for m, lvl, f, _ in CASES],
)
def test_each_mode_is_loadable_by_plain_ppo_load(
    trained: tuple[Any, VecNormalize],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    level: int,
    free: int,
    compress_type: int,
) -> None:
    model, venv = trained
    path = _save(trained, tmp_path, monkeypatch, mode, level, free)

    with zipfile.ZipFile(path) as zf:
        weights = [i for i in zf.infolist() if i.filename.endswith(".pth")]
        assert weights and {i.compress_type for i in weights} == {compress_type}

    loaded, stats = load_with_sb3(path)
    assert_same_state(loaded.get_parameters(), model.get_parameters())  # optimizer included
    assert loaded.num_timesteps == model.num_timesteps
    assert_same_stats(stats, venv)


def test_deflate_is_smaller_than_stored(
    trained: tuple[Any, VecNormalize], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = _save(trained, tmp_path / "stored", monkeypatch, "stored", 1, 100 * GB)
    deflated = _save(trained, tmp_path / "deflate", monkeypatch, "deflate", 9, 100 * GB)
    assert deflated.stat().st_size < stored.stat().st_size
