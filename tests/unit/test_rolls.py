"""Contract rolls (tuner/trading/rolls.py): the rules on made-up daily volumes, a file of several
contracts joined into one series, and the roll gap never counted as profit, loss or return
(tuner/trading/env.py, features.py, bars.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.tiny_config import tiny_config_dir
from tests.unit.data.handmade import POINT_VALUE, make_spec
from tuner.trading.bars import Bars, DataError
from tuner.trading.data_settings import DataSettings
from tuner.trading.env import EnvConfig, FuturesTradingEnv, MarketData
from tuner.trading.features import FEATURE_NAMES, compute_features
from tuner.trading.markets import FileSource, SplitSpec, load_markets
from tuner.trading.ohlcv import load_ohlcv, load_ohlcv_report
from tuner.trading.rolls import CalendarRoll, ContractDays, VolumeRoll

FLAT, LONG1 = 3, 4  # actions with max_position = 3
RET_1 = FEATURE_NAMES.index("ret_1")


def contract_days(volume: list[list[float]], days: list[int] | None = None) -> ContractDays:
    """Daily volumes, a row per day and a column per contract; 0: no bar that day."""
    v = np.array(volume, dtype=float)
    numbers = np.arange(len(v)) if days is None else np.array(days)
    return ContractDays(days=numbers.astype(np.int64), volume=v, trades=v > 0)


# --- the rules ----------------------------------------------------------------------------

VOLUME_CASES = [
    # the day after the next contract trades more, the series moves to it
    ([[10, 1], [10, 5], [4, 6], [3, 9]], [0, 0, 0, 1]),
    # and never back, however the volumes turn
    ([[10, 1], [4, 6], [7, 5], [9, 1]], [0, 0, 1, 1]),
    # the same volume is no reason to move
    ([[5, 5], [5, 5], [5, 5]], [0, 0, 0]),
    # the contract held stops trading (expired) before anything out-traded it
    ([[10, 1], [10, 2], [0, 3], [0, 4]], [0, 0, 1, 1]),
    # a contract expiring before the one held is never rolled into
    ([[1, 10], [6, 4], [6, 4], [0, 4]], [1, 1, 1, 1]),
    # to the busiest of the later contracts
    ([[10, 1, 1], [2, 3, 8], [2, 3, 8], [1, 3, 8]], [0, 0, 2, 2]),
]


@pytest.mark.parametrize(("volume", "held"), VOLUME_CASES)
def test_volume_roll(volume: list[list[float]], held: list[int]) -> None:
    assert VolumeRoll().held(contract_days(volume)).tolist() == held


H_TO_DAY_5 = [[9, 1]] * 6 + [[0, 9]] * 4  # H trades days 0-5, M days 0-9
CALENDAR_CASES = [
    # 2 days before H's last day (5): from day 3
    (2, H_TO_DAY_5, None, [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
    # the days are calendar days, not bars: day numbers 0 1 2 5 6 7 8, H's last is 7
    (3, [[9, 1]] * 6 + [[0, 9]], [0, 1, 2, 5, 6, 7, 8], [0, 0, 0, 1, 1, 1, 1]),
    # M starts trading on day 4 only: H is held until then
    (3, [[9, 0]] * 4 + [[9, 1]] * 2 + [[0, 9]] * 4, None, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]),
    # H (to day 3) -> M (to day 7) -> U (to the end, never rolled off)
    (
        1,
        [[9, 5, 1]] * 4 + [[0, 9, 5]] * 4 + [[0, 0, 9]] * 2,
        None,
        [0, 0, 1, 1, 1, 1, 2, 2, 2, 2],
    ),
    # H within 3 days of its last day from the start: M from day 0
    (3, [[9, 1]] * 2 + [[0, 9]] * 3, None, [1, 1, 1, 1, 1]),
    # after H, of two contracts trading to the end, the busier the day before (not the first)
    (1, [[9, 1, 5]] * 4 + [[0, 3, 9]] * 3, None, [0, 0, 2, 2, 2, 2, 2]),
]


@pytest.mark.parametrize(("before", "volume", "days", "held"), CALENDAR_CASES)
def test_calendar_roll(
    before: int, volume: list[list[float]], days: list[int] | None, held: list[int]
) -> None:
    rule = CalendarRoll(days_before_expiry=before)
    assert rule.held(contract_days(volume, days)).tolist() == held


# --- hand-made files ----------------------------------------------------------------------


def contract(
    start: str,
    days: int,
    price: float | np.ndarray,
    volume: list[float],
    *,
    weekdays: bool = False,
) -> pd.DataFrame:
    """Hourly bars of one contract over ``days`` UTC dates; ``volume`` per bar, one per date."""
    times = pd.date_range(start, periods=days * 24, freq="1h")
    keep = np.ones(len(times), dtype=bool)
    if weekdays:
        keep = np.asarray(times.day_of_week < 5)
    close = np.broadcast_to(np.asarray(price, dtype=float), (len(times),))[keep]
    return pd.DataFrame(
        {
            "time": times[keep],
            "open": close,
            "high": close + 0.25,
            "low": close - 0.25,
            "close": close,
            "volume": np.repeat(volume, 24)[keep],
        }
    )


def contracts_csv(path: Path, contracts: dict[str, pd.DataFrame]) -> Path:
    frame = pd.concat([bars.assign(symbol=name) for name, bars in contracts.items()])
    frame = frame.sort_values(["time", "symbol"], kind="stable")
    frame["time"] = frame["time"].dt.strftime("%Y-%m-%d %H:%M:%S")
    frame[["time", "symbol", "open", "high", "low", "close", "volume"]].to_csv(path, index=False)
    return path


def test_volume_rolls_are_dated_logged_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # H leads until 6 March, M from 7 March (so the series rolls on the 8th), U never
    h = contract("2024-03-01", 10, 100.0, [900] * 6 + [100] * 4)
    m = contract("2024-03-01", 20, 101.0, [100] * 6 + [1000] * 14)
    u = contract("2024-03-01", 20, 102.0, [10] * 20)
    path = contracts_csv(tmp_path / "three.csv", {"NQH4": h, "NQM4": m, "NQU4": u})
    with caplog.at_level(logging.INFO, logger="tuner.trading.rolls"):
        bars, report = load_ohlcv_report(path, DataSettings(roll="volume"))
    assert [(str(r.time), r.from_contract, r.to_contract) for r in report.rolls] == [
        ("2024-03-08T00:00:00.000000000", "NQH4", "NQM4")
    ]
    assert report.symbol == "NQH4" and report.roll == "volume" and report.adjust == "backward"
    roll = report.rolls[0]
    assert roll.gap == pytest.approx(1.0) and roll.ratio == pytest.approx(1.01)
    assert roll.measured_at == np.datetime64("2024-03-07T23:00")
    assert len(bars) == 20 * 24  # one bar an hour: no contract twice, none missing
    assert bars.timestamps[roll.index] == roll.time
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert logged == [
        f"{path}: roll NQH4 -> NQM4 at 2024-03-08 00:00:00 UTC, gap +1 (+1.000%), measured at "
        "2024-03-07 23:00:00 UTC"
    ]


def test_calendar_rolls_eight_days_before_the_last_day_the_contract_trades(tmp_path: Path) -> None:
    # ESH4 expires on Friday 15 March 2024 (third Friday); 8 days before is Thursday 7 March
    h = contract("2024-03-04", 12, 5000.0, [900] * 12, weekdays=True)
    m = contract("2024-03-04", 26, 5050.0, [10] * 26, weekdays=True)  # to 29 March
    u = contract("2024-03-04", 26, 5100.0, [5] * 26, weekdays=True)
    path = contracts_csv(tmp_path / "es.csv", {"ESH4": h, "ESM4": m, "ESU4": u})
    assert h["time"].iloc[-1] == pd.Timestamp("2024-03-15 23:00")
    _, report = load_ohlcv_report(path, DataSettings(roll="calendar"))
    assert [(str(r.time), r.to_contract) for r in report.rolls] == [
        ("2024-03-07T00:00:00.000000000", "ESM4")
    ]
    _, report = load_ohlcv_report(path, DataSettings(roll="calendar", roll_days_before_expiry=1))
    assert str(report.rolls[0].time) == "2024-03-14T00:00:00.000000000"


def test_backward_adjustment_multiplies_the_bars_before_each_roll_by_its_ratio(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    walk = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.001, 20 * 24)))
    h = contract("2024-03-01", 20, walk, [900] * 6 + [100] * 14)
    m = contract("2024-03-01", 20, walk * 1.02, [100] * 6 + [1000] * 14)
    path = contracts_csv(tmp_path / "walk.csv", {"H": h, "M": m})
    raw = load_ohlcv(path, DataSettings(roll="volume", adjust="none"))
    bars, report = load_ohlcv_report(path, DataSettings(roll="volume"))
    (roll,) = report.rolls
    i = roll.index
    assert i == 7 * 24
    assert np.allclose(bars.close, m["close"], rtol=1e-12)  # H's bars lifted onto M's prices
    assert np.array_equal(bars.close[i:], raw.close[i:])  # from the roll on: as written
    assert np.array_equal(raw.close[:i], h["close"].to_numpy()[:i])
    assert np.allclose(bars.high[:i] / raw.high[:i], roll.ratio, rtol=1e-12)
    returns = np.diff(np.log(bars.close))
    assert np.allclose(returns, np.diff(np.log(walk)), atol=1e-12)  # returns exact, no jump
    assert not bars.roll_gap.any()  # nothing left for the env to take out


def test_raw_prices_mark_the_gap_and_close_without_gaps_takes_it_out(tmp_path: Path) -> None:
    h = contract("2024-03-01", 10, 100.0, [900] * 4 + [100] * 6)
    m = contract("2024-03-01", 10, 98.5, [100] * 4 + [1000] * 6)  # backwardation: -1.5%
    path = contracts_csv(tmp_path / "flat.csv", {"H": h, "M": m})
    bars = load_ohlcv(path, DataSettings(roll="volume", adjust="none"))
    assert np.flatnonzero(bars.roll_gap).tolist() == [5 * 24]
    assert bars.roll_gap[5 * 24] == pytest.approx(-1.5)
    assert bars.close.tolist() == [100.0] * 120 + [98.5] * 120
    assert np.allclose(bars.close_without_gaps(), 100.0)
    assert bars.slice(slice(120, 130)).close_without_gaps().tolist() == [98.5] * 10  # from its own
    part = bars.slice(slice(100, 140))
    assert part.roll_gap[20] == bars.roll_gap[120] and not part.roll_gap.flags.writeable
    kept = load_ohlcv(path, DataSettings(roll="volume", adjust="none", roll_gap="keep"))
    assert np.array_equal(kept.close, bars.close) and not kept.roll_gap.any()


def test_without_a_bar_both_traded_the_gap_is_the_jump_at_the_roll(tmp_path: Path) -> None:
    h = contract("2024-03-01", 5, 100.0, [900] * 5)
    m = contract("2024-03-06", 5, 102.0, [900] * 5)  # starts the day after H's last
    path = contracts_csv(tmp_path / "apart.csv", {"H": h, "M": m})
    _, report = load_ohlcv_report(path, DataSettings(roll="volume"))
    (roll,) = report.rolls
    assert roll.measured_at is None
    assert (roll.gap, roll.ratio) == (2.0, 1.02)


def test_contracts_with_the_same_prices_at_the_same_times_are_no_duplicates(
    tmp_path: Path,
) -> None:
    h = contract("2024-03-01", 6, 100.0, [900] * 3 + [100] * 3)
    m = contract("2024-03-01", 6, 100.0, [900] * 3 + [100] * 3)
    m["volume"] = [100] * 48 + [900] * 96
    path = contracts_csv(tmp_path / "same.csv", {"H": h, "M": m})
    bars, report = load_ohlcv_report(path, DataSettings(roll="volume"))
    assert report.duplicates == 0
    assert [r.to_contract for r in report.rolls] == ["M"]
    assert len(bars) == 6 * 24


def test_two_bars_of_one_contract_at_one_time_are_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "clash.csv"
    path.write_text(
        "time,symbol,open,high,low,close,volume\n"
        "2024-03-01 00:00,H,100,101,99,100,5\n"
        "2024-03-01 00:00,M,101,102,100,101,5\n"
        "2024-03-01 00:00,M,101,102,100,101.5,5\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"line 3 and line 4 have the same timestamp .* 'M'"):
        load_ohlcv(path, DataSettings(roll="volume"))


def test_roll_needs_contracts_and_roll_by_volume_needs_volumes(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "time,open,high,low,close,volume\n2024-03-01 00:00,1,1,1,1,1\n", encoding="utf-8"
    )
    with pytest.raises(
        DataError, match=r"markets\.NQ\.data\.roll is 'volume', but the file has no"
    ):
        load_ohlcv(plain, DataSettings(roll="volume"), market="NQ")
    quiet = tmp_path / "quiet.csv"
    quiet.write_text(
        "time,symbol,open,high,low,close\n2024-03-01 00:00,H,1,1,1,1\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"no volume column; .* or roll by calendar"):
        load_ohlcv(quiet, DataSettings(roll="volume"))


def test_roll_keys_reach_the_loader(tmp_path: Path) -> None:
    data = {
        "file": "es.csv",
        "roll": "calendar",
        "roll_days_before_expiry": 5,
        "adjust": "none",
        "roll_gap": "keep",
    }
    market = {
        "tick_size": 0.25,
        "tick_value": 12.5,
        "commission_per_side": 2.0,
        "slippage_ticks": 1,
        "session": "CME",
        "data": data,
    }
    config = tiny_config_dir(tmp_path / "config", markets={"ESR": market})
    source = load_markets(config / "markets.yaml")["ESR"].data
    assert isinstance(source, FileSource)
    assert source.settings == DataSettings(
        roll="calendar", roll_days_before_expiry=5, adjust="none", roll_gap="keep"
    )


# --- the gap is never profit, loss or return ----------------------------------------------


def flat_market(tmp_path: Path, ratio: float, **keys: Any) -> MarketData:
    """Two contracts of a market that never moves, the second ``ratio`` times the first; the
    series rolls at bar 120 (the first of 6 March)."""
    h = contract("2024-03-01", 10, 100.0, [900] * 4 + [100] * 6)
    m = contract("2024-03-01", 10, 100.0 * ratio, [100] * 4 + [1000] * 6)
    path = contracts_csv(tmp_path / f"flat-{ratio}.csv", {"NQH4": h, "NQM4": m})
    bars = load_ohlcv(path, DataSettings(roll="volume", **keys))
    split = SplitSpec(train=0.9, validation=0.1, test=0.0, gap_bars=0)
    return MarketData.from_bars(make_spec(split=split), bars)


def hold_long(data: MarketData, phase: int = 1, **config: Any) -> tuple[list[float], Any]:
    """Rewards of holding one contract long from bar 0 through the training split."""
    cfg = EnvConfig(initial_capital=100_000.0, reward_scale=1.0, phase1_cost_ticks=0.0, **config)
    env = FuturesTradingEnv(data, "train", phase, config=cfg, evaluation=True)
    env.reset()
    rewards = []
    truncated = False
    while not truncated:
        _, reward, _, truncated, _ = env.step(LONG1)
        rewards.append(reward)
    return rewards, env.episode_stats()


ROLL_STEP = 119  # the step from bar 119 (NQH4) to bar 120 (NQM4)


@pytest.mark.parametrize("keys", [{}, {"adjust": "backward"}, {"adjust": "none"}])
def test_a_long_held_across_a_roll_of_a_flat_market_earns_nothing(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    data = flat_market(tmp_path, 1.015, **keys)
    rewards, stats = hold_long(data)
    assert len(rewards) > ROLL_STEP + 50
    assert rewards[ROLL_STEP] == 0.0
    assert not any(rewards)
    assert np.all(stats.equity == 100_000.0)
    assert np.all(stats.closes == stats.closes[0])  # buy and hold earns no gap either
    assert data.reward_scale == data.spec.tick_value  # flat: no move, not the gap, per bar


def test_with_the_gap_kept_the_roll_shows_as_reward(tmp_path: Path) -> None:
    data = flat_market(tmp_path, 1.015, adjust="none", roll_gap="keep")
    rewards, stats = hold_long(data)
    gap = 1.5  # 101.5 - 100
    assert rewards[ROLL_STEP] == pytest.approx(gap * POINT_VALUE / 1.0)
    assert sum(rewards) == pytest.approx(gap * POINT_VALUE)
    assert stats.equity[-1] == pytest.approx(100_000.0 + gap * POINT_VALUE)


def test_the_stop_follows_the_position_to_the_next_contract(tmp_path: Path) -> None:
    # M is 3% below H: a stop 4 ATRs (ATR 0.5) below the entry at 100 would be hit by M's
    # bars at 96.75 unless it moves with the position
    rolled = flat_market(tmp_path, 0.97, adjust="none")
    rewards, stats = hold_long(rolled, phase=2, drawdown_penalty=0.0)
    assert stats.n_stops == 0
    assert rewards[ROLL_STEP] == pytest.approx(0.0)
    spliced = flat_market(tmp_path, 0.97, adjust="none", roll_gap="keep")
    _, stats = hold_long(spliced, phase=2, drawdown_penalty=0.0)
    assert stats.n_stops == 1


def random_walk_contracts(tmp_path: Path, **keys: Any) -> tuple[Bars, Bars, int]:
    """A market that moves, rolled from H to M (M is 1.015 times H at every bar), and M's bars
    alone; the index of the roll."""
    rng = np.random.default_rng(11)
    walk = 5000.0 * np.exp(np.cumsum(rng.normal(0, 0.0005, 20 * 24)))
    h = contract("2024-03-01", 20, walk, [900] * 8 + [100] * 12)
    m = contract("2024-03-01", 20, walk * 1.015, [100] * 8 + [1000] * 12)
    for bars in (h, m):  # ranges in proportion to the price, as M's to H's
        bars["high"], bars["low"] = bars["close"] * 1.0002, bars["close"] * 0.9997
    path = contracts_csv(tmp_path / "walk.csv", {"H": h, "M": m})
    rolled, report = load_ohlcv_report(path, DataSettings(roll="volume", **keys))
    alone = load_ohlcv(path, DataSettings(symbol="M"))
    return rolled, alone, report.rolls[0].index


@pytest.mark.parametrize("adjust", ["backward", "none"])
def test_features_show_no_return_at_the_roll(tmp_path: Path, adjust: str) -> None:
    rolled, alone, roll = random_walk_contracts(tmp_path, adjust=adjust)
    assert roll == 9 * 24
    features, own = compute_features(rolled), compute_features(alone)
    assert np.allclose(features.values, own.values, atol=1e-5)
    assert abs(features.values[roll, RET_1]) < 4.0
    # the ATR (for stops) is in the prices of the contract held: M's from the roll on
    assert np.allclose(features.atr[roll:], own.atr[roll:], rtol=1e-9)
    before = own.atr[:roll] if adjust == "backward" else own.atr[:roll] / 1.015
    assert np.allclose(features.atr[:roll], before, rtol=1e-9)


def test_features_with_the_gap_kept_see_a_return_spike(tmp_path: Path) -> None:
    rolled, _, roll = random_walk_contracts(tmp_path, adjust="none", roll_gap="keep")
    ret_1 = compute_features(rolled).values[:, RET_1]
    assert ret_1[roll] > 5.0  # 1.5% in a market that moves 0.05% a bar: the whole window's
    assert np.max(np.abs(np.delete(ret_1, roll))) < 4.0


def test_features_of_raw_rolled_bars_use_no_later_bar(tmp_path: Path) -> None:
    rolled, _, roll = random_walk_contracts(tmp_path, adjust="none")
    full = compute_features(rolled)
    for stop in (roll - 1, roll + 1, roll + 30):
        early = compute_features(rolled.slice(slice(0, stop)))
        assert np.array_equal(early.values, full.values[:stop])
        assert np.array_equal(early.atr, full.atr[:stop])
