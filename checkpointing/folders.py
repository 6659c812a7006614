"""A checkpoint folder wherever it is: a folder on this machine, or a prefix in a bucket.

The readers of checkpoint folders (the summary, retention, the registry, the browser) need
five things of a folder, and nothing else: its checkpoints (names, from a listing), the bytes
each takes (the zip and its companions), where each is (a path or a URI, for people), the
small metadata JSON of one, and deleting some (zip first). :class:`LocalFolder` answers them
from the disk, as :mod:`checkpointing.store` always has; :class:`BucketFolder` from **one
listing** of the prefix (names, sizes and modification times of every object) plus a GET of
a ``*_metadata.json`` object when a reader asks for it. A checkpoint's zip is never read to
list, summarize, plan or index it, and in a bucket never downloaded::

    root = BucketRoot(parse_location("s3://acc/models", "--root"), config)
    root.check()                                  # ObjectStoreError naming the URI
    for folder in root.folders(phases=[1]):       # one paged listing per phase
        for info in folder.checkpoints():         # parsed names, sizes and mtimes preset
            folder.bytes_of(info), folder.location_of(info)   # no request
            folder.metadata(info)                 # one GET of {base}_metadata.json

A checkpoint in a bucket is a :class:`BucketCheckpointInfo`: a
:class:`~checkpointing.store.CheckpointInfo` whose ``path`` raises (it has none on this
machine; ``uri`` says where it is), so no code for local folders can touch a local file by
mistake with it. Its ``mtime`` is when the object was written (whole seconds): the retention
rule that reads mtimes (interrupts released by a later ``phase_end``) keeps an interrupt when
in doubt, and uploads go in commit order.

A bucket has no lock: a checkpoint being uploaded has its companions there before its zip, so
it is not listed (a checkpoint exists if and only if its zip exists), and companions without
a zip are only taken for leftovers once older than the grace period (:meth:`BucketFolder.orphans`).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from checkpointing.cleanup import delete_checkpoints
from checkpointing.errors import MetadataError
from checkpointing.locations import StoreURI
from checkpointing.metadata import (
    MAX_METADATA_BYTES,
    decode_metadata,
    metadata_or_name,
    read_checkpoint_metadata,
)
from checkpointing.naming import (
    COMPANION_SUFFIXES,
    METADATA_SUFFIX,
    VECNORM_SUFFIX,
    CheckpointName,
    LegacyName,
    parse_name,
    validate_market,
)
from checkpointing.object_store import ObjectInfo, ObjectStore
from checkpointing.store import CheckpointInfo, list_checkpoints

if TYPE_CHECKING:
    from checkpointing.config import CheckpointConfig

__all__ = [
    "BucketCheckpointInfo",
    "BucketFolder",
    "BucketRoot",
    "Folder",
    "LocalFolder",
    "checkpoint_bytes",
    "parallel",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")
_MARKET_SLOT = "{market}"
WORKERS = 8  # concurrent small GETs (metadata objects, registry shards)


def checkpoint_bytes(info: CheckpointInfo) -> int:
    """Bytes a checkpoint of a local folder takes on disk: its zip plus the companions that
    exist."""
    total = info.size
    # String paths: this runs for 10,000 files (a dry run of a big folder, a summary).
    base = os.path.join(info.dirname, info.base)
    for suffix in COMPANION_SUFFIXES:
        try:
            st = os.lstat(base + suffix)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def parallel(function: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[function(item) for item in items]``, on up to :data:`WORKERS` threads when there
    are several (small requests to a bucket spend their time waiting)."""
    if len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        return list(pool.map(function, items))


# --------------------------------------------------------------------------- local


class LocalFolder:
    """A checkpoint folder on this machine (see :mod:`checkpointing.store`)."""

    def __init__(
        self, path: str | os.PathLike[str], phase: int | None = None, market: str | None = None
    ) -> None:
        self.path = Path(path)
        self.phase = phase
        self.market = market

    def __repr__(self) -> str:
        return f"LocalFolder({os.fspath(self.path)!r})"

    @property
    def location(self) -> str:
        return os.fspath(self.path)

    def exists(self) -> bool:
        return self.path.is_dir()

    def checkpoints(self, include_legacy: bool = True) -> list[CheckpointInfo]:
        return list_checkpoints(self.path, include_legacy=include_legacy)

    def bytes_of(self, info: CheckpointInfo) -> int:
        return checkpoint_bytes(info)

    def location_of(self, info: CheckpointInfo) -> str:
        return os.fspath(info.path)

    def metadata(self, info: CheckpointInfo) -> dict[str, Any] | None:
        return read_checkpoint_metadata(info.path)

    def metadata_many(self, infos: Sequence[CheckpointInfo]) -> list[dict[str, Any] | None]:
        return [self.metadata(info) for info in infos]

    def delete(self, infos: Sequence[CheckpointInfo]) -> list[int | OSError]:
        """:func:`checkpointing.cleanup.delete_checkpoints` (call it under the folder lock)."""
        return delete_checkpoints(infos)


