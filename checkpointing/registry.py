"""``{root}/registry.json``: an index of every committed checkpoint under a models root.

The files stay the truth; the registry is a cache for browsing and resume-from-best that can
always be rebuilt from them (``python -m checkpointing.registry rebuild``). It holds, per
checkpoint, its path relative to the root (so a moved root still works), phase, market, seed,
timesteps, event, metrics, sizes and sha256 digests.

Writers: :meth:`Registry.record` (pass it as ``commit_files(..., on_commit=registry.record)``)
and :meth:`Registry.forget` (retention calls it after deleting). Both run under
``{root}/.registry.lock``; the lock order everywhere is the folder lock first, then the
registry lock. Each write replaces the file atomically (temporary + fsync + rename). A write
that fails is logged and never fails the save: readers repair what they find stale.

Stale: for a checkpoint folder, the set of committed zip names on disk differs from the names
the registry lists for it (a zip gone, or one it never heard of). Readers
(:meth:`Registry.entries`, :func:`find_best`) check each folder they read with one directory
listing and fall back to a scan of that folder (reading only the metadata of checkpoints the
registry does not know); a missing or unreadable registry means a scan of everything in scope.

A models root in a bucket has no ``registry.json``: its registry is one shard per run, and the
view their union (:mod:`checkpointing.shards`, :class:`~checkpointing.shards.BucketRegistry`).
:func:`open_registry` gives the reader of either kind of root, and
``python -m checkpointing.registry rebuild --root s3://bucket/prefix`` rebuilds the shards from
the checkpoints' metadata objects (listed; no zip is read).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from checkpointing.config import DEFAULT_CONFIG_PATH, CheckpointConfig, resolve_config
from checkpointing.entries import (
    EntryReader,
    RegistryEntry,
    build_entry,
    check_phase,
    rank_entries,
    with_parsed_name,
)
from checkpointing.errors import (
    ConfigError,
    RegistryError,
    usage_error,
)
from checkpointing.files import fsync_dir, temp_path
from checkpointing.locations import StoreURI, parse_location
from checkpointing.metadata import read_checkpoint_metadata, utc_timestamp
from checkpointing.naming import parse_name
from checkpointing.shards import SHARD_DIR, BucketRegistry
from checkpointing.store import CheckpointInfo, list_checkpoints

__all__ = [
    "REGISTRY_LOCK_NAME",
    "REGISTRY_NAME",
    "REGISTRY_SCHEMA_VERSION",
    "Registry",
    "RegistryEntry",
    "find_best",
    "main",
    "open_registry",
    "rank_entries",
]

log = logging.getLogger(__name__)

REGISTRY_NAME = "registry.json"
REGISTRY_LOCK_NAME = ".registry.lock"
REGISTRY_SCHEMA_VERSION = 1


# --------------------------------------------------------------------------- the registry


class Registry(EntryReader):
    """The index ``{root}/registry.json`` of the checkpoints under a models root.

    Only the checkpoint folders of the layout (``paths.phase{N}`` under ``paths.root``, moved to
    ``root``) are indexed.

    Args:
        root: the models root (``checkpointing.paths.root``).
        config: gives the folder layout; default: the built-in layout.

    Raises:
        ConfigError: a ``paths.phase{N}`` template that is not under ``paths.root``.
    """

    def __init__(
        self, root: str | os.PathLike[str], config: CheckpointConfig | None = None
    ) -> None:
        self.root = Path(root)
        self.config = config if config is not None else CheckpointConfig()
        self.layout = self.config.layout(self.root)
        # The entries the readers last read, and the file they came from (see _read).
        self._kept: tuple[tuple[int, int, int, int], dict[str, RegistryEntry]] | None = None

    def __repr__(self) -> str:
        return f"Registry({os.fspath(self.root)!r})"

    @property
    def path(self) -> Path:
        return self.root / REGISTRY_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / REGISTRY_LOCK_NAME

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The registry's own exclusive lock (take any folder lock first). Not re-entrant."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # ----------------------------------------------------------------- paths and layout

    def relative(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the root, ``/``-separated; raises :class:`RegistryError`."""
        for p, r in (
            (os.path.abspath(path), os.path.abspath(self.root)),
            (os.path.realpath(path), os.path.realpath(self.root)),
        ):
            try:
                return Path(p).relative_to(r).as_posix()
            except ValueError:
                continue
        raise RegistryError(f"{os.fspath(path)!r} is not under the registry root {self.root!r}")

    def _scan_entry(self, info: CheckpointInfo, rel_folder: str) -> RegistryEntry:
        phase, market = self.layout.where(rel_folder)
        return build_entry(
            f"{rel_folder}/{info.path.name}" if rel_folder else info.path.name,
            info.name,
            phase,
            market,
            read_checkpoint_metadata(info.path),
            info.size,
        )

    # ----------------------------------------------------------------- file I/O

    def _read(self, *, keep: bool = False) -> dict[str, RegistryEntry] | None:
        """The stored entries by relative path; ``None`` if missing or unreadable.

        ``keep`` (readers): remember them, and hand them out again (a copy of the mapping)
        while the file is the same one, unchanged (device, inode, size, modification time):
        a browser or a summary reads several folders of one registry. Writers never keep
        what they read, since they replace the file.
        """
        try:
            with open(self.path, "rb") as fh:
                st = os.fstat(fh.fileno())
                stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
                if keep and self._kept is not None and self._kept[0] == stamp:
                    return dict(self._kept[1])
                raw = fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s); using a scan", self.path, exc)
            return None
        try:
            doc = json.loads(raw)
            if doc.get("schema_version") != REGISTRY_SCHEMA_VERSION:
                raise ValueError(f"unknown schema_version {doc.get('schema_version')!r}")
            entries = {
                rel: RegistryEntry.from_json(rel, item) for rel, item in doc["checkpoints"].items()
            }
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); using a scan", self.path, exc)
            return None
        if keep:
            self._kept = (stamp, entries)
            return dict(entries)
        return entries

    def _write(self, entries: Mapping[str, RegistryEntry]) -> None:
        doc = {
            "schema_version": REGISTRY_SCHEMA_VERSION,
            "updated": utc_timestamp(),
            "checkpoints": {rel: entries[rel].to_json() for rel in sorted(entries)},
        }
        data = json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")
        tmp = temp_path(self.path)
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(self.root)

    def _scan_all(self) -> dict[str, RegistryEntry]:
        entries: dict[str, RegistryEntry] = {}
        for folder in self.layout.folders():
            rel_folder = self.relative(folder.path)
            for info in list_checkpoints(folder.path):
                entry = self._scan_entry(info, rel_folder)
                entries[entry.path] = entry
        return entries

    def _sync_folder(self, entries: dict[str, RegistryEntry], folder: Path) -> bool:
        """Make ``entries`` list exactly the checkpoints of ``folder``; True if it changed."""
        rel_folder = self.relative(folder)
        on_disk = {f"{rel_folder}/{info.path.name}": info for info in list_checkpoints(folder)}
        gone = [rel for rel, e in entries.items() if e.folder == rel_folder and rel not in on_disk]
        for rel in gone:
            del entries[rel]
        new = [info for rel, info in on_disk.items() if rel not in entries]
        for info in new:
            entry = self._scan_entry(info, rel_folder)
            entries[entry.path] = entry
        return bool(gone or new)

    # ----------------------------------------------------------------- writers

    def record(self, zip_path: str | os.PathLike[str], metadata: Mapping[str, Any]) -> None:
        """Index a just-committed checkpoint (the ``on_commit`` hook of ``commit_files``).

        Runs under the registry lock (the caller holds the folder lock). Also brings the
        entries of the zip's folder in line with the disk; a missing or unreadable registry
        is rebuilt first. A failure is logged, never raised: the save has already succeeded.
        """
        zip_path = Path(zip_path)
        try:
            rel = self.relative(zip_path)
            parsed = parse_name(zip_path.name)
            if parsed is None:
                raise RegistryError(f"not a checkpoint name: {zip_path.name!r}")
            phase, market = self.layout.where(rel.rsplit("/", 1)[0] if "/" in rel else "")
            if phase is None:
                raise RegistryError(
                    f"{os.fspath(zip_path.parent)!r} is not a checkpoint folder of the layout "
                    f"({self.config.paths.template(1)!r} ...)"
                )
            with self.lock():
                entries = self._read()
                if entries is None:
                    entries = self._scan_all()
                else:
                    self._sync_folder(entries, zip_path.parent)
                size = zip_path.stat().st_size
                entries[rel] = build_entry(rel, parsed, phase, market, metadata, size)
                self._write(entries)
        except (OSError, RegistryError) as exc:
            log.warning("registry %s not updated for %s: %s", self.path, zip_path, exc)

    def forget(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """Drop deleted checkpoints (zip paths) from the index; retention calls it.

        Also brings the entries of their folders in line with the disk. Nothing to do when
        there is no registry yet. A failure is logged, never raised.
        """
        zips = [Path(p) for p in paths]
        if not zips:
            return
        try:
            with self.lock():
                entries = self._read()
                if entries is None:
                    return
                changed = False
                for p in zips:
                    changed |= entries.pop(self.relative(p), None) is not None
                for folder in {p.parent for p in zips}:
                    changed |= self._sync_folder(entries, folder)
                if changed:
                    self._write(entries)
        except (OSError, RegistryError) as exc:
            log.warning("registry %s not updated after a prune: %s", self.path, exc)

    def rebuild(self) -> int:
        """Regenerate the registry from the files (metadata JSONs); return the entry count."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.lock():
            entries = self._scan_all()
            self._write(entries)
        log.info("rebuilt %s: %d checkpoints", self.path, len(entries))
        return len(entries)

    # ----------------------------------------------------------------- readers

    def entries(
        self,
        phase: int | None = None,
        market: str | None = None,
        *,
        runs: Collection[str | None] | None = None,
    ) -> list[RegistryEntry]:
        """Up-to-date entries of one phase / market (default: all), by folder then timesteps.

        Each folder read is checked against the disk (one listing); a stale folder, or all of
        them when the registry is missing, is read from the files instead. ``runs`` is the
        same hint as :meth:`checkpointing.shards.BucketRegistry.entries`' (the runs whose
        entries are wanted in full); every entry here is in full anyway.
        """
        del runs  # a local registry is one file: nothing to save by reading less
        stored = self._read(keep=True)
        if stored is None:
            log.info("%s missing or unreadable: scanning the checkpoint folders", self.path)
        by_folder: dict[str, dict[str, RegistryEntry]] = {}
        for rel, entry in (stored or {}).items():
            by_folder.setdefault(entry.folder, {})[rel] = entry
        out: list[RegistryEntry] = []
        folders = self.layout.folders(
            None if phase is None else [check_phase(phase)],
            None if market is None else [market],
        )
        for folder in folders:
            rel_folder = self.relative(folder.path)
            known = by_folder.get(rel_folder, {})
            on_disk = {
                f"{rel_folder}/{info.filename}": info for info in list_checkpoints(folder.path)
            }
            if stored is not None and on_disk.keys() != known.keys():
                log.info("%s is stale for %s: reading its files", self.path, rel_folder)
            for rel, info in on_disk.items():
                known_entry = known.get(rel)
                if known_entry is None:
                    out.append(self._scan_entry(info, rel_folder))
                else:
                    out.append(with_parsed_name(known_entry, info.name))
        return out


def find_best(
    root: str | os.PathLike[str],
    phase: int,
    market: str,
    metric: str,
    seed: int | None = None,
    *,
    runs: Collection[str | None] | None = None,
    config: CheckpointConfig | None = None,
) -> RegistryEntry | None:
    """The best checkpoint of ``{root}/phase{N}/{market}`` by ``metric`` (any of
    ``val_reward``, ``sharpe_ratio``, ``win_rate``, ``max_drawdown``, ``total_return``; higher
    is better), optionally of one ``seed`` and of the run ids in ``runs`` (None: every run).
    Use ``entry.absolute(root)`` for its path.

    Raises:
        RegistryError: a bad phase or metric.
        CheckpointNameError: a bad market name.
    """
    return Registry(root, config).find_best(phase, market, metric, seed, runs=runs)


def open_registry(
    root: str | os.PathLike[str] | StoreURI, config: CheckpointConfig | None = None
) -> Registry | BucketRegistry:
    """The registry reader of a models root: :class:`Registry` for a folder,
    :class:`~checkpointing.shards.BucketRegistry` for a URI. Both answer ``entries(phase,
    market, runs=...)``, ``rank`` and ``find_best`` alike."""
    if isinstance(root, StoreURI):
        return BucketRegistry(root, config)
    return Registry(root, config)


# --------------------------------------------------------------------------- CLI


def _rebuild_bucket(uri: StoreURI, config: CheckpointConfig) -> int:
    registry = BucketRegistry(uri, config)
    try:
        registry.check()
        count, shards = registry.rebuild()
    except ConfigError as exc:  # ObjectStoreError: no bucket, denied, unreachable
        return usage_error(exc)
    except OSError as exc:
        print(f"error: cannot rebuild the registry shards under {uri}: {exc}", file=sys.stderr)
        return 1
    print(f"indexed {count} checkpoints in {shards} run shard(s) under {uri.child(SHARD_DIR)}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m checkpointing.registry rebuild [--root DIR|s3://b/p] [--config FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m checkpointing.registry",
        description="Maintain {root}/registry.json, the index of committed checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rebuild = sub.add_parser("rebuild", help="regenerate registry.json from the files")
    rebuild.add_argument(
        "--root",
        "--models-root",
        dest="root",
        help="models root: a folder, or s3://bucket/prefix (its run shards are rebuilt from the "
        "checkpoints' metadata objects); default: checkpointing.paths.root",
    )
    rebuild.add_argument(
        "--config", help=f"checkpoint config (default: {DEFAULT_CONFIG_PATH} if it exists)"
    )
    args = parser.parse_args(argv)
    try:
        where = None if args.root is None else parse_location(args.root, "--root")
        config = resolve_config(args.config)
        if isinstance(where, StoreURI):
            return _rebuild_bucket(where, config)
        root = config.models_root(where)
    except ConfigError as exc:
        return usage_error(exc)
    if not root.is_dir():
        return usage_error(f"models root {os.fspath(root)!r} does not exist")
    try:
        count = Registry(root, config).rebuild()
    except (ConfigError, OSError) as exc:
        return usage_error(exc)
    print(f"indexed {count} checkpoints in {os.fspath(root / REGISTRY_NAME)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
