"""Registry shards (:mod:`checkpointing.shards`) and the upload journal, on disk: names, the
document, and many processes recording into one staged shard at once losing nothing."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from checkpointing.entries import RegistryEntry, build_entry
from checkpointing.errors import RegistryError
from checkpointing.naming import CheckpointName
from checkpointing.shards import (
    LocalShards,
    decode_shard,
    encode_shard,
    parse_shard_name,
    shard_key,
)
from checkpointing.uploads import UploadJournal

FOLDER = "phase1/NQ/checkpoints"


def entry(ts: int, run: str = "r1", seed: int = 42) -> RegistryEntry:
    name = CheckpointName("NQ", ts, "periodic", ts / 1e4, 1.0, seed, run)
    meta = {"phase": 1, "val_reward": ts / 1e4, "files": {"zip": {"size": 9, "sha256": "ab"}}}
    return build_entry(f"{FOLDER}/{name.filename}", name, 1, "NQ", meta, 9)


@pytest.mark.parametrize(
    ("run", "key"),
    [
        (("NQ", 42, "r1"), "registry/NQ/seed-42_run-r1.json"),
        (("ES", 7, "exp-a1b2c-00001"), "registry/ES/seed-7_run-exp-a1b2c-00001.json"),
        (("NQ", 3, None), "registry/NQ/seed-3.json"),
    ],
)
def test_a_shard_is_named_after_its_run(run: tuple[str, int, str | None], key: str) -> None:
    assert shard_key(run) == key
    assert parse_shard_name(key.rsplit("/", 1)[-1]) == run[1:]


@pytest.mark.parametrize("name", ["registry.json", "seed-x.json", "seed-1_run-a/b.json", "x"])
def test_other_names_are_not_shards(name: str) -> None:
    assert parse_shard_name(name) is None


def test_the_document_round_trips_and_the_same_entries_give_the_same_bytes() -> None:
    entries = {e.path: e for e in (entry(2000), entry(1000))}
    raw = encode_shard(("NQ", 42, "r1"), entries)
    assert raw == encode_shard(("NQ", 42, "r1"), dict(reversed(entries.items())))
    back = decode_shard(raw, "x")
    assert {k: v.to_json() for k, v in back.items()} == {k: v.to_json() for k, v in entries.items()}
    with pytest.raises(RegistryError, match="somewhere: unreadable registry shard"):
        decode_shard(b'{"schema_version": 9}', "somewhere")


def _record(root: str, worker: int, count: int) -> None:
    shards = LocalShards(root)
    for k in range(count):
        shards.record(entry(1000 * (worker * count + k + 1)))


def test_processes_recording_into_one_staged_shard_at_once_lose_nothing(tmp_path: Path) -> None:
    workers, count = 4, 15
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    shards = LocalShards(tmp_path)
    assert shards.paths() == [tmp_path / "registry/NQ/seed-42_run-r1.json"]
    assert len(shards.read(shards.paths()[0])) == workers * count


def test_forget_drops_entries_and_says_which_shards_changed(tmp_path: Path) -> None:
    shards = LocalShards(tmp_path)
    a, b, c = entry(1000), entry(2000), entry(1000, run="r2")
    for e in (a, b, c):
        assert shards.record(e) is not None
    assert shards.record(a) is None  # unchanged
    changed = shards.forget([(("NQ", 42, "r1"), a.path), (("NQ", 42, "r9"), "x.zip")])
    assert changed == [shards.path_of(("NQ", 42, "r1"))]
    assert list(shards.read(changed[0])) == [b.path]
    merged = shards.update(("NQ", 42, "r2"), {c.path: b}, replace_existing=False)
    assert merged is None  # what is there stays


def test_the_upload_journal_skips_a_line_cut_short(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path)
    journal.add(FOLDER, "a.zip", 10)
    journal.add(FOLDER, "b.zip", 20)
    path = journal.path_of(FOLDER)
    assert path == tmp_path / ".uploads/phase1/NQ/checkpoints.jsonl"
    with open(path, "a") as fh:
        fh.write('{"name": "c.zip", "si')
    assert journal.read(FOLDER) == {"a.zip": 10, "b.zip": 20}
    assert journal.read("phase2/NQ/checkpoints") == {}
