"""The uploader against a real S3 server on loopback: companions first and the zip last,
read back and verified, retried while the server is down, retention that never deletes what
is not uploaded yet and deletes on the bucket zip first, and an end that is bounded."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from checkpointing.config import RetentionConfig
from checkpointing.locations import StoreURI, default_staging_dir
from checkpointing.naming import format_checkpoint_name
from checkpointing.object_store import ObjectStore
from checkpointing.policies import build_policy
from checkpointing.retention import prune_folder
from checkpointing.store import commit_files
from checkpointing.uploads import Backoff, Uploader
from tests.s3 import Request, S3Server

URI = StoreURI("s3", "acc", "models")
FOLDER = "phase1/NQ/checkpoints"
FAST = Backoff(initial=0.05, factor=2.0, maximum=0.2)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staging"


@pytest.fixture
def uploader(s3: S3Server, staging: Path) -> Uploader:
    s3.create_bucket("acc")
    return Uploader(ObjectStore(URI), staging, backoff=FAST, progress_every=0.2)


def commit(staging: Path, ts: int, hook: object = None) -> Path:
    name = format_checkpoint_name("NQ", ts, "periodic", 0.5, 1.25, 42, "r1")
    path, _ = commit_files(
        staging / FOLDER,
        name,
        lambda tmp: tmp.write_bytes(b"model %d " % ts * 5000),
        b"stats %d" % ts,
        {"schema_version": "2.0", "val_reward": 0.5},
        on_commit=hook,  # type: ignore[arg-type]
    )
    return path


def companions(zip_path: Path) -> list[Path]:
    base = zip_path.name[: -len(".zip")]
    return [zip_path.with_name(base + s) for s in ("_vecnormalize.pkl", "_metadata.json")]


def key(path: Path) -> str:
    return f"models/{FOLDER}/{path.name}"


def order(requests: list[Request], method: str = "") -> list[str]:
    """Keys in the order the server completed them (``method="DELETE"``: deleted them)."""
    if method:
        return [r.key for r in requests if r.method == method and r.status < 300]
    return [r.key for r in requests if r.completes_object]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_checkpoint_reaches_the_bucket_companions_first_and_verified(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    zips = [commit(staging, ts, uploader.committed) for ts in (100, 200, 300)]
    report = uploader.close(10)
    assert report.complete and report.uploaded == 3, report
    # Each object is read back once it is stored, and the zip only sent after its companions
    # were read back.
    log = [
        ("stored" if r.completes_object else "read", r.key)
        for r in s3.requests
        if r.completes_object or r.method == "GET"
    ]
    for z in zips:
        zip_done = log.index(("stored", key(z)))
        for c in companions(z):
            assert log.index(("stored", key(c))) < log.index(("read", key(c))) < zip_done, log
        assert ("read", key(z)) in log[zip_done:]
    files = [p for z in zips for p in (*companions(z), z)]
    assert s3.keys("acc", "models/phase1") == sorted(key(p) for p in files)
    for path in files:
        assert sha(s3.read("acc", key(path))) == sha(path.read_bytes())
    done = order(s3.requests)
    for z in zips:
        assert all(done.index(key(c)) < done.index(key(z)) for c in companions(z)), done


def test_a_staged_checkpoint_that_fails_its_sha256_is_never_uploaded(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    zip_path = commit(staging, 100)
    zip_path.write_bytes(b"flipped" + zip_path.read_bytes()[7:])
    uploader.committed(zip_path)
    report = uploader.close(10)
    assert report.dropped == 1 and report.uploaded == 0 and report.complete
    assert s3.keys("acc", "models/phase1") == []
    assert any("not uploaded" in line for line in report.lines())


def test_uploads_wait_out_a_server_that_is_down_and_training_never_waits(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    s3.stop()
    t0 = time.monotonic()
    zips = [commit(staging, ts, uploader.committed) for ts in (100, 200)]
    assert time.monotonic() - t0 < 1.0  # committing never waits for the bucket
    wait_until(lambda: uploader.report().last_error is not None)
    assert "Could not connect" in str(uploader.report().last_error)
    assert uploader.backlog() == 2
    s3.start()
    report = uploader.close(20)
    assert report.complete and report.uploaded == 2, report
    assert {key(z) for z in zips} <= set(s3.keys("acc"))


def test_retention_keeps_what_is_not_uploaded_then_deletes_on_the_bucket_zip_first(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    retention = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=0, keep_top_k_by_reward=0)
    policy = build_policy(retention, extra=[uploader.retention_rule()])
    s3.stop()
    zips = [commit(staging, ts, uploader.committed) for ts in (100, 200, 300)]
    pinned = prune_folder(staging / FOLDER, retention, policy=policy)
    assert pinned.deleted == 0
    assert [r.kept_by for r in pinned.plan.rows] == [  # type: ignore[union-attr]
        ("pending_upload",),
        ("pending_upload",),
        ("last_1_periodic", "pending_upload"),
    ]
    s3.start()
    wait_until(lambda: uploader.backlog() == 0)
    pruned = prune_folder(staging / FOLDER, retention, policy=policy)
    assert [r.info.path for r in pruned.deleted_rows] == zips[:2]
    uploader.forget(r.info.path for r in pruned.deleted_rows)
    report = uploader.close(10)
    assert report.complete and report.deletions_pending == 0
    left = [k for k in s3.keys("acc", "models/phase1") if not k.endswith("/")]
    assert left == sorted(key(p) for p in (*companions(zips[2]), zips[2]))
    deleted = order(s3.requests, "DELETE")
    for z in zips[:2]:
        assert all(deleted.index(key(z)) < deleted.index(key(c)) for c in companions(z)), deleted


def test_the_end_is_bounded_and_names_what_is_only_local(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    s3.stop()
    zips = [commit(staging, ts, uploader.committed) for ts in (100, 200)]
    progress: list[str] = []
    t0 = time.monotonic()
    report = uploader.close(1.0, progress.append)
    assert time.monotonic() - t0 < 3.0
    assert not report.complete and report.pending == sorted(zips)
    assert (
        progress[0] == "uploads: waiting for 2 checkpoint(s) to reach s3://acc/models (at most 1s)"
    )
    text = "\n".join(report.lines())
    assert f"2 checkpoint(s) are only in the local staging folder {staging}" in text
    assert "Could not connect" in text
    assert all(f"  {z}" in text for z in zips)
    assert all(z.exists() for z in zips)


def test_catch_up_uploads_what_an_earlier_run_left_only_in_staging(
    s3: S3Server, staging: Path, uploader: Uploader
) -> None:
    first, second = commit(staging, 100), commit(staging, 200)
    store = ObjectStore(URI)
    for path in (*companions(first), first):
        store.put(path, f"{FOLDER}/{path.name}")
    assert uploader.catch_up(staging / FOLDER) == 1
    assert uploader.catch_up(staging / FOLDER) == 0  # already queued
    assert uploader.close(10).uploaded == 1
    assert key(second) in s3.keys("acc")


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert [Backoff().delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_the_default_staging_folder_is_under_the_user_cache(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert default_staging_dir(URI, home) == Path(
        tmp_path, ".cache/futures-rl-tuner/staging/acc/models"
    )
    assert default_staging_dir(URI, {"XDG_CACHE_HOME": "/c"}) == Path(
        "/c/futures-rl-tuner/staging/acc/models"
    )


def test_a_checkpoint_outside_staging_is_refused(uploader: Uploader, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not under the staging folder"):
        uploader.key_of(tmp_path / "elsewhere" / "x.zip")
