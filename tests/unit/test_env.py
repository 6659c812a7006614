"""The trading environment and its features (tuner/trading/env.py, tuner/trading/features.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from checkpointing.errors import ConfigError
from tests.unit.data.handmade import make_bars, make_data, make_spec
from tuner.trading.bars import Bars
from tuner.trading.env import EnvConfig, FuturesTradingEnv, MarketData
from tuner.trading.features import FEATURE_NAMES, compute_features
from tuner.trading.markets import load_markets

ROOT = Path(__file__).resolve().parents[2]
MARKETS = load_markets(ROOT / "config" / "markets.yaml")
NQ = MarketData.load(MARKETS["NQ"])
FLAT, LONG1, SHORT1 = 3, 4, 2  # actions with max_position = 3: target = action - 3


def run(env: FuturesTradingEnv, actions: list[int]) -> list[tuple]:
    env.reset()
    return [env.step(a) for a in actions]


# --- spaces and the gymnasium contract ----------------------------------------------------


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_env_passes_gymnasium_checker_without_warnings(phase: int) -> None:
    check_env(FuturesTradingEnv(NQ, "train", phase, seed=0), skip_render_check=True)


def test_spaces_are_the_same_in_every_phase() -> None:
    envs = [FuturesTradingEnv(NQ, "train", phase) for phase in (1, 2, 3)]
    assert all(env.action_space == envs[0].action_space for env in envs)
    assert all(env.observation_space == envs[0].observation_space for env in envs)
    assert envs[0].action_space.n == 7  # type: ignore[attr-defined]
    assert envs[0].observation_space.shape == (len(FEATURE_NAMES) + 4,)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        FuturesTradingEnv(NQ, "valid")
    with pytest.raises(ValueError, match="phase must be 1, 2 or 3, got 4"):
        FuturesTradingEnv(NQ, "train", 4)
    with pytest.raises(ConfigError, match=r"env\.max_position must be an integer in"):
        EnvConfig(max_position=0)
    with pytest.raises(
        ConfigError,
        match=r"unknown key training\.env\.episode_len \(did you mean 'episode_length'\?\)",
    ):
        EnvConfig.from_mapping({"episode_len": 5}, "training.env")
    assert EnvConfig.from_mapping({"episode_length": 64}).episode_length == 64
    env = FuturesTradingEnv(NQ, "train", 1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be in \[0, 6\]"):
        env.step(7)


# --- features use past bars only ----------------------------------------------------------


def test_observations_up_to_t_ignore_every_later_bar() -> None:
    bars = NQ.bars
    t = 700
    shock = np.ones(len(bars))
    shock[t + 1 :] = np.random.default_rng(1).uniform(0.8, 1.25, len(bars) - t - 1)

    def rebuilt(factor: np.ndarray) -> Bars:  # every price of bar i times factor[i]
        return make_bars(
            list(bars.close * factor),
            opens=list(bars.open * factor),
            highs=list(bars.high * factor),
            lows=list(bars.low * factor),
        )

    original, changed = rebuilt(np.ones(len(bars))), rebuilt(shock)
    a, b = compute_features(original), compute_features(changed)
    assert np.array_equal(a.values[: t + 1], b.values[: t + 1])
    assert np.array_equal(a.atr[: t + 1], b.atr[: t + 1])
    assert not np.allclose(a.values[t + 1 :], b.values[t + 1 :])

    # the same through the environment's observations, with trades along the way
    actions = np.random.default_rng(2).integers(0, 7, t).tolist()
    observations = []
    for version in (original, changed):
        env = FuturesTradingEnv(
            MarketData.from_bars(make_spec(), version), "train", 2, evaluation=True
        )
        obs, _ = env.reset()
        seen = [obs]
        for action in actions:
            obs, *_ = env.step(action)
            seen.append(obs)
        observations.append(np.array(seen))
    assert len(observations[0]) == t + 1
    assert np.array_equal(observations[0], observations[1])


def test_features_are_finite_float32_within_bounds() -> None:
    for name in ("NQ", "ZN", "6E"):
        values = MarketData.load(MARKETS[name]).features.values
        assert values.dtype == np.float32
        assert np.isfinite(values).all()
        assert np.abs(values).max() <= 10.0


# --- accounting, by hand ------------------------------------------------------------------

# train split = first 10 bars (MarketData splits hand-made data in halves)
CLOSES = [100.0, 101, 103, 102, 102, 104, 100, 100, 101, 99] + [100.0] * 10


def test_phase1_pnl_costs_and_round_trips_by_hand() -> None:
    cfg = EnvConfig(initial_capital=10_000.0, reward_scale=100.0)
    env = FuturesTradingEnv(make_data(CLOSES), "train", 1, config=cfg, evaluation=True)
    # +3 is clipped to +1 in phase 1; each contract traded costs 1 tick = $5.
    steps = run(env, [6, LONG1, SHORT1, FLAT, FLAT, LONG1, LONG1, FLAT, FLAT])
    stats = steps[-1][4]["episode_stats"]
    # Step k trades at close[k] and holds over bar k -> k+1, at $20 per point:
    # +1 over 100->101 (-5 cost +20), +1 over 101->103 (+40), reverse to -1 at 103 (-10)
    # over 103->102 (+20), flat at 102 (-5), flat, +1 at 104 (-5) over 104->100 (-80),
    # +1 over 100->100, flat at 100 (-5), flat.
    expected = [10_000, 10_015, 10_055, 10_065, 10_060, 10_060, 9_975, 9_975, 9_970, 9_970]
    assert stats.equity.tolist() == expected
    assert stats.positions.tolist() == [1, 1, -1, 0, 0, 1, 1, 0, 0]
    # long trip: -5 + 20 + 40 - 5; short trip: -5 + 20 - 5; long trip: -5 - 80 + 0 - 5
    assert stats.trade_pnls.tolist() == [50.0, 10.0, -90.0]
    rewards = [s[1] for s in steps]  # dollars / reward_scale 100
    assert rewards == pytest.approx([0.15, 0.40, 0.10, -0.05, 0.0, -0.85, 0.0, -0.05, 0.0])
    assert stats.total_reward == pytest.approx(sum(rewards))
    assert steps[-1][3] is True and not any(s[3] for s in steps[:-1])  # truncated at the end


def test_phase2_full_costs_sizing_and_drawdown_penalty_by_hand() -> None:
    cfg = EnvConfig(
        initial_capital=10_000.0, reward_scale=100.0, stop_atr_multiple=0.0, drawdown_penalty=0.5
    )
    env = FuturesTradingEnv(make_data(CLOSES), "train", 2, config=cfg, evaluation=True)
    steps = run(env, [6, 6, FLAT])  # 3 contracts at $7 per contract per fill
    stats = env.episode_stats()
    # 10000 - 21 + 3*20*1 ; + 3*20*2 ; - 21 (exit), flat over 103 -> 102
    assert stats.equity.tolist() == [10_000, 10_039, 10_159, 10_138]
    # the exit costs $21 of drawdown: reward (-21 - 0.5 * 21) / 100
    assert [s[1] for s in steps] == pytest.approx([0.39, 1.20, -0.315])
    assert stats.trade_pnls.tolist() == [138.0]


def test_drawdown_penalty_charges_only_new_depths() -> None:
    closes = [100.0, 101, 99, 100, 99, 98, 98, 98, 98, 98] + [98.0] * 10
    cfg = EnvConfig(
        initial_capital=10_000.0, reward_scale=100.0, stop_atr_multiple=0.0, drawdown_penalty=0.5
    )
    env = FuturesTradingEnv(make_data(closes), "train", 2, config=cfg, evaluation=True)
    steps = run(env, [LONG1] * 5)
    # equity 10013 (peak), 9973 (depth 40: penalty 20), 9993, 9973 (depth 40 again: free),
    # 9953 (depth 60: penalty 10)
    assert env.episode_stats().equity.tolist() == [10_000, 10_013, 9_973, 9_993, 9_973, 9_953]
    assert [s[1] for s in steps] == pytest.approx([0.13, -0.60, 0.20, -0.20, -0.30])


def test_phase2_stop_closes_the_position_at_the_stop_or_the_gap_open() -> None:
    # Every bar has a range of 1 and moves less, so the ATR is exactly 1; stop at 2 ATRs.
    closes = [100.0] * 6 + [98.0, 100, 100, 100] + [100.0] * 10
    lows = [99.5] * 6 + [97.5, 97.5, 99.5, 99.5] + [99.5] * 10
    highs = [100.5] * 6 + [100.5, 100.5, 100.5, 100.5] + [100.5] * 10
    cfg = EnvConfig(initial_capital=10_000.0, stop_atr_multiple=2.0, drawdown_penalty=0.0)
    data = make_data(closes, lows=lows, highs=highs)
    assert data.features.atr[5] == pytest.approx(1.0)
    env = FuturesTradingEnv(data, "train", 2, config=cfg, evaluation=True)
    steps = run(env, [FLAT] * 5 + [LONG1, FLAT, FLAT])
    stats = env.episode_stats()
    # long at 100 (bar 5), stop 98 hit in bar 6: exit at 98, $7 in and $7 out.
    assert stats.trade_pnls.tolist() == [-54.0]
    assert stats.n_stops == 1
    assert stats.equity[7] == 10_000 - 54
    assert steps[5][0][len(FEATURE_NAMES)] == 0.0  # observed position after the stop: flat

    gap_opens = [100.0] * 6 + [97.0, 98, 100, 100] + [100.0] * 10
    data = make_data(closes, lows=lows, highs=highs, opens=gap_opens)
    env = FuturesTradingEnv(data, "train", 2, config=cfg, evaluation=True)
    run(env, [FLAT] * 5 + [LONG1])
    assert env.episode_stats().trade_pnls.tolist() == [-74.0]  # filled at the 97 open


def test_phase1_has_no_stops_and_a_fixed_cost() -> None:
    closes = [100.0] * 6 + [90.0] + [100.0] * 13
    env = FuturesTradingEnv(
        make_data(closes), "train", 1, config=EnvConfig(initial_capital=10_000.0), evaluation=True
    )
    run(env, [FLAT] * 5 + [LONG1, FLAT])
    stats = env.episode_stats()
    assert stats.n_stops == 0
    assert stats.trade_pnls.tolist() == [-5.0 - 200.0 - 5.0]


def test_rewards_are_finite_and_bounded_for_any_actions() -> None:
    for name in ("NQ", "CL", "6E"):
        data = MarketData.load(MARKETS[name])
        for phase in (1, 2, 3):
            env = FuturesTradingEnv(data, "train", phase, seed=3)
            env.reset()
            actions = np.random.default_rng(phase).integers(0, 7, 3000)
            rewards = []
            for a in actions:
                _, r, terminated, truncated, _ = env.step(a)
                rewards.append(r)
                if terminated or truncated:
                    env.reset()
            values = np.array(rewards)
            assert np.isfinite(values).all() and np.abs(values).max() <= 50.0
            assert 0.01 < np.abs(values).mean() < 5.0  # O(1) rewards


# --- episodes -----------------------------------------------------------------------------


def test_training_starts_follow_the_seed_and_evaluation_walks_from_the_start() -> None:
    cfg = EnvConfig(episode_length=256)

    def starts(seed: int) -> list[int]:
        env = FuturesTradingEnv(NQ, "train", 1, config=cfg, seed=seed)
        return [(env.reset(), env.episode_stats().start)[1] for _ in range(5)]

    assert starts(1) == starts(1)
    assert starts(1) != starts(2)
    cfg = EnvConfig(eval_episode_length=500)
    env = FuturesTradingEnv(NQ, "validation", 1, config=cfg, evaluation=True)
    val_start = NQ.ranges.validation.start
    first, _ = env.reset()
    assert np.array_equal(first[: len(FEATURE_NAMES)], NQ.features.values[val_start])
    assert env.episode_stats().start == 0
    # 2970 validation bars hold five 500-step windows; then it starts over
    later = [(env.reset(), env.episode_stats().start)[1] for _ in range(5)]
    assert later == [500, 1000, 1500, 2000, 0]
    env.rewind()
    env.reset()
    assert env.episode_stats().start == 0


def test_episode_end_reports_stats_with_the_equity_curve() -> None:
    env = FuturesTradingEnv(NQ, "train", 2, config=EnvConfig(episode_length=100), seed=0)
    env.reset()
    for i in range(100):
        _, _, terminated, truncated, info = env.step(LONG1 if i % 10 < 5 else FLAT)
        assert ("episode_stats" in info) == (i == 99) == truncated
        assert not terminated
    stats = info["episode_stats"]
    assert len(stats.equity) == 101 and len(stats.positions) == 100 and len(stats.closes) == 101
    assert len(stats.trade_pnls) == 10
    assert stats.equity[-1] == pytest.approx(100_000 + stats.trade_pnls.sum())
    assert stats.bars_per_year == NQ.bars.bars_per_year


def test_short_split_shortens_training_episodes() -> None:
    env = FuturesTradingEnv(make_data(CLOSES), "train", 1, config=EnvConfig(episode_length=500))
    assert env.episode_length == 9


@pytest.mark.parametrize("rolled", [False, True])
def test_environments_share_the_markets_prices_instead_of_copying_them(rolled: bool) -> None:
    import tracemalloc
    from dataclasses import replace

    from tuner.trading.synthetic import generate_synthetic

    spec = MARKETS["NQ"]
    bars = generate_synthetic("NQ", spec.data, spec.tick_size, n_bars=100_000)  # type: ignore[arg-type]
    if rolled:  # raw prices with roll gaps: the closes without gaps differ from the closes
        gaps = np.zeros(len(bars))
        gaps[::5_000] = 25.0
        gaps[0] = 0.0
        bars = replace(bars, roll_gap=gaps)
    data = MarketData.from_bars(spec, bars)
    train_bytes = 8 * (data.ranges.train.stop - data.ranges.train.start)
    tracemalloc.start()
    try:
        envs = [FuturesTradingEnv(data, "train", 2, seed=i) for i in range(4)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(envs) == 4
    # A copy of open, high, low, close and ATR per env would be 5 x 4 x train_bytes (20 MB
    # as numpy arrays, 80 MB as Python lists); what each env holds is its episode buffers.
    assert held < train_bytes
