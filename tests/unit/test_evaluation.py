"""Env factories and the evaluation of a policy on validation data (tuner/trading/evaluation.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from tuner.trading.advisor import ADVISOR_METADATA_FIELDS, AdvisorCounters
from tuner.trading.env import EnvConfig, EpisodeStats, MarketData
from tuner.trading.evaluation import (
    TRADING_METRICS,
    evaluate_trading,
    make_vec_env,
    summarize_episodes,
)
from tuner.trading.markets import load_markets
from tuner.trading.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[2]
SPEC = load_markets(ROOT / "config" / "markets.yaml")["ES"]
SMALL = MarketData.from_bars(
    SPEC,
    generate_synthetic("ES", SPEC.data, SPEC.tick_size, n_bars=3000),  # type: ignore[arg-type]
)


class AlwaysLong:
    """A stand-in model: target +1 contract on every step."""

    def predict(self, obs: np.ndarray, **_: Any) -> tuple[np.ndarray, None]:
        return np.full(len(obs), 4), None


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_buy_and_hold_policy_trails_buy_and_hold_by_its_entry_cost() -> None:
    env = make_vec_env(SMALL, phase=1, split="validation", seed=0, evaluation=True)
    result = evaluate_trading(AlwaysLong(), env, n_episodes=1)  # type: ignore[arg-type]
    assert tuple(result) == TRADING_METRICS
    assert result["exposure"] == 1.0
    assert result["n_trades"] == 0.0  # the position is never closed
    assert math.isnan(result["win_rate"])
    # one contract bought at the first close: $12.50 (one tick) on $100,000 = 0.0125 %
    assert result["buy_hold_gap"] == pytest.approx(-0.0125)
    closes = SMALL.bars.close[SMALL.ranges.validation]
    held = (closes[-1] - closes[0]) * SPEC.point_value / 100_000 * 100
    assert result["total_return"] == pytest.approx(held - 0.0125)
    assert -1.0 < result["max_drawdown"] <= 0.0
    assert math.isfinite(result["sharpe_ratio"]) and math.isfinite(result["val_reward"])


def test_eval_envs_cover_different_windows_and_repeat_calls_agree() -> None:
    config = EnvConfig(eval_episode_length=100)
    env = make_vec_env(SMALL, 2, "validation", seed=0, n_envs=2, evaluation=True, config=config)
    assert isinstance(env, DummyVecEnv) and env.num_envs == 2
    first = evaluate_trading(AlwaysLong(), env, n_episodes=4)  # type: ignore[arg-type]
    starts = sorted(s.start for s in _episodes(env, 4))
    assert starts == [0, 100, 200, 300]
    assert same(first, evaluate_trading(AlwaysLong(), env, n_episodes=4))  # type: ignore[arg-type]


def _episodes(env: DummyVecEnv, n: int) -> list[EpisodeStats]:
    env.env_method("rewind")
    env.reset()
    found: list[EpisodeStats] = []
    while len(found) < n:
        _, _, dones, infos = env.step(np.full(env.num_envs, 3))
        found += [infos[i]["episode_stats"] for i in np.flatnonzero(dones)]
    return found


def test_phase3_results_carry_the_advisor_fields() -> None:
    env = make_vec_env(SMALL, phase=3, split="validation", seed=0, evaluation=True)
    result = evaluate_trading(AlwaysLong(), env, n_episodes=1)  # type: ignore[arg-type]
    assert set(result) == set(TRADING_METRICS) | set(ADVISOR_METADATA_FIELDS)
    assert result["reasoning_usage_rate"] == 1.0  # the rule advisor is consulted every step
    assert result["llm_error_count"] == 0.0


def test_evaluation_needs_eval_mode_trading_envs() -> None:
    train_env = make_vec_env(SMALL, 1, "train", seed=0)
    with pytest.raises(ValueError, match=r"make_vec_env\(\.\.\., evaluation=True\)"):
        evaluate_trading(AlwaysLong(), train_env, n_episodes=1)  # type: ignore[arg-type]
    eval_env = make_vec_env(SMALL, 1, "validation", seed=0, evaluation=True)
    with pytest.raises(ValueError, match="n_episodes must be an integer >= 1, got 0"):
        evaluate_trading(AlwaysLong(), eval_env, n_episodes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_envs must be an integer >= 1"):
        make_vec_env(SMALL, 1, "train", seed=0, n_envs=0)


def train_and_evaluate(seed: int) -> dict[str, float]:
    config = EnvConfig(episode_length=128)
    train_env = VecNormalize(make_vec_env(SMALL, 1, "train", seed=seed, n_envs=2, config=config))
    model = PPO(
        "MlpPolicy",
        train_env,
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        policy_kwargs={"net_arch": [8]},
        seed=seed,
        device="cpu",
    )
    model.learn(total_timesteps=256)
    eval_env = VecNormalize(
        make_vec_env(SMALL, 1, "validation", seed=seed, evaluation=True),
        training=False,
        norm_reward=False,
    )
    eval_env.obs_rms = train_env.obs_rms.copy()
    return evaluate_trading(model, eval_env, n_episodes=1)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    # Tiny networks gain nothing from threads and lose a lot on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_same_seed_and_data_give_identical_metrics() -> None:
    first, second = train_and_evaluate(seed=3), train_and_evaluate(seed=3)
    assert same(first, second)
    assert all(isinstance(v, float) for v in first.values())


def test_summary_rules_over_several_episodes() -> None:
    def episode(equity: list[float], trades: list[float], positions: list[int]) -> EpisodeStats:
        return EpisodeStats(
            total_reward=float(len(trades)),
            equity=np.array(equity),
            positions=np.array(positions, dtype=np.int16),
            trade_pnls=np.array(trades),
            closes=np.full(len(equity), 100.0),  # flat market: buy-and-hold earns 0
            point_value=1.0,
            bars_per_year=252.0,
            start=0,
            n_stops=0,
            advisor=AdvisorCounters(steps=2, consults=1),
        )

    result = summarize_episodes(
        [
            episode([100.0, 110.0, 99.0], [10.0, -1.0], [1, 1]),
            episode([100.0, 99.0, 108.9], [5.0], [0, 1]),
        ]
    )
    assert result["val_reward"] == 1.5  # rewards 2 and 1
    assert result["win_rate"] == pytest.approx(2 / 3)  # trades pooled
    assert result["n_trades"] == 1.5  # per episode
    assert result["max_drawdown"] == pytest.approx(-0.1)  # the worst episode
    assert result["total_return"] == pytest.approx((-1.0 + 8.9) / 2)
    assert result["buy_hold_gap"] == pytest.approx((-1.0 + 8.9) / 2)
    assert result["exposure"] == 0.75
    # the returns +10 %, -10 %, -1 %, +10 % back to back
    returns = np.array([0.1, -0.1, -0.01, 0.1])
    expected = math.sqrt(252) * returns.mean() / returns.std(ddof=1)
    assert result["sharpe_ratio"] == pytest.approx(expected)
    assert result["reasoning_usage_rate"] == 0.5


def test_config_changes_reach_every_env() -> None:
    env = make_vec_env(
        SMALL, 2, "train", seed=1, n_envs=3, config=replace(EnvConfig(), max_position=2)
    )
    assert env.action_space.n == 5  # type: ignore[attr-defined]
    assert env.get_attr("phase") == [2, 2, 2]
