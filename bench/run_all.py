"""Run every benchmark in ``bench/`` and print one table of their headline figures.

Each ``bench/*.py`` (but this file and the ``_`` helpers) runs in its own process with
``--quick`` (unless ``--full``) and ``--json``, its own output shown as it goes; at the end,
one table: benchmark, figure, target, result. ``make bench`` runs this::

    .venv/bin/python bench/run_all.py [--full] [--skip-slow] [--only NAME,NAME]

The slow ones (``tune_scaling``, ``search``: minutes of real training through Ray;
``trainers``: SB3 and RLlib training the same phase four ways;
``data_load``: a 572 MB CSV parsed twice in its full run; ``object_store``: 50 MB checkpoints
through an S3 server on loopback, about 2 minutes) are skipped with ``--skip-slow`` or
``BENCH_SKIP_SLOW=1``. Exits 1 if a benchmark failed to run; a target not
met is shown in the table, not an error (the figures are noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, format_table, read_figures  # noqa: E402

BENCH = Path(__file__).resolve().parent
# Quick ones first; anything new in bench/ runs too, before the slow ones.
ORDER = [
    "cli_startup",
    "retention",
    "browse_scale",
    "report",
    "env_throughput",
    "save_overhead",
    "compression",
    "training_overhead",
    "held_out",
]
SLOW = ["data_load", "object_store", "tune_scaling", "search", "trainers"]


def discover() -> list[str]:
    names = sorted(p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_"))
    names.remove(Path(__file__).stem)
    known = [n for n in ORDER if n in names]
    slow = [n for n in SLOW if n in names]
    return known + [n for n in names if n not in known and n not in slow] + slow


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full runs, not --quick")
    parser.add_argument(
        "--skip-slow",
        action="store_true",
        default=os.environ.get("BENCH_SKIP_SLOW", "") not in ("", "0"),
        help=f"skip {', '.join(SLOW)} (also BENCH_SKIP_SLOW=1)",
    )
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"--only: no benchmark {unknown}; there are {names}")
        names = [n for n in names if n in wanted]
    skipped = [n for n in names if args.skip_slow and n in SLOW]
    names = [n for n in names if n not in skipped]

    print(f"benchmarks: {', '.join(names)}; {'full' if args.full else 'quick'} runs; {_load()}")
    figures: list[Figure] = []
    failed = 0
    started_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-run-all-") as tmp:
        for name in names:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(BENCH / f"{name}.py"), "--json", str(out)]
            if not args.full:
                cmd.append("--quick")
            print(f"\n== bench/{name}.py {' '.join(cmd[2:])}", flush=True)
            started = time.monotonic()
            done = subprocess.run(cmd, cwd=ROOT, check=False)
            took = time.monotonic() - started
            print(f"-- {name}: {took:.0f} s", flush=True)
            if done.returncode != 0 or not out.exists():
                failed += 1
                figures.append(
                    Figure(name, "the benchmark ran", "exit 0", f"exit {done.returncode}", False)
                )
                continue
            figures += read_figures(out)
    for name in skipped:
        figures.append(Figure(name, "skipped (--skip-slow / BENCH_SKIP_SLOW)", "", "-"))

    minutes = (time.monotonic() - started_all) / 60
    print(f"\n== all benchmarks: {minutes:.1f} min; {_load()}\n")
    print(format_table(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
