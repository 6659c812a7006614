"""Deleting checkpoints and sweeping the leftovers of interrupted commits.

A checkpoint is deleted zip first (it stops existing), then its companions; only regular files
are removed, by name relative to the folder, so a symlink or folder named like a checkpoint
file stays. :func:`sweep` removes temporaries whose writer is gone and companions without a
zip. Call both under :func:`checkpointing.store.folder_lock`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from checkpointing.files import HOST, TEMP_RE
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX, CheckpointName, parse_name
from checkpointing.store import CheckpointInfo

__all__ = ["SweepReport", "delete_checkpoint", "delete_checkpoints", "pid_alive", "sweep"]

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass
class SweepReport:
    """What :func:`sweep` removed (or would remove, in a dry run)."""

    temporaries: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.temporaries) + len(self.orphans)


# --------------------------------------------------------------------------- deletion


def _remove_checkpoint_files(dir_fd: int, zip_name: str) -> tuple[list[str], int]:
    """Unlink ``zip_name`` and then its companions in the folder open as ``dir_fd``.

    Only regular files are removed: each name is ``lstat``-ed first (never followed), so a
    symlink (even one out of the models root) or a folder named like a checkpoint file stays.
    Returns the names removed and the bytes they held (from that same ``lstat``).
    """
    base = zip_name[: -len(".zip")]
    removed: list[str] = []
    freed = 0
    for filename in (zip_name, base + VECNORM_SUFFIX, base + METADATA_SUFFIX):
        try:
            st = os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            os.unlink(filename, dir_fd=dir_fd)
        except (FileNotFoundError, IsADirectoryError):
            continue
        removed.append(filename)
        freed += st.st_size
    return removed, freed


def _refuse_unless_zip(info: CheckpointInfo) -> None:
    # An info made by hand could name anything; ours are "{base}.zip" (cheap check, no parse).
    if not info.filename.endswith(".zip") or info.filename == ".zip":
        raise ValueError(f"refusing to delete {os.fspath(info.path)!r}: not a checkpoint name")


def delete_checkpoint(info: CheckpointInfo | str | os.PathLike[str]) -> list[Path]:
    """Delete a checkpoint: the zip first (it stops existing), then its companions.

    Returns the paths removed. Call it under :func:`folder_lock`. Only regular files are
    removed: a symlink or folder named like the zip or a companion stays.
    """
    if isinstance(info, CheckpointInfo):
        _refuse_unless_zip(info)
        dirname, zip_name = info.dirname, info.filename
    else:
        dirname, zip_name = os.path.split(os.fspath(info))
        if not zip_name.endswith(".zip") or parse_name(zip_name) is None:
            raise ValueError(f"refusing to delete {os.fspath(info)!r}: not a checkpoint name")
    try:
        dir_fd = os.open(dirname or os.curdir, _DIR_FLAGS)
    except FileNotFoundError:
        return []
    try:
        removed, _ = _remove_checkpoint_files(dir_fd, zip_name)
    finally:
        os.close(dir_fd)
    return [Path(os.path.join(dirname, name)) for name in removed]


def delete_checkpoints(infos: Sequence[CheckpointInfo]) -> list[int | OSError]:
    """Delete many checkpoints, each as :func:`delete_checkpoint` does; the bulk path.

    Call it under :func:`folder_lock`. For each info, in order: the bytes its deletion freed
    (the zip plus the companions removed), or the ``OSError`` that stopped it (the others are
    still deleted). Each folder is opened once and files are removed by name relative to it,
    so 10,000 checkpoints cost 30,000 ``lstat`` + ``unlink`` calls and no path building.

    Raises:
        ValueError: an info whose file name is not a ``.zip`` (nothing is deleted then).
    """
    for info in infos:
        _refuse_unless_zip(info)
    results: list[int | OSError] = []
    fds: dict[str, int | OSError] = {}
    try:
        for info in infos:
            dirname = info.dirname
            fd = fds.get(dirname)
            if fd is None:
                try:
                    fd = os.open(dirname or os.curdir, _DIR_FLAGS)
                except FileNotFoundError:
                    fd = -1  # nothing left to delete there
                except OSError as exc:
                    fd = exc
                fds[dirname] = fd
            if isinstance(fd, OSError):
                results.append(fd)
            elif fd < 0:
                results.append(0)
            else:
                try:
                    results.append(_remove_checkpoint_files(fd, info.filename)[1])
                except OSError as exc:
                    results.append(exc)
    finally:
        for fd in fds.values():
            if isinstance(fd, int) and fd >= 0:
                os.close(fd)
    return results


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(
    folder: str | os.PathLike[str],
    *,
    grace_seconds: float = 3600.0,
    dry_run: bool = False,
    now: float | None = None,
) -> SweepReport:
    """Remove leftovers of interrupted commits; call it under :func:`folder_lock`.

    - temporaries (``.X.{host}-{pid}.{token}.tmp``) whose writer process on this host is
      gone, or older than ``grace_seconds`` (the only test for other hosts' temporaries, as
      on storage shared between nodes);
    - companions (``{base}_vecnormalize.pkl`` / ``{base}_metadata.json`` of a v2 name) whose
      zip does not exist. Under the lock no commit is half-way, so these are orphans.

    Foreign files, symlinks and folders are never touched.
    """
    now = time.time() if now is None else now
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except FileNotFoundError:
        return SweepReport()
    report = _leftovers(entries, grace_seconds, now)
    if not dry_run:
        for path in [*report.temporaries, *report.orphans]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove leftover %s: %s", path, exc)
    for path in report.temporaries:
        log.info("swept temporary %s", path)
    for path in report.orphans:
        log.info("swept orphan companion %s", path)
    return report


def _orphan_of(name: str, names: set[str]) -> bool:
    """Whether ``name`` is a companion of a v2 checkpoint whose zip is not in ``names``."""
    for suffix in (VECNORM_SUFFIX, METADATA_SUFFIX):
        if name.endswith(suffix):
            zip_name = name[: -len(suffix)] + ".zip"
            return zip_name not in names and isinstance(parse_name(zip_name), CheckpointName)
    return False


def _leftovers(entries: list[os.DirEntry[str]], grace_seconds: float, now: float) -> SweepReport:
    """The stale temporaries and orphan companions among a folder's entries (regular files)."""
    report = SweepReport()
    names = {e.name for e in entries}
    for entry in entries:
        # Cheap name checks first: a folder of 10,000 checkpoints has 30,000 entries, most of
        # them zips and companions of live checkpoints.
        name = entry.name
        m = TEMP_RE.match(name) if name.startswith(".") else None
        if m is None and not _orphan_of(name, names):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if m is None:
            report.orphans.append(Path(entry.path))
            continue
        owner_gone = m["host"] == HOST and not pid_alive(int(m["pid"]))
        if owner_gone or now - st.st_mtime > grace_seconds:
            report.temporaries.append(Path(entry.path))
    return report
