"""Loading a big data file and its features: first (parsed, computed) and cached (mapped) load,
and memory per trial.

Writes a minute CSV of ``--rows`` bars (weekdays, ISO times, 60 bytes a row: 10 million rows
is 572 MB) into a temporary folder, then, each in a fresh process:

1. an uncached load (:func:`tuner.trading.ohlcv.load_ohlcv_report`): seconds, and resident
   memory while it holds the bars (RSS; the peak too) -- what every trial paid before;
2. the first load through the cache (:class:`tuner.trading.data_cache.DataCache`): the
   parse, plus writing the bars entry and mapping it; then the features computed from them
   (``compute_features``), written and mapped -- what the first trial on a node pays;
3. the first cached load once the entries have settled: every array's checksum read (the
   entries are then remembered as checked, :mod:`tuner.trading.data_cache`);
4. ``--trials`` processes at once, each a trial's cached load of bars and features (the
   fast path), then ``MarketData.from_bars`` with those features and ``--envs`` training
   environments on it, then every byte of the bars and features read: seconds, then RSS,
   USS (memory only this process holds) and PSS (shared pages split between the processes
   that map them), measured while all of them hold everything.

Also the SHA-256 of the CSV (what a load pays when the file's stat changed; otherwise the
remembered digest is used), the features computed alone in a fresh process (no cache: what
each trial paid per phase before) and a cached load in a warm process. Everything is
deleted at the end. Usage::

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

# Each child prints one JSON line. {mode}: "parse" (no cache), "first" (bars and features
# through the cache, made), "cached" (through the cache), "features" (computed, no cache).
_CHILD = textwrap.dedent(
    """
    import json, os, resource, sys, time, zlib
    from dataclasses import fields
    from pathlib import Path
    import numpy as np, psutil
    from tuner.trading.data_cache import DataCache
    from tuner.trading.data_settings import DataSettings
    from tuner.trading.env import FuturesTradingEnv, MarketData  # what a trial has imported
    from tuner.trading.features import compute_features
    from tuner.trading.markets import load_markets
    from tuner.trading.ohlcv import load_ohlcv_report

    file, cache, mode, sync, n_envs = sys.argv[1:6]
    spec = load_markets("config/markets.yaml")["ES"]
    me = psutil.Process()
    base = me.memory_full_info()
    out = {}
    started = time.perf_counter()
    if mode in ("parse", "features"):
        bars, _ = load_ohlcv_report(file, DataSettings())
    else:
        cached = DataCache(Path(cache)).read(file, DataSettings(), market="ES")
        bars = cached.bars
    out["seconds"] = time.perf_counter() - started
    if mode == "features":
        before = me.memory_full_info().uss
        started = time.perf_counter()
        features = compute_features(bars)
        out["features_seconds"] = time.perf_counter() - started
        out["features_uss"] = me.memory_full_info().uss - before
    elif mode != "parse":
        started = time.perf_counter()
        features = DataCache(Path(cache)).features(cached)
        out["features_seconds"] = time.perf_counter() - started
    if mode == "cached":
        started = time.perf_counter()
        data = MarketData.from_bars(spec, bars, features)
        envs = [FuturesTradingEnv(data, "train", 2, seed=i) for i in range(int(n_envs))]
        for env in envs:
            env.reset()
        out["envs_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    crc = 0
    arrays = [getattr(bars, f.name) for f in fields(bars)]
    if mode != "parse":
        arrays += [getattr(features, f.name) for f in fields(features)]
    for array in (a for a in arrays if isinstance(a, np.ndarray)):  # read every byte
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    out.update(crc=crc, bars=len(bars), read_seconds=time.perf_counter() - started)
    if sync != "-":  # measure while every trial holds the bars
        Path(sync, f"ready-{os.getpid()}").touch()
        while not Path(sync, "measure").exists():
            time.sleep(0.01)
    mem = me.memory_full_info()
    for key in ("rss", "uss", "pss"):
        out[key] = getattr(mem, key) - getattr(base, key)
    out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["base_rss"] = base.rss
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


def child(file: Path, cache: Path, mode: str, sync: Path | None = None, envs: int = 0) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(file),
            str(cache),
            mode,
            "-" if sync is None else str(sync),
            str(envs),
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


def trials_at_once(
    file: Path, cache: Path, folder: Path, n: int, envs: int
) -> list[dict[str, Any]]:
    """``n`` cached loads in processes that all hold their bars while each measures."""
    sync = folder / "sync"
    sync.mkdir()
    processes = [child(file, cache, "cached", sync, envs) for _ in range(n)]
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
    parser.add_argument("--envs", type=int, default=8, help="training envs per trial (8)")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, 2 trials")
    parser.add_argument("--dir", help="where the temporary folder goes (default: the system's)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 10_000_000)
    n_trials = args.trials or (2 if args.quick else 3)
    if rows < 1000 or n_trials < 1 or args.envs < 1:
        parser.error("--rows must be >= 1000, --trials and --envs >= 1")

    folder = Path(tempfile.mkdtemp(prefix="bench-data-load-", dir=args.dir))
    try:
        figures = run(folder, rows, n_trials, args.envs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_figures(args.json, figures)
    return 0


def run(folder: Path, rows: int, n_trials: int, n_envs: int) -> list[Figure]:
    from tuner.trading import data_cache
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
    plain = result(child(file, cache, "parse"))
    alone = result(child(file, cache, "features"))
    first = result(child(file, cache, "first"))
    time.sleep(data_cache.SETTLE_SECONDS + 0.1)  # entries untouched that long can be trusted
    checked = result(child(file, cache, "cached"))
    trials = trials_at_once(file, cache, folder, n_trials, n_envs)
    warm = DataCache(cache)
    warm.features(warm.read(file, DataSettings()))
    started = time.perf_counter()
    warm.features(warm.read(file, DataSettings()))
    warm_s = time.perf_counter() - started
    entries = {
        suffix: sum(p.stat().st_size for p in cache.glob("*" + suffix)) / MB
        for suffix in (".bars", ".features")
    }
    assert len({t["crc"] for t in trials} | {first["crc"], checked["crc"]}) == 1, "loads disagree"

    def slowest(key: str) -> float:
        return max(t[key] for t in trials)

    cached_s = max(t["seconds"] + t["features_seconds"] for t in trials)
    uss, pss, rss = (slowest(k) / MB for k in ("uss", "pss", "rss"))
    print(f"\nSHA-256 of the CSV: {digest_s:.2f} s ({size / MB / digest_s:,.0f} MB/s)")
    print(
        f"cache entries: bars {entries['.bars']:,.0f} MB, features {entries['.features']:,.0f} MB"
        f" for {rows:,} bars"
    )
    print(
        "\nload                          bars s  features s  read all s"
        "  RSS MB  USS MB  PSS MB  peak RSS MB"
    )
    labelled = [("uncached (parse)", plain), ("first through the cache", first)]
    labelled += [("first cached (checked whole)", checked)]
    labelled += [(f"cached, trial {i + 1} of {n_trials}", t) for i, t in enumerate(trials)]
    for label, doc in labelled:
        print(
            f"{label:<29} {doc['seconds']:6.2f} {doc.get('features_seconds', 0):11.2f}"
            f" {doc['read_seconds']:11.2f} {doc['rss'] / MB:7.0f} {doc['uss'] / MB:7.0f}"
            f" {doc['pss'] / MB:7.0f} {doc['peak_rss'] / MB:12.0f}"
        )
    print(f"cached bars and features, in a warm process: {warm_s:.3f} s")
    print(
        f"features computed alone (no cache, as each trial did per phase): "
        f"{alone['features_seconds']:.1f} s, USS +{alone['features_uss'] / MB:,.0f} MB"
    )
    print(
        f"MarketData.from_bars + {n_envs} envs on the cached features, per trial: "
        f"{slowest('envs_seconds'):.2f} s (slowest)"
    )
    label = f"{rows / 1e6:g}M-row minute CSV ({size / MB:,.0f} MB)"
    return [
        Figure(
            "data_load",
            f"first load, {label}: parse + cache; features computed + cached",
            "",
            f"{first['seconds']:.1f} s; {first['features_seconds']:.1f} s",
        ),
        Figure(
            "data_load",
            "first cached load on a node (every checksum read): bars + features",
            "",
            f"{checked['seconds'] + checked['features_seconds']:.2f} s",
        ),
        Figure(
            "data_load",
            f"cached load of bars + features in a fresh trial process ({n_trials} at once,"
            " slowest); then every byte read",
            f"< {TARGET_SECONDS:g} s",
            f"{cached_s:.3f} s (uncached: parse {plain['seconds']:.1f} s + features"
            f" {alone['features_seconds']:.1f} s); {slowest('read_seconds'):.2f} s",
            cached_s < TARGET_SECONDS,
        ),
        Figure(
            "data_load",
            f"memory a trial holds alone with bars, features and {n_envs} envs, every byte read:"
            " USS (PSS; RSS)",
            "small vs uncached",
            f"{uss:,.0f} MB ({pss:,.0f}; {rss:,.0f}) vs uncached RSS {plain['rss'] / MB:,.0f} MB"
            f" + features {alone['features_uss'] / MB:,.0f} MB",
            uss < 0.1 * (plain["rss"] + alone["features_uss"]) / MB,
        ),
        Figure("data_load", "SHA-256 of the CSV (when its stat changed)", "", f"{digest_s:.2f} s"),
    ]


if __name__ == "__main__":
    sys.exit(main())
