"""A real, small tmpfs for tests that fill a disk; skipped (with the reason) where not permitted.

Mounting needs ``CAP_SYS_ADMIN`` (root, or a container that grants it). Where ``mount`` is
missing or refuses, the test is skipped with the command's own message, never passed. Under
``CI=true`` (or ``CI=1``) it fails instead with that message: CI must run the disk tests, so a
runner that cannot mount is a broken runner, not a reason to pass.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest


@contextlib.contextmanager
def mounted_tmpfs(mount_point: str | os.PathLike[str], size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``"2m"``) on a new folder
    ``mount_point`` for the block; unmounted afterwards (lazily if still busy)."""
    path = Path(mount_point)
    path.mkdir()
    if shutil.which("mount") is None:
        _cannot("no 'mount' command on this machine")
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", os.fspath(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        _cannot(f"cannot mount a tmpfs, {' '.join(command)!r} was refused: {said}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", os.fspath(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(path)], check=False)


def _cannot(reason: str) -> NoReturn:
    """Skip the test for ``reason``; under ``CI=true`` fail it instead."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI=true: the tests that need a tmpfs must run)", pytrace=False)
    pytest.skip(reason)


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
