"""Which trainer wrote a checkpoint, and what a trainer hands the writer: the trainer seam.

A checkpoint is always one committed zip (plus its metadata, and for SB3 its VecNormalize
``.pkl``), so listing, naming, ranking, retention, the registry and verification never ask who
wrote it. Only saving and loading differ:

- **sb3** (the default, and what a checkpoint without a ``trainer`` field is): the zip is SB3's
  own ``model.save`` layout, written from a :class:`~checkpointing.snapshot.ModelSnapshot`; the
  VecNormalize statistics travel beside it in ``{base}_vecnormalize.pkl``.
- **rllib**: the zip holds the directory RLlib's ``Algorithm.save_to_path`` wrote, stored as
  it is, with :data:`MANIFEST` (size and sha256 of every file) beside it. The observation filter
  (RLlib's ``MeanStdFilter`` connector state) is inside that directory, so there is no ``.pkl``.

A trainer saves through :meth:`DynamicCheckpointManager.save_from
<checkpointing.manager.DynamicCheckpointManager.save_from>` with a :class:`CheckpointSource`
(SB3's is :class:`checkpointing.manager.SB3Source`);
its :meth:`~CheckpointSource.snapshot` runs on the training thread and returns a
:class:`Snapshot` the background writer turns into the zip. :func:`unpack_checkpoint` verifies
an RLlib checkpoint's digests (the zip's, then every file's) before anything of it is
unpickled, and unpacks it for RLlib to restore. Nothing here imports ray or torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from checkpointing.errors import CheckpointCorruptError, ConfigError
from checkpointing.metadata import read_checkpoint_metadata

__all__ = [
    "DEFAULT_TRAINER",
    "MANIFEST",
    "TRAINERS",
    "CheckpointSource",
    "DirectorySnapshot",
    "Snapshot",
    "check_trainer",
    "checkpoint_trainer",
    "trainer_of",
    "unpack_checkpoint",
]

TRAINERS = ("sb3", "rllib")
DEFAULT_TRAINER = "sb3"
MANIFEST = "checkpoint_manifest.json"
# A zip entry's fixed time: the same files give the same zip bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024


def trainer_of(metadata: Mapping[str, Any] | None) -> str:
    """The trainer a checkpoint's metadata names; ``sb3`` for checkpoints written before
    metadata named one (and for files without metadata)."""
    value = (metadata or {}).get("trainer", DEFAULT_TRAINER)
    return value if isinstance(value, str) else DEFAULT_TRAINER


def checkpoint_trainer(path: str | os.PathLike[str]) -> str:
    """The trainer that wrote the checkpoint zip at ``path`` (read from its metadata; nothing
    is unpickled)."""
    return trainer_of(read_checkpoint_metadata(path))


def check_trainer(path: str | os.PathLike[str], trainer: str) -> None:
    """Refuse to continue a checkpoint of one trainer with the other.

    Raises:
        ConfigError: naming the checkpoint, the trainer that wrote it and ``trainer``.
    """
    written_by = checkpoint_trainer(path)
    if written_by != trainer:
        raise ConfigError(
            f"{Path(path).name} was written by the {written_by} trainer and cannot be continued "
            f"with --trainer {trainer}: the two save different models. Continue it with "
            f"--trainer {written_by}, or start {trainer} from scratch or from a {trainer} "
            "checkpoint"
        )


# --------------------------------------------------------------------------- saving


class Snapshot(Protocol):
    """What the background writer needs of one save: the zip and the ``.pkl`` bytes."""

    vecnormalize: bytes | None

    def write_zip(self, path: str | os.PathLike[str], *, compress: bool, level: int = 1) -> None:
        """Write the checkpoint zip to ``path``."""

    def close(self) -> None:
        """Release what the snapshot holds (called once it is written, or failed)."""


class CheckpointSource(Protocol):
    """A trainer's side of one save, asked on the training thread."""

    @property
    def trainer(self) -> str:
        """``sb3`` or ``rllib`` (the metadata's ``trainer``)."""

    @property
    def algorithm(self) -> str:
        """The algorithm's name (the metadata's ``algorithm``, e.g. ``PPO``)."""

    @property
    def timesteps(self) -> int:
        """The env steps trained so far (the checkpoint's name says them)."""

    def estimated_bytes(self) -> int:
        """A checkpoint's size before the run's first one is written."""

    def snapshot(self) -> Snapshot:
        """Copy what the save needs, so training can go on while it is written."""


