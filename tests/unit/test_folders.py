"""The listing seam (:mod:`checkpointing.folders`) without a server: a folder in a bucket as its
listing describes it, planned by the same policies as a folder on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.folders import BucketCheckpointInfo, BucketFolder, BucketRoot, LocalFolder
from checkpointing.locations import StoreURI
from checkpointing.naming import CheckpointName
from checkpointing.object_store import ObjectInfo, ObjectStore
from checkpointing.plan import plan
from checkpointing.policies import build_policy
from tests.report_files import checkpoint_dir, write_checkpoint

URI = StoreURI("s3", "acc", "models")
NOW = 1_800_000_000.0


def names() -> list[CheckpointName]:
    out = [
        CheckpointName("NQ", ts, "periodic", ts / 1e4, ts / 1e3, 42, "r1")
        for ts in range(1000, 9000, 1000)
    ]
    out.append(CheckpointName("NQ", 9000, "phase_end", 0.0, 0.0, 42, "r1"))
    out.append(CheckpointName("NQ", 500, "periodic", 0.5, 0.5, 7, "r2"))
    return out


def listing(found: list[CheckpointName]) -> dict[str, ObjectInfo]:
    objects = {}
    for i, name in enumerate(found):
        objects[name.filename] = ObjectInfo(1000 + i, NOW - 100 + i)
        objects[name.base + "_vecnormalize.pkl"] = ObjectInfo(10, NOW - 100 + i)
        objects[name.base + "_metadata.json"] = ObjectInfo(5, NOW - 100 + i)
    objects["notes.txt"] = ObjectInfo(3, NOW)
    return objects


def folder(objects: dict[str, ObjectInfo]) -> BucketFolder:
    # The listing is given: no request is ever made.
    return BucketFolder(ObjectStore(URI), "phase1/NQ/checkpoints", 1, "NQ", objects)


def test_a_bucket_folder_lists_checkpoints_from_its_listing_alone() -> None:
    f = folder(listing(names()))
    infos = f.checkpoints()
    assert [i.filename for i in infos] == sorted(
        (n.filename for n in names()), key=lambda x: (int(x.split("_ts-")[1][:7]), x)
    )
    first = infos[0]
    assert isinstance(first, BucketCheckpointInfo)
    assert str(first.uri) == f"s3://acc/models/phase1/NQ/checkpoints/{first.filename}"
    assert f.location_of(first) == str(first.uri)
    assert f.bytes_of(first) == first.size + 10 + 5
    assert first.mtime == NOW - 100 + len(names()) - 1  # r2's, the last listed
    with pytest.raises(TypeError, match="has no path on this machine"):
        first.path  # noqa: B018 - never a local path
    assert f.location == "s3://acc/models/phase1/NQ/checkpoints"


def test_a_bucket_folder_is_planned_as_the_same_files_on_disk(tmp_path: Path) -> None:
    local = checkpoint_dir(tmp_path / "models", "NQ")
    for name in names():
        write_checkpoint(local, name)
    retention = RetentionConfig(keep_last_n=2, keep_top_k_by_sharpe=1, keep_top_k_by_reward=1)
    policy = build_policy(retention)
    on_disk = plan(local, policy)
    in_bucket = plan(folder(listing(names())), policy)
    assert [(r.name, r.kept_by) for r in in_bucket.rows] == [
        (r.name, r.kept_by) for r in on_disk.rows
    ]
    assert in_bucket.folder == URI.child("phase1/NQ/checkpoints")
    assert all(r.bytes_freed > 1000 for r in in_bucket.to_delete)


def test_orphans_are_companions_without_a_zip_older_than_the_grace() -> None:
    gone = CheckpointName("NQ", 20000, "periodic", 0.1, 0.1, 42, "r1")
    objects = listing(names())
    objects[gone.base + "_metadata.json"] = ObjectInfo(5, NOW - 7200)
    objects[gone.base + "_vecnormalize.pkl"] = ObjectInfo(5, NOW - 10)  # an upload in flight
    f = folder(objects)
    assert f.orphans(3600, NOW) == [gone.base + "_metadata.json"]
    assert f.orphans(1, NOW) == sorted(
        gone.base + s for s in ("_metadata.json", "_vecnormalize.pkl")
    )


def test_a_bucket_root_finds_folders_in_the_layout_relative_to_its_prefix() -> None:
    root = BucketRoot(URI, CheckpointConfig())
    assert root.folder_key(3, "NQ") == "phase3_hybrid/NQ/checkpoints"
    assert root.folder(1, "ES").location == "s3://acc/models/phase1/ES/checkpoints"


def test_a_local_folder_answers_as_the_store_always_has(tmp_path: Path) -> None:
    local = checkpoint_dir(tmp_path / "models", "NQ")
    for name in names()[:2]:
        write_checkpoint(local, name)
    f = LocalFolder(local)
    infos = f.checkpoints()
    assert f.exists() and len(infos) == 2
    assert f.location_of(infos[0]) == str(local / infos[0].filename)
    meta = f.metadata(infos[0])
    assert meta is not None and meta["timesteps"] == 1000
