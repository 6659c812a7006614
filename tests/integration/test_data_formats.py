"""A phase trains on each platform's export, named in markets.yaml as a user would, with the
bars on the clock the loader promises (UTC) and prices as the platform wrote them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.exports import (
    databento,
    interactive_brokers,
    month_first,
    ninjatrader,
    rolling_contracts,
    sample_bars,
)
from tests.tiny_config import tiny_config_dir
from tuner.trading.bars import estimate_bars_per_year

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _databento(path: Path, bars: pd.DataFrame) -> Path:
    other = bars.copy()
    other[["open", "high", "low", "close"]] += 150.0
    return databento(path, {"NQH3": (4916, bars), "NQM3": (7062, other)})


def _days_1_to_12(bars: pd.DataFrame) -> pd.DataFrame:
    """Dates that read both ways only (settled by ``dayfirst: false``)."""
    return bars[bars["time"].dt.day <= 12].reset_index(drop=True)


def _month_first(path: Path, bars: pd.DataFrame) -> Path:
    return month_first(path, _days_1_to_12(bars))


EXPORTS: list[tuple[str, str, Callable[[Path, pd.DataFrame], Path], dict[str, Any]]] = [
    ("NT", "NQ 03-23.Last.txt", ninjatrader, {"timezone": "America/Chicago"}),
    ("IB", "NQ_ib.csv", interactive_brokers, {"format": "ib", "timezone": "America/Chicago"}),
    ("DB", "glbx-mdp3.ohlcv.csv", _databento, {"symbol": "NQH3"}),
    ("US", "NQ_us.csv", _month_first, {"dayfirst": False}),
]


@pytest.mark.parametrize(("market", "name", "write", "data"), EXPORTS, ids=[e[0] for e in EXPORTS])
def test_a_phase_trains_on_the_export(
    tmp_path: Path,
    market: str,
    name: str,
    write: Callable[[Path, pd.DataFrame], Path],
    data: dict[str, Any],
) -> None:
    bars = sample_bars(3000, start="2023-03-01 14:30", freq="15min")  # 6 weeks
    path = write(tmp_path / name, bars)
    written = _days_1_to_12(bars) if write is _month_first else bars
    loaded, train = _market(tmp_path, market, {"file": str(path), **data})
    utc = written["time"].to_numpy(dtype="datetime64[ns]")
    assert np.array_equal(loaded.bars.timestamps, utc)
    assert np.array_equal(loaded.bars.close, written["close"].to_numpy())
    assert loaded.bars.bars_per_year == estimate_bars_per_year(utc)
    train()


def test_a_phase_trains_on_contracts_rolled_by_volume(tmp_path: Path) -> None:
    bars = sample_bars(3000, start="2023-03-01 14:30", freq="15min")
    path = databento(tmp_path / "glbx-mdp3.ohlcv-15m.csv", rolling_contracts(bars, 1.015))
    loaded, train = _market(tmp_path, "DBR", {"file": str(path), "roll": "volume"})
    assert np.array_equal(loaded.bars.timestamps, bars["time"].to_numpy(dtype="datetime64[ns]"))
    # NQM3 is 1.015 NQH3 throughout: back-adjusted, the series is NQM3's from end to end
    assert np.allclose(loaded.bars.close, bars["close"] * 1.015, rtol=1e-12, atol=0)
    assert loaded.bars.close[0] != bars["close"].iloc[0]  # the first bars are NQH3's, lifted
    train()


def _market(tmp_path: Path, market: str, data: dict[str, Any]) -> tuple[Any, Callable[[], None]]:
    """The market's data as a phase prepares it, and a tiny phase-1 run on it."""
    from tuner.training.job import PhaseJob, prepare
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    spec = {
        "tick_size": 0.25,
        "tick_value": 5.0,
        "commission_per_side": 2.1,
        "slippage_ticks": 1,
        "session": "CME Globex, Sun-Fri 17:00-16:00 CT",
        "data": data,
    }
    settings = load_settings(tiny_config_dir(tmp_path / "config", markets={market: spec}))
    job = PhaseJob(market=market, seed=1, phase=1, models_root=tmp_path / "models", quiet=True)
    loaded, _ = prepare(job, settings)

    def train() -> None:
        result = train_phase(replace(job, timesteps=256), settings, handle_signals=False)
        assert result.timesteps >= 256
        assert result.phase_end is not None and result.phase_end.is_file()
        assert math.isfinite(result.metrics["sharpe_ratio"])

    return loaded, train
