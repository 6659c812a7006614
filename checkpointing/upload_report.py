"""What an :class:`~checkpointing.uploads.Uploader` tells the user at the end of a run: how many
checkpoints reached the bucket, which are still only in the staging folder and why, what
retention deleted locally that the bucket still holds, and the registry shards not put yet.

::

    report = uploader.close(timeout=300)
    if not report.complete:
        for line in report.lines():
            print(line)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from checkpointing.locations import StoreURI

__all__ = ["UploadReport"]


@dataclass
class UploadReport:
    """Where the uploads stand: what reached the bucket, what is still only local."""

    uri: StoreURI
    staging: Path
    uploaded: int = 0
    pending: list[Path] = field(default_factory=list)
    deletions_pending: int = 0
    dropped: int = 0
    last_error: str | None = None
    shards_pending: int = 0

    @property
    def complete(self) -> bool:
        """Every checkpoint committed in staging (and not dropped) is on the bucket."""
        return not self.pending

    def lines(self) -> list[str]:
        """What to tell the user at the end of a run."""
        if self.complete:
            lines = [
                f"uploads: {self.uploaded} checkpoint(s) uploaded to {self.uri}, none left only "
                f"in the staging folder {self.staging}"
            ]
        else:
            why = f"last error: {self.last_error}" if self.last_error else "still uploading"
            lines = [
                f"WARNING: {len(self.pending)} checkpoint(s) are only in the local staging "
                f"folder {self.staging}, not on {self.uri} ({why}):",
                *(f"  {path}" for path in self.pending),
                f"  the next python -m tuner.train --models-root {self.uri} with this staging "
                "folder uploads them before it trains",
            ]
        if self.dropped:
            lines.append(
                f"note: {self.dropped} staged checkpoint(s) were not uploaded: corrupt, or "
                "deleted from staging before their upload (see the errors above)"
            )
        if self.deletions_pending:
            lines.append(
                f"note: {self.deletions_pending} checkpoint(s) deleted by retention in the "
                f"staging folder are still on {self.uri}"
            )
        if self.shards_pending:
            lines.append(
                f"note: {self.shards_pending} registry shard(s) are not on {self.uri} yet (the "
                "next run with this staging folder puts them; readers meanwhile index those "
                "checkpoints from their metadata)"
            )
        return lines
