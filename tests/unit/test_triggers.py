"""The best trigger: relative improvement with a floor near zero; first evaluation is baseline."""

from __future__ import annotations

import math

import pytest

from checkpointing.triggers import BestTracker, improved_enough


@pytest.mark.parametrize(
    ("best", "new", "fires"),
    [
        (1.0, 1.02, True),  # exactly 2% of a positive baseline
        (1.0, 1.019, False),
        (2.0, 2.05, True),
        (-1.0, -0.98, True),  # 2% of |-1| closer to zero
        (-1.0, -0.99, False),
        (-1.0, -1.5, False),  # worse
        (0.0, 0.0002, True),  # the floor (0.01) keeps zero baselines meaningful
        (0.0, 0.0001, False),
        (0.0, -0.5, False),
        (0.005, 0.0052, True),  # |best| below the floor counts as the floor
        (1.0, math.nan, False),
        (math.nan, 1.0, False),
    ],
)
def test_improved_enough(best: float, new: float, fires: bool) -> None:
    assert improved_enough(new, best, threshold=0.02, floor=0.01) is fires


def test_first_evaluation_is_the_baseline_and_later_ones_trigger() -> None:
    t = BestTracker(("val_reward", "sharpe_ratio", "win_rate"))
    assert t.update({"val_reward": 1.0, "sharpe_ratio": -0.5, "win_rate": 0.0}) == []
    assert t.update({"val_reward": 1.01, "sharpe_ratio": -0.2, "win_rate": 0.0}) == ["sharpe_ratio"]
    assert t.update({"val_reward": 1.03, "sharpe_ratio": -0.2, "win_rate": 0.5}) == [
        "val_reward",
        "win_rate",
    ]
    assert t.bests == {"val_reward": 1.03, "sharpe_ratio": -0.2, "win_rate": 0.5}


def test_small_steps_add_up_against_the_last_saved_best() -> None:
    t = BestTracker(("val_reward",))
    t.update({"val_reward": 1.0})
    assert t.update({"val_reward": 1.01}) == []
    assert t.update({"val_reward": 1.021}) == ["val_reward"]


def test_nan_and_unmonitored_metrics_are_ignored() -> None:
    t = BestTracker(("val_reward",))
    assert t.update({"val_reward": math.nan, "sharpe_ratio": 5.0}) == []
    assert t.update({"val_reward": 1.0}) == []  # the first finite value is the baseline
    assert t.update({"val_reward": 2.0}) == ["val_reward"]


def test_state_round_trip() -> None:
    t = BestTracker(("val_reward",))
    t.update({"val_reward": 3.0})
    u = BestTracker(("val_reward",))
    u.load(t.state())
    assert u.update({"val_reward": 3.01}) == [] and u.update({"val_reward": 3.1}) == ["val_reward"]
