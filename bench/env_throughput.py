"""How fast is FuturesTradingEnv, and how much of PPO's training time does it take?

Prints, in one run:

1. env steps per second: one env (phases 1-3) and DummyVecEnv with 4 and 8 envs;
2. PPO.learn on the env versus on a trivially cheap env with the same spaces, with the time
   spent inside the vectorized env measured directly (target: the env takes <= 10 % of PPO's
   training time).

Runs in well under a minute on 2 cores. Usage::

    .venv/bin/python bench/env_throughput.py [--quick] [--json PATH]

``--quick`` times fewer single-env steps; the PPO comparison is the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402
from tuner.trading.env import EnvConfig, FuturesTradingEnv, MarketData  # noqa: E402
from tuner.trading.evaluation import make_vec_env  # noqa: E402
from tuner.trading.markets import get_market, load_markets  # noqa: E402

MARKET = "NQ"
SINGLE_STEPS = 30_000
VEC_STEPS = 5_000  # vectorized steps (x n_envs env steps)
PPO_ENVS, PPO_N_STEPS, PPO_ITERATIONS, PPO_REPEATS = 8, 256, 3, 2


class TimedVecEnv(VecEnvWrapper):
    """Adds up the wall time spent in the wrapped VecEnv's step_wait and reset."""

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.seconds = 0.0

    def reset(self) -> Any:
        started = time.perf_counter()
        obs = self.venv.reset()
        self.seconds += time.perf_counter() - started
        return obs

    def step_wait(self) -> Any:
        started = time.perf_counter()
        result = self.venv.step_wait()
        self.seconds += time.perf_counter() - started
        return result


class TrivialEnv(gym.Env[np.ndarray, np.int64]):
    """Same spaces as the trading env, no work: the floor of env cost."""

    def __init__(self, like: FuturesTradingEnv) -> None:
        self.observation_space = like.observation_space
        self.action_space = like.action_space
        self._obs: np.ndarray = np.zeros(like.observation_space.sample().shape, dtype=np.float32)
        self._t = 0
        self._length = like.episode_length

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        return self._obs.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        return self._obs.copy(), 0.0, False, self._t >= self._length, {}


def single_env_rate(data: MarketData, phase: int, steps: int = SINGLE_STEPS) -> float:
    env = FuturesTradingEnv(data, "train", phase, seed=0)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, steps)  # type: ignore[attr-defined]
    env.reset()
    started = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def vec_env_rate(data: MarketData, n_envs: int, steps: int = VEC_STEPS) -> float:
    vec = make_vec_env(data, phase=2, split="train", seed=0, n_envs=n_envs)
    actions = np.random.default_rng(0).integers(0, 7, (steps, n_envs))
    vec.reset()
    started = time.perf_counter()
    for row in actions:
        vec.step(row)
    return steps * n_envs / (time.perf_counter() - started)


def ppo_run(vec: VecEnv) -> tuple[float, float]:
    """Wall seconds of PPO.learn and seconds spent inside the env (both over the same run)."""
    timed = TimedVecEnv(vec)
    model = PPO(
        "MlpPolicy", VecNormalize(timed), n_steps=PPO_N_STEPS, batch_size=64, seed=0, device="cpu"
    )
    steps = PPO_ENVS * PPO_N_STEPS * PPO_ITERATIONS
    timed.seconds = 0.0
    started = time.perf_counter()
    model.learn(total_timesteps=steps)
    return time.perf_counter() - started, timed.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer single-env steps")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    scale = 3 if args.quick else 1
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # as in a 1-CPU Ray trial; more threads only add contention here
    spec = get_market(load_markets(ROOT / "config" / "markets.yaml"), MARKET)
    data = MarketData.load(spec)
    print(f"FuturesTradingEnv throughput: {MARKET}, {len(data.bars):,} synthetic bars")
    print(f"  {'setup':<34}{'env steps/s':>12}{'us/step':>10}")
    for phase in (1, 2, 3):
        rate = single_env_rate(data, phase, SINGLE_STEPS // scale)
        note = " (rule advisor)" if phase == 3 else ""
        print(f"  {f'single env, phase {phase}{note}':<34}{rate:>12,.0f}{1e6 / rate:>10.1f}")
    for n_envs in (4, 8):
        rate = vec_env_rate(data, n_envs, VEC_STEPS // scale)
        label = f"DummyVecEnv x{n_envs} + Monitor, phase 2"
        print(f"  {label:<34}{rate:>12,.0f}{1e6 / rate:>10.1f}")

    steps = PPO_ENVS * PPO_N_STEPS * PPO_ITERATIONS
    config = EnvConfig()
    ours = make_vec_env(data, phase=2, split="train", seed=0, n_envs=PPO_ENVS, config=config)
    like = FuturesTradingEnv(data, "train", 2, config=config)
    trivial = DummyVecEnv([lambda: Monitor(TrivialEnv(like)) for _ in range(PPO_ENVS)])
    ppo_run(trivial)  # warm-up (torch kernels, allocations)
    # Alternate the two and keep each one's fastest run: other load on the machine only
    # ever adds time.
    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "trivial": []}
    for _ in range(PPO_REPEATS):
        runs["ours"].append(ppo_run(ours))
        runs["trivial"].append(ppo_run(trivial))
    wall_ours, env_ours = min(runs["ours"])
    wall_trivial, env_trivial = min(runs["trivial"])
    print()
    print(
        f"PPO.learn: MlpPolicy 64x64, {PPO_ENVS} envs x n_steps {PPO_N_STEPS}, 10 epochs, "
        f"batch 64, torch threads 1, {steps:,} steps, VecNormalize; best of {PPO_REPEATS}"
    )
    print(f"  {'env':<34}{'wall s':>8}{'us/env-step':>13}{'in env s':>10}{'env share':>11}")
    for label, wall, inside in (
        ("FuturesTradingEnv (phase 2)", wall_ours, env_ours),
        ("trivial env, same spaces", wall_trivial, env_trivial),
    ):
        print(
            f"  {label:<34}{wall:>8.2f}{1e6 * wall / steps:>13.0f}{inside:>10.2f}"
            f"{100 * inside / wall:>10.1f}%"
        )
    share = env_ours / wall_ours
    extra = (wall_ours - wall_trivial) / wall_ours
    verdict = "OK" if share <= 0.10 else "ABOVE TARGET"
    print(
        f"env share of PPO time: {100 * share:.1f}% measured inside learn; target <= 10%: {verdict}"
    )
    print(
        f"wall time vs the trivial env: {100 * extra:+.1f}% (time inside the envs differs by "
        f"{env_ours - env_trivial:.2f} s; the rest is machine noise)"
    )
    write_figures(
        args.json,
        [
            Figure(
                "env_throughput",
                "env share of PPO's wall time (8 envs, phase 2)",
                "<= 10%",
                f"{100 * share:.1f}%",
                share <= 0.10,
            )
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
