"""The commit protocol, listing, verification, deletion and sweeping on a real folder."""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import checkpointing.store as store
from checkpointing.cleanup import delete_checkpoint, delete_checkpoints, sweep
from checkpointing.errors import CheckpointCorruptError
from checkpointing.files import parse_temp_name, temp_name
from checkpointing.metadata import read_checkpoint_metadata, write_checkpoint_metadata
from checkpointing.naming import format_checkpoint_name
from checkpointing.store import (
    CheckpointInfo,
    commit_files,
    folder_lock,
    list_checkpoints,
    verify_checkpoint,
)


def commit(folder: Path, ts: int, event: str = "periodic", payload: bytes = b"model") -> Path:
    name = format_checkpoint_name("NQ", ts, event, 0.5, 1.25, 42)

    def write_zip(tmp: Path) -> None:
        tmp.write_bytes(payload + str(ts).encode())

    path, _ = commit_files(
        folder, name, write_zip, b"stats", {"schema_version": "2.0", "val_reward": 0.5}
    )
    return path


def test_commit_writes_three_files_with_digests(tmp_path: Path) -> None:
    path = commit(tmp_path, 100)
    base = path.name[:-4]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [path.name, base + "_vecnormalize.pkl", base + "_metadata.json"]
    )
    meta = verify_checkpoint(path)
    assert meta["files"]["zip"]["size"] == path.stat().st_size
    assert len(meta["files"]["vecnormalize"]["sha256"]) == 64


def test_failed_write_leaves_no_trace_and_keeps_older_checkpoints(tmp_path: Path) -> None:
    old = commit(tmp_path, 100)

    def failing(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        commit_files(
            tmp_path, format_checkpoint_name("NQ", 200, "periodic", 0, 0, 42), failing, b"x", {}
        )
    assert [i.path for i in list_checkpoints(tmp_path)] == [old]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    verify_checkpoint(old)


def test_listing_is_numeric_and_ignores_what_is_not_ours(tmp_path: Path) -> None:
    for ts in (10_000_000, 9_999_999, 5):
        commit(tmp_path, ts)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "best_model.zip").write_bytes(b"x")
    (tmp_path / format_checkpoint_name("NQ", 7, "periodic", 0, 0, 1)).mkdir()
    outside = tmp_path.parent / "outside.zip"
    outside.write_bytes(b"secret")
    (tmp_path / format_checkpoint_name("NQ", 8, "periodic", 0, 0, 1)).symlink_to(outside)
    (tmp_path / "phase1_300_steps.zip").write_bytes(b"v1")
    infos = list_checkpoints(tmp_path)
    assert [i.timesteps for i in infos] == [5, 300, 9_999_999, 10_000_000]
    assert [i.timesteps for i in list_checkpoints(tmp_path, include_legacy=False)] == [
        5,
        9_999_999,
        10_000_000,
    ]