def _sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            size += len(chunk)
            digest.update(chunk)
    return size, digest.hexdigest()


def _files_of(directory: Path) -> list[tuple[str, Path]]:
    """(posix name relative to ``directory``, path) of every regular file, sorted; a symlink
    or anything but files and folders is refused (a checkpoint never holds one)."""
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ValueError(f"{path}: not a regular file; a checkpoint holds only files")
            found.append((path.relative_to(directory).as_posix(), path))
    return sorted(found)


@dataclass
class DirectorySnapshot:
    """A checkpoint directory (RLlib's ``save_to_path``) to be packed into the zip.

    The zip holds every file under its path relative to the directory, in name order with a
    fixed timestamp (the same files give the same bytes), plus :data:`MANIFEST`. With
    ``owned`` the directory is removed by :meth:`close`.
    """

    directory: Path
    owned: bool = True
    vecnormalize: bytes | None = None

    def write_zip(self, path: str | os.PathLike[str], *, compress: bool, level: int = 1) -> None:
        files = _files_of(self.directory)
        if any(name == MANIFEST for name, _ in files):
            raise ValueError(f"{self.directory}: a file named {MANIFEST} is reserved")
        manifest: dict[str, dict[str, Any]] = {}
        compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(
            os.fspath(path), "w", compression, compresslevel=level if compress else None
        ) as zf:
            for name, file in files:
                size, sha = _sha256(file)
                manifest[name] = {"size": size, "sha256": sha}
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.compress_type = compression
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                with open(file, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            info = zipfile.ZipInfo(MANIFEST, date_time=_EPOCH)
            info.compress_type = compression
            zf.writestr(info, json.dumps({"files": manifest}, indent=1, sort_keys=True))

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------- loading


def _member_path(name: str, zip_path: Path) -> PurePosixPath:
    pure = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise CheckpointCorruptError(zip_path, f"the zip holds an entry outside it: {name!r}")
    return pure


def _manifest(zf: zipfile.ZipFile, zip_path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(zf.read(MANIFEST))
        files = doc["files"]
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointCorruptError(zip_path, f"no readable {MANIFEST} ({exc!r})") from None
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        raise CheckpointCorruptError(zip_path, f"{MANIFEST} does not list sizes and digests")
    return files


def unpack_checkpoint(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify an RLlib checkpoint and unpack its directory into ``into``; return its metadata.

    In order, before anything is unpickled: the zip's size and sha256 against the metadata
    (:func:`checkpointing.store.verify_checkpoint`), the trainer it names, every entry's name
    (no absolute path, no ``..``), then each unpacked file's size and sha256 against the
    zip's manifest, and that the unpacked files are exactly the manifest's.

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointCorruptError: any of those checks fails (naming the file).
        ConfigError: the checkpoint was written by another trainer.
    """
    from checkpointing.store import verify_checkpoint

    zip_path = Path(path)
    if not zip_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(zip_path)!r}")
    metadata = verify_checkpoint(zip_path)
    if trainer_of(metadata) != "rllib":
        check_trainer(zip_path, "rllib")
    target = Path(into)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            manifest = _manifest(zf, zip_path)
            members = [m for m in zf.infolist() if m.filename != MANIFEST]
            names = {m.filename for m in members if not m.is_dir()}
            if names != set(manifest):
                raise CheckpointCorruptError(
                    zip_path, f"the files in the zip differ from its {MANIFEST}"
                )
            for member in members:
                if member.is_dir():
                    continue
                relative = _member_path(member.filename, zip_path)
                destination = target.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(destination, "xb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
                expected = manifest[member.filename]
                if _sha256(destination) != (expected["size"], expected["sha256"]):
                    raise CheckpointCorruptError(
                        zip_path, f"{member.filename} fails its sha256 check (corrupted)"
                    )
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise CheckpointCorruptError(zip_path, f"not a readable zip ({exc})") from None
    return metadata
