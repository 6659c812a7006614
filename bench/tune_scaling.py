"""Wall time of four runs (2 markets x 2 seeds): one after another vs through Ray Tune.

Both sides run the real commands in subprocesses, in one go:

- sequential: ``python -m tuner.train --market M --seed S ...`` four times in a row;
- Tune: ``python -m tuner.run --markets NQ,ES --seeds 42,7 ...`` on 2 CPUs (one per trial).

Prints both wall times and the ratio Tune / sequential. Target <= 0.65 (the limit on 2 cores
is 0.5). The driver's fixed cost (Ray start-up, trial workers importing torch, the final
retention and summary: about 15 s here) weighs on short runs: with 30,000 steps per run the
ratio was 0.72, so the default is 60,000. Takes about 7 minutes on 2 cores; ``--quick``
(30,000 steps, base interval 3,000) about 4::

    .venv/bin/python bench/tune_scaling.py [--timesteps 60000] [--base-interval 6000] [--quick]
        [--json PATH]
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

from bench._report import Figure, add_json_argument, verdict, write_figures  # noqa: E402

MARKETS, SEEDS = ("NQ", "ES"), (42, 7)
TARGET = 0.65


def run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        tail = done.stdout[-2000:] + done.stderr[-2000:]
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{tail}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timesteps", type=int, default=60_000)
    parser.add_argument("--base-interval", type=int, default=6_000)
    parser.add_argument("--quick", action="store_true", help="30,000 steps per run")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.timesteps, args.base_interval = 30_000, 3_000
    common = [
        "--timesteps",
        str(args.timesteps),
        "--base-interval",
        str(args.base_interval),
        "--config-dir",
        str(ROOT / "config"),
    ]
    with tempfile.TemporaryDirectory(prefix="tune-scaling-") as tmp:
        work = Path(tmp)
        sequential = 0.0
        for market in MARKETS:
            for seed in SEEDS:
                sequential += run(
                    [
                        sys.executable,
                        "-m",
                        "tuner.train",
                        "--market",
                        market,
                        "--seed",
                        str(seed),
                        "--quiet",
                        "--models-root",
                        str(work / "seq"),
                        *common,
                    ],
                    work,
                )
        tune = run(
            [
                sys.executable,
                "-m",
                "tuner.run",
                "--markets",
                ",".join(MARKETS),
                "--seeds",
                ",".join(map(str, SEEDS)),
                "--num-cpus",
                "2",
                "--cpus-per-trial",
                "1",
                "--models-root",
                str(work / "tune"),
                "--storage-path",
                str(work / "ray_results"),
                "--name",
                "scaling",
                *common,
            ],
            work,
        )
    ratio = tune / sequential
    print(f"four runs of {args.timesteps:,} steps (2 markets x 2 seeds), {os.cpu_count()} CPUs")
    print(f"{'sequential (tuner.train x 4)':<34} {sequential:8.1f} s")
    print(f"{'Ray Tune (tuner.run, 2 CPUs)':<34} {tune:8.1f} s")
    print(f"{'ratio Tune / sequential':<34} {ratio:8.2f}   (target <= {TARGET}, limit 0.5)")
    print("target: " + verdict(ratio <= TARGET))
    write_figures(
        args.json,
        [
            Figure(
                "tune_scaling",
                f"4 runs of {args.timesteps:,} steps on 2 CPUs: Ray Tune / one after another",
                f"<= {TARGET}",
                f"{ratio:.2f} ({tune:.0f} vs {sequential:.0f} s)",
                ratio <= TARGET,
            )
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