def test_truncated_zip_and_flipped_bytes_are_detected(tmp_path: Path) -> None:
    a, b, c = commit(tmp_path, 1), commit(tmp_path, 2), commit(tmp_path, 3)
    with open(a, "r+b") as fh:
        fh.truncate(3)
    raw = bytearray(b.read_bytes())
    raw[0] ^= 0x01
    b.write_bytes(bytes(raw))
    pkl = c.with_name(c.name[:-4] + "_vecnormalize.pkl")
    pkl.write_bytes(b"statz")
    with pytest.raises(CheckpointCorruptError, match="truncated"):
        verify_checkpoint(a)
    with pytest.raises(CheckpointCorruptError, match=re.escape(b.name) + ".*sha256"):
        verify_checkpoint(b)
    with pytest.raises(
        CheckpointCorruptError, match=r"_vecnormalize\.pkl: the VecNormalize pkl fails"
    ):
        verify_checkpoint(c)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "metadata file is missing"),
        (b"{not json", "not valid JSON"),
        (b'{"schema_version": "9.0"}', "unknown metadata schema_version '9.0'"),
        (b"[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_metadata_is_detected(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = commit(tmp_path, 1)
    meta = path.with_name(path.name[:-4] + "_metadata.json")
    if content is None:
        meta.unlink()
    else:
        meta.write_bytes(content)
    with pytest.raises(CheckpointCorruptError, match=message) as err:
        verify_checkpoint(path)
    assert "_metadata.json" in str(err.value)


def test_delete_removes_zip_and_companions_only(tmp_path: Path) -> None:
    keep, gone = commit(tmp_path, 1), commit(tmp_path, 2)
    (tmp_path / "foreign.json").write_text("{}")
    removed = delete_checkpoint(gone)
    assert removed[0] == gone and len(removed) == 3
    assert [i.path for i in list_checkpoints(tmp_path)] == [keep]
    assert (tmp_path / "foreign.json").exists()
    with pytest.raises(ValueError, match="not a checkpoint name"):
        delete_checkpoint(tmp_path / "foreign.json")


def test_sweep_removes_orphans_and_dead_temporaries_only(tmp_path: Path) -> None:
    live = commit(tmp_path, 1)
    orphan_base = format_checkpoint_name("NQ", 2, "periodic", 0, 0, 42)[:-4]
    (tmp_path / (orphan_base + "_vecnormalize.pkl")).write_bytes(b"x")
    (tmp_path / (orphan_base + "_metadata.json")).write_bytes(b"{}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    dead_tmp = tmp_path / temp_name(live.name, pid=dead_pid)
    dead_tmp.write_bytes(b"x")
    mine = tmp_path / temp_name(live.name)
    other_host = tmp_path / temp_name(live.name, pid=dead_pid, host="node-7")
    other_host.write_bytes(b"x")
    mine.write_bytes(b"x")
    (tmp_path / "phase1_10_steps_metadata.json").write_text("{}")  # legacy: never swept
    (tmp_path / "foreign_metadata.json").write_text("{}")
    with folder_lock(tmp_path):
        dry = sweep(tmp_path, dry_run=True)
        assert dry.count == 3 and dead_tmp.exists()
        report = sweep(tmp_path)
    assert sorted(p.name for p in report.orphans) == sorted(
        [orphan_base + "_vecnormalize.pkl", orphan_base + "_metadata.json"]
    )
    assert report.temporaries == [dead_tmp]
    assert mine.exists() and (tmp_path / "foreign_metadata.json").exists()
    assert other_host.exists()  # another node's writer: only the grace period removes it
    assert (tmp_path / "phase1_10_steps_metadata.json").exists()
    verify_checkpoint(live)


def test_metadata_nan_is_null_on_disk_and_nan_when_read(tmp_path: Path) -> None:
    zip_path = tmp_path / format_checkpoint_name("NQ", 1, "interrupt", math.nan, math.nan, 3)
    zip_path.write_bytes(b"x")
    write_checkpoint_metadata(zip_path, {"schema_version": "2.0", "val_reward": math.nan})
    on_disk = json.loads(zip_path.with_name(zip_path.name[:-4] + "_metadata.json").read_text())
    assert on_disk["val_reward"] is None
    meta = read_checkpoint_metadata(zip_path)
    assert meta is not None and math.isnan(meta["val_reward"])


def test_metadata_falls_back_to_legacy_file_then_to_name(tmp_path: Path) -> None:
    legacy = tmp_path / "phase1_5000_steps.zip"
    legacy.write_bytes(b"x")
    meta = read_checkpoint_metadata(legacy)
    assert meta is not None and meta["source"] == "filename" and meta["timesteps"] == 5000
    final = tmp_path / "phase1_foundational_final.zip"
    final.write_bytes(b"x")
    (tmp_path / "phase1_foundational_final_metadata.json").write_text(
        '{"val_reward": 0.3, "n_envs": 80}'
    )
    meta = read_checkpoint_metadata(final)
    assert meta is not None and meta["val_reward"] == 0.3 and meta["source"] == "metadata"
    v2 = tmp_path / format_checkpoint_name("ES", 150000, "best", 0.238, 1.92, 7)
    v2.write_bytes(b"x")
    meta = read_checkpoint_metadata(v2)
    assert meta is not None and meta["sharpe_ratio"] == 1.92 and meta["source"] == "filename"
    assert read_checkpoint_metadata(tmp_path / "random.zip") is None


# ----------------------------------------------------------------------- lazy infos, bulk deletion


def test_listed_infos_match_the_files_and_the_constructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [commit(tmp_path, ts, payload=b"x" * ts) for ts in (3, 1, 2)]
    stats: list[object] = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p, **kw: stats.append(p) or real_lstat(p, **kw))
    infos = list_checkpoints(tmp_path)
    assert stats == []  # the file type comes from the folder read; stat on first use
    assert [i.filename for i in infos] == [p.name for p in sorted(paths)]
    first = infos[0]
    assert first.size == paths[1].stat().st_size and len(stats) == 1
    assert first.mtime == paths[1].stat().st_mtime and len(stats) == 1  # cached
    assert first.path == paths[1] and first.dirname == str(tmp_path)
    assert first.base == paths[1].name[:-4] and first.timesteps == 1 and not first.is_legacy
    assert first.vecnormalize_path == tmp_path / (first.base + "_vecnormalize.pkl")
    assert first.metadata_path == first.companion("_metadata.json")
    made = CheckpointInfo(paths[1], first.name, first.size, first.mtime)
    assert made == first and hash(made) == hash(first) and made != infos[1]
    assert repr(made) == repr(first)
    with pytest.raises(AttributeError):
        first.size = 0  # type: ignore[misc]


def test_a_zip_gone_since_the_listing_reads_as_empty(tmp_path: Path) -> None:
    path = commit(tmp_path, 1)
    (info,) = list_checkpoints(tmp_path)
    path.unlink()
    assert (info.size, info.mtime) == (0, 0.0)


def test_bulk_delete_frees_the_bytes_it_removes_and_never_follows_links(tmp_path: Path) -> None:
    a, b, c = commit(tmp_path, 1, payload=b"a" * 100), commit(tmp_path, 2), commit(tmp_path, 3)
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"keep me")
    infos = list_checkpoints(tmp_path)
    # After the listing: b's pkl becomes a link out of the folder, c's zip a link, a's json a
    # folder. Only regular files go; links and folders stay, and nothing is followed.
    b_pkl = tmp_path / (b.name[:-4] + "_vecnormalize.pkl")
    b_pkl.unlink()
    b_pkl.symlink_to(outside / "target")
    c.unlink()
    c.symlink_to(outside / "target")
    a_json = tmp_path / (a.name[:-4] + "_metadata.json")
    a_json.unlink()
    a_json.mkdir()
    freed = delete_checkpoints(infos)
    base = {p: p.name[:-4] for p in (a, b, c)}
    assert freed == [
        sizes[a.name] + sizes[base[a] + "_vecnormalize.pkl"],
        sizes[b.name] + sizes[base[b] + "_metadata.json"],
        sizes[base[c] + "_vecnormalize.pkl"] + sizes[base[c] + "_metadata.json"],
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [a_json.name, b_pkl.name, c.name]
    )
    assert (outside / "target").read_bytes() == b"keep me"
    assert delete_checkpoints(infos) == [0, 0, 0]  # already gone: nothing to free


