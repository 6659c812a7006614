"""Object-store faults under the uploader, for real: the moto S3 server on loopback
(tests/s3.py) behind a fault-injecting HTTP proxy (tests/s3_faults.py), the real pyarrow
client and the real :class:`~checkpointing.uploads.Uploader` on a small staging folder.

- Each fault the proxy can inject (503 SlowDown, 500 InternalError, a connection reset, an
  answer lost after the request was forwarded, an answer cut mid-body, a bit flipped in an
  answer's body) on each object of an upload (the pkl, the metadata, the zip, the run's
  registry shard), with the SDK's own retry off so that each fault reaches the uploader and
  its backoff: every checkpoint ends on the bucket byte for byte.
- A read-back answered with a flipped bit or cut mid-body is never taken for a verified
  upload: the checkpoint stays pending, its zip is not left on the bucket unverified, the
  journal does not name it.
- The S3 server stopped at each stage of a checkpoint's upload (inside the pkl's body, at the
  metadata's read-back, inside the zip's body, at its read-back) and started again: the
  upload completes.

After every try the server's own request log is replayed: no moment of the bucket (so no
listing) showed a zip without both of its companions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checkpointing.locations import StoreURI
from checkpointing.object_store import ObjectStore, S3Settings
from checkpointing.uploads import Backoff, Uploader, UploadJournal
from tests.integration.test_uploads import FOLDER, commit, companions
from tests.reliability.conftest import FaultLog
from tests.s3 import Request, S3Server, lone_zips
from tests.s3_faults import (
    CUT_BODY,
    FAULTS,
    FLIPPED_BODY,
    INTERNAL_ERROR,
    LOST_ANSWER,
    RESET,
    SLOW_DOWN,
    FaultProxy,
    Rule,
)

pytestmark = pytest.mark.reliability

FAST = Backoff(initial=0.05, factor=2.0, maximum=0.2)
# Which requests of an object each fault is aimed at (pyarrow puts an object in three: POST to
# start a multipart upload, PUT its part, POST to complete it); a bit flipped matters in what
# is read: an object read back, an upload id.
METHODS = {
    SLOW_DOWN: {"PUT", "POST", "GET", "HEAD"},
    INTERNAL_ERROR: {"PUT", "POST", "GET", "HEAD"},
    RESET: {"PUT", "POST", "GET", "HEAD"},
    LOST_ANSWER: {"PUT", "POST", "GET", "HEAD"},
    CUT_BODY: {"POST", "GET"},
    FLIPPED_BODY: {"POST", "GET"},
}
OBJECTS = {
    "pkl": r"_vecnormalize\.pkl$",
    "metadata": r"_metadata\.json$",
    "zip": r"\.zip$",
    "registry shard": r"registry/",
}


@pytest.fixture
def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The proxy in front of the server, and this process's endpoint pointing at it."""
    s3.create_bucket("acc")
    with FaultProxy(s3.port) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", running.endpoint)
        yield running


def start_uploader(prefix: str, staging: Path) -> Uploader:
    """An uploader to ``s3://acc/<prefix>`` through the proxy. The SDK's own retry is off
    (one attempt per request), so that every fault reaches the uploader and its backoff."""
    settings = dataclasses.replace(S3Settings.from_environment(), attempts=1)
    store = ObjectStore(StoreURI("s3", "acc", prefix), settings)
    return Uploader(store, staging, backoff=FAST)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_on_the_bucket(s3: S3Server, prefix: str, staging: Path, zips: list[Path]) -> None:
    """Each checkpoint's zip and companions are on the bucket as staged, and the upload
    journal names each zip (written only after its read-back matched)."""
    for zip_path in zips:
        for path in (*companions(zip_path), zip_path):
            stored = s3.read("acc", f"{prefix}/{FOLDER}/{path.name}")
            assert sha(stored) == sha(path.read_bytes()), f"{path.name} differs on the bucket"
    journal = UploadJournal(staging).read(FOLDER)
    assert {z.name for z in zips} <= set(journal), journal


def zip_alone(requests: list[Request], prefix: str) -> list[str]:
    """Replays the server's log: the zips that were, at some moment, on the bucket without
    both of their companions (what a listing taken then would have shown)."""
    present: set[str] = set()
    alone: list[str] = []
    for r in requests:
        if not r.key.startswith(prefix + "/"):
            continue
        if r.completes_object:
            present.add(r.key)
        elif r.method == "DELETE" and r.status < 300:
            present.discard(r.key)
        else:
            continue
        alone += [f"{key} after {r.method} {r.key}" for key in lone_zips(present)]
    return alone


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f}s")
        time.sleep(0.01)


# --------------------------------------------------------------------------- errors


def test_uploads_get_through_each_injected_error_on_each_object(
    s3: S3Server, proxy: FaultProxy, tmp_path: Path, fault_log: FaultLog
) -> None:
    """One uploader per fault, all at once, each to its own prefix."""
    sessions = []
    for n, fault in enumerate(FAULTS):
        prefix, staging = f"f{n}", tmp_path / f"staging{n}"
        rules = {
            what: Rule(fault, METHODS[fault], rf"^{prefix}/.*{pattern}", times=1)
            for what, pattern in OBJECTS.items()
        }
        proxy.add(*rules.values())
        uploader = start_uploader(prefix, staging)
        sessions.append((fault, prefix, staging, rules, uploader))
        uploader.committed(commit(staging, 100))
    with fault_log.tries("S3 errors and throttling from a proxy") as t:
        for fault, prefix, staging, rules, uploader in sessions:
            report = uploader.close(60)
            for what, rule in rules.items():
                with t.attempt(f"{fault} on the {what}"):
                    assert rule.injected == 1, f"injected {rule.injected} times"
                    assert report.complete and report.uploaded == 1, report
                    assert_on_the_bucket(s3, prefix, staging, report_zips(staging))
                    assert zip_alone(s3.requests, prefix) == []


