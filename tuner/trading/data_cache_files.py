"""Files of the data cache, written whole or not at all, and locked while one process makes
them (:mod:`tuner.trading.data_cache` says when)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["locked", "replace_durably", "sweep_temporaries"]


def replace_durably(path: Path, write: Callable[[Any], object]) -> None:
    """Write a hidden temporary beside ``path`` with ``write(fh)``, fsync it, rename it."""
    from checkpointing.files import fsync_dir, temp_path, unlink_quietly

    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def sweep_temporaries(slot: Path) -> None:
    """Remove the temporaries of ``slot`` left by writers on this host that are gone."""
    from checkpointing.cleanup import pid_alive
    from checkpointing.files import HOST, parse_temp_name, unlink_quietly

    with contextlib.suppress(OSError):
        for entry in os.scandir(slot.parent):
            owner = parse_temp_name(entry.name)
            if owner and owner[0] == slot.name and owner[1] == HOST and not pid_alive(owner[2]):
                unlink_quietly(Path(entry.path))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing); without flock, no lock: the
    atomic rename alone keeps entries whole."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
