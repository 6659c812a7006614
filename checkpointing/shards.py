"""The registry of a models root in a bucket: one shard object per run; the view is their union.

On a local disk, ``registry.json`` is one file that every writer rewrites under a file lock
(:mod:`checkpointing.registry`). A bucket has no lock, and a read-modify-write of one object by
trials on several nodes at once loses entries: two writers read the same version, each adds its
entry, the second PUT replaces the first. (S3's conditional writes, ``If-Match`` /
``If-None-Match``, would make it a compare-and-swap, but pyarrow's S3 file system, the only S3
client the project ships, cannot send them.) So the registry of a bucket is sharded by run:

- **One shard per run**, ``{prefix}/registry/<market>/seed-<seed>_run-<run id>.json`` (the run
  without an id: ``seed-<seed>.json``): the index entries (the same as ``registry.json``'s:
  path relative to the root, phase, metrics, sizes, digests) of that run's checkpoints. It is
  written **only by the process that trains the run**, through its uploader
  (:mod:`checkpointing.uploads`), and replaced whole each time: no other run's writer ever
  touches it, so no write can drop another's entry, however many nodes write at once. (The one
  other writer is on the same machine: the next run's catch-up, putting the staged shard of a
  run that ended while the bucket was away, from the same staged file.)
- **Staged first.** The run's process keeps its shard in the staging folder at the same
  relative path (:class:`LocalShards`, updated under a file lock when a checkpoint is committed
  and when retention deletes one), and the uploader puts it after the checkpoint's zip, whole.
  A later process of the same run (a trial retried on another node, a resumed run) first merges
  the bucket's copy of the shard, keeping the entries whose zip the bucket still lists, so the
  shard keeps the checkpoints the run wrote elsewhere. Two processes of one machine putting one
  shard (a run and another run's catch-up) each read the staged file back after their PUT and
  put it again if it changed meanwhile, so the last PUT holds the newest content.
- **The view** (:class:`BucketRegistry`) is the union of the shards, read on demand (a market's
  shards, or only those of the runs asked for), **checked against one listing of each
  folder**: an entry whose zip is gone (retention, on the bucket or in the run) is left out, and
  a checkpoint no shard names (its run's shard not uploaded yet, a shard lost) is indexed from
  its metadata object, one small GET. Zips are never read. Retention on the bucket therefore
  never needs to rewrite a shard, and the view never misses a committed checkpoint.
- ``python -m checkpointing.registry rebuild --root s3://...`` lists the bucket, reads every
  checkpoint's metadata object and writes every run's shard from them. While runs write, it is
  safe for the view (a shard it replaces is put again by its run at the run's next save; what
  no shard names is read from its metadata), but run it when none do to leave every shard
  complete.

Legacy v1 checkpoints (``phase1_1000_steps.zip``) belong to no run and are in no shard: the
view reads their metadata. Nothing here imports pyarrow until a bucket is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.entries import (
    EntryReader,
    RegistryEntry,
    build_entry,
    check_phase,
    with_parsed_name,
)
from checkpointing.errors import RegistryError
from checkpointing.files import temp_path, unlink_quietly
from checkpointing.folders import BucketFolder, BucketRoot, parallel
from checkpointing.locations import StoreURI
from checkpointing.naming import CheckpointName, validate_market, validate_run_id
from checkpointing.store import CheckpointInfo

if TYPE_CHECKING:
    from checkpointing.config import CheckpointConfig
    from checkpointing.object_store import ObjectStore

__all__ = [
    "SHARD_DIR",
    "SHARD_SCHEMA_VERSION",
    "BucketRegistry",
    "LocalShards",
    "RunKey",
    "decode_shard",
    "encode_shard",
    "parse_shard_name",
    "shard_key",
]

log = logging.getLogger(__name__)

SHARD_DIR = "registry"
SHARD_SCHEMA_VERSION = 1
MAX_SHARD_BYTES = 64 * 1024 * 1024
_LOCK_NAME = ".shards.lock"

RunKey = tuple[str, int, str | None]  # (market, seed, run id)


def shard_key(run: RunKey) -> str:
    """``registry/NQ/seed-42_run-<id>.json``: the shard of a run, relative to the models root."""
    market, seed, run_id = run
    validate_market(market)
    name = f"seed-{int(seed)}" + ("" if run_id is None else f"_run-{validate_run_id(run_id)}")
    return f"{SHARD_DIR}/{market}/{name}.json"


def parse_shard_name(filename: str) -> tuple[int, str | None] | None:
    """``seed-42_run-<id>.json`` -> ``(42, "<id>")``; ``seed-42.json`` -> ``(42, None)``;
    anything else -> None."""
    if not filename.startswith("seed-") or not filename.endswith(".json"):
        return None
    seed_text, sep, run_id = filename[len("seed-") : -len(".json")].partition("_run-")
    if not seed_text.isdigit():
        return None
    if not sep:
        return int(seed_text), None
    try:
        return int(seed_text), validate_run_id(run_id)
    except ValueError:
        return None


def run_of(entry: RegistryEntry) -> RunKey | None:
    """The run of an entry, or None (a legacy v1 checkpoint: no market or seed)."""
    if entry.market is None or entry.seed is None or entry.legacy:
        return None
    return (entry.market, entry.seed, entry.run_id)


def encode_shard(run: RunKey, entries: Mapping[str, RegistryEntry]) -> bytes:
    """The shard document: the run and its entries by path, sorted (the same entries give the
    same bytes)."""
    market, seed, run_id = run
    doc = {
        "schema_version": SHARD_SCHEMA_VERSION,
        "market": market,
        "seed": seed,
        "run_id": run_id,
        "checkpoints": {rel: entries[rel].to_json() for rel in sorted(entries)},
    }
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode("utf-8")


def decode_shard(raw: bytes, source: str) -> dict[str, RegistryEntry]:
    """The entries of a shard by path.

    Raises:
        RegistryError: not a shard of this schema (the message names ``source``).
    """
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("schema_version") != SHARD_SCHEMA_VERSION:
            raise ValueError("not a registry shard of schema_version 1")
        return {rel: RegistryEntry.from_json(rel, item) for rel, item in doc["checkpoints"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RegistryError(f"{source}: unreadable registry shard ({exc})") from None


# --------------------------------------------------------------------------- the writers' side


class LocalShards:
    """The shards of the runs committed to a local models root (a staging folder), each at
    its bucket key below ``root`` (``registry/NQ/seed-42_run-<id>.json``).

    Every change is a read-modify-write of one small file under ``registry/.shards.lock``
    (processes of one machine share a staging folder), written to a temporary and renamed.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalShards({os.fspath(self.root)!r})"

    def path_of(self, run: RunKey) -> Path:
        return self.root.joinpath(*shard_key(run).split("/"))

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        folder = self.root / SHARD_DIR
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self, path: Path) -> dict[str, RegistryEntry]:
        """The entries of a staged shard (none if it is missing or unreadable)."""
        try:
            return decode_shard(path.read_bytes(), os.fspath(path))
        except FileNotFoundError:
            return {}
        except (OSError, RegistryError) as exc:
            log.warning("%s; starting it again", exc)
            return {}

    def _write(self, path: Path, run: RunKey, entries: Mapping[str, RegistryEntry]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        try:
            tmp.write_bytes(encode_shard(run, entries))
            os.replace(tmp, path)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def update(
        self,
        run: RunKey,
        add: Mapping[str, RegistryEntry] = {},
        drop: Iterable[str] = (),
        *,
        replace_existing: bool = True,
    ) -> Path | None:
        """Add (or, unless ``replace_existing`` is false, replace) and drop entries of the
        run's shard; returns its path if it changed, else None."""
        path = self.path_of(run)
        with self._lock():
            entries = self.read(path)
            before = dict(entries)
            for rel, entry in add.items():
                if replace_existing or rel not in entries:
                    entries[rel] = entry
            for rel in drop:
                entries.pop(rel, None)
            if entries == before and path.exists():
                return None
            self._write(path, run, entries)
        return path

    def record(self, entry: RegistryEntry) -> Path | None:
        """Index a committed checkpoint in its run's shard; the shard's path if it changed."""
        run = run_of(entry)
        if run is None:
            return None
        return self.update(run, {entry.path: entry})

    def forget(self, entries: Iterable[tuple[RunKey, str]]) -> list[Path]:
        """Drop checkpoints (run, relative path) from their runs' shards; the shards changed."""
        by_run: dict[RunKey, list[str]] = {}
        for run, rel in entries:
            by_run.setdefault(run, []).append(rel)
        changed = []
        for run, rels in by_run.items():
            if not self.path_of(run).exists():
                continue
            path = self.update(run, drop=rels)
            if path is not None:
                changed.append(path)
        return changed

    def paths(self) -> list[Path]:
        """Every staged shard."""
        top = self.root / SHARD_DIR
        if not top.is_dir():
            return []
        return sorted(
            p
            for p in top.glob("*/seed-*.json")
            if p.is_file() and parse_shard_name(p.name) is not None
        )


# --------------------------------------------------------------------------- the view


class BucketRegistry(EntryReader):
    """The registry of a models root in a bucket: the union of its runs' shards, checked
    against listings of the folders (see the module).

    Args:
        uri: the models root (``s3://bucket/prefix``).
        config: gives the folder layout; default: the built-in layout.
        store: the bucket (default: one made for ``uri`` from the environment).

    What it reads is kept (a browser reads several folders of one registry); make a new one
    to read again.
    """

    def __init__(
        self,
        uri: StoreURI,
        config: CheckpointConfig | None = None,
        store: ObjectStore | None = None,
    ) -> None:
        from checkpointing.config import CheckpointConfig

        self.uri = uri
        self.config = config if config is not None else CheckpointConfig()
        self.bucket = BucketRoot(uri, self.config, store)
        self.store = self.bucket.store
        self._shard_names: dict[str, dict[str, RunKey]] = {}  # market -> shard key -> run
        self._shards_read: set[str] = set()
        self._known: dict[str, RegistryEntry] = {}  # by path, from the shards read
        self._folders: dict[str, BucketFolder] = {}

    def __repr__(self) -> str:
        return f"BucketRegistry({str(self.uri)!r})"

    def check(self) -> None:
        """The bucket exists and can be listed (ObjectStoreError otherwise)."""
        self.bucket.check()

    # ----------------------------------------------------------------- shards

    def _shards_of(self, market: str) -> dict[str, RunKey]:
        """Shard key -> run, of the shards of ``market`` on the bucket (one listing)."""
        if market not in self._shard_names:
            found: dict[str, RunKey] = {}
            for filename in self.store.listing(f"{SHARD_DIR}/{market}"):
                parsed = parse_shard_name(filename)
                if parsed is not None:
                    found[f"{SHARD_DIR}/{market}/{filename}"] = (market, *parsed)
            self._shard_names[market] = found
        return self._shard_names[market]

    def _read_shard(self, key: str) -> dict[str, RegistryEntry]:
        try:
            return decode_shard(
                self.store.get_bytes(key, MAX_SHARD_BYTES), str(self.store.uri_of(key))
            )
        except FileNotFoundError:
            return {}  # replaced by a rebuild meanwhile, or deleted
        except (OSError, ValueError) as exc:  # RegistryError is a ValueError
            log.warning("registry shard %s skipped (%s)", self.store.uri_of(key), exc)
            return {}

    def _load_shards(self, market: str, runs: Collection[str | None] | None) -> None:
        """Read the shards of ``market`` (of ``runs`` only, when given) not read yet."""
        wanted = [
            key
            for key, run in self._shards_of(market).items()
            if key not in self._shards_read and (runs is None or run[2] in runs)
        ]
        for key, entries in zip(wanted, parallel(self._read_shard, wanted), strict=True):
            self._shards_read.add(key)
            self._known.update(entries)

    # ----------------------------------------------------------------- readers

    def folders(self, phase: int | None = None, market: str | None = None) -> list[BucketFolder]:
        """The listed checkpoint folders of one phase / market (default: all)."""
        phases = None if phase is None else [check_phase(phase)]
        markets = None if market is None else [market]
        folders = self.bucket.folders(phases, markets)
        for folder in folders:
            self._folders[folder.key] = folder
        return folders

    def entries(
        self,
        phase: int | None = None,
        market: str | None = None,
        *,
        runs: Collection[str | None] | None = None,
    ) -> list[RegistryEntry]:
        """Entries of the checkpoints on the bucket of one phase / market (default: all), by
        folder then timesteps: from the shards, else from each one's metadata object.

        ``runs``: the run ids whose entries are wanted in full; the others' are made from
        their names alone (timesteps, event, seed, run, the two metrics a name carries) and
        no shard or metadata of theirs is read. None: every run in full.
        """
        out: list[RegistryEntry] = []
        for folder in self.folders(phase, market):
            assert folder.market is not None
            self._load_shards(folder.market, runs)
            out += self._folder_entries(folder, runs)
        return out

    def _folder_entries(
        self, folder: BucketFolder, runs: Collection[str | None] | None
    ) -> list[RegistryEntry]:
        out: list[RegistryEntry] = []
        unknown: list[tuple[int, CheckpointInfo]] = []
        for info in folder.checkpoints():
            rel = f"{folder.key}/{info.filename}"
            name = info.name
            known = self._known.get(rel)
            if known is not None:
                if known.phase != folder.phase:
                    known = replace(known, phase=folder.phase)
                out.append(with_parsed_name(known, name))
                continue
            entry = build_entry(rel, name, folder.phase, folder.market, None, info.size)
            run_id = name.run_id if isinstance(name, CheckpointName) else None
            if runs is None or run_id in runs:
                unknown.append((len(out), info))  # its metadata object is read below
            out.append(with_parsed_name(entry, name))
        metas = folder.metadata_many([info for _, info in unknown])
        for (index, info), meta in zip(unknown, metas, strict=True):
            rel = out[index].path
            entry = build_entry(rel, info.name, folder.phase, folder.market, meta, info.size)
            out[index] = with_parsed_name(entry, info.name)
        return out

    def exists(self, rel: str) -> bool:
        """Whether the zip ``rel`` (relative to the root) is on the bucket, from the listing of
        its folder (listed now if no reader listed it yet)."""
        folder_key, _, name = rel.rpartition("/")
        folder = self._folders.get(folder_key)
        if folder is None:
            folder = self._folders[folder_key] = BucketFolder(self.store, folder_key)
        return name in folder.objects()

    # ----------------------------------------------------------------- rebuild

    def rebuild(self) -> tuple[int, int]:
        """Write every run's shard from the metadata objects of its checkpoints on the bucket
        (listed; no zip read); returns (checkpoints indexed, shards written)."""
        by_run: dict[RunKey, dict[str, RegistryEntry]] = {}
        count = 0
        for folder in self.folders():
            infos = [i for i in folder.checkpoints() if isinstance(i.name, CheckpointName)]
            for info, meta in zip(infos, folder.metadata_many(infos), strict=True):
                rel = f"{folder.key}/{info.filename}"
                entry = build_entry(rel, info.name, folder.phase, folder.market, meta, info.size)
                run = run_of(entry)
                if run is not None:
                    by_run.setdefault(run, {})[rel] = entry
                    count += 1
        runs = sorted(by_run, key=lambda r: (r[0], r[1], r[2] or ""))

        def put(run: RunKey) -> None:
            self.store.put_bytes(shard_key(run), encode_shard(run, by_run[run]))

        parallel(put, runs)
        log.info("rebuilt %d shards under %s: %d checkpoints", len(runs), self.uri, count)
        return count, len(runs)
