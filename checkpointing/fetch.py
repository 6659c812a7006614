"""Reading checkpoints back from the bucket: list them, fetch one into staging, verified.

A run whose models root is ``s3://bucket/prefix`` commits to a local staging folder that the
bucket mirrors (:mod:`checkpointing.uploads`). Resuming on another node, or after the staging
folder was deleted, finds that folder empty: the checkpoint to continue from is on the bucket.
A :class:`BucketMirror` is the bucket seen from the staging folder:

- :meth:`BucketMirror.checkpoints` lists the checkpoints of a staging checkpoint folder that
  are on the bucket (one listing, nothing downloaded), as :class:`CheckpointInfo` rows whose
  path is where each would be in staging;
- :meth:`BucketMirror.fetch` downloads one (companions and zip) into a hidden temporary
  folder beside its place, verifies it with :func:`checkpointing.store.verify_checkpoint`
  (sizes and sha256 against the metadata, the check every load makes before unpickling), and
  only then moves it into place with the commit protocol's order (companions, then the zip,
  under the folder lock). A truncated or bit-flipped object never enters staging: the fetch
  raises :class:`CheckpointCorruptError` naming the object's URI.

:func:`checkpointing.selection.find_resume_checkpoint` takes a mirror and picks among the
checkpoints of staging and of the bucket, fetching each candidate it tries, so a resume takes
the newest checkpoint that verifies wherever it is.

::

    mirror = BucketMirror(ObjectStore(uri), staging)
    path = find_resume_checkpoint(staging / "phase1/NQ/checkpoints", "latest", mirror=mirror)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from checkpointing.errors import CheckpointCorruptError
from checkpointing.files import fsync_dir
from checkpointing.locations import StoreURI
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX, CheckpointName, parse_name
from checkpointing.object_store import ObjectStore
from checkpointing.store import CheckpointInfo, folder_lock, verify_checkpoint

__all__ = ["FETCH_PREFIX", "BucketMirror", "key_under"]

log = logging.getLogger(__name__)

FETCH_PREFIX = ".fetch-"
_METADATA_LIMIT = 4 * 1024 * 1024  # as checkpointing.store reads a metadata file


def key_under(staging: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The object key (relative to the bucket prefix) of ``path`` under the staging folder.

    Raises:
        ValueError: ``path`` is not under ``staging``.
    """
    real = os.path.realpath(path)
    rel = os.path.relpath(real, os.path.realpath(staging))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ValueError(f"{os.fspath(path)!r} is not under the staging folder {staging}")
    return "" if rel == os.curdir else rel.replace(os.sep, "/")


class BucketMirror:
    """The bucket copy of a staging folder, for reading: listings and verified fetches."""

    def __init__(self, store: ObjectStore, staging: str | os.PathLike[str]) -> None:
        self.store = store
        self.staging = Path(os.path.abspath(staging))

    def __repr__(self) -> str:
        return f"BucketMirror({str(self.store.uri)!r} -> {os.fspath(self.staging)!r})"

    def uri_of(self, path: str | os.PathLike[str]) -> StoreURI:
        """Where a staged file or folder is on the bucket."""
        return self.store.uri_of(key_under(self.staging, path))

    def path_of(self, uri: StoreURI) -> Path:
        """Where the object ``uri`` is (or goes) in the staging folder: :meth:`uri_of`'s
        inverse.

        Raises:
            ValueError: ``uri`` is not below the store's location.
        """
        root = self.store.uri
        prefix = f"{root.key}/" if root.key else ""
        if (uri.scheme, uri.bucket) != (root.scheme, root.bucket) or not uri.key.startswith(prefix):
            raise ValueError(f"{uri} is not under {root}")
        return self.staging.joinpath(*filter(None, uri.key[len(prefix) :].split("/")))

    def checkpoints(self, folder: str | os.PathLike[str]) -> list[CheckpointInfo]:
        """The v2 checkpoints of the staging folder ``folder`` that are on the bucket (their
        zip is), oldest first; paths are where they would be in staging.

        Raises:
            OSError: the bucket cannot be listed.
        """
        folder = Path(folder)
        found = []
        for filename, (size, mtime) in self.store.files(key_under(self.staging, folder)).items():
            name = parse_name(filename) if filename.endswith(".zip") else None
            if isinstance(name, CheckpointName):
                found.append(CheckpointInfo(folder / filename, name, size, mtime))
        found.sort(key=lambda info: (info.timesteps, info.filename))
        return found

    def metadata_bytes(self, zip_path: str | os.PathLike[str]) -> bytes:
        """The bucket's copy of the metadata file of ``zip_path`` (a path in staging), as
        stored: unverified, for ranking only.

        Raises:
            FileNotFoundError: no such object.
            OSError: the bucket cannot be read, or the object is larger than 4 MB.
        """
        path = Path(zip_path)
        name = path.name[: -len(".zip")] + METADATA_SUFFIX
        return self.store.read(key_under(self.staging, path.parent / name), _METADATA_LIMIT)

    def verified(self, zip_path: str | os.PathLike[str]) -> Path:
        """The checkpoint ``zip_path`` (a path in staging), verified: the staged copy if it
        verifies, else the bucket's, fetched (:meth:`fetch`).

        Raises:
            CheckpointCorruptError, FileNotFoundError, OSError: as :meth:`fetch`.
        """
        path = Path(zip_path)
        if path.is_file():
            try:
                verify_checkpoint(path)
                return path
            except CheckpointCorruptError:
                pass  # the bucket's copy replaces it if that one verifies
        self.fetch(path)
        return path

    def fetch(self, zip_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Download the checkpoint ``zip_path`` (a path in staging) from the bucket, verify
        it, and put it in place; returns its metadata. A staged copy is replaced only by one
        that verifies.

        Raises:
            CheckpointCorruptError: the bucket's copy fails verification (named by its URI);
                nothing was put in staging.
            FileNotFoundError: the bucket has no such checkpoint.
            OSError: the bucket cannot be read.
        """
        zip_path = Path(os.path.abspath(zip_path))
        folder = zip_path.parent
        key = key_under(self.staging, folder)
        base = zip_path.name[: -len(".zip")]
        names = [base + METADATA_SUFFIX, base + VECNORM_SUFFIX, zip_path.name]
        folder.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=FETCH_PREFIX, dir=folder))
        try:
            got = []
            for name in names:
                try:
                    self.store.get(f"{key}/{name}" if key else name, temporary / name)
                    got.append(name)
                except FileNotFoundError:
                    if name != base + VECNORM_SUFFIX:
                        raise  # no zip or no metadata: no checkpoint to fetch
            try:
                metadata = verify_checkpoint(temporary / zip_path.name)
            except CheckpointCorruptError as exc:
                culprit = self.store.uri_of(f"{key}/{exc.path.name}" if key else exc.path.name)
                raise CheckpointCorruptError(str(culprit), exc.reason) from None
            with folder_lock(folder):
                for name in got:  # the zip last: the commit point, as in a commit
                    os.replace(temporary / name, folder / name)
                fsync_dir(folder)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        log.info("fetched %s from %s", zip_path.name, self.uri_of(folder))
        return metadata
