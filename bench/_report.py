"""The figures a benchmark hands to ``bench/run_all.py``: one row each, as JSON.

Every benchmark prints its own tables; with ``--json PATH`` it also writes its headline
figures there, which ``run_all.py`` gathers into one table (benchmark, figure, target,
result).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

__all__ = [
    "Figure",
    "add_json_argument",
    "format_table",
    "read_figures",
    "verdict",
    "write_figures",
]


@dataclass(frozen=True)
class Figure:
    """One headline figure: what was measured, what it should be, what it was.

    ``met`` is None for figures without a target (context, or a choice made from them).
    """

    benchmark: str
    figure: str
    target: str
    result: str
    met: bool | None = None


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="PATH", help="also write the headline figures to PATH (for run_all)"
    )


def write_figures(path: str | os.PathLike[str] | None, figures: Iterable[Figure]) -> None:
    if path is None:
        return
    with open(path, "w", encoding="utf-8") as fh:
        json.dump([asdict(f) for f in figures], fh, indent=1)


def read_figures(path: str | os.PathLike[str]) -> list[Figure]:
    with open(path, encoding="utf-8") as fh:
        return [Figure(**row) for row in json.load(fh)]


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: ""}[met]


def format_table(figures: Sequence[Figure]) -> str:
    """A plain-text table: benchmark, figure, target, result (with met / NOT met)."""
    head = ("benchmark", "figure", "target", "result")
    rows = [
        (
            f.benchmark,
            f.figure,
            f.target,
            f"{f.result} ({verdict(f.met)})" if f.met is not None else f.result,
        )
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)
