"""The v2 / legacy file-name grammar: round trips, widths, NaN, refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpointing.errors import CheckpointNameError
from checkpointing.naming import (
    CheckpointName,
    LegacyName,
    format_checkpoint_name,
    parse_checkpoint_filename,
    parse_name,
)

markets = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9]|[.-][A-Za-z0-9]){0,8}\Z", fullmatch=True)
events = st.one_of(
    st.sampled_from(["periodic", "best", "phase_end", "interrupt"]),
    st.from_regex(r"\Aphase_boundary_[A-Za-z0-9]{1,5}(_[A-Za-z0-9]{1,5}){0,2}\Z", fullmatch=True),
)


def metric(digits: int) -> st.SearchStrategy[float]:
    finite = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, digits))
    return st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf))


names = st.builds(
    CheckpointName,
    market=markets,
    timesteps=st.integers(0, 10**12),
    event=events,
    val_reward=metric(3),
    sharpe_ratio=metric(2),
    seed=st.integers(0, 2**32 - 1),
)


def same(a: CheckpointName, b: CheckpointName) -> bool:
    def eq(x: float, y: float) -> bool:
        return (math.isnan(x) and math.isnan(y)) or x == y

    return (
        (a.market, a.timesteps, a.event, a.seed) == (b.market, b.timesteps, b.event, b.seed)
        and eq(a.val_reward, b.val_reward)
        and eq(a.sharpe_ratio, b.sharpe_ratio)
    )


@given(names)
def test_parse_format_round_trip(name: CheckpointName) -> None:
    parsed = parse_name(name.filename)
    assert isinstance(parsed, CheckpointName)
    assert same(parsed, name)
    assert parsed.filename == name.filename


def test_seed_note_examples_parse() -> None:
    info = parse_checkpoint_filename(
        "NQ_ts-0025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-42.zip"
    )
    assert info == {
        "market": "NQ",
        "timesteps": 25000,
        "event_tag": "periodic",
        "val_reward": 0.112,
        "sharpe_ratio": 1.45,
        "seed": 42,
        "run_id": None,
    }
    rty = parse_name("RTY_ts-0123456_evt-interrupt_val-+0.089_sharpe-+0.78_seed-42.zip")
    assert isinstance(rty, CheckpointName) and rty.event == "interrupt"


def test_format_matches_seed_note() -> None:
    assert (
        format_checkpoint_name("ES", 150000, "best", 0.238, 1.92, 7)
        == "ES_ts-0150000_evt-best_val-+0.238_sharpe-+1.92_seed-7.zip"
    )


def test_nan_metrics_are_written_nan_and_parse_back() -> None:
    name = format_checkpoint_name("NQ", 0, "interrupt", math.nan, math.nan, 1)
    assert name == "NQ_ts-0000000_evt-interrupt_val-nan_sharpe-nan_seed-1.zip"
    parsed = parse_name(name)
    assert isinstance(parsed, CheckpointName)
    assert math.isnan(parsed.val_reward) and math.isnan(parsed.sharpe_ratio)


def test_timesteps_beyond_seven_digits_widen_and_sort_numerically() -> None:
    small = format_checkpoint_name("NQ", 9_999_999, "periodic", 0.0, 0.0, 1)
    big = format_checkpoint_name("NQ", 12_345_678, "periodic", 0.0, 0.0, 1)
    assert "_ts-12345678_" in big
    parsed = [parse_name(n) for n in sorted([big, small])]
    assert sorted(p.timesteps for p in parsed if p) == [9_999_999, 12_345_678]
    assert big < small  # lexicographic order would be wrong, hence numeric sorting


def test_phase_boundary_events() -> None:
    name = format_checkpoint_name("YM", 5, "phase_boundary_regime_2", 0.1, 0.2, 3)
    parsed = parse_name(name)
    assert isinstance(parsed, CheckpointName)
    assert parsed.event == "phase_boundary_regime_2" and parsed.event_kind == "phase_boundary"


def test_legacy_names() -> None:
    parsed = parse_name("phase1_100000_steps.zip")
    assert parsed == LegacyName(phase=1, timesteps=100000)
    info = parse_checkpoint_filename("models/phase2/phase2_500_steps.zip")
    assert info is not None and info["legacy"] and info["timesteps"] == 500


@pytest.mark.parametrize(
    "market",
    ["", "N_Q", "../x", "a/b", "a\\b", "NQ\x00", "x..y", ".NQ", "NQ-", "NQ²", "N Q", "ÉS"],
)
def test_bad_market_refused(market: str) -> None:
    with pytest.raises(CheckpointNameError, match="market"):
        format_checkpoint_name(market, 1, "periodic", 0.0, 0.0, 1)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "42", True, None])
def test_bad_seed_refused(seed: object) -> None:
    with pytest.raises(CheckpointNameError, match="seed"):
        CheckpointName("NQ", 1, "periodic", 0.0, 0.0, seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("event", ["", "final", "phase_boundary_", "phase_boundary_a-b", "best_"])
def test_bad_event_refused(event: str) -> None:
    with pytest.raises(CheckpointNameError, match="event"):
        format_checkpoint_name("NQ", 1, event, 0.0, 0.0, 1)


def test_negative_timesteps_refused() -> None:
    with pytest.raises(CheckpointNameError, match="timesteps"):
        format_checkpoint_name("NQ", -5, "periodic", 0.0, 0.0, 1)


@pytest.mark.parametrize(
    "filename",
    [
        "best_model.zip",
        "phase1_foundational_final.zip",
        "notes.txt",
        "NQ_ts-0025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-42.zip.bak",
        "NQ_ts-25000_evt-periodic_val-+0.112_sharpe-+1.45_seed-42.zip",  # too narrow
        "NQ_ts-0025000_evt-weird_val-+0.112_sharpe-+1.45_seed-42.zip",
        "NQ_ts-0025000_evt-periodic_val-0.112_sharpe-+1.45_seed-42.zip",  # unsigned
        "NQ_ts-0025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-042.zip",
        "N_Q_ts-0025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-42.zip",
        "NQ_ts-²025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-42.zip",
        "NQ_ts-0025000_evt-periodic_val-+0.112_sharpe-+1.45_seed-99999999999.zip",
    ],
)
def test_foreign_names_are_not_ours(filename: str) -> None:
    assert parse_name(filename) is None
    assert parse_checkpoint_filename(filename) is None
