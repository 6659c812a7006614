"""The checkpoint folder on disk: commit protocol, lock, listing, verification, deletion.

A checkpoint exists if and only if its ``.zip`` exists. A commit:

1. writes the zip, the ``.pkl`` and the ``.json`` to hidden temporaries in the same folder
   and fsyncs each;
2. under the folder lock renames the ``.pkl``, then the ``.json``, then the ``.zip`` (the
   commit point), and fsyncs the folder.

A crash leaves either the previous state or a complete new checkpoint, plus at most some
temporaries or companions without a zip; :func:`sweep` removes those. Nothing here ever
unpickles a file: verification compares sizes and sha256 digests with the metadata.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.metadata import (
    MetadataError,
    decode_metadata,
    encode_metadata,
    metadata_path_for,
)
from checkpointing.naming import (
    METADATA_SUFFIX,
    VECNORM_SUFFIX,
    CheckpointName,
    LegacyName,
    parse_name,
)

__all__ = [
    "LOCK_NAME",
    "CheckpointCorruptError",
    "CheckpointInfo",
    "SweepReport",
    "commit_files",
    "delete_checkpoint",
    "file_digest",
    "folder_lock",
    "fsync_dir",
    "list_checkpoints",
    "parse_temp_name",
    "sweep",
    "temp_name",
    "temp_path",
    "verify_checkpoint",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".checkpoint.lock"
_TMP_RE = re.compile(
    r"\A\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]{1,32})-(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp\Z"
)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_CHUNK = 1024 * 1024


class CheckpointCorruptError(Exception):
    """A checkpoint whose files do not match its metadata; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{os.fspath(path)}: {reason}")


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint as found on disk (from its name; metadata read on demand)."""

    path: Path
    name: CheckpointName | LegacyName
    size: int
    mtime: float

    @property
    def is_legacy(self) -> bool:
        return isinstance(self.name, LegacyName)

    @property
    def base(self) -> str:
        return self.name.base

    @property
    def timesteps(self) -> int:
        return self.name.timesteps

    def companion(self, suffix: str) -> Path:
        return self.path.with_name(self.base + suffix)

    @property
    def vecnormalize_path(self) -> Path:
        return self.companion(VECNORM_SUFFIX)

    @property
    def metadata_path(self) -> Path:
        return self.companion(METADATA_SUFFIX)


@dataclass
class SweepReport:
    """What :func:`sweep` removed (or would remove, in a dry run)."""

    temporaries: list[Path] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.temporaries) + len(self.orphans)


# --------------------------------------------------------------------------- helpers


def temp_name(
    target: str, *, pid: int | None = None, host: str | None = None, token: str | None = None
) -> str:
    """``.{target}.{host}-{pid}.{token}.tmp``: a hidden temporary that names its owner."""
    pid = os.getpid() if pid is None else pid
    token = secrets.token_hex(4) if token is None else token
    return f".{target}.{host or _HOST}-{pid}.{token}.tmp"


def parse_temp_name(name: str) -> tuple[str, str, int] | None:
    """(target, host, pid) of a temporary's file name, else None."""
    m = _TMP_RE.match(name)
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


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on a checkpoint folder (``flock`` on ``.checkpoint.lock``).

    Commits and prunes take it exclusively, so they never interleave, across threads and
    processes alike. Not re-entrant: never take it twice in one thread.
    """
    lock_path = Path(folder) / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


# --------------------------------------------------------------------------- commit


def commit_files(
    folder: Path,
    zip_name: str,
    write_zip: Callable[[Path], None],
    vecnorm_bytes: bytes | None,
    metadata: dict[str, Any],
    *,
    on_commit: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write and commit one checkpoint into ``folder``; return the zip path and metadata.

    ``write_zip(tmp)`` writes the model zip to a (new) temporary path. The ``files`` entry
    (size + sha256 of the zip and the pkl) is added to ``metadata`` here. ``on_commit`` runs
    under the folder lock right after the commit (registry updates use it).

    On any error (``ENOSPC`` included) the temporaries are removed and the error re-raised;
    existing checkpoints are never touched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    final_zip = folder / zip_name
    base = zip_name[: -len(".zip")]
    final_pkl = folder / (base + VECNORM_SUFFIX)
    final_json = folder / (base + METADATA_SUFFIX)
    tmp_zip, tmp_pkl, tmp_json = temp_path(final_zip), temp_path(final_pkl), temp_path(final_json)
    temporaries = [tmp_zip, tmp_pkl, tmp_json]
    try:
        write_zip(tmp_zip)
        zip_size, zip_sha = file_digest(tmp_zip)
        files: dict[str, Any] = {
            "zip": {"name": final_zip.name, "size": zip_size, "sha256": zip_sha}
        }
        if vecnorm_bytes is not None:
            write_durable(tmp_pkl, vecnorm_bytes)
            files["vecnormalize"] = {
                "name": final_pkl.name,
                "size": len(vecnorm_bytes),
                "sha256": hashlib.sha256(vecnorm_bytes).hexdigest(),
            }
        metadata = dict(metadata)
        metadata["files"] = files
        write_durable(tmp_json, encode_metadata(metadata))
        with folder_lock(folder):
            if vecnorm_bytes is not None:
                os.replace(tmp_pkl, final_pkl)
            os.replace(tmp_json, final_json)
            os.replace(tmp_zip, final_zip)  # the commit point
            fsync_dir(folder)
            if on_commit is not None:
                try:
                    on_commit(final_zip, metadata)
                except Exception as exc:  # the files are the truth; an index can be rebuilt
                    log.warning("after committing %s: %s", final_zip.name, exc)
    except BaseException:
        for tmp in temporaries:
            _unlink_quietly(tmp)
        raise
    return final_zip, metadata


# --------------------------------------------------------------------------- listing


def list_checkpoints(
    folder: str | os.PathLike[str], *, include_legacy: bool = True
) -> list[CheckpointInfo]:
    """The committed checkpoints in ``folder``, oldest first (numeric timesteps, then name).

    Only regular ``.zip`` files whose names parse are listed; symlinks, folders and foreign
    files are ignored. A missing folder lists as empty.
    """
    out: list[CheckpointInfo] = []
    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return out
    with entries:
        for entry in entries:
            if not entry.name.endswith(".zip"):
                continue
            name = parse_name(entry.name)
            if name is None or (not include_legacy and isinstance(name, LegacyName)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            out.append(CheckpointInfo(Path(entry.path), name, st.st_size, st.st_mtime))
    out.sort(key=lambda i: (i.timesteps, i.path.name))
    return out


# --------------------------------------------------------------------------- verification


def _check_file(path: Path, expected: Any, what: str) -> None:
    if not isinstance(expected, dict) or not {"size", "sha256"} <= expected.keys():
        raise CheckpointCorruptError(path, f"metadata has no size/sha256 for the {what}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise CheckpointCorruptError(path, f"the {what} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointCorruptError(path, f"the {what} is not a regular file")
    if st.st_size != expected["size"]:
        raise CheckpointCorruptError(
            path,
            f"the {what} is {st.st_size} bytes, metadata says {expected['size']} "
            "(truncated or replaced)",
        )
    _, digest = file_digest(path)
    if digest != expected["sha256"]:
        raise CheckpointCorruptError(path, f"the {what} fails its sha256 check (corrupted)")


def verify_checkpoint(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a v2 checkpoint against its metadata without unpickling anything.

    Returns the metadata. Raises :class:`CheckpointCorruptError` naming the culprit file when
    the metadata is missing, garbled or of an unknown schema, or when the zip or the pkl
    differs in size or sha256 from what the metadata records.
    """
    zip_path = Path(checkpoint)
    meta_path = metadata_path_for(zip_path)
    try:
        with open(meta_path, "rb") as fh:
            raw = fh.read(4 * 1024 * 1024)
    except FileNotFoundError:
        raise CheckpointCorruptError(meta_path, "metadata file is missing") from None
    except OSError as exc:
        raise CheckpointCorruptError(meta_path, f"cannot read metadata ({exc})") from None
    try:
        meta = decode_metadata(raw, os.fspath(meta_path))
    except MetadataError as exc:
        raise CheckpointCorruptError(meta_path, exc.args[0].split(": ", 1)[-1]) from None
    files = meta.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("zip"), dict):
        raise CheckpointCorruptError(meta_path, "metadata lists no file digests")
    if files["zip"].get("name", zip_path.name) != zip_path.name:
        raise CheckpointCorruptError(meta_path, "metadata belongs to another checkpoint")
    _check_file(zip_path, files["zip"], "model zip")
    if files.get("vecnormalize") is not None:
        pkl = zip_path.with_name(zip_path.name[: -len(".zip")] + VECNORM_SUFFIX)
        _check_file(pkl, files["vecnormalize"], "VecNormalize pkl")
    return meta


