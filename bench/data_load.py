"""Loading a big data file: first (parsed) and cached (memory-mapped) load, and memory per trial.

Writes a minute CSV of ``--rows`` bars (weekdays, ISO times, 60 bytes a row: 10 million rows
is 572 MB) into a temporary folder, then, each in a fresh process:

1. an uncached load (:func:`tuner.trading.ohlcv.load_ohlcv_report`): seconds, and resident
   memory while it holds the bars (RSS; the peak too) -- what every trial paid before;
2. the first load through the cache (:class:`tuner.trading.data_cache.DataCache`): the
   parse, plus writing the entry and mapping it;
3. ``--trials`` processes at once, each a trial's cached load: seconds, then every byte of
   the bars read, then RSS, USS (memory only this process holds) and PSS (shared pages split
   between the processes that map them), measured while all of them hold the bars;
4. one of them then computes the features (``MarketData.from_bars``), which no cache holds:
   seconds and USS added -- the memory a trial still has of its own.

Also the SHA-256 of the CSV (what a load pays when the file's stat changed; otherwise the
remembered digest is used) and a cached load in a warm process. Everything is deleted at
the end. Usage::

    .venv/bin/python bench/data_load.py [--rows 10000000] [--trials 3] [--quick] [--json PATH]

``--quick`` is 200,000 rows and 2 trials (seconds); the full run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402

MB = 1024 * 1024
TARGET_SECONDS = 1.0
CHUNK = 1_000_000

# Each child prints one JSON line; {cache} None loads without the cache.
_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time, zlib
    from dataclasses import fields
    from pathlib import Path
    import numpy as np, psutil
    from tuner.trading.data_cache import DataCache
    from tuner.trading.data_settings import DataSettings
    from tuner.trading.env import MarketData  # what a trial has imported before it loads
    from tuner.trading.markets import load_markets
    from tuner.trading.ohlcv import load_ohlcv_report

    file, cache, sync, features = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    me = psutil.Process()
    base = me.memory_full_info()
    started = time.perf_counter()
    if cache == "-":
        bars, _ = load_ohlcv_report(file, DataSettings())
    else:
        bars, _ = DataCache(Path(cache)).load(file, DataSettings(), market="ES")
    seconds = time.perf_counter() - started
    crc = 0
    arrays = [getattr(bars, f.name) for f in fields(bars)]
    for array in (a for a in arrays if isinstance(a, np.ndarray)):  # read every byte
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    out = {"seconds": seconds, "crc": crc, "bars": len(bars)}
    if sync != "-":  # measure while every trial holds the bars
        Path(sync, f"ready-{os.getpid()}").touch()
        while not Path(sync, "measure").exists():
            time.sleep(0.01)
    mem = me.memory_full_info()
    for key in ("rss", "uss", "pss"):
        out[key] = getattr(mem, key) - getattr(base, key)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["base_rss"] = base.rss
    if features:  # while the other trials still map the bars
        spec = load_markets("config/markets.yaml")["ES"]
        started = time.perf_counter()
        data = MarketData.from_bars(spec, bars)
        out["features_seconds"] = time.perf_counter() - started
        out["features_uss"] = me.memory_full_info().uss - mem.uss
    if sync != "-":
        Path(sync, f"measured-{os.getpid()}").touch()
        while not Path(sync, "done").exists():
            time.sleep(0.01)
    print(json.dumps(out))
    """
)


