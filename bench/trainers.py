"""SB3 or RLlib for one trial: env steps per second, wall time and the save's block, on 2 cores.

The same phase (NQ phase 1 of the shipped configs: its data, env, evaluation and PPO settings
of each trainer's section of ``training.yaml``) and the same budget, trained four ways through
the project's own trainer (:func:`tuner.training.trainer.train_phase`, as ``tuner.train``
runs it), each into a models root of its own:

- sb3: stable-baselines3 PPO, ``n_envs`` envs in one process (torch on 2 threads);
- rllib, 0 env runners: RLlib PPO sampling in the training process;
- rllib, 1 and 2 env runners: sampling in 1 or 2 Ray actors while the learner updates.

Each run evaluates and saves every ``steps / SAVES`` steps (``--base-interval``), so all pay
the same evaluations. Figures per run: wall time of the whole phase (algorithm and env runners
built, training, evaluations, saves; Ray itself is started once before the RLlib runs, as a
Tune trial finds it running), env steps per second over that wall time, and the save's block
on the training loop: the median time the training thread spends in the checkpoint source's
``snapshot`` per save (SB3: the manager's copy of the policy and optimizer state; RLlib:
``Algorithm.save_to_path`` into a temporary folder), the zip being written in the background
for both. Takes about 3 minutes on 2 cores (``--quick``: 8,000 steps, about 1.5)::

    .venv/bin/python bench/trainers.py [--steps 30000] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402

SAVES = 6  # periodic saves per run (the interval grows a little along the run)
RUNS: list[tuple[str, str, int | None]] = [
    ("sb3", "sb3", None),
    ("rllib, 0 env runners", "rllib", 0),
    ("rllib, 1 env runner", "rllib", 1),
    ("rllib, 2 env runners", "rllib", 2),
]


@dataclass(frozen=True)
class Run:
    label: str
    timesteps: int
    wall: float
    blocks: list[float]  # seconds the training thread spent in snapshot(), per save

    @property
    def rate(self) -> float:
        return self.timesteps / self.wall

    @property
    def block(self) -> float:
        return statistics.median(self.blocks) if self.blocks else float("nan")


@contextmanager
def timed_snapshots(blocks: list[float]) -> Iterator[None]:
    """Record how long each checkpoint source's ``snapshot`` (on the training thread) takes."""
    from checkpointing.manager import SB3Source
    from tuner.training.rllib_algo import RLlibSource

    originals: dict[type, Callable[..., Any]] = {
        cls: cls.snapshot for cls in (SB3Source, RLlibSource)
    }

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def snapshot(self: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(self)
            finally:
                blocks.append(time.perf_counter() - t0)

        return snapshot

    for cls, original in originals.items():
        cls.snapshot = wrap(original)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.snapshot = original  # type: ignore[method-assign]


def train_once(label: str, trainer: str, runners: int | None, steps: int, work: Path) -> Run:
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    settings = load_settings(ROOT / "config")
    job = PhaseJob(
        market="NQ",
        seed=42,
        phase=1,
        timesteps=steps,
        base_interval=max(1, steps // SAVES),
        models_root=work / label.replace(" ", "_").replace(",", ""),
        torch_threads=2,
        quiet=True,
        trainer=trainer,
        env_runners=runners,
    )
    blocks: list[float] = []
    with timed_snapshots(blocks):
        t0 = time.perf_counter()
        result = train_phase(job, settings, handle_signals=False)
        wall = time.perf_counter() - t0
    return Run(label, result.timesteps, wall, blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30_000, help="env steps per run")
    parser.add_argument("--quick", action="store_true", help="8,000 steps per run")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    steps = 8_000 if args.quick else args.steps
    if steps < SAVES:
        parser.error(f"--steps must be >= {SAVES}, got {steps}")
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-trainers-") as tmp:
        for label, trainer, runners in RUNS:
            if trainer == "rllib":
                from tuner.training.rllib_algo import ensure_ray

                ensure_ray(2)  # once, before the timed runs: a trial finds its Ray running
            run = train_once(label, trainer, runners, steps, Path(tmp))
            runs.append(run)
            print(
                f"{run.label:<22} {run.timesteps:>7,} steps  {run.wall:>6.1f} s  "
                f"{run.rate:>7,.0f} steps/s  save block {run.block * 1000:>6.1f} ms "
                f"(median of {len(run.blocks)})",
                flush=True,
            )
    import ray

    ray.shutdown()
    print(f"\nNQ phase 1, {steps:,} steps each, on {os.cpu_count()} CPUs")
    write_figures(
        args.json,
        [
            Figure(
                "trainers",
                f"{r.label}: steps/s, wall, save block",
                "context",
                f"{r.rate:,.0f}/s, {r.wall:.1f} s, {r.block * 1000:.0f} ms",
            )
            for r in runs
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
