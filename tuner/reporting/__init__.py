"""The experiment report: one self-contained HTML page (``python -m tuner.report``).

:func:`gather` reads what the experiment left on disk, :func:`render` draws it (inline SVG,
no script, nothing fetched), :func:`write_report` does both. Light imports only: the driver
writes the report in its own process, which never imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from tuner.reporting.gather import ReportData, gather
from tuner.reporting.page import render, write

__all__ = ["ReportData", "default_report_path", "gather", "render", "write_report"]


def default_report_path(models_root: str | os.PathLike[str], name: str) -> Path:
    """Where the report goes by default: beside the summary, ``<models_root>/summaries/``."""
    return Path(models_root) / "summaries" / f"{name}_report.html"


def write_report(
    storage_path: str | os.PathLike[str],
    name: str,
    *,
    models_root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Gather experiment ``name`` and write its report; returns the file written.

    Raises:
        BrowseError: the storage path, the experiment or ``models_root`` does not exist.
    """
    data = gather(storage_path, name, models_root)
    return write(
        data, Path(out) if out is not None else default_report_path(data.models_root, name)
    )
