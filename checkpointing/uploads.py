"""Commit locally, upload in the background: a staging folder mirrored to an object store.

A run whose models root is ``s3://bucket/prefix`` commits its checkpoints to a local staging
folder with the usual protocol (:mod:`checkpointing.store`), and an :class:`Uploader` copies
each committed checkpoint to the bucket on its own thread, keeping our rule there too: a
checkpoint exists if and only if its zip exists.

- **Upload.** The staged checkpoint is first checked against its metadata (sizes and sha256:
  a corrupt file is never uploaded). Then the ``.pkl`` and the ``.json`` are put, then the
  zip, last; the size and sha256 of what the puts of the zip and the ``.pkl`` sent are checked
  against the metadata's again, and each object is read back and compared byte for byte with
  the staged file.
  A listing of the bucket never shows a zip without its companions.
- **One zip in flight.** A zip's read-back runs on a thread of its own
  (:class:`~checkpointing.read_back.ReadBack`) while the uploader goes on with the next jobs:
  registry shards, and the next checkpoint up to its zip (verified in staging, companions put
  and read back). The next zip is put only once that read-back verified, and a deletion waits
  for it too, so zips reach the bucket in commit order, and a deletion never races the upload
  of its checkpoint. Until its read-back verified, a checkpoint stays pending (retention keeps
  it in staging) and is neither counted uploaded nor journaled; a failed read-back retries the
  upload from that checkpoint, before any later zip.
- **Delete** (retention): the zip first, then the companions.
- **Failures** are retried in order with exponential backoff (:class:`Backoff`); the
  training thread only enqueues (:meth:`Uploader.committed` is called under the folder lock
  and never waits for the bucket).
- **Retention in staging** keeps every checkpoint whose upload is pending
  (:class:`KeepPendingUploads`, reason ``pending_upload``); once uploaded, the staging
  folder holds what the retention policy keeps, like any models root, and what retention
  deletes there is deleted on the bucket too (:meth:`Uploader.forget`).
- **End of a run**: :meth:`Uploader.wait` waits for what is pending, with progress lines and
  a time bound; :meth:`Uploader.close` then stops the thread and reports what is still only
  local (:class:`UploadReport`).
- **Catching up**: :meth:`Uploader.catch_up` queues the staged checkpoints of a folder that
  are not on the bucket (a previous run that ended with the bucket unreachable), and
  :meth:`Uploader.catch_up_registry` the staged registry shards that differ from the bucket's.
- **Never resurrected.** Each checkpoint whose zip reached the bucket is written down in the
  staging folder's upload journal (:class:`UploadJournal`, ``.uploads/<folder>.jsonl``), after
  the zip is read back. A staged checkpoint the journal names but the bucket no longer has was
  deleted there since (retention on the bucket, from any machine): catching up never uploads it
  again (:attr:`Uploader.deleted_on_bucket`). The one gap: a process killed between a zip's
  read-back and its journal line (microseconds) leaves a checkpoint that a catch-up would
  upload again if retention on the bucket deleted it in between; never the reverse, which
  would lose one.
- **The registry shard** of each run (:mod:`checkpointing.shards`) is kept in the staging
  folder (``registry/<market>/seed-<seed>_run-<run id>.json``), updated when a checkpoint is
  committed and when retention deletes one, and put on the bucket whole after the
  checkpoint's zip; the first put of a shard by a process merges the bucket's copy (what the
  run wrote from another machine). Only this run's process writes it, so runs on many nodes
  never lose each other's entries (:mod:`checkpointing.upload_shards`).

Checkpoints and the runs' registry shards are uploaded. ``registry.json``, ``best_model*`` and
the legacy final models (``runs/<run id>/``) stay in the staging folder.

::

    uploader = Uploader(ObjectStore(uri), staging_root)
    manager = DynamicCheckpointManager(..., models_root=staging_root, on_commit=uploader.committed)
    ...
    report = uploader.close(timeout=300, report=print)
    for line in report.lines():
        print(line)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from checkpointing.errors import CheckpointCorruptError
from checkpointing.fetch import BucketMirror, key_under
from checkpointing.locations import StoreURI
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX, CheckpointName, parse_name
from checkpointing.object_store import ObjectStore
from checkpointing.read_back import ReadBack, unput, verify_stored
from checkpointing.shards import RunKey
from checkpointing.store import CheckpointInfo, list_checkpoints, verify_checkpoint
from checkpointing.upload_journal import UploadJournal
from checkpointing.upload_report import UploadReport
from checkpointing.upload_shards import StagedShards

__all__ = [
    "Backoff",
    "KeepPendingUploads",
    "UploadJournal",
    "UploadReport",
    "Uploader",
]

log = logging.getLogger(__name__)

PENDING_REASON = "pending_upload"


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``initial * factor**(n-1)``, capped."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * self.factor ** max(failures - 1, 0)))


@dataclass(frozen=True, eq=False)  # compared by identity: a checkpoint may be queued twice
class _Job:
    kind: Literal["upload", "delete", "shard"]
    zip_path: Path  # for a shard: the staged shard file


@dataclass(frozen=True)
class _Flight:
    """An upload whose zip is put and being read back; its job stays queued, first, until
    the read-back lands (:meth:`Uploader._land`)."""

    job: _Job
    folder: str  # the key of its folder (the upload journal's)
    check: ReadBack


class _NotVerified(Exception):
    """The read-back of the zip in flight failed: its job is retried (``error``: why)."""

    def __init__(self, job: _Job, error: Exception) -> None:
        super().__init__(str(error))
        self.job, self.error = job, error


class _Dropped(Exception):
    """A job that can never succeed (the staged checkpoint is gone or corrupt)."""


class Uploader:
    """Uploads the checkpoints committed under a staging folder to an object store.

    Args:
        store: the bucket location that mirrors ``staging``.
        staging: the local models root the run commits to.
        backoff: waits between failed attempts.
        progress_every: seconds between progress lines while :meth:`close` waits.

    The thread starts at once. Every method is thread-safe; none waits for the bucket except
    :meth:`close`.
    """

    def __init__(
        self,
        store: ObjectStore,
        staging: Path,
        *,
        backoff: Backoff | None = None,
        progress_every: float = 5.0,
    ) -> None:
        self.store = store
        self.staging = Path(os.path.abspath(staging))
        self._real_staging = os.path.realpath(self.staging)
        self.backoff = backoff or Backoff()
        self.progress_every = progress_every
        self._jobs: deque[_Job] = deque()
        self._pending: dict[str, int] = {}  # real zip path -> uploads queued
        self._cond = threading.Condition()
        self._abandon = False
        self._uploaded = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._shards = StagedShards(store, self.staging)
        self._journal = UploadJournal(self.staging)
        self._shards_queued: set[str] = set()  # real paths of staged shards waiting to go
        self._flight: _Flight | None = None  # the zip being read back (set by the thread only)
        # Staged checkpoints a catch-up found deleted on the bucket after their upload.
        self.deleted_on_bucket: list[Path] = []
        self._thread = threading.Thread(target=self._work, name="checkpoint-uploader", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Uploader({os.fspath(self.staging)!r} -> {str(self.store.uri)!r})"

    # ----------------------------------------------------------------- where

    def key_of(self, path: str | os.PathLike[str]) -> str:
        """The object key (relative to the store's prefix) of a file under the staging root."""
        return key_under(self._real_staging, path)

    def mirror(self) -> BucketMirror:
        """The bucket seen from the staging folder, for reading back (resume)."""
        return BucketMirror(self.store, self.staging)

    def uri_of(self, path: str | os.PathLike[str]) -> StoreURI:
        """Where a staged file or folder is on the bucket."""
        return self.store.uri_of(self.key_of(path))

    # ----------------------------------------------------------------- queueing

    def committed(self, zip_path: str | os.PathLike[str], metadata: Any = None) -> None:
        """Queue the upload of a just-committed checkpoint (the ``on_commit`` hook of
        :func:`checkpointing.store.commit_files`) and index it in its run's staged registry
        shard. Returns at once (local files only); never raises."""
        try:
            self._enqueue(_Job("upload", Path(zip_path)))
            self._index(Path(zip_path), metadata)
        except Exception as exc:  # a hook under the folder lock must not fail the save
            log.error("cannot queue the upload of %s: %s", zip_path, exc)

    def forget(self, zip_paths: Iterable[str | os.PathLike[str]]) -> None:
        """Queue the deletion on the bucket of checkpoints deleted from staging (retention),
        and drop them from their runs' registry shards."""
        drops: list[tuple[RunKey, str]] = []
        for path in map(Path, zip_paths):
            self._enqueue(_Job("delete", path))
            name = parse_name(path.name)
            if isinstance(name, CheckpointName):
                try:
                    drops.append(((name.market, name.seed, name.run_id), self.key_of(path)))
                except ValueError:
                    continue
        try:
            for shard in self._shards.forget(drops):
                self._enqueue_shard(shard)
        except Exception as exc:  # the index can be rebuilt; the deletions are queued
            log.error("cannot update the registry shards in %s: %s", self.staging, exc)

    def _index(self, zip_path: Path, metadata: Any) -> None:
        """Record a committed checkpoint in its run's staged shard; queue the shard's put."""
        shard = self._shards.record(self.key_of(zip_path), zip_path, metadata)
        if shard is not None:
            self._enqueue_shard(shard)

    def _enqueue_shard(self, shard: Path) -> None:
        real = os.path.realpath(shard)
        with self._cond:
            if real in self._shards_queued:
                return  # one put sends whatever the file holds by then
            self._shards_queued.add(real)
            self._jobs.append(_Job("shard", shard))
            self._cond.notify_all()

    def catch_up(self, folder: str | os.PathLike[str]) -> int:
        """Queue the staged checkpoints of ``folder`` that are not on the bucket (or differ
        in size there); returns how many. One listing of the bucket folder.

        A checkpoint the upload journal says reached the bucket, and that the bucket no longer
        has, was deleted there after its upload (retention on the bucket): it is never
        uploaded again, only noted in :attr:`deleted_on_bucket`. Checkpoints found on the
        bucket but not in the journal (uploaded before there was one) are written into it.

        Raises:
            OSError: the bucket cannot be listed.
        """
        local = list_checkpoints(folder, include_legacy=False)
        if not local:
            return 0
        folder_key = self.key_of(folder)
        remote = self.store.sizes(folder_key)
        uploaded = self._journal.read(folder_key)
        with self._cond:
            queued = set(self._pending)
        missing = []
        for info in local:
            on_bucket, sent = remote.get(info.filename), uploaded.get(info.filename)
            if on_bucket == info.size:
                if sent != info.size:
                    self._journal.add(folder_key, info.filename, info.size)
            elif on_bucket is None and sent == info.size:
                self.deleted_on_bucket.append(info.path)
                log.info("%s was deleted on %s after its upload; not again", info.path, folder)
            elif os.path.realpath(info.path) not in queued:
                missing.append(info)
        for info in missing:
            self._enqueue(_Job("upload", info.path))
            try:
                self._index(info.path, None)
            except (OSError, ValueError) as exc:
                log.warning("cannot index %s in its registry shard: %s", info.path, exc)
        return len(missing)

    def catch_up_registry(self) -> int:
        """Queue the staged registry shards the bucket lacks or holds at another size;
        returns how many. One listing of the bucket's ``registry/``.

        Raises:
            OSError: the bucket cannot be listed.
        """
        stale = self._shards.stale(self.key_of)
        for path in stale:
            self._enqueue_shard(path)
        return len(stale)

    def _enqueue(self, job: _Job) -> None:
        with self._cond:
            if job.kind == "upload":
                real = os.path.realpath(job.zip_path)
                self._pending[real] = self._pending.get(real, 0) + 1
            self._jobs.append(job)
            self._cond.notify_all()

    def pending_paths(self) -> set[str]:
        """Real paths of the staged zips whose upload is queued or in flight."""
        with self._cond:
            return set(self._pending)

    def retention_rule(self) -> KeepPendingUploads:
        """The retention rule that keeps this uploader's pending checkpoints in staging."""
        return KeepPendingUploads(self)

    # ----------------------------------------------------------------- the thread

    def _work(self) -> None:
        failures = 0
        while True:
            with self._cond:
                job = self._next_job()
                abandoned = self._abandon
            if abandoned:
                self._settle()
                return
            try:
                if job is None or job.kind == "delete":
                    self._land()  # a deletion never races the upload of its checkpoint
                if job is not None:
                    self._run(job)
            except _Dropped as exc:
                log.error("%s", exc)
                if job is not None:
                    self._finish(job, uploaded=False)
            except Exception as exc:  # the bucket, the network: retry; never end the thread
                failures += 1
                self._retry_later(job, exc, failures)
            else:
                failures = 0
                if job is not None and job.kind != "upload":  # an upload ends when it lands
                    self._finish(job, uploaded=False)

    def _settle(self) -> None:
        """On abandon: let the zip in flight finish its read-back (bounded by the client's
        timeouts), so that one that reads back wrong is deleted before this thread ends."""
        flight = self._flight
        if flight is not None:
            with contextlib.suppress(Exception):  # its outcome is the report's business
                flight.check.result()

    def _next_job(self) -> _Job | None:
        """Under the lock: the first queued job not in flight, once there is one; None when
        the zip in flight is read back (to land it) or the uploader is abandoned."""
        while not self._abandon:
            if self._flight is not None and self._flight.check.done:
                return None
            ahead = 0 if self._flight is None else 1  # the job in flight is the first
            if len(self._jobs) > ahead:
                return self._jobs[ahead]
            self._cond.wait()
        return None

    def _retry_later(self, job: _Job | None, exc: Exception, failures: int) -> None:
        """Note the failure, wait out the backoff; the first queued job runs again next."""
        if isinstance(exc, _NotVerified):  # the zip in flight failed: its upload is retried
            job, exc = exc.job, exc.error
        delay = self.backoff.delay(failures)
        self._last_error = _one_line(exc)
        log.warning(
            "%s of %s on %s failed (%s); retrying in %.1fs",
            job.kind if job else "upload",
            job.zip_path.name if job else "?",
            self.store.uri,
            self._last_error,
            delay,
        )
        with self._cond:
            self._cond.wait_for(lambda: self._abandon, timeout=delay)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _land(self) -> None:
        """Wait for the zip in flight to read back (its read-back journals it once verified),
        then count its checkpoint uploaded. Nothing in flight: nothing to do.

        Raises:
            _NotVerified: the read-back failed (a zip that differs is deleted); its job stays
                first in the queue, to be retried.
        """
        flight = self._flight
        if flight is None:
            return
        try:
            flight.check.result()
        except Exception as exc:
            raise _NotVerified(flight.job, exc) from exc
        finally:
            self._flight = None
        log.info("uploaded %s to %s", flight.job.zip_path.name, self.store.uri_of(flight.folder))
        self._finish(flight.job, uploaded=True)

    def _journal_verified(self, folder: str, zip_path: Path, stored: tuple[int, str]) -> None:
        """The journal line of a zip, written on its read-back's thread once it verified."""
        try:
            self._journal.add(folder, zip_path.name, stored[0])
        except OSError as exc:
            log.warning("cannot write the upload journal of %s: %s", zip_path.parent, exc)

    def _finish(self, job: _Job, *, uploaded: bool) -> None:
        with self._cond:
            self._jobs.remove(job)  # the first, or one after the job in flight
            if job.kind == "upload":
                real = os.path.realpath(job.zip_path)
                left = self._pending.get(real, 0) - 1
                if left > 0:
                    self._pending[real] = left
                else:
                    self._pending.pop(real, None)
                if uploaded:
                    self._uploaded += 1
                    self._last_error = None
                else:
                    self._dropped += 1
            self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        if job.kind == "shard":
            self._put_shard(job.zip_path)
            return
        zip_path = job.zip_path
        base = zip_path.name[: -len(".zip")]
        try:
            folder = self.key_of(zip_path.parent)
        except ValueError as exc:
            raise _Dropped(f"not uploading {zip_path}: {exc}") from None
        keys = {
            name: f"{folder}/{name}" if folder else name
            for name in (zip_path.name, base + VECNORM_SUFFIX, base + METADATA_SUFFIX)
        }
        if job.kind == "delete":
            for key in keys.values():  # the zip first: the checkpoint stops existing
                self.store.delete(key)
            log.info("deleted %s from %s", zip_path.name, self.store.uri)
            return
        try:
            meta = verify_checkpoint(zip_path)
        except CheckpointCorruptError as exc:
            gone = not zip_path.exists()
            raise _Dropped(
                f"not uploading {zip_path}: "
                + ("it was deleted from staging before its upload" if gone else str(exc))
            ) from None
        files = meta.get("files") or {}
        expected = {
            str(entry.get("name")): (entry.get("size"), entry.get("sha256"))
            for entry in files.values()
            if isinstance(entry, dict)
        }
        companions = [base + METADATA_SUFFIX]
        if isinstance(files.get("vecnormalize"), dict):
            companions.insert(0, base + VECNORM_SUFFIX)
        zip_key = keys[zip_path.name]
        for name in companions:
            key = keys[name]
            local = zip_path.with_name(name)
            sent = self._send(local, key, expected, zip_key)
            verify_stored(self.store, key, local, sent, zip_key=zip_key)
        self._land()  # the previous zip is verified before this one goes: commit order
        sent = self._send(zip_path, zip_key, expected, zip_key)  # the commit
        journal = partial(self._journal_verified, folder, zip_path)
        check = ReadBack(self.store, zip_key, zip_path, sent, self._wake, journal)
        self._flight = _Flight(job, folder, check)

    def _put_shard(self, path: Path) -> None:
        """Put a staged registry shard (:meth:`StagedShards.put`)."""
        with self._cond:
            self._shards_queued.discard(os.path.realpath(path))
        try:
            key = self.key_of(path)
        except ValueError as exc:
            raise _Dropped(f"not uploading the registry shard {path}: {exc}") from None
        if not self._shards.put(path, key):
            raise _Dropped(f"not uploading the registry shard {path}: it is gone")

    def _send(
        self, local: Path, key: str, expected: Mapping[str, tuple[Any, Any]], zip_key: str
    ) -> tuple[int, str]:
        """Put one file of the checkpoint whose zip is ``zip_key``; (size, sha256) of what was
        sent, which is what its metadata records (when it records it). It still has to be read
        back. A file that changed since it was verified is deleted, after the zip (an earlier
        attempt may have stored it): a listing never shows a zip without its companions."""
        try:
            sent = self.store.put(local, key)
        except FileNotFoundError as exc:
            if not local.exists():
                raise _Dropped(f"not uploading {local}: deleted from staging meanwhile") from None
            raise exc
        recorded = expected.get(local.name)
        if recorded is not None and sent != recorded:
            unput(self.store, key, zip_key)
            raise _Dropped(f"not uploading {local}: it changed since it was verified")
        return sent

    # ----------------------------------------------------------------- the end

    def backlog(self) -> int:
        """Uploads not done yet (queued or in flight)."""
        with self._cond:
            return sum(self._pending.values())

    def report(self) -> UploadReport:
        """Where the uploads stand now."""
        with self._cond:
            pending = sorted(Path(p) for p in self._pending)
            deletions = sum(1 for job in self._jobs if job.kind == "delete")
            shards = len({os.path.realpath(j.zip_path) for j in self._jobs if j.kind == "shard"})
            return UploadReport(
                self.store.uri,
                self.staging,
                self._uploaded,
                pending,
                deletions,
                self._dropped,
                self._last_error,
                shards,
            )

    def wait(self, timeout: float, report: Callable[[str], None] | None = None) -> bool:
        """Wait up to ``timeout`` seconds until every queued upload and deletion is done;
        True if so. ``report`` gets a line when the wait starts and one every
        ``progress_every`` seconds. Ctrl+C stops the wait (False)."""
        say = report or (lambda line: None)
        deadline = time.monotonic() + max(timeout, 0.0)
        if self.backlog():
            say(
                f"uploads: waiting for {self.backlog()} checkpoint(s) to reach {self.store.uri} "
                f"(at most {timeout:.0f}s)"
            )
        try:
            while True:
                with self._cond:
                    remaining = deadline - time.monotonic()
                    step = min(self.progress_every, max(remaining, 0.0))
                    if self._cond.wait_for(lambda: not self._jobs, timeout=step):
                        return True
                if time.monotonic() >= deadline:
                    return False
                error = self._last_error
                say(
                    f"uploads: {self.backlog()} checkpoint(s) still to upload to "
                    f"{self.store.uri}" + (f" (last error: {error})" if error else "")
                )
        except KeyboardInterrupt:  # a second Ctrl+C: stop waiting, still say what is left
            say("uploads: interrupted; not waiting for the bucket any longer")
            return False

    def close(self, timeout: float, report: Callable[[str], None] | None = None) -> UploadReport:
        """:meth:`wait`, then stop the thread; returns what is still only local.

        If the bucket stays unreachable the thread is abandoned, not waited for (a half-sent
        object never appears on the bucket).
        """
        self.wait(timeout, report)
        with self._cond:
            self._abandon = True
            self._cond.notify_all()
        return self.report()


@dataclass(frozen=True)
class KeepPendingUploads:
    """Retention rule: keep every staged checkpoint whose upload is pending.

    Reason ``pending_upload``. Unlike the rules of :mod:`checkpointing.policies` it reads
    state: the uploader's queue at the moment of the decision, which a prune takes under the
    folder lock, so a checkpoint committed and queued is never deleted before its upload.
    """

    uploader: Uploader

    def decide(self, infos: Sequence[CheckpointInfo]) -> list[str | None]:
        pending = self.uploader.pending_paths()
        if not pending:
            return [None] * len(infos)
        real: dict[str, str] = {}
        out: list[str | None] = []
        for info in infos:
            folder = real.get(info.dirname)
            if folder is None:
                folder = real[info.dirname] = os.path.realpath(info.dirname)
            out.append(PENDING_REASON if os.path.join(folder, info.filename) in pending else None)
        return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