# --------------------------------------------------------------------------- bucket


class BucketCheckpointInfo(CheckpointInfo):
    """A checkpoint in a bucket, as one listing found it: name, size and mtime preset.

    ``uri`` is where it is; ``path`` raises, since it has no path on this machine.
    ``dirname`` is the folder's URI as a string.
    """

    __slots__ = ("_uri",)

    _uri: StoreURI

    @classmethod
    def _found(
        cls, folder: StoreURI, filename: str, name: CheckpointName | LegacyName, found: ObjectInfo
    ) -> BucketCheckpointInfo:
        info = object.__new__(cls)
        info._dirname = str(folder)
        info._filename = filename
        info._name = name
        info._path = None
        info._size = found.size
        info._mtime = found.mtime
        info._uri = folder.child(filename)
        return info

    @property
    def uri(self) -> StoreURI:
        return self._uri

    @property
    def path(self) -> Path:
        raise TypeError(f"{self._uri} is in a bucket and has no path on this machine; use its uri")

    def _stat(self) -> None:  # size and mtime come from the listing: never a local lstat
        pass

    def _key(self) -> tuple[Any, CheckpointName | LegacyName, int, float]:
        return (str(self._uri), self._name, self.size, self.mtime)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(uri={str(self._uri)!r}, name={self._name!r}, "
            f"size={self.size!r}, mtime={self.mtime!r})"
        )


