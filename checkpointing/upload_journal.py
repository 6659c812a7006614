"""The upload journal of a staging folder: which checkpoints reached the bucket, read back whole.

:class:`~checkpointing.uploads.Uploader` writes a line when a zip's read-back verified; a
catch-up reads it to tell a checkpoint never uploaded from one deleted on the bucket since
(never uploaded again). See :mod:`checkpointing.uploads`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["JOURNAL_DIR", "UploadJournal"]

JOURNAL_DIR = ".uploads"


class UploadJournal:
    """What a staging folder has uploaded: per checkpoint folder, one JSON line
    (``{"name": ..., "size": ...}``) per checkpoint whose zip reached the bucket and read back
    whole, in ``{staging}/.uploads/<folder>.jsonl``.

    Lines are appended with one ``write`` each (``O_APPEND``: processes sharing the staging
    folder never interleave them); a line cut short by a crash is skipped when read.
    """

    def __init__(self, staging: str | os.PathLike[str]) -> None:
        self.staging = Path(staging)

    def path_of(self, folder_key: str) -> Path:
        parts = [p for p in folder_key.split("/") if p] or ["_root"]
        return self.staging.joinpath(JOURNAL_DIR, *parts[:-1], parts[-1] + ".jsonl")

    def add(self, folder_key: str, name: str, size: int) -> None:
        path = self.path_of(folder_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"name": name, "size": size}, separators=(",", ":")) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def read(self, folder_key: str) -> dict[str, int]:
        """``{zip name: size}`` of what was uploaded from the folder (empty if nothing)."""
        try:
            raw = self.path_of(folder_key).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return {}
        out: dict[str, int] = {}
        for line in raw.splitlines():
            try:
                doc = json.loads(line)
                out[str(doc["name"])] = int(doc["size"])
            except (ValueError, TypeError, KeyError):
                continue
        return out