def test_bulk_delete_reports_errors_per_checkpoint(tmp_path: Path) -> None:
    commit(tmp_path, 1)
    infos = list_checkpoints(tmp_path)
    gone = CheckpointInfo(tmp_path / "missing" / infos[0].filename, infos[0].name, 0, 0.0)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    broken = CheckpointInfo(not_a_dir / infos[0].filename, infos[0].name, 0, 0.0)
    results = delete_checkpoints([gone, broken, *infos])
    assert results[0] == 0 and isinstance(results[1], NotADirectoryError) and results[2] > 0
    assert list_checkpoints(tmp_path) == []
    with pytest.raises(ValueError, match="not a checkpoint name"):
        delete_checkpoints([CheckpointInfo(not_a_dir, infos[0].name, 0, 0.0)])
    assert not_a_dir.exists()


# ----------------------------------------------------------------------- commit order and failures

PKL, JSON, ZIP = "_vecnormalize.pkl", "_metadata.json", ".zip"
# Where a commit can fail -> (suffixes renamed into place before the failure: these are the
# companions without a zip the protocol allows, and what sweep must remove).
FAILURE_STEPS = {
    "write zip": (),
    "write pkl": (),
    "write json": (),
    "rename pkl": (),
    "rename json": (PKL,),
    "rename zip": (PKL, JSON),
}