class BucketFolder:
    """One checkpoint folder in a bucket: the objects directly under a prefix.

    Args:
        store: the bucket location of the models root.
        key: the folder, relative to ``store``'s prefix (``phase1/NQ/checkpoints``).
        phase, market: what the layout says the folder is, when known.
        objects: its listing, when the caller has it already (else listed on first use).

    The listing is taken once and kept (:meth:`refresh` lists again); :meth:`delete` keeps
    it up to date with what it deleted.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        phase: int | None = None,
        market: str | None = None,
        objects: Mapping[str, ObjectInfo] | None = None,
    ) -> None:
        self.store = store
        self.key = key.strip("/")
        self.phase = phase
        self.market = market
        self._objects = None if objects is None else dict(objects)

    def __repr__(self) -> str:
        return f"BucketFolder({self.location!r})"

    @property
    def uri(self) -> StoreURI:
        return self.store.uri_of(self.key)

    @property
    def location(self) -> str:
        return str(self.uri)

    def objects(self) -> dict[str, ObjectInfo]:
        """Every object directly in the folder by file name (one listing, then kept)."""
        if self._objects is None:
            self._objects = self.store.listing(self.key)
        return self._objects

    def refresh(self) -> None:
        self._objects = None

    def exists(self) -> bool:
        """Whether any object is in the folder (a bucket has no empty folders)."""
        return bool(self.objects())

    def _key_of(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name

    def checkpoints(self, include_legacy: bool = True) -> list[CheckpointInfo]:
        """The committed checkpoints (their zips), oldest first, as
        :func:`checkpointing.store.list_checkpoints` orders them."""
        uri = self.uri
        found: list[tuple[int, str, CheckpointName | LegacyName, ObjectInfo]] = []
        for filename, obj in self.objects().items():
            if not filename.endswith(".zip"):
                continue
            name = parse_name(filename)
            if name is None or (not include_legacy and isinstance(name, LegacyName)):
                continue
            found.append((name.timesteps, filename, name, obj))
        found.sort(key=lambda item: (item[0], item[1]))
        make = BucketCheckpointInfo._found
        return [make(uri, filename, name, obj) for _, filename, name, obj in found]

    def bytes_of(self, info: CheckpointInfo) -> int:
        """The zip's bytes plus its companions', from the listing."""
        objects = self.objects()
        total = info.size
        for suffix in COMPANION_SUFFIXES:
            obj = objects.get(info.base + suffix)
            if obj is not None:
                total += obj.size
        return total

    def location_of(self, info: CheckpointInfo) -> str:
        return str(self.uri.child(info.filename))

    def metadata(self, info: CheckpointInfo) -> dict[str, Any] | None:
        """The checkpoint's metadata object (one GET; never its zip), or what its name says
        when the object is missing or unreadable (as
        :func:`~checkpointing.metadata.read_checkpoint_metadata` falls back)."""
        name = info.base + METADATA_SUFFIX
        doc = None
        if name in self.objects():
            key = self._key_of(name)
            try:
                doc = decode_metadata(
                    self.store.get_bytes(key, MAX_METADATA_BYTES), str(self.store.uri_of(key))
                )
            except FileNotFoundError:
                doc = None  # deleted since the listing
            except (OSError, ValueError, MetadataError) as exc:
                log.warning("cannot read %s (%s); using its name", self.store.uri_of(key), exc)
                doc = None
        return metadata_or_name(doc, info.filename)

    def metadata_many(self, infos: Sequence[CheckpointInfo]) -> list[dict[str, Any] | None]:
        """:meth:`metadata` of each, several requests at a time."""
        return parallel(self.metadata, infos)

    def delete(self, infos: Sequence[CheckpointInfo]) -> list[int | OSError]:
        """Delete checkpoints: for each, its zip first (it stops existing), then its
        companions. Returns for each the bytes freed (from the listing), or the ``OSError``
        that stopped it (the others are still deleted). Several checkpoints are deleted at a
        time (each deletion is a few requests: pyarrow checks the object, deletes it and
        keeps the folder visible), each one's files in that order.

        Raises:
            ValueError: an info whose file name is not a checkpoint's (nothing is deleted).
        """
        for info in infos:
            if not info.filename.endswith(".zip") or parse_name(info.filename) is None:
                raise ValueError(f"refusing to delete {info.filename!r}: not a checkpoint name")
        objects = self.objects()

        def delete_one(info: CheckpointInfo) -> int | OSError:
            freed = 0
            try:
                for name in (
                    info.filename,
                    info.base + VECNORM_SUFFIX,
                    info.base + METADATA_SUFFIX,
                ):
                    if name == info.filename or name in objects:
                        self.store.delete(self._key_of(name))
                        gone = objects.pop(name, None)
                        freed += 0 if gone is None else gone.size
            except OSError as exc:
                return exc
            return freed

        return parallel(delete_one, infos)

    def orphans(self, grace_seconds: float, now: float | None = None) -> list[str]:
        """Companions of v2 checkpoints without a zip, written more than ``grace_seconds``
        ago: the leftovers of a deletion cut short. Younger ones may be an upload in flight
        (its companions go first)."""
        now = time.time() if now is None else now
        objects = self.objects()
        out = []
        for name, obj in objects.items():
            for suffix in COMPANION_SUFFIXES:
                if name.endswith(suffix):
                    zip_name = name[: -len(suffix)] + ".zip"
                    if (
                        zip_name not in objects
                        and isinstance(parse_name(zip_name), CheckpointName)
                        and now - obj.mtime > grace_seconds
                    ):
                        out.append(name)
        return sorted(out)

    def remove(self, names: Iterable[str]) -> list[str]:
        """Delete the objects ``names`` of the folder; returns those deleted."""
        removed = []
        for name in names:
            self.store.delete(self._key_of(name))
            self.objects().pop(name, None)
            removed.append(name)
        return removed


Folder = LocalFolder | BucketFolder


class BucketRoot:
    """A models root in a bucket: its checkpoint folders, in the layout of ``config``.

    ``paths.phase{N}`` are taken relative to ``paths.root`` (``phase1/{market}/checkpoints``)
    and found below the URI's prefix.
    """

    def __init__(
        self, uri: StoreURI, config: CheckpointConfig, store: ObjectStore | None = None
    ) -> None:
        self.uri = uri
        self.config = config
        self.store = store if store is not None else ObjectStore(uri)
        self.layout = config.layout(".")  # the templates, relative to the root

    def __repr__(self) -> str:
        return f"BucketRoot({str(self.uri)!r})"

    def check(self) -> None:
        """The bucket exists and the prefix can be listed (nothing is written).

        Raises:
            ObjectStoreError: naming the URI and what failed.
        """
        self.store.check_readable()

    def folder_key(self, phase: int, market: str) -> str:
        """``phase1/NQ/checkpoints``: the folder of (phase, market), relative to the root."""
        return self.layout.checkpoint_dir(phase, validate_market(market)).as_posix()

    def folder(self, phase: int, market: str) -> BucketFolder:
        return BucketFolder(self.store, self.folder_key(phase, market), phase, market)

    def folders(
        self, phases: Iterable[int] | None = None, markets: Iterable[str] | None = None
    ) -> list[BucketFolder]:
        """The checkpoint folders of ``phases`` (default all) and ``markets`` (default every
        one found) that hold any object, in phase then market order, each with its listing.

        One listing per (phase, market) asked for, else one paged listing of everything
        below each phase's folder.
        """
        from checkpointing.layout import PHASES

        wanted = None if markets is None else [validate_market(m) for m in markets]
        out: list[BucketFolder] = []
        for phase in PHASES if phases is None else list(phases):
            if wanted is not None:
                for market in wanted:
                    folder = self.folder(phase, market)
                    if folder.exists():
                        out.append(folder)
                continue
            parts = self.layout.checkpoint_dir(phase, _MARKET_SLOT).as_posix().split("/")
            i = next(i for i, part in enumerate(parts) if _MARKET_SLOT in part)
            parent = "/".join(parts[:i])
            grouped: dict[str, dict[str, ObjectInfo]] = {}
            for rel, obj in self.store.tree(parent).items():
                folder_rel, _, name = rel.rpartition("/")
                grouped.setdefault(folder_rel, {})[name] = obj
            found = []
            for folder_rel, objects in grouped.items():
                rel = f"{parent}/{folder_rel}" if parent else folder_rel
                where_phase, where_market = self.layout.where(rel)
                if where_phase == phase and where_market is not None:
                    found.append(BucketFolder(self.store, rel, phase, where_market, objects))
            out.extend(sorted(found, key=lambda f: f.market or ""))
        return out
