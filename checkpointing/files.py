"""Durable file operations the commit protocol is built from.

Hidden temporaries that name their owner (``.{target}.{host}-{pid}.{token}.tmp``), fsync of
files and folders, digests, reads that never block or follow a symlink, and hard links with a
copy as fallback. Nothing here knows what a checkpoint is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

from checkpointing.errors import MetadataError

__all__ = [
    "HOST",
    "TEMP_RE",
    "file_digest",
    "fsync_dir",
    "link_or_copy",
    "parse_temp_name",
    "read_regular_file",
    "temp_name",
    "temp_path",
    "unlink_quietly",
    "write_durable",
]

TEMP_RE = re.compile(
    r"\A\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]{1,32})-(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp\Z"
)
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_CHUNK = 1024 * 1024


def temp_name(
    target: str, *, pid: int | None = None, host: str | None = None, token: str | None = None
) -> str:
    """``.{target}.{host}-{pid}.{token}.tmp``: a hidden temporary that names its owner."""
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(4) if token is None else token
    return f".{target}.{host or HOST}-{pid}.{token}.tmp"


def parse_temp_name(name: str) -> tuple[str, str, int] | None:
    """(target, host, pid) of a temporary's file name, else None."""
    m = TEMP_RE.match(name)
    return None if m is None else (m["target"], m["host"], int(m["pid"]))


def temp_path(target: Path) -> Path:
    """A hidden temporary beside ``target`` (see :func:`temp_name`)."""
    return target.with_name(temp_name(target.name))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_regular_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``, never blocking and never following
    a symlink: a FIFO, device, folder or symlink raises :class:`MetadataError`."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MetadataError(f"{os.fspath(path)}: not a regular file")
        chunks = []
        while limit > 0 and (chunk := os.read(fd, min(limit, 1 << 20))):
            chunks.append(chunk)
            limit -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to the new path ``dst``, or copy it (and fsync) where links fail."""
    try:
        os.link(src, dst)
        return
    except OSError:
        pass
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
        fout.flush()
        os.fsync(fout.fileno())
