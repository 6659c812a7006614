"""``python -m tuner.data inspect`` (tuner/data.py, tuner/trading/data_inspection.py): what the
loader made of a file, and the split the trainer will cut, before anything trains on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.exports import (
    CHICAGO,
    databento,
    month_first,
    ninjatrader,
    rolling_contracts,
    sample_bars,
)
from tests.tiny_config import tiny_config_dir
from tuner.data import main
from tuner.trading.bars import SPLIT_NAMES
from tuner.trading.data_inspection import largest_gaps
from tuner.trading.env import MarketData
from tuner.trading.markets import load_markets


def file_market(path: Path, **keys: Any) -> dict[str, Any]:
    return {
        "tick_size": 0.25,
        "tick_value": 5.0,
        "commission_per_side": 2.1,
        "slippage_ticks": 1,
        "session": "CME Globex",
        "data": {"file": str(path), **keys},
    }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def iso(stamp: Any) -> str:
    return pd.Timestamp(stamp).isoformat()


@pytest.fixture
def nq(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A NinjaTrader export in Chicago time (3 rows glued twice) and a config naming it."""
    bars = sample_bars(1200, start="2023-03-01 14:30", freq="5min")
    glued = pd.concat([bars, bars.iloc[40:43]], ignore_index=True)
    path = ninjatrader(tmp_path / "NQ 03-23.Last.txt", glued)
    config = tiny_config_dir(
        tmp_path / "config", markets={"NQF": file_market(path, timezone=CHICAGO)}
    )
    return config, bars


