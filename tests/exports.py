"""OHLCV files in the shapes trading platforms write them, made up here (never a vendor's file).

Every writer takes bars as a DataFrame with a ``time`` column (UTC) and ``open``, ``high``,
``low``, ``close``, ``volume``, and writes them as the platform would: local times where the
platform writes local times, its separators, its number formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CHICAGO = "America/Chicago"


def sample_bars(n: int, start: str = "2023-03-01 14:30", freq: str = "1min") -> pd.DataFrame:
    """``n`` bars of an NQ-like market on the 0.25 tick grid, at ``start`` (UTC) every ``freq``,
    weekdays only, so that every price is exact in decimal and in 1e-9 integers."""
    times = pd.date_range(start, periods=n * 4, freq=freq)
    times = times[times.day_of_week < 5][:n]
    steps = np.random.default_rng(7).integers(-4, 5, size=n)
    close = 16800.0 + 0.25 * np.cumsum(steps)
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame(
        {
            "time": times,
            "open": open_,
            "high": np.maximum(open_, close) + 0.5,
            "low": np.minimum(open_, close) - 0.25,
            "close": close,
            "volume": np.arange(n) % 97 + 100,
        }
    )


def _local(times: pd.Series, zone: str) -> pd.Series:
    return times.dt.tz_localize("UTC").dt.tz_convert(zone).dt.tz_localize(None)


def _prices(bars: pd.DataFrame) -> list[str]:
    return [
        f"{o}{{sep}}{h}{{sep}}{low}{{sep}}{c}{{sep}}{v}"
        for o, h, low, c, v in zip(
            bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"], strict=True
        )
    ]


def ninjatrader(path: Path, bars: pd.DataFrame, zone: str = CHICAGO) -> Path:
    """NinjaTrader's export: no header, ``;``, ``yyyyMMdd HHmmss`` in the PC's local time."""
    stamps = _local(bars["time"], zone).dt.strftime("%Y%m%d %H%M%S")
    lines = [f"{t};{p.format(sep=';')}" for t, p in zip(stamps, _prices(bars), strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def interactive_brokers(
    path: Path, bars: pd.DataFrame, zone: str = CHICAGO, *, zone_name: str | None = None
) -> Path:
    """IB's historical bars: ``date,open,...,average,barCount``; ``yyyyMMdd  HH:mm:ss`` (two
    spaces) in the login zone, or ``yyyyMMdd HH:mm:ss <zone_name>`` when ``zone_name`` is set."""
    local = _local(bars["time"], zone)
    if zone_name is None:
        stamps = local.dt.strftime("%Y%m%d  %H:%M:%S")
    else:
        stamps = local.dt.strftime("%Y%m%d %H:%M:%S") + f" {zone_name}"
    lines = ["date,open,high,low,close,volume,average,barCount"]
    for t, p, c in zip(stamps, _prices(bars), bars["close"], strict=True):
        lines.append(f"{t},{p.format(sep=',')},{c},42")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def databento(path: Path, contracts: dict[str, tuple[int, pd.DataFrame]]) -> Path:
    """Databento OHLCV as CSV: ``ts_event`` in ns since the epoch (UTC), prices as integers of
    1e-9, one block of rows per contract (symbol -> (instrument_id, bars)), by time."""
    rows = []
    for symbol, (instrument_id, bars) in contracts.items():
        ns = bars["time"].astype("datetime64[ns]").astype(np.int64)
        for i, t in enumerate(ns):
            fixed = [round(bars[f].iloc[i] * 1e9) for f in ("open", "high", "low", "close")]
            rows.append((int(t), instrument_id, *fixed, int(bars["volume"].iloc[i]), symbol))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = ["ts_event,rtype,publisher_id,instrument_id,open,high,low,close,volume,symbol"]
    for t, iid, o, h, low, c, v, symbol in rows:
        lines.append(f"{t},33,1,{iid},{o},{h},{low},{c},{v},{symbol}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rolling_contracts(
    bars: pd.DataFrame, ratio: float = 1.015
) -> dict[str, tuple[int, pd.DataFrame]]:
    """NQH3 and NQM3 over the same ``bars``, for :func:`databento`: NQM3 priced ``ratio`` times
    NQH3 (its carry), volume moving from one to the other, NQM3 trading more from the middle
    UTC date of the bars on (a roll by volume the next day)."""
    dates = bars["time"].dt.normalize()
    middle = dates.iloc[len(dates) // 2]
    days = (dates - middle).dt.days.to_numpy()
    front = bars.assign(volume=np.maximum(500 - 10 * days, 1))
    back = bars.assign(volume=np.maximum(505 + 10 * days, 1))
    back[["open", "high", "low", "close"]] *= ratio
    return {"NQH3": (4916, front), "NQM3": (7062, back)}


def month_first(path: Path, bars: pd.DataFrame) -> Path:
    """A US platform's ``Date,Time`` export: ``MM/DD/YYYY,HH:MM`` as written (no zone)."""
    lines = ["Date,Time,Open,High,Low,Close,Volume"]
    for t, p in zip(bars["time"], _prices(bars), strict=True):
        lines.append(f"{t:%m/%d/%Y},{t:%H:%M},{p.format(sep=',')}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
