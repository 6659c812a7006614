"""A background writer: one save in flight, the training thread never waits on the disk."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["AsyncWriter"]

log = logging.getLogger(__name__)


class AsyncWriter:
    """Runs save jobs on one background thread, one at a time.

    ``submit`` first waits for the job in flight (so at most one snapshot is held in memory
    besides the live model), then hands the new job over and returns at once. ``flush``
    waits for the job in flight; ``close`` flushes and stops the thread. With
    ``enabled=False`` jobs run inline on the caller's thread (synchronous saves).

    A job's exception is logged and kept in :attr:`errors`; it never reaches training.
    """

    def __init__(self, *, enabled: bool = True, name: str = "checkpoint-writer") -> None:
        self.enabled = enabled
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if enabled else None
        )
        self._in_flight: Future[Any] | None = None
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        with self._lock:
            self._wait_in_flight()
            if self._executor is None:
                future: Future[Any] = Future()
                try:
                    future.set_result(job())
                except Exception as exc:
                    self._record(exc)
                    future.set_exception(exc)
                return future
            future = self._executor.submit(self._run, job)
            self._in_flight = future
            return future

    def _run(self, job: Callable[[], Any]) -> Any:
        try:
            return job()
        except Exception as exc:
            self._record(exc)
            raise

    def _record(self, exc: BaseException) -> None:
        self.errors.append(exc)
        log.error("checkpoint save failed: %s", exc)

    def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            with contextlib.suppress(Exception):  # recorded by _run
                self._in_flight.result()
            self._in_flight = None

    @property
    def busy(self) -> bool:
        return self._in_flight is not None and not self._in_flight.done()

    def flush(self) -> None:
        """Wait until the save in flight (if any) is committed or has failed."""
        with self._lock:
            self._wait_in_flight()

    def close(self) -> None:
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
