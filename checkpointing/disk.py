"""The disk guard: is there room for one more checkpoint, and how should its zip be written?

Before each save the free space of the checkpoint folder's file system is compared with
``performance.min_disk_space_gb`` plus the expected size of one checkpoint: the run's last save;
before its first, the run's newest checkpoint in the folder (a resumed run) or the checkpoint it
started from; else a guess from the model (an uncompressed zip and slack). Short of room, the
guard asks for a retention pass and looks again. The last free space seen also picks the zip's
compression (``performance.compression``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.config import PerformanceConfig
from checkpointing.loading import vecnormalize_path_for

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = ["METADATA_ROOM", "DiskGuard", "estimated_checkpoint_bytes"]

log = logging.getLogger(__name__)

METADATA_ROOM = 64 * 1024  # the metadata JSON and the file system's rounding, generously


def estimated_checkpoint_bytes(model: BaseAlgorithm) -> int:
    """A checkpoint's size before one was written: float32 parameters and the optimizer's two
    moments per parameter, plus room for the rest of the zip and the VecNormalize pkl."""
    return sum(p.numel() for p in model.policy.parameters()) * 4 * 3 + 256 * 1024


def checkpoint_bytes_on_disk(zip_path: Path) -> int | None:
    """The zip and its VecNormalize pkl, plus room for the metadata; None if the zip is gone."""
    try:
        size = zip_path.stat().st_size
    except OSError:
        return None
    try:
        pkl = vecnormalize_path_for(zip_path).stat().st_size
    except FileNotFoundError:  # saved without VecNormalize
        pkl = 0
    except OSError:
        return None
    return size + pkl + METADATA_ROOM


class DiskGuard:
    """The disk guard of one checkpoint folder.

    Args:
        folder: the checkpoint folder (it may not exist yet).
        performance: ``checkpointing.performance``.
        prune: called when the disk runs short (a retention pass); returns nothing.
    """

    def __init__(
        self,
        folder: Path,
        performance: PerformanceConfig,
        prune: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = folder
        self.performance = performance
        self.prune = prune
        self.expected_bytes: int | None = None  # one checkpoint of this run
        self.free_bytes_seen: int | None = None  # at the last check
        self._compression: tuple[str, int] | None = None

    def expect(self, size: int | None) -> None:
        """What one checkpoint of this run takes (zip, pkl and metadata)."""
        self.expected_bytes = size

    def free_bytes(self) -> int:
        import psutil

        probe = self.folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        return int(psutil.disk_usage(os.fspath(probe)).free)

    def shortage(self) -> str | None:
        """None when there is room for one more checkpoint above the configured minimum;
        else why not (after a retention pass, when there is a pruner)."""
        need = int(self.performance.min_disk_space_gb * 1e9) + (self.expected_bytes or 0)
        free = self.free_bytes_seen = self.free_bytes()
        if free >= need:
            return None
        if self.prune is not None:
            self.prune("low disk space")
            free = self.free_bytes_seen = self.free_bytes()
            if free >= need:
                return None
        return (
            f"low disk space on {self.folder}: {free / 1e6:,.1f} MB free, "
            f"need {need / 1e6:,.1f} MB (min_disk_space_gb + one checkpoint)"
        )

    def compression(self) -> tuple[str, int]:
        """``performance.compression`` for the next save; adaptive uses the last check."""
        performance = self.performance
        chosen = performance.zip_compression(self.free_bytes_seen)
        if performance.compression == "adaptive" and chosen != self._compression:
            log.info(
                "%s: %.1f GB free (compress_below_free_gb %.1f): checkpoint zips %s",
                self.folder,
                (self.free_bytes_seen or 0) / 1e9,
                performance.compress_below_free_gb,
                "stored" if chosen[0] == "stored" else f"deflated at level {chosen[1]}",
            )
        self._compression = chosen
        return chosen