def write_minute_csv(path: Path, rows: int, seed: int = 0) -> None:
    """``rows`` one-minute bars on weekdays from 2005, a random walk on a 0.25 grid, as
    ``2005-01-03 00:00:00,10000.25,10000.50,9999.75,10000.25,123``, built as bytes in
    chunks (no formatting per row)."""
    start = np.datetime64("2005-01-03T00:00", "m")  # a Monday
    minutes = start + np.arange(rows * 7 // 5 + 7 * 1440).astype("timedelta64[m]")
    days = minutes.astype("datetime64[D]")
    minutes = minutes[(days.astype(np.int64) + 3) % 7 < 5][:rows]  # 1970-01-01 was a Thursday
    day_index = (minutes.astype("datetime64[D]") - minutes[0].astype("datetime64[D]")).astype(
        np.int64
    )
    every_day = minutes[0].astype("datetime64[D]") + np.arange(day_index[-1] + 1)
    day_text = np.datetime_as_string(every_day).astype("S10").view(np.uint8).reshape(-1, 10)
    clock = np.datetime64("2000-01-01T00:00", "s") + np.arange(1440).astype("timedelta64[m]")
    clock_text = np.datetime_as_string(clock).astype("S19").view(np.uint8).reshape(-1, 19)
    clock_text = clock_text[:, 10:]  # "T00:00:00"
    clock_text[:, 0] = ord(" ")
    minute_of_day = (minutes - minutes.astype("datetime64[D]")).astype(np.int64)

    ticks = 40_000 + np.cumsum(np.random.default_rng(seed).integers(-4, 5, rows))  # 0.25 each
    close = ticks * 25  # cents
    open_ = np.concatenate([close[:1], close[:-1]])
    high, low = np.maximum(open_, close) + 25, np.minimum(open_, close) - 25
    volume = np.arange(rows) % 900 + 100
    with open(path, "wb") as fh:
        fh.write(b"time,open,high,low,close,volume\n")
        for lo in range(0, rows, CHUNK):
            part = slice(lo, min(rows, lo + CHUNK))
            n = part.stop - part.start
            row = np.empty((n, 60), dtype=np.uint8)
            row[:, 0:10] = day_text[day_index[part]]
            row[:, 10:19] = clock_text[minute_of_day[part]]
            row[:, 19] = ord(",")
            for k, cents in enumerate((open_, high, low, close)):
                at = 20 + 9 * k
                row[:, at : at + 8] = _digits(cents[part], 7, point=5)
                row[:, at + 8] = ord(",")
            row[:, 56:59] = _digits(volume[part], 3)
            row[:, 59] = ord("\n")
            fh.write(row.tobytes())


def _digits(values: np.ndarray, count: int, point: int | None = None) -> np.ndarray:
    """Fixed-width ASCII digits of non-negative integers (with a "." after ``point`` digits)."""
    width = count + (point is not None)
    out = np.empty((len(values), width), dtype=np.uint8)
    places = [i for i in range(width) if i != point]
    for i, column in enumerate(places):
        out[:, column] = values // 10 ** (count - 1 - i) % 10 + ord("0")
    if point is not None:
        out[:, point] = ord(".")
    return out


def child(file: Path, cache: Path | None, sync: Path | None, features: bool) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(file),
            "-" if cache is None else str(cache),
            "-" if sync is None else str(sync),
            "1" if features else "0",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )


def result(process: Any) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"a load failed (exit {process.returncode})")
    doc: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return doc


def trials_at_once(file: Path, cache: Path, folder: Path, n: int) -> list[dict[str, Any]]:
    """``n`` cached loads in processes that all hold their bars while each measures."""
    sync = folder / "sync"
    sync.mkdir()
    processes = [child(file, cache, sync, features=i == 0) for i in range(n)]
    _wait_for(sync, "ready-", n, processes)
    (sync / "measure").touch()
    _wait_for(sync, "measured-", n, processes)
    (sync / "done").touch()
    return [result(p) for p in processes]


def _wait_for(sync: Path, prefix: str, n: int, processes: list[Any]) -> None:
    while len(list(sync.glob(prefix + "*"))) < n:
        if any(p.poll() not in (None, 0) for p in processes):
            raise SystemExit("a trial's load failed")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="bars in the CSV (10,000,000)")
    parser.add_argument("--trials", type=int, default=None, help="trials loading at once (3)")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 2 trials")
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 10_000_000)
    n_trials = args.trials or (2 if args.quick else 3)
    if rows < 1000 or n_trials < 1:
        parser.error("--rows must be >= 1000 and --trials >= 1")

    folder = Path(tempfile.mkdtemp(prefix="bench-data-load-", dir=args.dir))
    try:
        figures = run(folder, rows, n_trials)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_figures(args.json, figures)
    return 0


