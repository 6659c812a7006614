"""v1 checkpoints, as SB3's own ``CheckpointCallback`` writes them in a real run
(``phase1_{steps}_steps.zip`` + ``phase1_vecnormalize_{steps}_steps.pkl``): listed as legacy,
loaded with their own VecNormalize statistics, and never pruned unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import VecNormalize

from checkpointing import list_checkpoints, load_checkpoint, load_config
from checkpointing.retention import prune_folder
from tests.integration.same_model import assert_same_state, assert_same_stats
from tests.integration.train_script import (
    N_ENVS,
    checkpoint_folder,
    make_manager,
    make_model,
    make_raw_env,
    make_train_env,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

V1_STEPS = [128, 256, 384]


def sb3_pkl(folder: Path, steps: int) -> Path:
    return folder / f"phase1_vecnormalize_{steps}_steps.pkl"


def saved_stats(folder: Path, steps: int) -> VecNormalize:
    """The statistics SB3 saved at ``steps``, read back by SB3 itself."""
    return VecNormalize.load(str(sb3_pkl(folder, steps)), make_raw_env())


@pytest.fixture
def v1_run(tmp_path: Path) -> tuple[Path, Path]:
    """(config, folder): a real run's v1 checkpoints at V1_STEPS, in the folder our runs use."""
    config = write_config(
        tmp_path / "c.yaml",
        retention={"keep_last_n": 1, "keep_top_k_by_sharpe": 0, "keep_top_k_by_reward": 0},
    )
    folder = checkpoint_folder(config, tmp_path / "models")
    model = make_model(make_train_env())
    every = V1_STEPS[0] // N_ENVS  # SB3 counts calls: one per vector step
    saver = CheckpointCallback(every, str(folder), name_prefix="phase1", save_vecnormalize=True)
    model.learn(V1_STEPS[-1], callback=saver)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"phase1_{t}_steps.zip" for t in V1_STEPS] + [sb3_pkl(folder, t).name for t in V1_STEPS]
    )
    return config, folder


def test_v1_checkpoints_are_listed_as_legacy(v1_run: tuple[Path, Path]) -> None:
    _, folder = v1_run
    infos = list_checkpoints(folder)
    assert [(i.timesteps, i.is_legacy) for i in infos] == [(t, True) for t in V1_STEPS]
    assert list_checkpoints(folder, include_legacy=False) == []


def test_a_v1_checkpoint_loads_with_its_own_vecnormalize(v1_run: tuple[Path, Path]) -> None:
    _, folder = v1_run
    zip_path = folder / "phase1_256_steps.zip"
    loaded = load_checkpoint(zip_path, make_raw_env(), device="cpu")
    assert not loaded.verified  # v1 has no digests to check
    assert loaded.model.num_timesteps == 256
    assert_same_state(
        loaded.model.get_parameters(), PPO.load(zip_path, device="cpu").get_parameters()
    )
    # The statistics SB3 saved beside that zip, attached to the model, and not another step's.
    assert loaded.vec_normalize is not None
    assert loaded.model.get_vec_normalize_env() is loaded.vec_normalize
    assert_same_stats(loaded.vec_normalize, saved_stats(folder, 256))
    assert loaded.vec_normalize.obs_rms.count != saved_stats(folder, 384).obs_rms.count


def test_retention_never_deletes_v1_checkpoints_unless_asked(
    v1_run: tuple[Path, Path], tmp_path: Path
) -> None:
    config, folder = v1_run
    retention = load_config(config).retention  # keep the last periodic of each run, no top-K
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config, tmp_path / "models", async_saves=False)
    for steps in (500, 600, 700):  # a v2 run beside the v1 one, so retention has work to do
        model.num_timesteps = steps
        assert manager.save(model, venv, "periodic", metrics={"val_reward": 1.0}).result().ok
    manager.close()
    v1_files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("phase1_")}

    report = prune_folder(folder, retention)
    assert [r.info.timesteps for r in report.deleted_rows] == [500, 600]
    assert [(i.timesteps, i.is_legacy) for i in list_checkpoints(folder)] == [
        *((t, True) for t in V1_STEPS),
        (700, False),
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in v1_files} == v1_files

    # Asked to, retention treats them as the periodic saves of a run of their own.
    report = prune_folder(folder, retention, include_legacy=True)
    assert [r.info.filename for r in report.deleted_rows] == [
        "phase1_128_steps.zip",
        "phase1_256_steps.zip",
    ]
    assert [i.timesteps for i in list_checkpoints(folder)] == [384, 700]
