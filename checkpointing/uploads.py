"""Commit locally, upload in the background: a staging folder mirrored to an object store.

A run whose models root is ``s3://bucket/prefix`` commits its checkpoints to a local staging
folder with the usual protocol (:mod:`checkpointing.store`), and an :class:`Uploader` copies
each committed checkpoint to the bucket on its own thread, keeping our rule there too: a
checkpoint exists if and only if its zip exists.

- **Upload.** The staged checkpoint is first checked against its metadata (sizes and sha256:
  a corrupt file is never uploaded). Then the ``.pkl`` and the ``.json`` are put, then the
  zip, last; each object is read back and its size and sha256 compared with the local file.
  A listing of the bucket never shows a zip without its companions.
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
  are not on the bucket (a previous run that ended with the bucket unreachable).

Only checkpoints are uploaded. ``registry.json``, ``best_model*`` and the legacy final models
(``runs/<run id>/``) stay in the staging folder.

::

    uploader = Uploader(ObjectStore(uri), staging_root)
    manager = DynamicCheckpointManager(..., models_root=staging_root, on_commit=uploader.committed)
    ...
    report = uploader.close(timeout=300, report=print)
    for line in report.lines():
        print(line)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from checkpointing.errors import CheckpointCorruptError
from checkpointing.fetch import BucketMirror, key_under
from checkpointing.locations import StoreURI
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX
from checkpointing.object_store import ObjectStore
from checkpointing.store import CheckpointInfo, list_checkpoints, verify_checkpoint

__all__ = [
    "STAGING_HOME",
    "Backoff",
    "KeepPendingUploads",
    "UploadReport",
    "Uploader",
    "default_staging_dir",
]

log = logging.getLogger(__name__)

STAGING_HOME = "futures-rl-tuner/staging"
PENDING_REASON = "pending_upload"


def default_staging_dir(uri: StoreURI, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/futures-rl-tuner/staging/<bucket>/<prefix>``:
    where a run commits the checkpoints of ``uri`` before they are uploaded."""
    environ = os.environ if environ is None else environ
    home = environ.get("HOME") or os.path.expanduser("~")
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(cache, *STAGING_HOME.split("/"), uri.bucket, *filter(None, uri.key.split("/")))


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row: ``initial * factor**(n-1)``, capped."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * self.factor ** max(failures - 1, 0)))


@dataclass(frozen=True)
class _Job:
    kind: Literal["upload", "delete"]
    zip_path: Path


class _Dropped(Exception):
    """A job that can never succeed (the staged checkpoint is gone or corrupt)."""


@dataclass
class UploadReport:
    """Where the uploads stand: what reached the bucket, what is still only local."""

    uri: StoreURI
    staging: Path
    uploaded: int = 0
    pending: list[Path] = field(default_factory=list)
    deletions_pending: int = 0
    dropped: int = 0
    last_error: str | None = None

    @property
    def complete(self) -> bool:
        """Every checkpoint committed in staging (and not dropped) is on the bucket."""
        return not self.pending

    def lines(self) -> list[str]:
        """What to tell the user at the end of a run."""
        if self.complete:
            lines = [
                f"uploads: {self.uploaded} checkpoint(s) uploaded to {self.uri}, none left only "
                f"in the staging folder {self.staging}"
            ]
        else:
            why = f"last error: {self.last_error}" if self.last_error else "still uploading"
            lines = [
                f"WARNING: {len(self.pending)} checkpoint(s) are only in the local staging "
                f"folder {self.staging}, not on {self.uri} ({why}):",
                *(f"  {path}" for path in self.pending),
                f"  the next python -m tuner.train --models-root {self.uri} with this staging "
                "folder uploads them before it trains",
            ]
        if self.dropped:
            lines.append(
                f"note: {self.dropped} staged checkpoint(s) were not uploaded: corrupt, or "
                "deleted from staging before their upload (see the errors above)"
            )
        if self.deletions_pending:
            lines.append(
                f"note: {self.deletions_pending} checkpoint(s) deleted by retention in the "
                f"staging folder are still on {self.uri}"
            )
        return lines


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
        :func:`checkpointing.store.commit_files`). Returns at once; never raises."""
        try:
            self._enqueue(_Job("upload", Path(zip_path)))
        except Exception as exc:  # a hook under the folder lock must not fail the save
            log.error("cannot queue the upload of %s: %s", zip_path, exc)

    def forget(self, zip_paths: Iterable[str | os.PathLike[str]]) -> None:
        """Queue the deletion on the bucket of checkpoints deleted from staging (retention)."""
        for path in zip_paths:
            self._enqueue(_Job("delete", Path(path)))

    def catch_up(self, folder: str | os.PathLike[str]) -> int:
        """Queue the staged checkpoints of ``folder`` that are not on the bucket (or differ
        in size there); returns how many. One listing of the bucket folder.

        Raises:
            OSError: the bucket cannot be listed.
        """
        local = list_checkpoints(folder, include_legacy=False)
        if not local:
            return 0
        remote = self.store.sizes(self.key_of(folder))
        missing = [info for info in local if remote.get(info.filename) != info.size]
        with self._cond:
            queued = set(self._pending)
        missing = [i for i in missing if os.path.realpath(i.path) not in queued]
        for info in missing:
            self._enqueue(_Job("upload", info.path))
        return len(missing)

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
                while not self._jobs and not self._abandon:
                    self._cond.wait()
                if self._abandon:
                    return
                job = self._jobs[0]
            try:
                self._run(job)
            except _Dropped as exc:
                log.error("%s", exc)
                self._finish(job, uploaded=False)
            except Exception as exc:  # the bucket, the network: retry; never end the thread
                failures += 1
                delay = self.backoff.delay(failures)
                self._last_error = _one_line(exc)
                log.warning(
                    "%s of %s on %s failed (%s); retrying in %.1fs",
                    job.kind,
                    job.zip_path.name,
                    self.store.uri,
                    self._last_error,
                    delay,
                )
                with self._cond:
                    self._cond.wait_for(lambda: self._abandon, timeout=delay)
            else:
                failures = 0
                self._finish(job, uploaded=job.kind == "upload")

    def _finish(self, job: _Job, *, uploaded: bool) -> None:
        with self._cond:
            self._jobs.popleft()
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
        for name in companions:
            self._put(zip_path.with_name(name), keys[name], expected.get(name))
        self._put(zip_path, keys[zip_path.name], expected.get(zip_path.name))  # the commit
        log.info("uploaded %s to %s", zip_path.name, self.store.uri_of(folder))

    def _put(self, local: Path, key: str, expected: tuple[Any, Any] | None) -> None:
        """Put one file and read it back; a mismatch is an ``OSError`` (retried)."""
        try:
            sent = self.store.put(local, key)
        except FileNotFoundError as exc:
            if not local.exists():
                raise _Dropped(f"not uploading {local}: deleted from staging meanwhile") from None
            raise exc
        if expected is not None and sent != expected:
            self.store.delete(key)
            raise _Dropped(f"not uploading {local}: it changed since it was verified")
        stored = self.store.digest(key)
        if stored != sent:
            self.store.delete(key)  # a zip that does not verify must not stand on the bucket
            raise OSError(
                f"{self.store.uri_of(key)} reads back as {stored[0]} bytes, sha256 "
                f"{stored[1][:12]}..., not the {sent[0]} bytes, sha256 {sent[1][:12]}... sent"
            )

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
            return UploadReport(
                self.store.uri,
                self.staging,
                self._uploaded,
                pending,
                deletions,
                self._dropped,
                self._last_error,
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
