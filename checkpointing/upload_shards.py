"""The registry shards of a staging folder on their way to the bucket.

Each run committing under a staging folder keeps its registry shard there
(:class:`checkpointing.shards.LocalShards`, ``registry/<market>/seed-<seed>_run-<run id>.json``):
updated when a checkpoint is committed and when retention deletes one, and put on the bucket
whole by the :class:`~checkpointing.uploads.Uploader` after the checkpoint's zip.
:class:`StagedShards` is that part of the uploader: indexing, and putting a shard.

The first put of a shard by a process merges the bucket's copy into it (the entries of the
run's checkpoints written from another machine whose zip the bucket still lists). Only this
run's process writes its shard, so runs on many nodes never lose each other's entries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from checkpointing.entries import build_entry
from checkpointing.errors import RegistryError
from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import CheckpointName, parse_name
from checkpointing.object_store import ObjectStore
from checkpointing.shards import (
    MAX_SHARD_BYTES,
    SHARD_DIR,
    LocalShards,
    RunKey,
    decode_shard,
    parse_shard_name,
)

__all__ = ["StagedShards"]

log = logging.getLogger(__name__)

_SHARD_PUTS = 5  # puts of one shard in a row while another process keeps changing it


class StagedShards:
    """The staged registry shards of ``staging`` and their puts to ``store`` (the bucket
    location that mirrors it). Not thread-safe: the uploader calls :meth:`put` from its
    thread only; :meth:`record` and :meth:`forget` go through :class:`LocalShards`' own
    locking."""

    def __init__(self, store: ObjectStore, staging: Path) -> None:
        self.store = store
        self.local = LocalShards(staging)
        self._merged: set[str] = set()  # shard keys merged with the bucket's copy already

    def record(self, key: str, zip_path: Path, metadata: Any) -> Path | None:
        """Index the committed checkpoint ``zip_path`` (object key ``key``) in its run's
        shard; the shard file to put, or None (not one of our checkpoints, or unchanged)."""
        name = parse_name(zip_path.name)
        if not isinstance(name, CheckpointName):
            return None
        meta = metadata if isinstance(metadata, Mapping) else read_checkpoint_metadata(zip_path)
        phase = (meta or {}).get("phase")
        phase = phase if isinstance(phase, int) and not isinstance(phase, bool) else None
        size = zip_path.stat().st_size
        return self.local.record(build_entry(key, name, phase, name.market, meta, size))

    def forget(self, drops: Iterable[tuple[RunKey, str]]) -> list[Path]:
        """Drop deleted checkpoints (run, object key) from their shards; the shards to put."""
        return self.local.forget(drops)

    def stale(self, key_of: Any) -> list[Path]:
        """The staged shards the bucket lacks or holds at another size (one listing of the
        bucket's ``registry/``; ``key_of``: a staged path's object key).

        Raises:
            OSError: the bucket cannot be listed.
        """
        staged = self.local.paths()
        if not staged:
            return []
        remote = self.store.tree(SHARD_DIR)
        out = []
        for path in staged:
            there = remote.get(key_of(path)[len(SHARD_DIR) + 1 :])
            if there is None or there.size != path.stat().st_size:
                out.append(path)
        return out

    def put(self, path: Path, key: str) -> bool:
        """Put the staged shard ``path`` whole as ``key``, after merging the bucket's copy
        once per process; again while another process changed the file meanwhile. False when
        the file is gone."""
        if key not in self._merged:
            self._merge(path, key)
            self._merged.add(key)
        for _ in range(_SHARD_PUTS):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return False
            self.store.put_bytes(key, data)
            try:
                if path.read_bytes() == data:
                    return True
            except FileNotFoundError:
                return True
        return True

    def _merge(self, path: Path, key: str) -> None:
        """Add to the staged shard the entries of the bucket's copy it lacks whose zip the
        bucket still lists (the run's checkpoints written from another machine)."""
        try:
            raw = self.store.get_bytes(key, MAX_SHARD_BYTES)
        except FileNotFoundError:
            return
        try:
            remote = decode_shard(raw, str(self.store.uri_of(key)))
        except RegistryError as exc:
            log.warning("%s; replacing it", exc)
            return
        parsed = parse_shard_name(path.name)
        if parsed is None:
            return
        local = self.local.read(path)
        new = {rel: entry for rel, entry in remote.items() if rel not in local}
        listed: dict[str, dict[str, int]] = {}
        keep = {}
        for rel, entry in new.items():
            folder, _, name = rel.rpartition("/")
            if folder not in listed:
                listed[folder] = self.store.sizes(folder)
            if name in listed[folder]:
                keep[rel] = entry
        if keep:
            run: RunKey = (path.parent.name, *parsed)
            self.local.update(run, keep, replace_existing=False)