def _kind(name: str) -> str:
    return next(s for s in (PKL, JSON, ZIP) if name.endswith(s))


def _folder_locked(folder: Path) -> bool:
    """Whether someone holds the folder lock (a second open file cannot take it)."""
    fd = os.open(folder / ".checkpoint.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _temp_target(name: str) -> str | None:
    parsed = parse_temp_name(name)
    return None if parsed is None else parsed[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".checkpoint.lock"}


def test_commit_renames_pkl_then_json_then_zip_under_the_lock_then_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[tuple[str, bool]] = []  # (what, under the folder lock)
    real_replace, real_fsync_dir = os.replace, store.fsync_dir

    def replace(src: Any, dst: Any) -> None:
        steps.append((_kind(os.fspath(dst)), _folder_locked(tmp_path)))
        real_replace(src, dst)

    def fsync_dir(folder: Path) -> None:
        steps.append(("fsync folder", _folder_locked(tmp_path)))
        real_fsync_dir(folder)

    monkeypatch.setattr(store.os, "replace", replace)
    monkeypatch.setattr(store, "fsync_dir", fsync_dir)
    path = commit(tmp_path, 100)
    assert steps == [(PKL, True), (JSON, True), (ZIP, True), ("fsync folder", True)]
    verify_checkpoint(path)


@pytest.mark.parametrize("step", list(FAILURE_STEPS))
def test_a_commit_failing_at_any_step_leaves_the_folder_as_the_protocol_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    old = commit(tmp_path, 100)
    before = _files(tmp_path)
    new_name = format_checkpoint_name("NQ", 200, "periodic", 0.7, 1.5, 42)
    new_base = new_name[: -len(ZIP)]
    action, kind = step.split()
    failing_kind = {"zip": ZIP, "pkl": PKL, "json": JSON}[kind]
    disk_full = OSError(errno.ENOSPC, "No space left on device (injected)")

    def write_zip(tmp: Path) -> None:
        tmp.write_bytes(b"PK-partial" if action == "write" and kind == "zip" else b"PK-new")
        if action == "write" and kind == "zip":
            raise disk_full

    real_write_durable, real_replace = store.write_durable, os.replace

    def write_durable(path: Path, data: bytes) -> None:
        if action == "write" and _temp_target(path.name) == new_base + failing_kind:
            path.write_bytes(data[: len(data) // 2])  # half written, then the disk is full
            raise disk_full
        real_write_durable(path, data)

    def replace(src: Any, dst: Any) -> None:
        if action == "rename" and os.path.basename(dst) == new_base + failing_kind:
            raise disk_full
        real_replace(src, dst)

    monkeypatch.setattr(store, "write_durable", write_durable)
    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(OSError) as err:
        commit_files(tmp_path, new_name, write_zip, b"new stats", {"schema_version": "2.0"})
    assert err.value is disk_full
    monkeypatch.undo()

    # No temporary is left, the new checkpoint does not exist, the old one is byte-identical.
    after = _files(tmp_path)
    assert [n for n in after if _temp_target(n) is not None] == []
    assert [i.path for i in list_checkpoints(tmp_path)] == [old]
    assert {n: after[n] for n in before} == before
    verify_checkpoint(old)
    # Beyond that, only the companions renamed before the failure, which sweep removes.
    orphans = sorted(new_base + s for s in FAILURE_STEPS[step])
    assert sorted(set(after) - set(before)) == orphans
    with folder_lock(tmp_path):
        report = sweep(tmp_path)
    assert sorted(p.name for p in report.orphans) == orphans
    assert _files(tmp_path) == before
