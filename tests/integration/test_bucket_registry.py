"""The registry of a models root in a bucket (one shard per run, written only by its run's
process; the view their union checked against listings), catch-up that never uploads again
what retention deleted on the bucket, and the browser reading a bucket, against a real S3
server on loopback."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.folders import BucketRoot
from checkpointing.locations import StoreURI
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName
from checkpointing.object_store import ObjectStore
from checkpointing.registry import Registry
from checkpointing.registry import main as registry_main
from checkpointing.retention import main as retention_main
from checkpointing.retention import prune_folder
from checkpointing.shards import BucketRegistry, decode_shard, shard_key
from checkpointing.store import commit_files
from checkpointing.uploads import Backoff, Uploader
from tests.report_files import checkpoint_dir, report_row, write_checkpoint, write_trial
from tests.s3 import S3Server

URI = StoreURI("s3", "acc", "models")
ROOT = "s3://acc/models"
FOLDER = "phase1/NQ/checkpoints"
FAST = Backoff(initial=0.05, factor=2.0, maximum=0.2)


@pytest.fixture
def bucket(s3: S3Server) -> S3Server:
    s3.create_bucket("acc")
    return s3


def uploader_for(staging: Path) -> Uploader:
    return Uploader(ObjectStore(URI), staging, backoff=FAST, progress_every=0.2)


def commit(
    staging: Path,
    ts: int,
    *,
    run: str = "r1",
    seed: int = 42,
    hook: Callable[[Path, dict[str, Any]], None] | None = None,
    sharpe: float = 1.0,
) -> Path:
    name = CheckpointName("NQ", ts, "periodic", ts / 1e4, sharpe, seed, run)
    path, _ = commit_files(
        staging / FOLDER,
        name.filename,
        lambda tmp: tmp.write_bytes(b"PK" + name.filename.encode() * 20),
        b"stats %d" % ts,
        build_metadata(
            name=name, phase=1, metrics={"val_reward": ts / 1e4, "sharpe_ratio": sharpe}
        ),
        on_commit=hook,
    )
    return path


def rel(path: Path) -> str:
    return f"{FOLDER}/{path.name}"


def shard_entries(s3: S3Server) -> dict[str, Any]:
    """Every entry of every shard object on the bucket, by path (shards read directly)."""
    out: dict[str, Any] = {}
    for key in s3.keys("acc", "models/registry/"):
        if key.endswith(".json"):
            out.update(decode_shard(s3.read("acc", key), key))
    return out


def gets(s3: S3Server, suffix: str) -> list[str]:
    return [r.key for r in s3.requests if r.method == "GET" and r.key.endswith(suffix)]


# --------------------------------------------------------------------------- writers


def test_runs_on_many_nodes_recording_at_once_lose_no_entry(
    bucket: S3Server, tmp_path: Path
) -> None:
    """Eight nodes (each its staging folder, its uploader and its run) commit into one bucket
    folder at once; every checkpoint is in the shards, so the view reads no metadata."""
    nodes, saves = 8, 6
    barrier = threading.Barrier(nodes)
    committed: list[list[Path]] = [[] for _ in range(nodes)]
    errors: list[BaseException] = []

    def node(i: int) -> None:
        try:
            uploads = uploader_for(tmp_path / f"node{i}")
            barrier.wait()
            for k in range(saves):
                committed[i].append(
                    commit(
                        tmp_path / f"node{i}",
                        1000 * (k + 1),
                        run=f"n{i}",
                        seed=i,
                        hook=uploads.committed,
                    )
                )
            report = uploads.close(60)
            assert report.complete and report.shards_pending == 0, report.lines()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    every = sorted(rel(p) for paths in committed for p in paths)
    assert len(every) == nodes * saves
    assert sorted(shard_entries(bucket)) == every  # the shards alone hold every entry
    assert len(bucket.keys("acc", "models/registry/")) == nodes
    bucket.requests.clear()
    entries = BucketRegistry(URI).entries(1, "NQ")
    assert sorted(e.path for e in entries) == every
    assert gets(bucket, "_metadata.json") == [] and gets(bucket, ".zip") == []
    best = BucketRegistry(URI).find_best(1, "NQ", "val_reward", seed=3)
    assert best is not None and best.path == rel(committed[3][-1]) and best.run_id == "n3"


def test_a_run_continued_on_another_node_keeps_what_it_wrote_on_the_first(
    bucket: S3Server, tmp_path: Path
) -> None:
    first = uploader_for(tmp_path / "a")
    a = [commit(tmp_path / "a", ts, hook=first.committed) for ts in (1000, 2000)]
    assert first.close(20).complete
    second = uploader_for(tmp_path / "b")  # a retry on another node: an empty staging folder
    b = commit(tmp_path / "b", 3000, hook=second.committed)
    assert second.close(20).complete
    key = "models/" + shard_key(("NQ", 42, "r1"))
    shard = decode_shard(bucket.read("acc", key), key)
    assert sorted(shard) == sorted(rel(p) for p in [*a, b])
    assert shard[rel(a[0])].metric("val_reward") == pytest.approx(0.1)


def test_retention_in_the_run_drops_entries_and_on_the_bucket_the_view_follows_the_listing(
    bucket: S3Server, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    uploads = uploader_for(staging)
    paths = [
        commit(staging, ts, hook=uploads.committed, sharpe=ts / 1e3)
        for ts in range(1000, 6000, 1000)
    ]
    retention = RetentionConfig(keep_last_n=3, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    wait = uploads.wait(20)
    assert wait
    pruned = prune_folder(staging / FOLDER, retention)
    uploads.forget(r.info.path for r in pruned.deleted_rows)
    assert uploads.close(20).complete
    assert sorted(shard_entries(bucket)) == sorted(rel(p) for p in paths[2:])
    # Retention on the bucket (another machine): the shard is not rewritten, the view follows.
    tight = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    prune_folder(BucketRoot(URI, CheckpointConfig()).folder(1, "NQ"), tight)
    assert sorted(shard_entries(bucket)) == sorted(rel(p) for p in paths[2:])
    assert [e.path for e in BucketRegistry(URI).entries(1, "NQ")] == [rel(paths[-1])]


# --------------------------------------------------------------------------- rebuild


def test_rebuild_on_the_bucket_writes_every_runs_shard_from_the_metadata_objects(
    bucket: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "staging"
    uploads = uploader_for(staging)
    for run, seed in (("r1", 1), ("r2", 2)):
        for ts in (1000, 2000, 3000):
            commit(staging, ts, run=run, seed=seed, hook=uploads.committed)
    assert uploads.close(20).complete
    before = {e.path: e.to_json() for e in BucketRegistry(URI).entries()}
    local = {e.path: e.to_json() for e in Registry(staging).entries()}
    assert before == local and len(before) == 6  # the bucket's view is the staging folder's
    store = ObjectStore(URI)
    for key in list(store.tree("registry")):
        store.delete(f"registry/{key}")
    assert shard_entries(bucket) == {}
    bucket.requests.clear()
    assert {e.path: e.to_json() for e in BucketRegistry(URI).entries()} == before  # metadata
    assert len(gets(bucket, "_metadata.json")) == 6
    assert registry_main(["rebuild", "--models-root", ROOT]) == 0
    assert "indexed 6 checkpoints in 2 run shard(s) under s3://acc/models/registry/" in (
        capsys.readouterr().out
    )
    assert gets(bucket, ".zip") == []
    assert sorted(shard_entries(bucket)) == sorted(before)
    bucket.requests.clear()
    assert {e.path: e.to_json() for e in BucketRegistry(URI).entries()} == before
    assert gets(bucket, "_metadata.json") == []


def test_the_view_reads_only_the_shards_of_the_runs_asked_for(
    bucket: S3Server, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    uploads = uploader_for(staging)
    for run, seed in (("r1", 1), ("r2", 2), ("r3", 3)):
        commit(staging, 1000, run=run, seed=seed, hook=uploads.committed)
    assert uploads.close(20).complete
    bucket.requests.clear()
    entries = BucketRegistry(URI).entries(1, "NQ", runs={"r2"})
    assert len(entries) == 3
    assert [k.rsplit("/", 1)[-1] for k in gets(bucket, ".json")] == ["seed-2_run-r2.json"]
    full = {e.run_id: e.metric("val_reward") for e in entries}
    assert full["r2"] == pytest.approx(0.1)


def test_rebuild_names_a_missing_bucket(
    bucket: S3Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert registry_main(["rebuild", "--root", "s3://nobucket/models"]) == 2
    assert "bucket 'nobucket' does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- catch-up


def test_catch_up_never_uploads_again_what_retention_deleted_on_the_bucket(
    bucket: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = tmp_path / "staging"
    uploads = uploader_for(staging)
    paths = [commit(staging, ts, hook=uploads.committed) for ts in (1000, 2000, 3000)]
    assert uploads.close(20).complete
    # Retention on the bucket, from another machine, deletes the two oldest.
    (tmp_path / "cfg.yaml").write_text(
        "checkpointing:\n  retention:\n    keep_last_n: 1\n    keep_top_k_by_sharpe: 0\n"
        "    keep_top_k_by_reward: 0\n"
    )
    code = retention_main(["--phase", "1", "--root", ROOT, "--config", str(tmp_path / "cfg.yaml")])
    assert code == 0, capsys.readouterr()
    on_bucket = set(ObjectStore(URI).listing(FOLDER))
    assert paths[0].name not in on_bucket and paths[2].name in on_bucket
    assert all(p.exists() for p in paths)  # the staging folder still has them
    # A checkpoint staged while the bucket was away, never uploaded: catch-up's real work.
    late = commit(staging, 4000)
    again = uploader_for(staging)
    assert again.catch_up(staging / FOLDER) == 1
    assert sorted(again.deleted_on_bucket) == sorted(paths[:2])
    assert again.close(20).complete
    names = set(ObjectStore(URI).listing(FOLDER))
    assert late.name in names
    assert paths[0].name not in names and paths[1].name not in names  # not resurrected
    assert sorted(shard_entries(bucket))[-1] == rel(late)


def test_what_was_on_the_bucket_before_the_journal_is_not_resurrected_either(
    bucket: S3Server, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    path = commit(staging, 1000)
    store = ObjectStore(URI)
    for p in sorted(path.parent.glob(path.name[:-4] + "*"), key=lambda p: p.suffix == ".zip"):
        store.put(p, f"{FOLDER}/{p.name}")  # uploaded by an uploader without a journal
    assert uploader_for(staging).catch_up(staging / FOLDER) == 0  # on the bucket: journaled
    store.delete(f"{FOLDER}/{path.name}")  # retention on the bucket, zip first
    again = uploader_for(staging)
    assert again.catch_up(staging / FOLDER) == 0
    assert again.deleted_on_bucket == [path]
    again.close(5)


def test_the_start_of_a_run_says_what_it_does_not_upload_again(
    bucket: S3Server, tmp_path: Path
) -> None:
    from tuner.training.staging import RemoteRoot, open_uploads

    staging = tmp_path / "staging"
    uploads = uploader_for(staging)
    path = commit(staging, 1000, hook=uploads.committed)
    assert uploads.close(20).complete
    ObjectStore(URI).delete(f"{FOLDER}/{path.name}")
    lines: list[str] = []
    again = open_uploads(RemoteRoot(URI, staging), CheckpointConfig(), lines.append)
    again.close(5)
    assert (
        f"uploads: 1 staged checkpoint(s) were deleted on {ROOT} after their upload (retention "
        "there); not uploading them again"
    ) in lines


def test_catch_up_puts_the_shards_an_earlier_run_left_only_in_staging(
    bucket: S3Server, tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    bucket.stop()
    uploads = uploader_for(staging)
    paths = [commit(staging, ts, hook=uploads.committed) for ts in (1000, 2000)]
    report = uploads.close(0.5)
    assert not report.complete and report.shards_pending == 1
    assert any("1 registry shard(s) are not on s3://acc/models yet" in x for x in report.lines())
    bucket.start()
    again = uploader_for(staging)
    assert again.catch_up(staging / FOLDER) == 2
    assert again.catch_up_registry() == 1
    assert again.close(20).complete
    assert sorted(shard_entries(bucket)) == sorted(rel(p) for p in paths)
    assert uploader_for(staging).catch_up_registry() == 0  # the same on both sides now


# --------------------------------------------------------------------------- the browser


def browse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    from tuner.browse import main

    code = main(["--json", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_the_browser_reads_the_best_checkpoints_from_a_bucket(
    bucket: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models, storage = tmp_path / "models", tmp_path / "ray_results"
    for seed, market in ((1, "NQ"), (2, "NQ"), (1, "ES")):
        run = f"exp-t{seed}{market}"
        folder = checkpoint_dir(models, market)
        names = [
            CheckpointName(market, ts, "periodic", ts / 1e4 + seed, seed + ts / 1e3, seed, run)
            for ts in (1000, 2000, 3000)
        ]
        for name in names:
            write_checkpoint(folder, name)
        write_trial(
            storage / "exp",
            f"t{seed}{market}",
            market=market,
            seed=seed,
            models=models,
            rows=[report_row(n) for n in names],
        )
    other = CheckpointName("NQ", 9000, "periodic", 9.0, 9.0, 3, "someone-else")
    write_checkpoint(checkpoint_dir(models, "NQ"), other)
    for path in sorted(models.rglob("*"), key=lambda p: p.suffix == ".zip"):
        if path.is_file() and not path.name.startswith("."):
            ObjectStore(URI).put(path, path.relative_to(models).as_posix())
    argv = ["--storage-path", str(storage), "--experiment", "exp"]
    local = browse([*argv, "--models-root", str(models)], capsys)
    bucket.requests.clear()
    remote = browse([*argv, "--models-root", ROOT], capsys)
    assert gets(bucket, ".zip") == []
    assert len(gets(bucket, "_metadata.json")) == 9  # no shards yet: the experiment's runs only

    def same(doc: dict[str, Any]) -> str:
        return json.dumps(doc).replace(os.fspath(models), ROOT)

    assert remote["best"]["NQ"][0]["path"].startswith(f"{ROOT}/phase1/NQ/checkpoints/NQ_ts-")
    assert remote["other_runs_skipped"] == {"ES": 0, "NQ": 1}
    assert all(t["checkpoint_exists"] for t in remote["trial_rows"])
    assert json.loads(same(local))["best"] == remote["best"]
    for mine, theirs in zip(
        json.loads(same(local))["trial_rows"], remote["trial_rows"], strict=True
    ):
        assert mine["checkpoint_path"] == theirs["checkpoint_path"]
        assert mine["checkpoint_path"].startswith(f"{ROOT}/phase1/")
    assert remote["models_roots"] == [ROOT]
    every = browse([*argv, "--models-root", ROOT, "--all-runs"], capsys)
    assert every["best"]["NQ"][0]["run_id"] == "someone-else"
    # With the shards rebuilt, the same answer from one object per run.
    assert registry_main(["rebuild", "--root", ROOT]) == 0
    capsys.readouterr()
    bucket.requests.clear()
    assert browse([*argv, "--models-root", ROOT], capsys)["best"] == remote["best"]
    assert gets(bucket, "_metadata.json") == [] and gets(bucket, ".zip") == []
    # A trial's latest checkpoint gone from the bucket is said so.
    latest = remote["trial_rows"][0]["checkpoint_path"]
    ObjectStore(URI).delete(latest[len(ROOT) + 1 :])
    text_code = __import__("tuner.browse", fromlist=["main"]).main([*argv, "--models-root", ROOT])
    assert text_code == 0
    assert "(not on the bucket)" in capsys.readouterr().out


def test_the_browser_names_a_bucket_it_cannot_read(
    bucket: S3Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.browse import main

    models, storage = tmp_path / "models", tmp_path / "ray_results"
    name = CheckpointName("NQ", 1000, "periodic", 0.1, 1.0, 1, "exp-t1")
    write_checkpoint(checkpoint_dir(models, "NQ"), name)
    write_trial(storage / "exp", "t1", market="NQ", seed=1, models=models, rows=[report_row(name)])
    argv = ["--storage-path", str(storage), "--experiment", "exp"]
    assert main([*argv, "--models-root", "s3://nobucket/models"]) == 2
    assert "bucket 'nobucket' does not exist" in capsys.readouterr().err
