"""What the loader made of a data file, for a person to check before training on it.

:func:`inspection` gathers it into one JSON-ready document and :func:`render` writes it as
text; ``python -m tuner.data inspect`` prints one or the other. ::

    bars, report = load_ohlcv_report("NQ 03-23.Last.txt", settings, market="NQ")
    print(render(inspection(bars, report, spec.split, settings.timezone)))

The document holds the detection (:class:`~tuner.trading.ohlcv.LoadReport`), the first and
last times (UTC, the loader's clock, and in ``timezone:`` when set), the bar interval and bars
per year (:class:`~tuner.trading.bars.Bars`), the largest gaps between bars (sessions and
weekends are normal ones) and the train / validation / test parts as the trainer cuts them
(:func:`~tuner.trading.bars.split_ranges`), with their dates and bar counts; for contracts
joined by ``roll:``, each roll: when, from and to which contract, and the gap.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tuner.trading.bars import SPLIT_NAMES, Bars, split_ranges
from tuner.trading.markets import SplitSpec
from tuner.trading.ohlcv import LoadReport

__all__ = ["inspection", "largest_gaps", "render"]

_GAPS = 5


def largest_gaps(timestamps: NDArray[np.datetime64], n: int = _GAPS) -> list[tuple[int, int]]:
    """The ``n`` longest spans between consecutive bars that exceed the median one.

    Returns:
        ``(index of the bar before the gap, length in ns)`` pairs, longest first; the earlier
        gap first among equal ones.
    """
    if len(timestamps) < 2:
        return []
    deltas = np.diff(np.asarray(timestamps, dtype="datetime64[ns]")).astype(np.int64)
    median = np.median(deltas)
    order = np.argsort(-deltas, kind="stable")[:n]
    return [(int(i), int(deltas[i])) for i in order if deltas[i] > median]


def inspection(
    bars: Bars, report: LoadReport, split: SplitSpec, timezone: str | None = None
) -> dict[str, Any]:
    """The document ``python -m tuner.data inspect`` prints (module docstring).

    Args:
        bars: The bars loaded.
        report: What the loader detected while loading them.
        split: The market's split (``defaults.split`` for a market that sets none).
        timezone: The ``timezone:`` of the file's settings, to show local times too.

    Raises:
        DataError: if the bars are too few for the split, as the trainer would refuse them.
    """
    ranges = split_ranges(len(bars), split, market=bars.market)
    ts = bars.timestamps

    def when(i: int) -> dict[str, str]:
        return _time(ts[i], timezone)

    parts: dict[str, Any] = {}
    for name in SPLIT_NAMES:
        part = ranges[name]
        count = part.stop - part.start
        parts[name] = {
            "start": part.start,
            "stop": part.stop,
            "bars": count,
            "first": when(part.start) if count else None,
            "last": when(part.stop - 1) if count else None,
        }
    detection = asdict(report)
    detection["columns"] = dict(report.columns)
    detection["rolls"] = [
        {
            "time": when(roll.index),
            "from": roll.from_contract,
            "to": roll.to_contract,
            "gap": roll.gap,
            "gap_percent": (roll.ratio - 1.0) * 100.0,
            "measured_at": None if roll.measured_at is None else _time(roll.measured_at, timezone),
        }
        for roll in report.rolls
    ]
    return {
        **detection,
        "market": bars.market or None,
        "timezone": timezone,
        "bars": len(bars),
        "first": when(0),
        "last": when(len(bars) - 1),
        "bar_interval_seconds": bars.bar_interval.total_seconds(),
        "bars_per_year": bars.bars_per_year,
        "largest_gaps": [
            {"after": when(i), "next": when(i + 1), "seconds": length / 1e9}
            for i, length in largest_gaps(ts)
        ],
        "split": {"settings": asdict(split), **parts},
    }


def _time(stamp: np.datetime64, timezone: str | None) -> dict[str, str]:
    import pandas as pd

    utc = pd.Timestamp(stamp)
    shown = {"utc": utc.isoformat()}
    if timezone is not None:
        shown["local"] = utc.tz_localize("UTC").tz_convert(timezone).isoformat()
    return shown


def render(doc: dict[str, Any]) -> str:
    """The document of :func:`inspection` as text, one fact a line."""
    header = {True: "yes", False: "no", None: "(Parquet)"}[doc["header"]]
    lines = [
        f"file        {doc['file']}" + (f"  (market {doc['market']})" if doc["market"] else ""),
        f"format      {doc['format']}, header: {header}",
        "columns     " + ", ".join(f"{role} <- {col!r}" for role, col in doc["columns"].items()),
        f"dates       {doc['dates']}",
        f"rows        {doc['rows']:,} read, {doc['duplicates']:,} exact duplicates dropped, "
        f"{doc['bars']:,} bars",
        f"contract    {_contract(doc)}",
        *_rolls(doc),
        f"first       {_shown(doc['first'])}",
        f"last        {_shown(doc['last'])}",
        f"interval    {_span(doc['bar_interval_seconds'])}, {doc['bars_per_year']:,.0f} bars/year",
        "largest gaps (sessions, weekends and holidays are normal):",
    ]
    lines += [
        f"  {_span(g['seconds']):>12}  after {_shown(g['after'])}" for g in doc["largest_gaps"]
    ] or ["  none"]
    s = doc["split"]["settings"]
    lines.append(
        f"split       train {s['train']}, validation {s['validation']}, test {s['test']}, "
        f"gap {s['gap_bars']} bars"
    )
    for name in SPLIT_NAMES:
        part = doc["split"][name]
        span = f"{_shown(part['first'])} .. {_shown(part['last'])}" if part["bars"] else "(empty)"
        lines.append(
            f"  {name:<10} {part['bars']:>9,} bars  [{part['start']}:{part['stop']}]  {span}"
        )
    return "\n".join(lines)


def _contract(doc: dict[str, Any]) -> str:
    if doc["symbol"] is None:
        return "(no contract column)"
    if doc["roll"] is None:
        return str(doc["symbol"])
    prices = {"backward": "back-adjusted by ratio", "none": "raw"}[doc["adjust"]]
    return f"{doc['symbol']} first, rolled by {doc['roll']}; prices {prices}"


def _rolls(doc: dict[str, Any]) -> list[str]:
    if doc["roll"] is None:
        return []
    lines = [f"rolls       {len(doc['rolls'])}" + (":" if doc["rolls"] else "")]
    for roll in doc["rolls"]:
        measured = (
            f"measured {_shown(roll['measured_at'])}"
            if roll["measured_at"] is not None
            else "no bar both traded: the jump at the roll"
        )
        lines.append(
            f"  {_shown(roll['time'])}  {roll['from']} -> {roll['to']}  gap {roll['gap']:+g} "
            f"({roll['gap_percent']:+.2f}%), {measured}"
        )
    return lines


def _shown(time: dict[str, str]) -> str:
    utc = time["utc"].replace("T", " ") + " UTC"
    return f"{utc} ({time['local'].replace('T', ' ')})" if "local" in time else utc


def _span(seconds: float) -> str:
    return str(timedelta(seconds=seconds))
