"""The trainer seam (checkpointing/trainers.py): which trainer wrote a checkpoint, and an RLlib
directory packed into the checkpoint zip and unpacked only after every digest checks out."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from checkpointing.errors import CheckpointCorruptError, ConfigError
from checkpointing.files import file_digest
from checkpointing.metadata import write_checkpoint_metadata
from checkpointing.trainers import (
    MANIFEST,
    DirectorySnapshot,
    check_trainer,
    checkpoint_trainer,
    trainer_of,
    unpack_checkpoint,
)

NAME = "NQ_ts-0000512_evt-periodic_val-+1.000_sharpe-+0.50_seed-42_run-r1.zip"


def algorithm_dir(root: Path) -> Path:
    (root / "learner_group" / "learner").mkdir(parents=True)
    (root / "learner_group" / "learner" / "state.pkl").write_bytes(b"weights" * 100)
    (root / "rllib_checkpoint.json").write_text('{"type": "Algorithm"}')
    return root


def commit(folder: Path, zip_bytes: bytes | None = None, trainer: str = "rllib") -> Path:
    """A checkpoint zip and the metadata that records its digest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    if zip_bytes is not None:
        path.write_bytes(zip_bytes)
    size, sha = file_digest(path)
    files = {"zip": {"name": NAME, "size": size, "sha256": sha}}
    write_checkpoint_metadata(path, {"schema_version": "2.0", "trainer": trainer, "files": files})
    return path


def test_an_unpacked_checkpoint_holds_exactly_the_saved_files(tmp_path: Path) -> None:
    snapshot = DirectorySnapshot(algorithm_dir(tmp_path / "saved"))
    (tmp_path / "ck").mkdir()
    snapshot.write_zip(tmp_path / "ck" / NAME, compress=False)
    path = commit(tmp_path / "ck")
    meta = unpack_checkpoint(path, tmp_path / "out")
    assert meta["trainer"] == "rllib"
    got = sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    )
    assert got == ["learner_group/learner/state.pkl", "rllib_checkpoint.json"]
    assert (tmp_path / "out" / "learner_group/learner/state.pkl").read_bytes() == b"weights" * 100
    snapshot.close()
    assert not (tmp_path / "saved").exists()  # the snapshot's folder is released


def test_the_same_files_give_the_same_zip_bytes(tmp_path: Path) -> None:
    zips = []
    for i in range(2):
        directory = algorithm_dir(tmp_path / f"d{i}")
        DirectorySnapshot(directory, owned=False).write_zip(tmp_path / f"{i}.zip", compress=False)
        zips.append((tmp_path / f"{i}.zip").read_bytes())
    assert zips[0] == zips[1]


def forged(tmp_path: Path, entries: dict[str, bytes], manifest: dict[str, object]) -> Path:
    """A zip whose metadata digest matches (as anyone who can write the folder can forge)."""
    folder = tmp_path / "forged"
    folder.mkdir()
    with zipfile.ZipFile(folder / NAME, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        zf.writestr(MANIFEST, json.dumps({"files": manifest}))
    return commit(folder)


def test_an_entry_outside_the_folder_is_refused_before_it_is_written(tmp_path: Path) -> None:
    data = b"x"
    entry = {
        "size": 1,
        "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
    }
    path = forged(tmp_path, {"../escaped": data}, {"../escaped": entry})
    with pytest.raises(CheckpointCorruptError, match="outside"):
        unpack_checkpoint(path, tmp_path / "out" / "inner")
    assert not (tmp_path / "out" / "escaped").exists()


def test_a_file_that_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    entry = {"size": 5, "sha256": "0" * 64}
    path = forged(tmp_path, {"state.pkl": b"evil!"}, {"state.pkl": entry})
    with pytest.raises(CheckpointCorruptError, match=r"state\.pkl fails its sha256"):
        unpack_checkpoint(path, tmp_path / "out")


def test_an_extra_file_beside_the_manifest_is_refused(tmp_path: Path) -> None:
    path = forged(tmp_path, {"extra.pkl": b"x"}, {})
    with pytest.raises(CheckpointCorruptError, match="differ from"):
        unpack_checkpoint(path, tmp_path / "out")


def test_older_checkpoints_are_sb3_and_the_other_trainer_is_refused_naming_both(
    tmp_path: Path,
) -> None:
    assert trainer_of({}) == "sb3" and trainer_of(None) == "sb3"
    path = commit(tmp_path / "ck", b"not really a zip", trainer="rllib")
    assert checkpoint_trainer(path) == "rllib"
    with pytest.raises(ConfigError, match=r"written by the rllib trainer.*--trainer sb3"):
        check_trainer(path, "sb3")
    check_trainer(path, "rllib")
