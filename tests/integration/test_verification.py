"""A damaged or tampered checkpoint is refused before anything in it is unpickled.

Each case damages the newest of three real checkpoints. ``load_checkpoint`` must raise
``CheckpointCorruptError`` naming the damaged file, without unpickling anything (the payload
cases would create a canary folder if they were unpickled, and every unpickling entry point is
watched), and ``find_resume_checkpoint`` must fall back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import torch
from stable_baselines3.common.save_util import load_from_zip_file

from checkpointing import list_checkpoints, load_checkpoint, verify_checkpoint
from checkpointing.errors import CheckpointCorruptError
from checkpointing.selection import find_resume_checkpoint
from tests.integration.train_script import make_manager, make_model, make_raw_env, make_train_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS_AND_REWARDS = ((100, 1.0), (200, 2.0), (300, 3.0))


class _Payload:
    """Unpickling this creates ``path`` (a folder): the proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.makedirs, (str(self.path),))


def _evil_pickle(canary: Path) -> bytes:
    return pickle.dumps(_Payload(canary))


def _zip_with_payload(source: Path, target: Path, canary: Path) -> None:
    """A copy of an SB3 zip whose ``data`` carries a cloudpickled payload (SB3 unpickles it)."""
    with zipfile.ZipFile(source) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    data = json.loads(entries["data"])
    data["_extra"] = {":serialized:": base64.b64encode(_evil_pickle(canary)).decode()}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as zout:
        for name, raw in entries.items():
            zout.writestr(name, raw)


@pytest.fixture
def checkpoints(tmp_path: Path) -> list[Path]:
    """Three committed checkpoints (100, 200, 300 steps; val_reward 1, 2, 3), oldest first."""
    config = tmp_path / "checkpoint_config.yaml"
    config.write_text("checkpointing:\n  performance:\n    min_disk_space_gb: 0\n")
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config, tmp_path / "models", async_saves=False)
    for steps, reward in STEPS_AND_REWARDS:
        model.num_timesteps = steps
        metrics = {"val_reward": reward, "sharpe_ratio": reward / 2}
        assert manager.save(model, venv, "periodic", metrics=metrics).result().ok
    manager.close()
    venv.close()
    return [i.path for i in list_checkpoints(manager.folder)]


def _companions(zip_path: Path) -> tuple[Path, Path]:
    base = zip_path.name[: -len(".zip")]
    return (
        zip_path.with_name(base + "_vecnormalize.pkl"),
        zip_path.with_name(base + "_metadata.json"),
    )


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


# Each case damages one checkpoint and returns the file the error must name.
def _truncated_zip(zip_path: Path, canary: Path) -> Path:
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    return zip_path


def _flipped_byte_in_zip(zip_path: Path, canary: Path) -> Path:
    _flip_byte(zip_path)
    return zip_path


def _zip_replaced_by_payload(zip_path: Path, canary: Path) -> Path:
    _zip_with_payload(zip_path, zip_path.with_name("evil.zip"), canary)
    os.replace(zip_path.with_name("evil.zip"), zip_path)
    return zip_path


def _flipped_byte_in_pkl(zip_path: Path, canary: Path) -> Path:
    pkl, _ = _companions(zip_path)
    _flip_byte(pkl)
    return pkl


def _pkl_replaced_by_payload(zip_path: Path, canary: Path) -> Path:
    pkl, _ = _companions(zip_path)
    pkl.write_bytes(_evil_pickle(canary))  # the metadata is left as it was
    return pkl


def _metadata_deleted(zip_path: Path, canary: Path) -> Path:
    _, meta = _companions(zip_path)
    meta.unlink()
    return meta


def _metadata_garbled(zip_path: Path, canary: Path) -> Path:
    _, meta = _companions(zip_path)
    meta.write_bytes(meta.read_bytes()[:40] + b"\x00garbage")
    return meta


def _unknown_schema_version(zip_path: Path, canary: Path) -> Path:
    _, meta = _companions(zip_path)
    doc = json.loads(meta.read_text())
    doc["schema_version"] = "99.0"
    meta.write_text(json.dumps(doc))
    return meta


CASES = {
    "truncated_zip": _truncated_zip,
    "flipped_byte_in_zip": _flipped_byte_in_zip,
    "zip_replaced_by_payload": _zip_replaced_by_payload,
    "flipped_byte_in_pkl": _flipped_byte_in_pkl,
    "pkl_replaced_by_payload": _pkl_replaced_by_payload,
    "metadata_deleted": _metadata_deleted,
    "metadata_garbled": _metadata_garbled,
    "unknown_schema_version": _unknown_schema_version,
}


def test_the_payloads_would_run_if_unpickled(checkpoints: list[Path], tmp_path: Path) -> None:
    """Control: both payloads do create their canary when unpickled the ordinary way."""
    pickle.loads(_evil_pickle(tmp_path / "canary_pkl"))
    assert (tmp_path / "canary_pkl").is_dir()
    _zip_with_payload(checkpoints[-1], tmp_path / "evil.zip", tmp_path / "canary_zip")
    load_from_zip_file(tmp_path / "evil.zip", device="cpu")
    assert (tmp_path / "canary_zip").is_dir()


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_checkpoint_is_refused_before_unpickling(
    case: str,
    checkpoints: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    newest = checkpoints[-1]
    canary = tmp_path / "canary"
    culprit = CASES[case](newest, canary)

    unpickled: list[str] = []

    def watch(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any, **kwargs: Any) -> Any:
            unpickled.append(name)
            return real(*args, **kwargs)

        return spy

    env = make_raw_env()
    with monkeypatch.context() as m:
        m.setattr(pickle, "load", watch("pickle.load", pickle.load))
        m.setattr(pickle, "loads", watch("pickle.loads", pickle.loads))
        m.setattr(cloudpickle, "loads", watch("cloudpickle.loads", cloudpickle.loads))
        m.setattr(torch, "load", watch("torch.load", torch.load))
        with pytest.raises(CheckpointCorruptError) as info:
            load_checkpoint(newest, env)
    env.close()
    assert info.value.path == culprit
    assert os.fspath(culprit) in str(info.value)
    assert unpickled == []
    assert not canary.exists()

    # Resuming skips the damaged checkpoint (with a warning naming it) for the newest good one.
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        assert find_resume_checkpoint(newest.parent, "latest") == checkpoints[-2]
        assert find_resume_checkpoint(newest.parent, "best:val_reward") == checkpoints[-2]
    assert any(os.fspath(culprit) in r.getMessage() for r in caplog.records)
    assert not canary.exists()
    for good in checkpoints[:-1]:
        verify_checkpoint(good)


def test_metadata_with_a_malformed_files_entry_is_refused(checkpoints: list[Path]) -> None:
    newest = checkpoints[-1]
    _, meta = _companions(newest)
    doc = json.loads(meta.read_text())
    doc["files"]["zip"] = "not an object"
    meta.write_text(json.dumps(doc))

    with pytest.raises(CheckpointCorruptError) as info:
        verify_checkpoint(newest)
    assert info.value.path == meta
    assert find_resume_checkpoint(newest.parent, "latest") == checkpoints[-2]
