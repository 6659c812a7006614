"""The v2 / legacy file-name grammar: round trips, widths, NaN, refusals."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checkpointing.errors import CheckpointNameError
from checkpointing.naming import (
    CheckpointName,
    LegacyName,
    format_checkpoint_name,
    new_run_id,
    parse_checkpoint_filename,
    parse_name,
    run_id_for_trial,
    validate_run_id,
)

markets = st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9]|[.-][A-Za-z0-9]){0,8}\Z", fullmatch=True)
events = st.one_of(
    st.sampled_from(["periodic", "best", "phase_end", "interrupt"]),
    st.from_regex(r"\Aphase_boundary_[A-Za-z0-9]{1,5}(_[A-Za-z0-9]{1,5}){0,2}\Z", fullmatch=True),
)

# Run ids of up to 49 characters (the long ones are tested below); None is the legacy run.
run_ids = st.one_of(
    st.none(),
    st.from_regex(r"\A[A-Za-z0-9]([A-Za-z0-9]|[.-][A-Za-z0-9]){0,24}\Z", fullmatch=True),
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
    run_id=run_ids,
)


def same(a: CheckpointName, b: CheckpointName) -> bool:
    def eq(x: float, y: float) -> bool:
        return (math.isnan(x) and math.isnan(y)) or x == y

    return (
        (a.market, a.timesteps, a.event, a.seed, a.run_id)
        == (b.market, b.timesteps, b.event, b.seed, b.run_id)
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


def test_a_run_id_ends_the_name_and_parses_back() -> None:
    name = format_checkpoint_name("NQ", 25000, "best", 0.112, 1.45, 42, "20261205-031644-3fa2")
    assert (
        name
        == "NQ_ts-0025000_evt-best_val-+0.112_sharpe-+1.45_seed-42_run-20261205-031644-3fa2.zip"
    )
    info = parse_checkpoint_filename(f"models/phase1/NQ/checkpoints/{name}")
    assert info == {
        "market": "NQ",
        "timesteps": 25000,
        "event_tag": "best",
        "val_reward": 0.112,
        "sharpe_ratio": 1.45,
        "seed": 42,
        "run_id": "20261205-031644-3fa2",
    }


@pytest.mark.parametrize(
    "run_id", ["a", "7", "20261205-031644-3fa2", "NQ-ES-s42-p1-a1b2c-00001", "v1.2-B", "x" * 64]
)
def test_valid_run_ids_accepted(run_id: str) -> None:
    assert validate_run_id(run_id) == run_id
    parsed = parse_name(format_checkpoint_name("NQ", 1, "periodic", 0.0, 0.0, 1, run_id))
    assert isinstance(parsed, CheckpointName) and parsed.run_id == run_id


@pytest.mark.parametrize(
    "run_id",
    ["", "a_b", "a/b", "../a", "a..b", "-a", "a-", ".a", "a b", "x" * 65, "ü", None, 42],
)
def test_bad_run_ids_refused(run_id: object) -> None:
    with pytest.raises(CheckpointNameError, match="run id") as err:
        validate_run_id(run_id)
    assert repr(run_id) in str(err.value)
    if run_id is None:
        return  # a name without a run id is the legacy run's
    with pytest.raises(CheckpointNameError, match="run id"):
        CheckpointName("NQ", 1, "periodic", 0.0, 0.0, 1, run_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("experiment", "trial_id", "expected"),
    [
        ("NQ-ES_s42-7_p1", "a1b2c_00001", "NQ-ES-s42-7-p1-a1b2c-00001"),
        ("exp.v2 / lr=3e-4", "t__1", "exp-v2-lr-3e-4-t-1"),
        ("_NQ_", "-7-", "NQ-7"),
        ("__", "..", "x-x"),
    ],
)
def test_run_id_for_trial_joins_experiment_and_trial_in_the_run_id_alphabet(
    experiment: str, trial_id: str, expected: str
) -> None:
    assert run_id_for_trial(experiment, trial_id) == expected


def test_run_id_for_a_long_experiment_is_valid_and_keeps_names_apart() -> None:
    stem = "NQ-ES_" + "x" * 113
    first = run_id_for_trial(stem + "1", "a1b2c_00001")
    second = run_id_for_trial(stem + "2", "a1b2c_00001")
    assert len(stem + "1") == 120
    for run_id in (first, second):
        assert validate_run_id(run_id) == run_id and len(run_id) <= 64
        assert run_id.startswith("NQ-ES-x") and run_id.endswith("-a1b2c-00001")
    assert first != second


def test_new_run_ids_are_valid_stamped_and_differ() -> None:
    now = 1_796_000_000.0
    ids = [new_run_id(now) for _ in range(5)]
    for run_id in ids:
        assert validate_run_id(run_id) == run_id
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id)
    assert len(set(ids)) > 1  # same second: the random part tells them apart


def test_model_is_shared_by_a_best_and_its_periodic_twin_only() -> None:
    def model(event: str = "periodic", run: str | None = "r1", ts: int = 5000) -> str:
        return CheckpointName("NQ", ts, event, 0.25, 1.5, 42, run).model

    assert model("best") == model("periodic")
    assert model("best", run="r1") != model("best", run="r2")
    assert model(run="r1") != model(run=None)
    assert model(ts=5000) != model(ts=6000)
