"""Copies of a checkpoint under a fixed name, for users of the seed note's layout.

``{market_dir}/best_model.zip`` (+ ``_vecnormalize.pkl`` and metadata) holds the highest
validation reward of the market in the phase, whichever run reached it; the legacy final model
(``phase1_foundational_final.zip`` ...) of each run is in ``{market_dir}/runs/{run_id}/``. Both
are hard links of the checkpoint (no extra space where the file system allows links), and
their metadata names the checkpoint they copy (``source_checkpoint``). Nothing here is shared
by two markets, and nothing is pruned by retention.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

from checkpointing.cleanup import sweep
from checkpointing.errors import CheckpointCorruptError
from checkpointing.files import fsync_dir, link_or_copy, temp_path, write_durable
from checkpointing.metadata import encode_metadata, read_checkpoint_metadata
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX
from checkpointing.store import folder_lock, verify_checkpoint

__all__ = ["publish"]

log = logging.getLogger(__name__)


def publish(checkpoint: Path, root: Path, stem: str, *, only_if_better: bool) -> None:
    """Copy a committed checkpoint to ``{root}/{stem}.zip`` (+ pkl + metadata).

    With ``only_if_better`` the copy is made only when the checkpoint's val_reward is higher
    than that of the copy already there (a torn or missing copy counts as absent). Hard links
    where the file system allows them; companions first, zip last, under ``root``'s lock.
    """
    root.mkdir(parents=True, exist_ok=True)
    meta = read_checkpoint_metadata(checkpoint) or {}
    with folder_lock(root):
        # Temporaries of a publish killed half-way (hard links: they pin disk space).
        sweep(root)
        target_meta = root / (stem + METADATA_SUFFIX)
        if only_if_better and target_meta.exists():
            try:
                # A copy left torn by a crash between renames fails verification and
                # counts as absent, so the next improvement repairs it.
                current = verify_checkpoint(root / f"{stem}.zip")
                current_val = float(current.get("val_reward", math.nan))
            except (CheckpointCorruptError, OSError, ValueError, TypeError):
                current_val = math.nan
            new_val = float(meta.get("val_reward", math.nan))
            if math.isfinite(current_val) and not new_val > current_val:
                return
        base = checkpoint.name[: -len(".zip")]
        pkl = checkpoint.with_name(base + VECNORM_SUFFIX)
        published = dict(meta)
        files = {
            k: dict(v) for k, v in dict(meta.get("files") or {}).items() if isinstance(v, dict)
        }
        if "zip" in files:
            files["zip"]["name"] = f"{stem}.zip"
        if "vecnormalize" in files:
            files["vecnormalize"]["name"] = stem + VECNORM_SUFFIX
        published["files"] = files
        published["source_checkpoint"] = os.path.relpath(checkpoint, root)
        published.pop("source", None)
        pairs = []
        if pkl.exists():
            pairs.append((pkl, root / (stem + VECNORM_SUFFIX)))
        temps = []
        try:
            for src, dst in pairs:
                tmp = temp_path(dst)
                temps.append(tmp)
                link_or_copy(src, tmp)
                os.replace(tmp, dst)
            tmp_meta = temp_path(target_meta)
            temps.append(tmp_meta)
            write_durable(tmp_meta, encode_metadata(published))
            os.replace(tmp_meta, target_meta)
            tmp_zip = temp_path(root / f"{stem}.zip")
            temps.append(tmp_zip)
            link_or_copy(checkpoint, tmp_zip)
            os.replace(tmp_zip, root / f"{stem}.zip")
            fsync_dir(root)
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
    log.info("updated %s from %s", root / f"{stem}.zip", checkpoint.name)