def report_zips(staging: Path) -> list[Path]:
    return sorted((staging / FOLDER).glob("*.zip"))


def test_a_read_back_with_a_flipped_bit_or_cut_short_is_never_taken_for_an_upload(
    s3: S3Server, proxy: FaultProxy, tmp_path: Path, fault_log: FaultLog
) -> None:
    with fault_log.tries("read-back answered with a flipped bit or cut mid-body") as t:
        for n, fault in enumerate((FLIPPED_BODY, CUT_BODY)):
            with t.attempt(f"every read-back of the zip: {fault}"):
                prefix, staging = f"r{n}", tmp_path / f"staging{n}"
                proxy.clear()
                proxy.add(Rule(fault, {"GET"}, rf"^{prefix}/.*\.zip$"))
                uploader = start_uploader(prefix, staging)
                zip_path = commit(staging, 100, uploader.committed)
                wait_until(lambda f=fault: len(proxy.injected(f)) >= 2, "read-backs answered")
                report = uploader.close(0.5)
                uploader._thread.join(30)  # its last attempt ended: the bucket settles
                assert not report.complete and report.pending == [zip_path], report
                assert report.uploaded == 0
                assert UploadJournal(staging).read(FOLDER) == {}
                keys = s3.keys("acc", f"{prefix}/{FOLDER}/")
                if fault == FLIPPED_BODY:  # read back whole, wrong: deleted at once
                    assert f"{prefix}/{FOLDER}/{zip_path.name}" not in keys, keys
                    assert "reads back as" in str(report.last_error), report.last_error

        # The zip stored but its read-back cut twice (the SDK gives up): the upload starts
        # over, and the pkl then reads back wrong once. The zip must not stand alone.
        with t.attempt("zip read-back cut, then the pkl's read-back flipped"):
            prefix, staging = "r2", tmp_path / "staging2"
            proxy.clear()
            proxy.add(
                Rule(CUT_BODY, {"GET"}, rf"^{prefix}/.*\.zip$", times=2),
                Rule(FLIPPED_BODY, {"GET"}, rf"^{prefix}/.*\.pkl$", skip=1, times=1),
            )
            uploader = start_uploader(prefix, staging)
            zip_path = commit(staging, 100, uploader.committed)
            report = uploader.close(60)
            faults = sorted(e.fault or "" for e in proxy.injected() if e.key.startswith(prefix))
            assert faults == sorted([CUT_BODY, CUT_BODY, FLIPPED_BODY]), faults
            assert report.complete and report.uploaded == 1, report
            assert_on_the_bucket(s3, prefix, staging, [zip_path])
            assert zip_alone(s3.requests, prefix) == []


# --------------------------------------------------------------------------- server down

# (what, operation, pattern of the key): the request of the second checkpoint's upload (the
# first is on the bucket) at which the server goes down.
STAGES = [
    ("inside the pkl's body", "PUT", r"_vecnormalize\.pkl$"),
    ("at the metadata's read-back", "GET", r"_metadata\.json$"),
    ("inside the zip's body", "PUT", r"\.zip$"),
    ("at the zip's read-back", "GET", r"\.zip$"),
]


class StopServer:
    """The proxy's ``before`` hook: stops the S3 server at the first request ``method`` of a
    key that ``pattern`` finds, before that request is forwarded."""

    def __init__(self, s3: S3Server, method: str, pattern: re.Pattern[str]) -> None:
        self.s3, self.method, self.pattern = s3, method, pattern
        self.done = threading.Event()

    def __call__(self, method: str, key: str) -> None:
        if not self.done.is_set() and method == self.method and self.pattern.search(key):
            self.done.set()
            self.s3.stop()


def test_the_server_stopped_at_each_request_of_an_upload_and_started_again(
    s3: S3Server, proxy: FaultProxy, tmp_path: Path, fault_log: FaultLog
) -> None:
    with fault_log.tries("S3 server stopped mid-upload, then started again") as t:
        for n, (what, method, pattern) in enumerate(STAGES):
            with t.attempt(f"stopped {what}"):
                prefix, staging = f"s{n}", tmp_path / f"staging{n}"
                stop = StopServer(s3, method, re.compile(rf"^{prefix}/.*{pattern}"))
                uploader = start_uploader(prefix, staging)
                first = commit(staging, 100, uploader.committed)
                assert uploader.wait(60), "the first checkpoint was not uploaded"
                proxy.before = stop
                second = commit(staging, 200, uploader.committed)
                wait_until(stop.done.is_set, f"a request {what}")
                wait_until(lambda u=uploader: u.report().last_error is not None, "an error")
                assert not s3.running
                s3.start()
                report = uploader.close(60)
                proxy.before = None
                assert report.complete and report.uploaded == 2, report
                assert_on_the_bucket(s3, prefix, staging, [first, second])
                assert zip_alone(s3.requests, prefix) == []