def run(folder: Path, rows: int, n_trials: int) -> list[Figure]:
    from tuner.trading.data_cache import DataCache, file_sha256
    from tuner.trading.data_settings import DataSettings

    file, cache = folder / "ES_1min.csv", folder / "models" / ".data-cache"
    started = time.perf_counter()
    write_minute_csv(file, rows)
    size = file.stat().st_size
    print(
        f"{rows:,} rows, {size / MB:,.0f} MB CSV written in {time.perf_counter() - started:.1f} s"
    )

    started = time.perf_counter()
    file_sha256(file)
    digest_s = time.perf_counter() - started
    plain = result(child(file, None, None, features=False))
    first = result(child(file, cache, None, features=False))
    trials = trials_at_once(file, cache, folder, n_trials)
    DataCache(cache).load(file, DataSettings())
    started = time.perf_counter()
    DataCache(cache).load(file, DataSettings())
    warm_s = time.perf_counter() - started
    entry_mb = sum(p.stat().st_size for p in cache.glob("*.bars")) / MB
    assert {t["crc"] for t in trials} == {plain["crc"], first["crc"]}, "loads disagree"

    cached_s = max(t["seconds"] for t in trials)
    uss = max(t["uss"] for t in trials) / MB
    pss = max(t["pss"] for t in trials) / MB
    rss = max(t["rss"] for t in trials) / MB
    feat = trials[0]
    print(f"\nSHA-256 of the CSV: {digest_s:.2f} s ({size / MB / digest_s:,.0f} MB/s)")
    print(f"cache entry: {entry_mb:,.0f} MB for {rows:,} bars")
    print("\nload                          seconds   RSS MB  USS MB  PSS MB  peak RSS MB")
    for label, doc in [("uncached (parse)", plain), ("first through the cache", first)] + [
        (f"cached, trial {i + 1} of {n_trials}", t) for i, t in enumerate(trials)
    ]:
        print(
            f"{label:<29} {doc['seconds']:7.2f} {doc['rss'] / MB:8.0f} {doc['uss'] / MB:7.0f} "
            f"{doc['pss'] / MB:7.0f} {doc['peak_rss'] / MB:12.0f}"
        )
    print(f"cached, in a warm process     {warm_s:7.2f}")
    print(
        f"\nfeatures of one trial (MarketData.from_bars, not cached): "
        f"{feat['features_seconds']:.1f} s, USS +{feat['features_uss'] / MB:,.0f} MB"
    )
    label = f"{rows / 1e6:g}M-row minute CSV ({size / MB:,.0f} MB)"
    return [
        Figure("data_load", f"first load, {label}: parse + cache", "", f"{first['seconds']:.1f} s"),
        Figure(
            "data_load",
            f"cached load in a fresh trial process ({n_trials} at once, slowest)",
            f"< {TARGET_SECONDS:g} s",
            f"{cached_s:.2f} s (uncached {plain['seconds']:.1f} s)",
            cached_s < TARGET_SECONDS,
        ),
        Figure(
            "data_load",
            "memory a trial holds alone after reading all its bars: USS (PSS; RSS)",
            "small vs uncached",
            f"{uss:,.0f} MB ({pss:,.0f}; {rss:,.0f}) vs uncached RSS {plain['rss'] / MB:,.0f} MB",
            uss < 0.1 * plain["rss"] / MB,
        ),
        Figure(
            "data_load",
            "features per trial (MarketData.from_bars; not cached)",
            "",
            f"{feat['features_seconds']:.1f} s, USS +{feat['features_uss'] / MB:,.0f} MB",
        ),
        Figure("data_load", "SHA-256 of the CSV (when its stat changed)", "", f"{digest_s:.2f} s"),
    ]


if __name__ == "__main__":
    sys.exit(main())
