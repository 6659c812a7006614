"""Reading back what was put on the bucket: the check that an object arrived whole.

:func:`verify_stored` reads an object back in full and compares it, byte for byte, with the
local file it was put from, whose size and sha256 the put measured (and the uploader checked
against the checkpoint's metadata): the same bytes, so the same size and sha256. An object
that differs is deleted at once (a zip that does not verify never stands on the bucket) and
the mismatch raised as an ``OSError``. Comparing with the file's pages costs a fraction of
hashing what was read (``bench/object_store.py``). :class:`ReadBack` runs that check on its
own thread, so that the uploader prepares the next checkpoint (verifies it in staging, puts
and reads back its companions) while a zip is read back::

    sent = store.put(local, key)
    check = ReadBack(store, key, local, sent, on_done=wake)   # starts at once
    ...                                                        # other work meanwhile
    size, sha = check.result()                                 # waits; raises what it raised

The thread is a daemon: an uploader abandoned while the bucket hangs never holds the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from checkpointing.object_store import ObjectStore

__all__ = ["ReadBack", "unput", "verify_stored"]

log = logging.getLogger(__name__)


def verify_stored(
    store: ObjectStore,
    key: str,
    local: Path,
    sent: tuple[int, str],
    *,
    zip_key: str | None = None,
) -> tuple[int, str]:
    """Read the object ``key`` back; ``sent``, the (size, sha256) of the file ``local`` as
    the put read it, when the object is byte for byte that file.

    An object that reads back otherwise is deleted; a companion (``zip_key`` names its
    checkpoint's zip) after that zip, which an earlier attempt may have stored: a listing
    never shows a zip without its companions.

    Raises:
        OSError: it reads back otherwise (it is deleted first), or cannot be read.
    """
    size, differs = store.compare(key, local)
    if size != sent[0] or differs is not None:
        unput(store, key, zip_key or key)
        where = f", differing from byte {differs:,}" if differs is not None else ""
        raise OSError(
            f"{store.uri_of(key)} reads back as {size:,} bytes{where}, not the {sent[0]:,} "
            f"bytes (sha256 {sent[1][:12]}...) sent from {local}"
        )
    return sent


def unput(store: ObjectStore, key: str, zip_key: str) -> None:
    """Delete the object ``key`` of the checkpoint whose zip is ``zip_key``, that zip first
    (an earlier attempt may have stored it; a listing never shows a zip without its
    companions)."""
    for doomed in dict.fromkeys((zip_key, key)):
        store.delete(doomed)


class ReadBack:
    """:func:`verify_stored` of one object, on a thread of its own started at once.

    On that thread, ``on_verified`` gets (size, sha256) as soon as the object verified (the
    uploader writes its journal line with it: no later than that), and ``on_done`` is called
    when the check ends, whatever its outcome (the uploader wakes its own thread with it).
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        local: Path,
        sent: tuple[int, str],
        on_done: Callable[[], None] | None = None,
        on_verified: Callable[[tuple[int, str]], None] | None = None,
    ) -> None:
        self.key = key
        self._local = local
        self._store = store
        self._sent = sent
        self._on_done = on_done
        self._on_verified = on_verified
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._check, name="checkpoint-read-back", daemon=True).start()

    def _check(self) -> None:
        try:
            verify_stored(self._store, self.key, self._local, self._sent)
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc
        else:
            if self._on_verified is not None:
                try:
                    self._on_verified(self._sent)
                except Exception:  # the object verified all the same
                    log.exception("after the read-back of %s", self.key)
        finally:
            self._done.set()
            if self._on_done is not None:
                self._on_done()

    @property
    def done(self) -> bool:
        """Whether the check has ended (:meth:`result` returns at once)."""
        return self._done.is_set()

    def result(self) -> tuple[int, str]:
        """Wait for the check: (size, sha256) of the object, verified.

        Raises:
            OSError: what :func:`verify_stored` raised.
        """
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._sent
