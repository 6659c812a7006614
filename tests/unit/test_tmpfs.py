"""tests/tmpfs.py: a tmpfs that cannot be mounted skips the test, except on CI where it fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tmpfs import mounted_tmpfs


@pytest.fixture
def refusing_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``mount`` first on PATH that refuses as it does without CAP_SYS_ADMIN."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mount"
    fake.write_text('#!/bin/sh\necho "mount: $6: permission denied." >&2\nexit 32\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.usefixtures("refusing_mount")
def test_a_refused_mount_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with (
        pytest.raises(pytest.skip.Exception, match="permission denied"),
        mounted_tmpfs(tmp_path / "tmpfs", "2m"),
    ):
        pass


@pytest.mark.usefixtures("refusing_mount")
def test_a_refused_mount_fails_on_ci_saying_what_was_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    mount_point = tmp_path / "tmpfs"
    with pytest.raises(pytest.fail.Exception) as failed, mounted_tmpfs(mount_point, "2m"):
        pass
    message = str(failed.value)
    assert f"mount -t tmpfs -o size=2m tmpfs {mount_point}" in message
    assert f"mount: {mount_point}: permission denied." in message
    assert "CI=true" in message


def test_no_mount_command_fails_on_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", os.fspath(empty))
    monkeypatch.setenv("CI", "true")
    with (
        pytest.raises(pytest.fail.Exception, match="no 'mount' command"),
        mounted_tmpfs(tmp_path / "tmpfs", "2m"),
    ):
        pass
