"""The experiment report: one self-contained HTML page (``python -m tuner.report``).

:func:`gather` reads what the experiment left on disk, :func:`render` draws it (inline SVG,
no script, nothing fetched), :func:`write_report` does both. Light imports only: the driver
writes the report in its own process, which never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from checkpointing.locations import StoreURI
from tuner.reporting.gather import ReportData, gather
from tuner.reporting.page import render, write

__all__ = [
    "ReportData",
    "default_report_path",
    "gather",
    "render",
    "report_name",
    "write_report",
]


def default_report_path(models_root: str | os.PathLike[str], name: str) -> Path:
    """Where the report goes by default: beside the summary, ``<models_root>/summaries/``."""
    return Path(models_root) / "summaries" / report_name(name)


def write_report(
    storage_path: str | os.PathLike[str],
    name: str,
    *,
    models_root: str | os.PathLike[str] | StoreURI | None = None,
    out: str | os.PathLike[str] | None = None,
    summaries: str | os.PathLike[str] | None = None,
) -> Path:
    """Gather experiment ``name`` and write its report; returns the file written (by default
    beside the summaries; for checkpoints in a bucket, also put in its ``summaries/``).

    Raises:
        BrowseError: the storage path, the experiment or ``models_root`` does not exist.
        ObjectStoreError: the page could not be put on the bucket (it is written locally).
    """
    data = gather(storage_path, name, models_root, summaries)
    path = write(data, Path(out) if out is not None else data.summaries_dir / report_name(name))
    if out is None and isinstance(data.models_root, StoreURI):
        from tuner.driver.remote import upload_files

        upload_files(data.models_root, "summaries", [path])
    return path


def report_name(name: str) -> str:
    """The report's file name beside the summaries."""
    return f"{name}_report.html"