def test_a_ninjatrader_file_shows_detection_clock_duplicates_and_the_trainers_split(
    nq: tuple[Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    config, bars = nq
    code, out, _ = run(capsys, "--market", "NQF", "--config-dir", str(config), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["format"] == "ninjatrader"
    assert doc["header"] is False
    assert doc["columns"] == {
        "time": "Time (column 1)",
        "open": "Open (column 2)",
        "high": "High (column 3)",
        "low": "Low (column 4)",
        "close": "Close (column 5)",
        "volume": "Volume (column 6)",
    }
    assert doc["dayfirst"] is None and doc["dates"] == "year-first"
    assert (doc["rows"], doc["duplicates"], doc["bars"]) == (1203, 3, 1200)
    assert doc["symbol"] is None
    assert doc["first"] == {"utc": "2023-03-01T14:30:00", "local": "2023-03-01T08:30:00-06:00"}
    assert doc["last"]["utc"] == iso(bars["time"].iloc[-1])
    assert doc["bar_interval_seconds"] == 300.0

    data = MarketData.load(load_markets(config / "markets.yaml")["NQF"])
    assert doc["bars_per_year"] == data.bars.bars_per_year
    for name in SPLIT_NAMES:
        part, expected = doc["split"][name], data.ranges[name]
        assert (part["start"], part["stop"]) == (expected.start, expected.stop)
        assert part["bars"] == expected.stop - expected.start > 0
        assert part["first"]["utc"] == iso(data.bars.timestamps[expected.start])
        assert part["last"]["utc"] == iso(data.bars.timestamps[expected.stop - 1])
    assert doc["split"]["settings"]["gap_bars"] == 70  # tiny_config's defaults.split

    code, text, _ = run(capsys, "--market", "NQF", "--config-dir", str(config))
    assert code == 0
    assert "format      ninjatrader, header: no" in text
    assert "close <- 'Close (column 5)'" in text
    assert "1,203 read, 3 exact duplicates dropped, 1,200 bars" in text
    assert "first       2023-03-01 14:30:00 UTC (2023-03-01 08:30:00-06:00)" in text
    validation = data.ranges.validation
    assert (
        f"validation {validation.stop - validation.start:>9,} bars  "
        f"[{validation.start}:{validation.stop}]" in text
    )


def test_the_largest_gaps_are_the_weekends_with_their_start(
    nq: tuple[Path, pd.DataFrame], capsys: pytest.CaptureFixture[str]
) -> None:
    config, bars = nq
    doc = json.loads(run(capsys, "--market", "NQF", "--config-dir", str(config), "--json")[1])
    friday_last = bars["time"][bars["time"] < "2023-03-04"].iloc[-1]
    assert doc["largest_gaps"][0]["after"]["utc"] == iso(friday_last)
    assert (
        doc["largest_gaps"][0]["seconds"]
        == (pd.Timestamp("2023-03-06") - friday_last).total_seconds()
    )
    assert len(doc["largest_gaps"]) == 1  # 1,200 five-minute bars span one weekend


def test_month_first_dates_say_what_settled_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ambiguous = month_first(tmp_path / "es.csv", sample_bars(500, start="2023-03-01 14:30"))
    config = tiny_config_dir(
        tmp_path / "config", markets={"ESF": file_market(ambiguous, dayfirst=False)}
    )
    code, out, _ = run(capsys, "--market", "ESF", "--config-dir", str(config), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["format"] == "generic" and doc["header"] is True
    assert doc["columns"]["date"] == "Date" and doc["columns"]["time"] == "Time"
    assert doc["dayfirst"] is False
    assert doc["dates"] == "month-first: set by markets.ESF.data.dayfirst: false"
    assert doc["first"] == {"utc": "2023-03-01T14:30:00"}  # no timezone: taken as UTC

    settled = month_first(tmp_path / "late.csv", sample_bars(500, start="2023-03-13 10:00"))
    code, out, _ = run(capsys, str(settled), "--config-dir", str(config), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["dayfirst"] is False
    assert doc["dates"] == "month-first: settled by the file (line 2 reads '03/13/2023 10:00')"
    assert doc["market"] is None


def test_contracts_joined_by_volume_show_each_roll(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bars = sample_bars(1200, start="2023-03-01 14:30", freq="15min")
    path = databento(tmp_path / "glbx-mdp3.ohlcv.csv", rolling_contracts(bars))
    config = tiny_config_dir(
        tmp_path / "config", markets={"NQR": file_market(path, roll="volume", adjust="none")}
    )
    dates = bars["time"].dt.normalize()
    switch = bars["time"][dates > dates.iloc[len(dates) // 2]].iloc[0]  # the next UTC date

    code, out, _ = run(capsys, "--market", "NQR", "--config-dir", str(config), "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["symbol"], doc["roll"], doc["adjust"]) == ("NQH3", "volume", "none")
    assert doc["rows"] == 2400 and doc["bars"] == 1200
    (roll,) = doc["rolls"]
    assert (roll["from"], roll["to"]) == ("NQH3", "NQM3")
    assert roll["time"] == {"utc": iso(switch)}
    assert roll["gap_percent"] == pytest.approx(1.5)
    before = bars[bars["time"] < switch].iloc[-1]
    assert roll["measured_at"] == {"utc": iso(before["time"])}
    assert roll["gap"] == pytest.approx(before["close"] * 0.015)

    code, text, _ = run(capsys, "--market", "NQR", "--config-dir", str(config))
    assert code == 0
    assert "contract    NQH3 first, rolled by volume; prices raw" in text
    assert f"rolls       1:\n  {switch} UTC  NQH3 -> NQM3  gap +" in text
    assert f"(+1.50%), measured {before['time']} UTC" in text


def test_a_file_alone_is_cut_by_defaults_split_of_the_config_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ninjatrader(tmp_path / "nq.txt", sample_bars(400, freq="5min"))
    config = tiny_config_dir(tmp_path / "config")
    markets = (config / "markets.yaml").read_text()
    (config / "markets.yaml").write_text(markets.replace("gap_bars: 70", "gap_bars: 11"))
    doc = json.loads(run(capsys, str(path), "--config-dir", str(config), "--json")[1])
    assert doc["split"]["settings"]["gap_bars"] == 11
    assert doc["split"]["validation"]["start"] == doc["split"]["train"]["stop"] + 11


def test_a_file_the_loader_refuses_exits_2_with_its_message_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = month_first(tmp_path / "es.csv", sample_bars(50, start="2023-03-01 14:30"))
    config = tiny_config_dir(tmp_path / "config", markets={"ESF": file_market(path)})
    code, out, err = run(capsys, "--market", "ESF", "--config-dir", str(config))
    assert code == 2
    assert out == ""
    assert "error: " in err
    assert "read both ways" in err and "set markets.ESF.data.dayfirst: false" in err


def test_too_few_bars_for_the_split_is_refused_as_the_trainer_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ninjatrader(tmp_path / "nq.txt", sample_bars(100, freq="5min"))
    config = tiny_config_dir(tmp_path / "config")
    code, out, err = run(capsys, str(path), "--config-dir", str(config))
    assert (code, out) == (2, "")
    assert "100 bars are too few for the split" in err


def test_a_synthetic_market_without_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config_dir(tmp_path / "config")
    code, out, err = run(capsys, "--market", "NQ", "--config-dir", str(config))
    assert (code, out) == (2, "")
    assert "'NQ' has synthetic data; give a FILE" in err


@pytest.mark.parametrize(
    ("minutes", "expected"),
    [
        ([0, 1, 2, 3], []),  # no gap above the median
        ([0, 1, 2, 62, 63, 64, 65, 75], [(2, 60), (6, 10)]),
        ([0, 1, 11, 12, 22, 23, 24], [(1, 10), (3, 10)]),  # equal: the earlier first
        ([0], []),
    ],
)
def test_largest_gaps(minutes: list[int], expected: list[tuple[int, int]]) -> None:
    stamps = np.datetime64("2023-03-01T00:00") + np.array(minutes, dtype="timedelta64[m]")
    found = largest_gaps(stamps.astype("datetime64[ns]"))
    assert found == [(i, m * 60 * 10**9) for i, m in expected]


def test_only_the_five_largest_gaps_are_kept() -> None:
    minutes = np.cumsum([1, 9, 1, 8, 1, 7, 1, 6, 1, 5, 1, 4, 1])
    stamps = (np.datetime64("2023-03-01T00:00") + minutes.astype("timedelta64[m]")).astype(
        "datetime64[ns]"
    )
    assert [m // (60 * 10**9) for _, m in largest_gaps(stamps)] == [9, 8, 7, 6, 5]
