"""Async saves write exactly what a synchronous save (or SB3's own ``model.save``) would.

The background writer works from a snapshot taken when ``save`` is called, so training that
goes on meanwhile must not leak into the checkpoint; and what it writes is plain SB3 output
(``PPO.load`` / ``VecNormalize.load``), including ``best_model`` and the legacy final model at
the phase root.
"""

from __future__ import annotations

import hashlib
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from checkpointing import (
    learn_with_checkpoints,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_metadata,
)
from checkpointing.loading import vecnormalize_path_for
from checkpointing.snapshot import ModelSnapshot
from tests.integration.same_model import assert_same_state, assert_same_stats, load_with_sb3
from tests.integration.train_script import (
    make_callback,
    make_manager,
    make_model,
    make_raw_env,
    make_train_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _tensors(state: Any) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


def test_async_save_equals_sync_save_and_sb3_save_while_training_goes_on(
    config_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keep_signal_handlers: None,
) -> None:
    venv = make_train_env()
    model = make_model(venv)
    model.learn(256)  # optimizer state and statistics worth comparing
    saved_at = model.num_timesteps
    model.save(tmp_path / "sb3.zip")
    venv.save(str(tmp_path / "sb3_vecnormalize.pkl"))

    sync_manager = make_manager(config_file, tmp_path / "sync", async_saves=False)
    async_manager = make_manager(config_file, tmp_path / "async", async_saves=True)
    sync_future = sync_manager.save(model, venv, "periodic")
    assert sync_future.done()  # a synchronous save has committed when it returns

    # Hold the background writer until training has moved on, so the write can only be right
    # if it works from the snapshot taken in save().
    training_moved_on = threading.Event()
    write_zip = ModelSnapshot.write_zip

    def write_zip_later(self: ModelSnapshot, path: Any, **how: Any) -> None:
        assert training_moved_on.wait(timeout=60)
        write_zip(self, path, **how)

    monkeypatch.setattr(ModelSnapshot, "write_zip", write_zip_later)
    async_future = async_manager.save(model, venv, "periodic")
    try:
        assert not async_future.done()  # save() returned before anything was written
        model.learn(256, reset_num_timesteps=False)
    finally:
        training_moved_on.set()
    sync_outcome, async_outcome = sync_future.result(), async_future.result()
    async_manager.close()
    sync_manager.close()
    assert sync_outcome.ok and async_outcome.ok, (sync_outcome, async_outcome)

    (sync_zip,), (async_zip,) = sync_outcome.paths, async_outcome.paths
    sync_model, sync_stats = load_with_sb3(sync_zip)
    async_model, async_stats = load_with_sb3(async_zip)
    sb3_model = PPO.load(tmp_path / "sb3.zip", device="cpu")
    sb3_stats = VecNormalize.load(str(tmp_path / "sb3_vecnormalize.pkl"), make_raw_env())

    assert async_model.num_timesteps == sync_model.num_timesteps == saved_at
    assert_same_state(async_model.get_parameters(), sync_model.get_parameters())
    assert_same_state(async_model.get_parameters(), sb3_model.get_parameters())
    assert_same_stats(async_stats, sync_stats)
    assert_same_stats(async_stats, sb3_stats)
    assert len(_tensors(async_model.get_parameters())) > 10  # policy and optimizer state

    # The snapshot really is of the moment of the save, not of the model as it is now.
    live = _tensors(model.get_parameters()["policy"])
    saved = _tensors(async_model.get_parameters()["policy"])
    assert any(not torch.equal(x, y) for x, y in zip(live, saved, strict=True))
    assert venv.obs_rms.count > async_stats.obs_rms.count
    for stats in (sync_stats, async_stats, sb3_stats):
        stats.venv.close()
    venv.close()


def test_a_run_leaves_best_model_per_market_and_the_legacy_final_model_per_run(
    config_file: Path, models_root: Path, keep_signal_handlers: None
) -> None:
    model = make_model(make_train_env())
    manager = make_manager(config_file, models_root)  # async saves (the config default)
    assert manager.writer.enabled
    learn_with_checkpoints(model, 1500, make_callback(manager))
    manager.close()

    root = manager.market_dir  # models/phase1/NQ: nothing shared with another market
    assert root == manager.folder.parent
    infos = list_checkpoints(manager.folder)
    metas = {i.path: read_checkpoint_metadata(i.path) for i in infos}

    # best_model.zip + best_model_vecnormalize.pkl hold the first checkpoint with the best
    # val_reward, and load with plain SB3.
    best_zip = root / "best_model.zip"
    assert best_zip.is_file() and (root / "best_model_vecnormalize.pkl").is_file()
    top = max(m["val_reward"] for m in metas.values() if math.isfinite(m["val_reward"]))
    first_top = min(
        (i for i in infos if metas[i.path]["val_reward"] == top), key=lambda i: i.timesteps
    )
    best_model, best_stats = load_with_sb3(best_zip)
    source_model, source_stats = load_with_sb3(first_top.path)
    assert best_model.num_timesteps == first_top.timesteps
    assert_same_state(best_model.get_parameters(), source_model.get_parameters())
    assert_same_stats(best_stats, source_stats)
    assert read_checkpoint_metadata(best_zip)["val_reward"] == top

    # The legacy final model is the run's phase_end checkpoint, byte for byte, in the run's
    # own folder: another run's phase end never replaces it.
    assert manager.run_dir == root / "runs" / manager.run_id
    final_zip = manager.run_dir / "phase1_foundational_final.zip"
    (phase_end,) = [i for i in infos if i.name.event == "phase_end"]
    assert phase_end.timesteps == model.num_timesteps
    assert _sha(final_zip) == _sha(phase_end.path)
    assert _sha(vecnormalize_path_for(final_zip)) == _sha(vecnormalize_path_for(phase_end.path))
    final_model, _ = load_with_sb3(final_zip)
    assert final_model.num_timesteps == model.num_timesteps


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_best_model_and_final_model_load_with_load_checkpoint(
    config_file: Path, models_root: Path
) -> None:
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config_file, models_root, async_saves=False)
    model.num_timesteps = 100
    assert manager.save(model, venv, "periodic", metrics={"val_reward": 1.0}).result().ok
    model.num_timesteps = 200
    assert manager.save(model, venv, "phase_end", metrics={"val_reward": 0.5}).result().ok
    manager.close()

    for path, steps in (
        (manager.market_dir / "best_model.zip", 100),
        (manager.run_dir / "phase1_foundational_final.zip", 200),
    ):
        loaded = load_checkpoint(path, make_raw_env())
        assert loaded.verified and loaded.model.num_timesteps == steps
