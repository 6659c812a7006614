"""What a search costs and finds: random search to full length vs ASHA vs PBT, and the
default configuration alone, in one run on this machine.

Each arm is a real ``python -m tuner.run`` (its own Ray on loopback) on the same market,
seeds, number of samples and search seed, with the test suite's small config (tiny networks,
short evaluations) so that an arm takes about a minute on 2 cores::

    .venv/bin/python bench/search.py [--quick | --full] [--json PATH]

Per arm: timesteps spent (search and confirmation trials together), wall time, and the
chosen configuration's mean validation reward over the seeds (the default arm: the mean of
its trials). Target: ASHA spends at most half the timesteps of the random search run to full
length. The best metrics are reported, not judged: a few tiny trials are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench._report import Figure, add_json_argument, format_table, write_figures  # noqa: E402
from tuner.driver.experiments import load_experiment  # noqa: E402

SPACE: dict[str, Any] = {
    "search": {
        "phase1": {
            "ppo": {
                "learning_rate": {"loguniform": [1.0e-4, 3.0e-3]},
                "ent_coef": {"loguniform": [1.0e-4, 0.05]},
                "clip_range": {"uniform": [0.1, 0.3]},
                "gamma": {"uniform": [0.95, 0.995]},
            }
        }
    },
    "pbt": {
        "quantile": 0.25,
        "mutate": ["phase1.ppo.learning_rate", "phase1.ppo.ent_coef", "phase1.ppo.clip_range"],
    },
}


@dataclass(frozen=True)
class Arm:
    name: str
    timesteps: int  # search and confirmation
    search_timesteps: int  # the search stage alone
    seconds: float
    mean: float
    std: float


def _run(args: list[str], cwd: Path) -> float:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tuner.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"tuner.run {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    return seconds


def _search_arm(name: str, common: list[str], work: Path, extra: list[str]) -> Arm:
    seconds = _run([*common, "--name", name, *extra], work)
    verdict = json.loads((work / "models" / "summaries" / f"{name}_search.json").read_text())
    market = verdict["markets"]["NQ"]
    spent = sum(c["timesteps"] for c in market["configs"])
    chosen = market["chosen"] or {"mean": float("nan"), "std": float("nan")}
    searched = sum(t.timesteps or 0 for t in load_experiment(work / "rr", name).trials)
    return Arm(name, spent, searched, seconds, chosen["mean"], chosen["std"])


def _default_arm(common: list[str], work: Path) -> Arm:
    seconds = _run([*common, "--name", "default"], work)
    summary = json.loads((work / "models" / "summaries" / "default.json").read_text())
    agg = summary["markets"]["NQ"]["val_reward"]
    spent = sum(r["timesteps"] for r in summary["trials"])
    return Arm("default", spent, spent, seconds, agg["mean"], agg["std"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="8 samples of 4,000 steps (default)")
    size.add_argument("--full", action="store_true", help="16 samples of 8,000 steps")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    samples, steps = (16, 8000) if args.full else (8, 4000)

    from tests.tiny_config import tiny_config_dir

    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        configs = tiny_config_dir(work / "configs")
        space = dict(SPACE)
        space["asha"] = {"grace_period": steps // 8, "reduction_factor": 3}
        space["pbt"] = {**SPACE["pbt"], "perturbation_interval": steps // 4}
        (work / "search.yaml").write_text(yaml.safe_dump(space))
        common = [
            *("--markets", "NQ", "--seeds", "1,2", "--timesteps", str(steps)),
            *("--base-interval", str(steps // 8), "--config-dir", str(configs)),
            *("--models-root", str(work / "models"), "--storage-path", str(work / "rr")),
            "--num-cpus",
            "2",
        ]
        search = [
            *("--search", str(work / "search.yaml"), "--num-samples", str(samples)),
            *("--search-seed", "3", "--confirm-top", "3", "--searcher", "random"),
        ]
        arms = [
            _default_arm(common, work),
            _search_arm("random", common, work, [*search, "--scheduler", "none"]),
            _search_arm("asha", common, work, [*search, "--scheduler", "asha"]),
            _search_arm("pbt", common, work, [*search, "--scheduler", "pbt"]),
        ]

    full = arms[1]
    print(f"\nNQ, seeds 1,2, {samples} samples of {steps:,} steps, confirm top 3, 2 CPUs\n")
    head = f"{'arm':<8} {'search steps':>12} {'ratio':>6} {'all steps':>10} {'ratio':>6}"
    print(f"{head} {'wall s':>7} {'val_reward (mean ± std)':>24}")
    for a in arms:
        searched = a.search_timesteps / full.search_timesteps
        print(
            f"{a.name:<8} {a.search_timesteps:>12,} {searched:>6.2f}"
            f" {a.timesteps:>10,} {a.timesteps / full.timesteps:>6.2f} {a.seconds:>7.1f} "
            f"{a.mean:>+14.3f} ± {a.std:<7.3f}"
        )
    asha = arms[2]
    ratio = asha.search_timesteps / full.search_timesteps
    overall = asha.timesteps / full.timesteps
    figures = [
        Figure(
            "search", "ASHA search timesteps / full random", "<= 0.5", f"{ratio:.2f}", ratio <= 0.5
        ),
        Figure("search", "ASHA timesteps with confirmation / full random", "", f"{overall:.2f}"),
        *(
            Figure("search", f"{a.name}: chosen val_reward (mean over seeds)", "", f"{a.mean:+.3f}")
            for a in arms
        ),
        *(Figure("search", f"{a.name}: wall time", "", f"{a.seconds:.0f} s") for a in arms),
    ]
    print()
    print(format_table(figures))
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
