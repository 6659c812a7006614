"""Out-of-sample evaluation: a checkpoint measured once on the held-out test split, whole
span, deterministic, next to buy and hold and flat, with a bootstrap interval on its Sharpe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.tiny_config import tiny_config_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_bootstrap_interval_covers_the_sharpe_and_narrows_with_more_bars() -> None:
    from tuner.trading.metrics import sharpe_ratio
    from tuner.training.held_out import bootstrap_sharpe

    rng = np.random.default_rng(3)
    widths = []
    for n in (500, 8000):
        equity = np.cumprod(np.concatenate([[1.0], 1.0 + rng.normal(2e-4, 1e-3, n)]))
        low, high = bootstrap_sharpe(equity, 252.0, samples=400, seed=1)
        assert low < sharpe_ratio(equity, 252.0) < high
        widths.append(high - low)
        assert bootstrap_sharpe(equity, 252.0, samples=400, seed=1) == (low, high)  # seeded
    assert widths[1] < widths[0] / 2


def test_a_checkpoint_is_measured_on_the_whole_test_span(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.evaluate import main
    from tuner.trading.env import MarketData
    from tuner.trading.markets import get_market
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    config_dir = tiny_config_dir(tmp_path / "config")
    settings = load_settings(config_dir)
    job = PhaseJob(market="ES", seed=2, phase=1, timesteps=768, models_root=tmp_path / "m")
    result = train_phase(job, settings, handle_signals=False)
    assert result.phase_end is not None
    argv = ["--checkpoint", str(result.phase_end), "--config-dir", str(config_dir), "--json"]
    assert main([*argv, "--boot", "200"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["results"]
    data = MarketData.load(get_market(settings.markets, "ES"))
    test = data.ranges["test"]
    assert row["split"] == "test" and row["market"] == "ES" and row["phase"] == 1
    assert row["bars"] == test.stop - test.start  # the whole span, one pass
    assert row["start"] == str(data.bars.timestamps[test][0])
    policy, hold = row["policy"], row["buy_and_hold"]
    assert all(math.isfinite(policy[k]) for k in ("total_return", "max_drawdown"))
    expected_hold = (
        (data.bars.close[test][-1] - data.bars.close[test][0]) * data.spec.point_value / 1e3
    )
    assert hold["total_return"] == pytest.approx(expected_hold, rel=1e-6)
    assert row["flat"]["total_return"] == 0.0
    low, high = policy["sharpe_ci"]
    assert low <= high
    # The same checkpoint gives the same figures: deterministic policy, seeded bootstrap.
    assert main([*argv, "--boot", "200"]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_a_checkpoint_that_is_not_there_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.evaluate import main

    config_dir = tiny_config_dir(tmp_path / "config")
    code = main(["--checkpoint", str(tmp_path / "nope.zip"), "--config-dir", str(config_dir)])
    assert code == 2
    assert "nope.zip" in capsys.readouterr().err
