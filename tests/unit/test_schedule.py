"""The adaptive interval and how many periodic saves it makes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from checkpointing.config import Boundary, PhaseSchedule, load_config
from checkpointing.schedule import AdaptiveSchedule, count_periodic_saves

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("timesteps", "interval"),
    [
        (0, 25_000),
        (500_000, 50_000),
        (1_000_000, 75_000),
        (1_500_000, 100_000),
        (2_000_000, 125_000),
        (9_000_000, 125_000),
    ],
)
def test_interval_follows_the_formula(timesteps: int, interval: int) -> None:
    schedule = AdaptiveSchedule(load_config(ROOT / "config/checkpoint_config.yaml").phase1)
    assert schedule.interval(timesteps) == interval


def formula_count(base: int, mult: float, target: int) -> int:
    """Walk the seed note's formula directly: t <- t + base * (1 + (mult - 1) * t / target)."""
    t, n = 0.0, 0
    while True:
        t += math.floor(base * (1 + (mult - 1) * min(t / target, 1.0)))
        if t > target:
            return n
        n += 1


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_periodic_save_count_for_defaults_equals_the_formula(phase: int) -> None:
    p = load_config(ROOT / "config/checkpoint_config.yaml").phase(phase)
    expected = formula_count(p.base_interval, p.max_interval_multiplier, p.target_timesteps)
    assert count_periodic_saves(p) == expected
    # SB3 reports every n_envs steps; the count stays the same at that granularity.
    assert count_periodic_saves(p, step=8) == expected


def test_phase1_defaults_make_32_periodic_saves() -> None:
    p = load_config(ROOT / "config/checkpoint_config.yaml").phase1
    assert count_periodic_saves(p) == 32


def test_boundaries_fire_once_in_order() -> None:
    p = PhaseSchedule(
        100, 2.0, 1000, (Boundary("early", at_progress=0.25), Boundary("late", at_timesteps=800))
    )
    s = AdaptiveSchedule(p)
    assert [b.name for b in s.boundaries_crossed(100, [])] == []
    assert [b.name for b in s.boundaries_crossed(250, [])] == ["early"]
    assert [b.name for b in s.boundaries_crossed(900, ["early"])] == ["late"]
