"""A real, small tmpfs for tests that fill a disk; skipped (with the reason) where not permitted.

Mounting needs ``CAP_SYS_ADMIN`` (root, or a container that grants it). Where ``mount`` is
missing or refuses, the test is skipped with the command's own message, never passed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mount_point: str | os.PathLike[str], size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``"2m"``) on a new folder
    ``mount_point`` for the block; unmounted afterwards (lazily if still busy)."""
    path = Path(mount_point)
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no 'mount' command on this machine")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", os.fspath(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {(done.stderr or done.stdout).strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", os.fspath(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], check=False)


def fill(mount_point: Path, room_left: int) -> Path:
    """Take all but about ``room_left`` bytes of the file system at ``mount_point`` with one
    file (as another program would), and return its path."""
    ballast = mount_point / "other-program.bin"
    chunk = bytes(64 * 1024)
    with open(ballast, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        os.ftruncate(fh.fileno(), max(0, fh.tell() - room_left))
    return ballast
