"""How fast is the held-out test evaluation (``python -m tuner.evaluate``)?

Trains one short phase-1 run of NQ with ``tuner.train`` (the shipped config), then evaluates its
``phase_end`` checkpoint on the test split with :func:`tuner.training.held_out.evaluate_on_test`,
on the shipped market (20,000 bars: a test span of about 3,000) and on the same market with ten
times the bars. Prints, in one run:

1. env steps per second of the deterministic policy walking the whole test span, against the
   same env walked with a fixed action and no policy (the baseline: what the env alone costs);
2. where one evaluation's wall time goes: loading the data and the verified checkpoint, the
   pass over the test span, and the bootstrap of the Sharpe ratio's confidence interval.

Usage::

    .venv/bin/python bench/held_out.py [--quick] [--json PATH]

``--quick`` skips the ten-times market. The first evaluation's load share includes importing
torch and stable-baselines3, as a fresh ``python -m tuner.evaluate`` pays it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402
from tuner.trading import evaluation  # noqa: E402
from tuner.trading.env import MarketData  # noqa: E402
from tuner.trading.markets import get_market  # noqa: E402
from tuner.training import held_out  # noqa: E402
from tuner.training.settings import load_settings  # noqa: E402

MARKET = "NQ"
TRAIN_STEPS = 4096
BOOT = 1000


class Clock:
    """Adds up the wall time spent in the functions it wraps, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                self.seconds[name] = self.seconds.get(name, 0.0) + spent

        return timed


def train_checkpoint(work: Path) -> Path:
    """One short phase-1 run of the shipped NQ; its phase_end checkpoint."""
    models = work / "models"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tuner.train",
            "--market",
            MARKET,
            "--timesteps",
            str(TRAIN_STEPS),
            "--base-interval",
            str(TRAIN_STEPS // 2),
            "--models-root",
            str(models),
            "--quiet",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (zip_path,) = (models / "phase1" / MARKET / "checkpoints").glob("*evt-phase_end*.zip")
    return zip_path


def config_with_bars(work: Path, factor: int) -> Path:
    """The shipped config folder with ``factor`` times the synthetic bars."""
    target = work / f"config-x{factor}"
    shutil.copytree(ROOT / "config", target)
    markets = yaml.safe_load((target / "markets.yaml").read_text())
    markets["defaults"]["n_bars"] = int(markets["defaults"]["n_bars"]) * factor
    (target / "markets.yaml").write_text(yaml.safe_dump(markets, sort_keys=False))
    return target


def fixed_action_rate(settings: Any) -> tuple[int, float]:
    """Bars and env steps per second of the test span walked with 'hold' and no policy."""
    data = MarketData.load(get_market(settings.markets, MARKET))
    config = replace(settings.training.env_config(), eval_episode_length=None)
    env = evaluation.make_vec_env(data, 1, "test", 0, 1, config=config, evaluation=True)
    env.env_method("rewind")
    env.reset()
    action = np.zeros((1,), dtype=np.int64)
    steps, started = 0, time.perf_counter()
    while True:
        _, _, dones, _ = env.step(action)
        steps += 1
        if dones[0]:
            break
    seconds = time.perf_counter() - started
    env.close()
    return steps, steps / seconds


def measure(checkpoint: Path, config_dir: Path) -> dict[str, Any]:
    settings = load_settings(config_dir)
    clock = Clock()
    saved = (evaluation.run_episodes, held_out.bootstrap_sharpe)
    evaluation.run_episodes = clock.wrap("pass", saved[0])
    held_out.bootstrap_sharpe = clock.wrap("bootstrap", saved[1])
    try:
        started = time.perf_counter()
        result = held_out.evaluate_on_test(checkpoint, settings, boot=BOOT)
        total = time.perf_counter() - started
    finally:
        evaluation.run_episodes, held_out.bootstrap_sharpe = saved
    baseline_steps, baseline_rate = fixed_action_rate(settings)
    bars = int(result["bars"])
    return {
        "bars": bars,
        "total": total,
        "pass": clock.seconds["pass"],
        "bootstrap": clock.seconds["bootstrap"],
        "rate": bars / clock.seconds["pass"],
        "baseline_rate": baseline_rate,
        "baseline_steps": baseline_steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the ten-times market")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    factors = (1,) if args.quick else (1, 10)
    with tempfile.TemporaryDirectory(prefix="bench-held-out-") as tmp:
        work = Path(tmp)
        checkpoint = train_checkpoint(work)
        rows = [(f, measure(checkpoint, config_with_bars(work, f))) for f in factors]
    print(f"Held-out test evaluation: {MARKET}, phase 1, a {TRAIN_STEPS:,}-step checkpoint")
    print(
        f"  {'market bars':>11} {'test bars':>9} {'policy steps/s':>14} {'env alone':>10}"
        f" {'ratio':>6} {'total s':>8} {'load':>6} {'pass':>6} {'boot':>6}"
    )
    for factor, m in rows:
        rest = m["total"] - m["pass"] - m["bootstrap"]
        print(
            f"  {20_000 * factor:>11,} {m['bars']:>9,} {m['rate']:>14,.0f}"
            f" {m['baseline_rate']:>10,.0f} {m['rate'] / m['baseline_rate']:>6.2f}"
            f" {m['total']:>8.2f} {rest / m['total']:>6.0%} {m['pass'] / m['total']:>6.0%}"
            f" {m['bootstrap'] / m['total']:>6.0%}"
        )
    print(
        "  load = data, verified checkpoint and env set-up; pass = the deterministic policy over"
        f" the whole test span; boot = {BOOT} block-bootstrap samples of the Sharpe ratio"
        " (policy and buy and hold)"
    )
    first = rows[0][1]
    write_figures(
        args.json,
        [
            Figure(
                "held_out",
                f"test evaluation, env steps/s ({first['bars']:,} test bars)",
                "",
                f"{first['rate']:,.0f} ({first['rate'] / first['baseline_rate']:.2f}x env alone)",
            ),
            Figure("held_out", "one evaluation, seconds", "", f"{first['total']:.2f}"),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
