"""How fast do the command lines answer ``--help``, and which imports cost the most?

Each command runs in a fresh subprocess, ``--repeat`` times, the commands interleaved, and its
best wall time counts (other load on the machine only ever adds time). The interpreter's own
start (``python -c pass``) is measured the same way, as the baseline. Target: each ``--help``
answers in under 1 s. Then one ``python -X importtime`` run per command, and the packages that
took the most import time (self time added up per top-level package)::

    .venv/bin/python bench/cli_startup.py [--repeat 7] [--quick] [--top 6] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402

COMMANDS = [
    ("python -m tuner.run --help", ["-m", "tuner.run", "--help"]),
    ("python -m checkpointing.retention --help", ["-m", "checkpointing.retention", "--help"]),
]
BASELINE = ("python -c pass", ["-c", "pass"])
TARGET_SECONDS = 1.0


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def wall_time(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def import_times(args: list[str]) -> tuple[float, dict[str, float]]:
    """Total import time (s) and self time (s) per top-level package, from -X importtime."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    per_package: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
        seconds = int(self_us) / 1e6
        per_package[name.split(".")[0]] += seconds
        total += seconds
    return total, dict(per_package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per command; best counts")
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    parser.add_argument("--top", type=int, default=6, help="packages shown per command")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    repeat = min(args.repeat, 3) if args.quick else max(1, args.repeat)

    commands = [BASELINE, *COMMANDS]
    times: dict[str, list[float]] = {label: [] for label, _ in commands}
    for i in range(repeat):
        order = commands if i % 2 == 0 else commands[::-1]
        for label, cmd in order:
            times[label].append(wall_time(cmd))
    best = {label: min(values) for label, values in times.items()}
    base = best[BASELINE[0]]

    print(f"command line start-up: best of {repeat} fresh processes each, interleaved")
    print(f"{'command':<42} {'best s':>7} {'median s':>8} {'minus python':>12}  target")
    for label, _ in commands:
        values = sorted(times[label])
        target = "" if label == BASELINE[0] else f"< {TARGET_SECONDS:.0f} s"
        print(
            f"{label:<42} {best[label]:>7.3f} {values[len(values) // 2]:>8.3f} "
            f"{best[label] - base:>12.3f}  {target}"
        )

    print(
        f"\nimport time per top-level package (-X importtime, self times added up; top {args.top})"
    )
    for label, cmd in COMMANDS:
        total, per_package = import_times(cmd)
        top = sorted(per_package.items(), key=lambda kv: -kv[1])[: args.top]
        shown = ", ".join(f"{name} {seconds * 1e3:.0f}" for name, seconds in top)
        print(f"{label:<42} {total * 1e3:>6.0f} ms: {shown}")
    heavy = ("torch", "stable_baselines3", "ray", "pandas", "pyarrow", "gymnasium")
    print(f"(none of {', '.join(heavy)} should appear: they load only where they are used)")

    figures = [
        Figure(
            "cli_startup",
            f"`{label}` wall time (best of {repeat}; python alone {base:.2f} s)",
            f"< {TARGET_SECONDS:.1f} s",
            f"{best[label]:.2f} s",
            best[label] < TARGET_SECONDS,
        )
        for label, _ in COMMANDS
    ]
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
