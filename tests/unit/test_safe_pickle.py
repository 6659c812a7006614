"""checkpointing.safe_pickle: checkpoints load, payloads are refused by name before they run."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from checkpointing.safe_pickle import UnsafePickleError, safe_loads, safe_zip_objects


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.canary),))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny trained PPO zip and its VecNormalize pickle, saved by SB3 itself."""
    folder = tmp_path_factory.mktemp("saved")
    env = VecNormalize(DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2))
    env.observation_space.seed(3)  # a seeded space pickles its numpy SeedSequence too
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=3,
        device="cpu",
        policy_kwargs={"net_arch": [8]},
    )
    model.learn(64)
    model.save(folder / "m.zip")
    env.save(folder / "m.pkl")
    env.close()
    return folder / "m.zip", folder / "m.pkl"


def _with_data_entry(source: Path, target: Path, key: str, obj: object) -> Path:
    with zipfile.ZipFile(source) as zin:
        entries = {n: zin.read(n) for n in zin.namelist()}
    data = json.loads(entries["data"])
    data[key] = {":type:": "<class 'object'>", ":serialized:": base64.b64encode(obj).decode()}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as zout:
        for n, raw in entries.items():
            zout.writestr(n, raw)
    return target


def test_a_genuine_vecnormalize_and_model_data_load(saved: tuple[Path, Path]) -> None:
    zip_path, pkl = saved
    vec = safe_loads(pkl.read_bytes(), where=pkl.name)
    assert isinstance(vec, VecNormalize)
    assert np.all(np.isfinite(vec.obs_rms.mean))
    objects = safe_zip_objects(zip_path)
    assert {"observation_space", "action_space", "lr_schedule", "policy_class"} <= set(objects)
    model = PPO.load(zip_path, custom_objects=objects, device="cpu")
    assert model.observation_space == objects["observation_space"]


def test_a_reduce_payload_is_refused_before_it_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    raw = pickle.dumps(_Payload(canary))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl references posix\.mkdir"):
        safe_loads(raw, where="evil.pkl")
    assert not canary.exists()


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(eval, id="builtins.eval"),
        pytest.param(lambda x: x, id="cloudpickled lambda"),
        pytest.param(getattr, id="builtins.getattr"),
    ],
)
def test_globals_a_checkpoint_never_needs_are_refused(obj: object) -> None:
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        safe_loads(cloudpickle.dumps(obj), where="x")


def test_a_payload_in_a_zip_data_entry_is_refused_naming_file_and_key(
    saved: tuple[Path, Path], tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    evil = _with_data_entry(
        saved[0], tmp_path / "evil.zip", "clip_range", cloudpickle.dumps(_Payload(canary))
    )
    with pytest.raises(UnsafePickleError) as info:
        safe_zip_objects(evil)
    assert "evil.zip (data entry 'clip_range')" in str(info.value)
    assert not canary.exists()
    # A key the caller supplies itself is never unpickled.
    objects = safe_zip_objects(evil, skip={"clip_range"})
    assert "clip_range" not in objects and not canary.exists()


def test_garbage_in_a_data_entry_is_a_clear_unpickling_error(
    saved: tuple[Path, Path], tmp_path: Path
) -> None:
    bad = _with_data_entry(saved[0], tmp_path / "bad.zip", "lr_schedule", b"\x80\x05garbage")
    with pytest.raises(pickle.UnpicklingError, match=r"bad\.zip \(data entry 'lr_schedule'\)"):
        safe_zip_objects(bad)
