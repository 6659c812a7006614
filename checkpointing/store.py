"""The checkpoint folder on disk: commit protocol, lock, listing, verification, deletion.

A checkpoint exists if and only if its ``.zip`` exists. A commit:

1. writes the zip, the ``.pkl`` and the ``.json`` to hidden temporaries in the same folder
   and fsyncs each;
2. under the folder lock renames the ``.pkl``, then the ``.json``, then the ``.zip`` (the
   commit point), and fsyncs the folder.

A crash leaves either the previous state or a complete new checkpoint, plus at most some
temporaries or companions without a zip; :func:`sweep` removes those. Nothing here ever
unpickles a file: verification compares sizes and sha256 digests with the metadata. Deleting
checkpoints and sweeping leftovers is :mod:`checkpointing.cleanup`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import operator
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from checkpointing.errors import CheckpointCorruptError, MetadataError
from checkpointing.files import (
    file_digest,
    fsync_dir,
    read_regular_file,
    temp_path,
    unlink_quietly,
    write_durable,
)
from checkpointing.metadata import decode_metadata, encode_metadata, metadata_path_for
from checkpointing.naming import (
    METADATA_SUFFIX,
    VECNORM_SUFFIX,
    CheckpointName,
    LegacyName,
    parse_name,
)

__all__ = [
    "LOCK_NAME",
    "CheckpointInfo",
    "commit_files",
    "folder_lock",
    "list_checkpoints",
    "verify_checkpoint",
]

log = logging.getLogger(__name__)

LOCK_NAME = ".checkpoint.lock"
_new = object.__new__
_BY_TIMESTEPS_THEN_NAME = operator.itemgetter(0, 1)


class CheckpointInfo:
    """A committed checkpoint as found on disk (from its name; metadata read on demand).

    ``CheckpointInfo(path, name, size, mtime)``; immutable, compared and hashed by those four
    fields. A listing of 10,000 checkpoints must stay cheap, so an info made by
    :func:`list_checkpoints` holds only the folder and file name strings and the parsed name:
    ``path`` is built on first use, and ``size``/``mtime`` come from one ``lstat`` of the zip
    on first use (a zip gone since the listing reads as size 0, mtime 0.0). All are cached.
    ``dirname`` and ``filename`` are the folder and file name as strings, for string paths.
    """

    __slots__ = ("_dirname", "_filename", "_mtime", "_name", "_path", "_size")

    _dirname: str
    _filename: str
    _name: CheckpointName | LegacyName
    _path: Path | None
    _size: int | None
    _mtime: float | None

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: CheckpointName | LegacyName,
        size: int,
        mtime: float,
    ) -> None:
        path = Path(path)
        self._dirname = os.fspath(path.parent)
        self._filename = path.name
        self._name = name
        self._path = path
        self._size = size
        self._mtime = mtime

    @classmethod
    def _listed(
        cls, dirname: str, filename: str, name: CheckpointName | LegacyName
    ) -> CheckpointInfo:
        """An info for ``filename`` in ``dirname`` whose path and stat are read on first use."""
        info = _new(cls)
        info._dirname = dirname
        info._filename = filename
        info._name = name
        info._path = info._size = info._mtime = None
        return info

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(os.path.join(self._dirname, self._filename))
        return self._path

    @property
    def name(self) -> CheckpointName | LegacyName:
        return self._name

    @property
    def dirname(self) -> str:
        """The folder, as given to :func:`list_checkpoints` (a string)."""
        return self._dirname

    @property
    def filename(self) -> str:
        """The zip's file name (``path.name``) without building the path."""
        return self._filename

    def _stat(self) -> None:
        try:
            st = os.lstat(os.path.join(self._dirname, self._filename))
        except FileNotFoundError:
            self._size, self._mtime = 0, 0.0
        else:
            self._size, self._mtime = st.st_size, st.st_mtime

    @property
    def size(self) -> int:
        """Bytes of the zip."""
        if self._size is None:
            self._stat()
            assert self._size is not None
        return self._size

    @property
    def mtime(self) -> float:
        """Modification time of the zip (seconds since the epoch)."""
        if self._mtime is None:
            self._stat()
            assert self._mtime is not None
        return self._mtime

    @property
    def is_legacy(self) -> bool:
        return isinstance(self._name, LegacyName)

    @property
    def base(self) -> str:
        """The file name without ``.zip``; companions are ``{base}_vecnormalize.pkl`` etc."""
        return self._filename[: -len(".zip")]

    @property
    def timesteps(self) -> int:
        return self._name.timesteps

    def companion(self, suffix: str) -> Path:
        return self.path.with_name(self.base + suffix)

    @property
    def vecnormalize_path(self) -> Path:
        return self.companion(VECNORM_SUFFIX)

    @property
    def metadata_path(self) -> Path:
        return self.companion(METADATA_SUFFIX)

    def _key(self) -> tuple[Path, CheckpointName | LegacyName, int, float]:
        return (self.path, self._name, self.size, self.mtime)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, CheckpointInfo)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, name={self._name!r}, "
            f"size={self.size!r}, mtime={self.mtime!r})"
        )


# --------------------------------------------------------------------------- lock


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
            unlink_quietly(tmp)
        raise
    return final_zip, metadata


# --------------------------------------------------------------------------- listing


def list_checkpoints(
    folder: str | os.PathLike[str], *, include_legacy: bool = True
) -> list[CheckpointInfo]:
    """The committed checkpoints in ``folder``, oldest first (numeric timesteps, then name).

    Only regular ``.zip`` files whose names parse are listed; symlinks, folders and foreign
    files are ignored. A missing folder lists as empty. The file type comes from the folder
    read itself (no ``stat`` per file); see :class:`CheckpointInfo` for what is read lazily.
    """
    dirname = os.fspath(folder)
    found: list[tuple[int, str, CheckpointName | LegacyName]] = []
    try:
        entries = os.scandir(dirname)
    except FileNotFoundError:
        return []
    with entries:
        for entry in entries:
            filename = entry.name
            if not filename.endswith(".zip"):
                continue
            name = parse_name(filename)
            if name is None or (not include_legacy and isinstance(name, LegacyName)):
                continue
            # d_type of the folder read: no syscall (lstat only where the file system gives
            # none). A symlink or a folder named like a checkpoint is not ours.
            if not entry.is_file(follow_symlinks=False):
                continue
            found.append((name.timesteps, filename, name))
    found.sort(key=_BY_TIMESTEPS_THEN_NAME)
    listed = CheckpointInfo._listed
    return [listed(dirname, filename, name) for _, filename, name in found]


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
        raw = read_regular_file(meta_path, 4 * 1024 * 1024)
    except FileNotFoundError:
        raise CheckpointCorruptError(meta_path, "metadata file is missing") from None
    except MetadataError:
        raise CheckpointCorruptError(meta_path, "metadata is not a regular file") from None
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
