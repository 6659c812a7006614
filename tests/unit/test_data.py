"""Synthetic bars, the OHLCV file loader and the split (tuner/trading/data.py)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuner.trading.bars import Bars, estimate_bars_per_year, infer_bar_interval, split_ranges
from tuner.trading.data import DataError, load_bars
from tuner.trading.markets import SplitSpec, load_markets
from tuner.trading.ohlcv import load_ohlcv
from tuner.trading.synthetic import generate_synthetic

ROOT = Path(__file__).resolve().parents[2]
MARKETS = load_markets(ROOT / "config" / "markets.yaml")


def synthetic(name: str, seed: int | None = None, n_bars: int = 3000) -> Bars:
    spec = MARKETS[name]
    return generate_synthetic(name, spec.data, spec.tick_size, seed=seed, n_bars=n_bars)  # type: ignore[arg-type]


# --- synthetic generator ------------------------------------------------------------------


def test_same_market_and_seed_give_identical_bars() -> None:
    a, b = synthetic("NQ", seed=7), synthetic("NQ", seed=7)
    for field in ("timestamps", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(a, field), getattr(b, field))


def test_seed_and_market_both_change_the_bars() -> None:
    base = synthetic("NQ", seed=7).close
    assert not np.array_equal(base, synthetic("NQ", seed=8).close)
    # ES and NQ with the same seed do not share a random stream (returns differ)
    nq = np.diff(np.log(synthetic("NQ", seed=7).close))
    es = np.diff(np.log(synthetic("ES", seed=7).close))
    assert abs(np.corrcoef(nq, es)[0, 1]) < 0.2


def test_synthetic_bars_do_not_depend_on_python_hash_randomization() -> None:
    code = (
        "import zlib, numpy as np;"
        "from tuner.trading.markets import load_markets; from tuner.trading.data import load_bars;"
        "b = load_bars(load_markets('config/markets.yaml')['CL'], seed=3);"
        "print(zlib.crc32(np.ascontiguousarray(b.close).tobytes()))"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={"PYTHONHASHSEED": hash_seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }
    here = zlib.crc32(np.ascontiguousarray(load_bars(MARKETS["CL"], seed=3).close).tobytes())
    assert runs == {str(here)}


def test_synthetic_prices_are_realistic_bars_on_the_tick_grid() -> None:
    for name in ("NQ", "ZN", "6E"):
        spec = MARKETS[name]
        bars = synthetic(name)
        assert bars.close[0] == pytest.approx(spec.data.start_price, rel=1e-3)  # type: ignore[union-attr]
        ticks = bars.close / spec.tick_size
        assert np.allclose(ticks, np.round(ticks), atol=1e-6)
        assert np.all(bars.high >= np.maximum(bars.open, bars.close))
        assert np.all(bars.low <= np.minimum(bars.open, bars.close))
        assert np.all(bars.low > 0)
        weekdays = (bars.timestamps.astype("datetime64[D]").astype(np.int64) + 3) % 7
        assert np.all(weekdays < 5)  # Monday..Friday only
        assert infer_bar_interval(bars.timestamps) == timedelta(minutes=5)


def test_markets_differ_in_volatility_as_configured() -> None:
    def realized(name: str) -> float:
        bars = synthetic(name, n_bars=20000)
        return float(np.std(np.diff(np.log(bars.close))) * np.sqrt(bars.bars_per_year))

    assert realized("CL") > 2 * realized("ES") > 2 * realized("ZN")
    assert realized("ES") == pytest.approx(0.16, rel=0.35)


def test_synthetic_volatility_switches_regimes() -> None:
    bars = synthetic("NQ", n_bars=20000)
    returns = np.diff(np.log(bars.close))
    window_vol = returns[: len(returns) // 500 * 500].reshape(-1, 500).std(axis=1)
    # calm and turbulent stretches: far more spread than sampling noise (~ +-5 %)
    assert window_vol.max() / window_vol.min() > 1.4


# --- file loader --------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loader_takes_exports_as_they_come(tmp_path: Path) -> None:
    # Mixed-case names, Adj Close ignored, separate Date/Time, day-first, rows out of order.
    path = write(
        tmp_path,
        "Date,Time,OPEN,High,low,Close,Adj Close,Volume\n"
        "02/01/2024,09:35,101,102,100.5,101.5,1,20\n"
        "31/12/2023,15:30,100,101,99,100.5,1,10\n"
        "02/01/2024,09:30,100.5,101.5,100,101,1,15\n",
    )
    bars = load_ohlcv(path, market="NQ")
    assert bars.timestamps.tolist() == [
        pd.Timestamp("2023-12-31 15:30").value,
        pd.Timestamp("2024-01-02 09:30").value,
        pd.Timestamp("2024-01-02 09:35").value,
    ]
    assert bars.close.tolist() == [100.5, 101.0, 101.5]
    assert bars.volume.tolist() == [10.0, 15.0, 20.0]
    assert bars.market == "NQ"


@pytest.mark.parametrize(
    ("header", "stamps", "expected"),
    [
        (
            "Datetime",
            ["2024-01-02 09:30:00.250", "2024-01-02T09:35:00.500"],
            ["2024-01-02 09:30:00.250", "2024-01-02 09:35:00.500"],
        ),
        ("timestamp", ["2024-01-02", "2024-01-03"], ["2024-01-02", "2024-01-03"]),
        ("Date", ["31.12.2023", "02.01.2024"], ["2023-12-31", "2024-01-02"]),
        (
            "Gmt time",
            ["31.12.2023 15:30:00.000", "31.12.2023 15:35:00.125"],
            ["2023-12-31 15:30:00", "2023-12-31 15:35:00.125"],
        ),
        (
            "DATE",
            ["2024.01.02 09:30", "2024.01.02 09:35"],
            ["2024-01-02 09:30", "2024-01-02 09:35"],
        ),
        (
            "Timestamp",
            ["2024-01-02T14:30:00Z", "2024-01-02T09:35:00-05:00"],
            ["2024-01-02 14:30", "2024-01-02 14:35"],
        ),
        ("time", ["1704187800", "1704188100"], ["2024-01-02 09:30", "2024-01-02 09:35"]),
        ("Date", ["12/31/2023", "01/02/2024"], ["2023-12-31", "2024-01-02"]),  # month-first
    ],
)
def test_timestamp_formats(
    tmp_path: Path, header: str, stamps: list[str], expected: list[str]
) -> None:
    rows = "".join(f"{s},1,2,0.5,1.5\n" for s in stamps)
    bars = load_ohlcv(write(tmp_path, f"{header},Open,High,Low,Close\n{rows}"))
    assert bars.timestamps.tolist() == [pd.Timestamp(e).value for e in expected]
    assert bars.volume.tolist() == [0.0, 0.0]  # no Volume column: zeros


def test_semicolon_separated_with_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Date;Open;High;Low;Close\n2024-01-02;1;2;0.5;1.5\n\n2024-01-03;1;2;0.5;x\n",
    )
    with pytest.raises(DataError, match=r"bars\.csv, line 4: column 'Close' has 'x'"):
        load_ohlcv(path)


def test_parquet_file(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(["2024-01-02 09:35", "2024-01-02 09:30"]),
            "open": [2.0, 1.0],
            "high": [3.0, 2.0],
            "low": [1.5, 0.5],
            "close": [2.5, 1.5],
            "volume": [5, 6],
        }
    )
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    bars = load_ohlcv(path)
    assert bars.close.tolist() == [1.5, 2.5]
    assert bars.bar_interval == timedelta(minutes=5)


def test_parquet_saved_with_a_datetime_index_and_gzipped_csv(tmp_path: Path) -> None:
    index = pd.DatetimeIndex(["2024-01-02 09:30", "2024-01-02 09:35"])
    frame = pd.DataFrame({"Open": [1.0, 2.0], "High": [2.0, 3.0], "Low": [0.5, 1.5]}, index)
    frame["Close"] = [1.5, 2.5]
    frame.to_parquet(tmp_path / "indexed.parquet")
    assert load_ohlcv(tmp_path / "indexed.parquet").timestamps[1] == np.datetime64(
        "2024-01-02T09:35"
    )
    gz = tmp_path / "bars.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("Date;Time;Open;High;Low;Close\n15/01/2024;09:30;1;2;0.5;1.5\n")
        fh.write("15/01/2024;09:35;1;2;0.5;1.25\n")
    assert load_ohlcv(gz).close.tolist() == [1.5, 1.25]


def test_parquet_error_names_the_row(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "Datetime": ["2024-01-02 09:30", "2024-01-02 09:35", "2024-01-02 09:40"],
            "Open": [1.0, 1.0, 1.0],
            "High": [2.0, 2.0, 2.0],
            "Low": [0.5, 0.5, 3.0],
            "Close": [1.5, 1.5, 1.5],
        }
    )
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"bars\.parquet, row 3: High 2\.0 is below Low 3\.0"):
        load_ohlcv(path)


HEADER = "Datetime,Open,High,Low,Close,Volume\n"
GOOD = "2024-01-02 09:30,1,2,0.5,1.5,10\n2024-01-02 09:35,1,2,0.5,1.5,10\n"


@pytest.mark.parametrize(
    ("extra_row", "message"),
    [
        ("2024-01-02 09:40,1,2,0.5,,10", r"line 4: missing value in column 'Close'"),
        (
            "2024-01-02 09:40,1,2,-0.5,1.5,10",
            r"line 4: column 'Low' has '-0.5'; prices must be > 0",
        ),
        ("2024-01-02 09:40,1,2,0,1.5,10", r"line 4: column 'Low' has '0'; prices must be > 0"),
        ("2024-01-02 09:40,1,1,2,1.5,10", r"line 4: High 1 is below Low 2"),
        ("2024-01-02 09:40,1,2,0.5,abc,10", r"line 4: column 'Close' has 'abc', which is not a"),
        ("2024-01-02 09:40,1,2,0.5,NaN,10", r"line 4: missing value in column 'Close'"),
        ("2024-01-02 09:40,1,2,0.5,1.5,-3", r"line 4: column 'Volume' has '-3'; must be >= 0"),
        ("2024-01-02 09:30,1,2,0.5,1.25,10", r"line 2 and line 4 have the same timestamp"),
        ("yesterday,1,2,0.5,1.5,10", r"line 4: cannot parse timestamp 'yesterday'"),
        ("2024-01-02 25:99,1,2,0.5,1.5,10", r"line 4: invalid date or time '2024-01-02 25:99'"),
        ("2024-02-30 10:00,1,2,0.5,1.5,10", r"line 4: invalid date or time '2024-02-30 10:00'"),
        (",1,2,0.5,1.5,10", r"line 4: missing value in timestamp column 'Datetime'"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(
    tmp_path: Path, extra_row: str, message: str
) -> None:
    path = write(tmp_path, HEADER + GOOD + extra_row + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_ohlcv(path)
    assert str(path) in str(info.value)


def test_missing_columns_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no Close column; found columns \['Date', 'Open'"):
        load_ohlcv(write(tmp_path, "Date,Open,High,Low\n2024-01-02,1,2,0.5\n"))
    with pytest.raises(DataError, match="no timestamp column"):
        load_ohlcv(write(tmp_path, "Open,High,Low,Close\n1,2,0.5,1.5\n"))
    with pytest.raises(DataError, match="no such file"):
        load_ohlcv(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="unsupported file type"):
        load_ohlcv(write(tmp_path, "x", name="bars.xlsx"))


def test_market_with_missing_file_names_the_config_key(tmp_path: Path) -> None:
    from dataclasses import replace

    from tuner.trading.markets import FileSource

    spec = replace(
        MARKETS["NQ"], data=FileSource(path=tmp_path / "nq.csv", configured="data/nq.csv")
    )
    with pytest.raises(DataError, match=r"markets\.NQ\.data\.file: no such file .*'data/nq.csv'"):
        load_bars(spec)
    write(tmp_path, HEADER + GOOD, name="nq.csv")
    assert len(load_bars(spec)) == 2


# --- annualization and split --------------------------------------------------------------


def test_bar_interval_is_the_median_gap_and_sessions_lower_bars_per_year() -> None:
    # 5-minute bars 09:30-16:00 on weekdays for 8 weeks: 78 bars/day, ~261 days/year.
    days = pd.bdate_range("2024-01-01", periods=40)
    stamps = np.concatenate(
        [
            (d + pd.Timedelta("9h30min") + pd.timedelta_range(0, periods=78, freq="5min")).values
            for d in days
        ]
    )
    assert infer_bar_interval(stamps) == timedelta(minutes=5)
    per_year = estimate_bars_per_year(stamps)
    assert 78 * 252 < per_year < 78 * 275  # not 365.25 * 288 = 105,192
    daily = pd.bdate_range("2023-01-02", periods=250).values
    assert estimate_bars_per_year(daily) == pytest.approx(261, rel=0.02)


def test_split_is_chronological_with_gaps() -> None:
    ranges = split_ranges(1000, SplitSpec(train=0.7, validation=0.15, test=0.15, gap_bars=20))
    assert (ranges.train.start, ranges.train.stop) == (0, 672)  # 960 usable bars * 0.7
    assert (ranges.validation.start, ranges.validation.stop) == (692, 836)
    assert (ranges.test.start, ranges.test.stop) == (856, 1000)
    assert ranges["validation"] == ranges.validation
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        ranges["valid"]


def test_split_without_test_part_and_too_short_data() -> None:
    ranges = split_ranges(100, SplitSpec(train=0.6, validation=0.4, test=0.0, gap_bars=5))
    assert ranges.validation.stop == 100 and ranges.test.start == ranges.test.stop == 100
    with pytest.raises(DataError, match="market 'NQ': 30 bars are too few"):
        split_ranges(30, SplitSpec(train=0.7, validation=0.15, test=0.15, gap_bars=10), "NQ")