# --------------------------------------------------------------------------- deletion


def delete_checkpoint(info: CheckpointInfo | str | os.PathLike[str]) -> list[Path]:
    """Delete a checkpoint: the zip first (it stops existing), then its companions.

    Returns the paths removed. Call it under :func:`folder_lock`. Only regular files are
    removed: a symlink or folder named like a companion stays.
    """
    if isinstance(info, CheckpointInfo):
        zip_path = info.path  # listed by list_checkpoints: a regular file with a parsed name
    else:
        zip_path = Path(info)
        if not zip_path.name.endswith(".zip") or parse_name(zip_path.name) is None:
            raise ValueError(f"refusing to delete {os.fspath(zip_path)!r}: not a checkpoint name")
    removed: list[Path] = []
    base = os.fspath(zip_path)[: -len(".zip")]
    for i, path in enumerate((os.fspath(zip_path), base + VECNORM_SUFFIX, base + METADATA_SUFFIX)):
        try:
            # A listed zip is a regular file; a companion name could be anything (a link out of
            # the models root, a folder): only regular files are removed.
            if (i > 0 or not isinstance(info, CheckpointInfo)) and not stat.S_ISREG(
                os.lstat(path).st_mode
            ):
                continue
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):
            continue
        removed.append(Path(path))
    return removed


def _pid_alive(pid: int) -> bool:
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
    report = SweepReport()
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return report
    names = {e.name for e in entries}
    for entry in entries:
        # Cheap name checks first: a folder of 10,000 checkpoints has 30,000 entries.
        m = _TMP_RE.match(entry.name)
        if m is None:
            suffix = next(
                (s for s in (VECNORM_SUFFIX, METADATA_SUFFIX) if entry.name.endswith(s)), None
            )
            if suffix is None:
                continue
            zip_name = entry.name[: -len(suffix)] + ".zip"
            if zip_name in names or not isinstance(parse_name(zip_name), CheckpointName):
                continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if m is None:
            report.orphans.append(Path(entry.path))
        else:
            owner_gone = m["host"] == _HOST and not _pid_alive(int(m["pid"]))
            if owner_gone or now - st.st_mtime > grace_seconds:
                report.temporaries.append(Path(entry.path))
    if not dry_run:
        for path in [*report.temporaries, *report.orphans]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.warning("could not remove leftover %s: %s", path, exc)
    for path in report.temporaries:
        log.info("swept temporary %s", path)
    for path in report.orphans:
        log.info("swept orphan companion %s", path)
    return report
