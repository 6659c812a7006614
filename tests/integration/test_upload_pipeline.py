"""The uploader's zip in flight, against a real S3 server on loopback: while a zip is read
back on its own thread the uploader goes on with the next checkpoint, but the next zip waits
for that read-back, a deletion too, and nothing is counted or journaled before it verified.

The faults are the server's: an object overwritten between its put and its read-back (what a
corrupting proxy would hand back), a read-back that takes its time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checkpointing.locations import StoreURI
from checkpointing.object_store import ObjectStore
from checkpointing.store import list_checkpoints
from checkpointing.uploads import Uploader, UploadJournal
from tests.integration.test_uploads import (
    FAST,
    FOLDER,
    URI,
    commit,
    companions,
    key,
    order,
    sha,
    wait_until,
)
from tests.s3 import S3Server


@pytest.fixture
def staging(s3: S3Server, tmp_path: Path) -> Path:
    s3.create_bucket("acc")
    return tmp_path / "staging"


@pytest.fixture
def uploader_of(staging: Path) -> Iterator[Callable[[ObjectStore], Uploader]]:
    """Makes the uploaders of a test; each is stopped at its end, passed or failed (one left
    retrying would disturb the next test)."""
    made: list[Uploader] = []

    def make(store: ObjectStore) -> Uploader:
        made.append(Uploader(store, staging, backoff=FAST, progress_every=0.2))
        return made[-1]

    yield make
    for uploader in made:
        uploader.close(0)


class CorruptedOnTheWay(ObjectStore):
    """Each read-back of a zip named ``bad`` finds the object overwritten on the server."""

    def __init__(self, uri: StoreURI, s3: S3Server) -> None:
        super().__init__(uri)
        self.s3 = s3
        self.bad: str | None = None
        self.corrupted = 0

    def compare(self, key: str, local: Path) -> tuple[int, int | None]:
        if self.bad is not None and key.endswith(self.bad):
            self.s3.client().put_object(Bucket="acc", Key=f"models/{key}", Body=b"corrupt")
            self.corrupted += 1
        return super().compare(key, local)


class SlowReadBack(ObjectStore):
    """The read-back of a zip starts once the server deleted it, or after ``patience``
    seconds: a deletion that did not wait for it shows."""

    def __init__(self, uri: StoreURI, s3: S3Server, patience: float = 1.0) -> None:
        super().__init__(uri)
        self.s3, self.patience = s3, patience

    def compare(self, key: str, local: Path) -> tuple[int, int | None]:
        if key.endswith(".zip"):
            deadline = time.monotonic() + self.patience
            while time.monotonic() < deadline and f"models/{key}" not in order(
                self.s3.requests, "DELETE"
            ):
                time.sleep(0.02)
        return super().compare(key, local)


def test_a_zip_that_fails_its_read_back_holds_back_the_next_and_is_not_journaled(
    s3: S3Server, staging: Path, uploader_of: Callable[[ObjectStore], Uploader]
) -> None:
    store = CorruptedOnTheWay(URI, s3)
    uploader = uploader_of(store)
    first = commit(staging, 100)
    store.bad = first.name
    zips = [first, *(commit(staging, ts) for ts in (200, 300))]
    for path in zips:
        uploader.committed(path)
    wait_until(lambda: store.corrupted >= 3)
    # Read back wrong three times: the first checkpoint is not uploaded, stays pending (kept
    # in staging), is not journaled, and no later zip went to the bucket meanwhile.
    report = uploader.report()
    assert report.uploaded == 0 and report.pending == sorted(zips), report
    assert "reads back as 7 bytes" in str(report.last_error)
    assert UploadJournal(staging).read(FOLDER) == {}
    infos = list_checkpoints(staging / FOLDER)
    assert uploader.retention_rule().decide(infos) == ["pending_upload"] * 3
    assert not {key(z) for z in zips[1:]} & set(order(s3.requests))

    store.bad = None
    report = uploader.close(10)
    assert report.complete and report.uploaded == 3, report
    done = [k for k in order(s3.requests) if k.endswith(".zip")]
    last_first = len(done) - 1 - done[::-1].index(key(first))
    assert done[last_first:] == [key(z) for z in zips], done  # commit order, after the retries
    deleted = order(s3.requests, "DELETE")
    assert deleted.count(key(first)) >= 3  # each corrupt one deleted as soon as read back
    journal = UploadJournal(staging)
    assert journal.read(FOLDER) == {z.name: z.stat().st_size for z in zips}
    assert len(journal.path_of(FOLDER).read_text().splitlines()) == 3  # once each, verified
    for path in (p for z in zips for p in (*companions(z), z)):
        assert sha(s3.read("acc", key(path))) == sha(path.read_bytes())


def test_a_deletion_waits_for_the_read_back_of_its_checkpoint(
    s3: S3Server, staging: Path, uploader_of: Callable[[ObjectStore], Uploader]
) -> None:
    uploader = uploader_of(SlowReadBack(URI, s3))
    zip_path = commit(staging, 100, uploader.committed)
    uploader.forget([zip_path])
    report = uploader.close(10)
    assert report.complete and report.uploaded == 1 and report.dropped == 0, report
    assert report.deletions_pending == 0 and report.last_error is None
    reads = [r.key for r in s3.requests if r.method == "GET"]
    deleted = order(s3.requests, "DELETE")
    assert key(zip_path) in reads and deleted[0] == key(zip_path)
    assert s3.requests.index(next(r for r in s3.requests if r.method == "DELETE")) > max(
        i for i, r in enumerate(s3.requests) if r.method == "GET" and r.key == key(zip_path)
    )
    assert [k for k in s3.keys("acc", "models/phase1") if not k.endswith("/")] == []
    assert UploadJournal(staging).read(FOLDER) == {zip_path.name: zip_path.stat().st_size}
