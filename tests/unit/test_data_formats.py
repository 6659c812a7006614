"""The exports futures traders have, as the platforms write them; day-first or month-first
never guessed; duplicates; the ``data:`` keys (tuner/trading/ohlcv*.py, data_settings.py).

Files are written by the tests in each platform's shape (tests/exports.py), never copied."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.exports import (
    databento,
    interactive_brokers,
    month_first,
    ninjatrader,
    sample_bars,
)
from tuner.trading.data import DataError, load_bars
from tuner.trading.data_settings import DataSettings
from tuner.trading.markets import ConfigError, FileSource, load_markets
from tuner.trading.ohlcv import load_ohlcv


def stamps(*texts: str) -> list[int]:
    return [pd.Timestamp(t).value for t in texts]


def utc(bars: pd.DataFrame) -> list[int]:
    return bars["time"].astype("datetime64[ns]").astype(np.int64).tolist()


def write(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- the platforms' exports ---------------------------------------------------------------


def test_ninjatrader_export_loads_as_it_comes(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "20230301 083000;16850.5;16851.0;16849.75;16850.5;2248\n"
        "20230301 083100;16850.5;16852.0;16849.75;16851.25;1000\n",
        name="NQ 03-23.Last.txt",
    )
    bars = load_ohlcv(path)
    assert bars.timestamps.tolist() == stamps("2023-03-01 08:30", "2023-03-01 08:31")
    assert bars.open.tolist() == [16850.5, 16850.5]
    assert bars.high.tolist() == [16851.0, 16852.0]
    assert bars.low.tolist() == [16849.75, 16849.75]
    assert bars.close.tolist() == [16850.5, 16851.25]
    assert bars.volume.tolist() == [2248.0, 1000.0]


def test_ninjatrader_local_times_go_to_utc_with_timezone(tmp_path: Path) -> None:
    bars = sample_bars(50, start="2023-03-10 14:00", freq="1h")  # across the change to CDT
    path = ninjatrader(tmp_path / "nq.txt", bars)
    loaded = load_ohlcv(path, DataSettings(timezone="America/Chicago"))
    assert loaded.timestamps.tolist() == utc(bars)
    assert loaded.close.tolist() == bars["close"].tolist()


def test_ninjatrader_error_names_the_line_and_the_role(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "20230301 083000;16850.5;16851.0;16849.75;16850.5;2248\n"
        "20230301 083100;16850.5;16852.0;16849.75;x;1000\n",
    )
    with pytest.raises(DataError, match=r"line 2: column 'Close \(column 5\)' has 'x'"):
        load_ohlcv(path)


@pytest.mark.parametrize("zone_name", [None, "US/Central"])
def test_interactive_brokers_export_loads_as_it_comes(
    tmp_path: Path, zone_name: str | None
) -> None:
    bars = sample_bars(30, start="2023-03-01 14:30")
    path = interactive_brokers(tmp_path / "ib.csv", bars, zone_name=zone_name)
    assert "20230301  08:30:00" in path.read_text() or zone_name  # two spaces, as IB writes
    # Without a zone name the times are the login zone's, which the file cannot tell.
    settings = DataSettings(timezone="America/Chicago") if zone_name is None else None
    loaded = load_ohlcv(path, settings)
    assert loaded.timestamps.tolist() == utc(bars)
    assert loaded.close.tolist() == bars["close"].tolist()
    assert loaded.volume.tolist() == bars["volume"].astype(float).tolist()


def test_interactive_brokers_zone_names_follow_daylight_saving(tmp_path: Path) -> None:
    winter, summer = sample_bars(3, start="2023-03-01 14:30"), sample_bars(3, "2023-07-03 13:30")
    bars = pd.concat([winter, summer], ignore_index=True)
    path = interactive_brokers(tmp_path / "ib.csv", bars, zone_name="US/Central")
    assert "20230703 08:30:00 US/Central" in path.read_text()  # CDT: UTC-5
    assert load_ohlcv(path).timestamps.tolist() == utc(bars)


def test_a_declared_format_holds_the_file_to_its_timestamps(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "date,open,high,low,close,volume,average,barCount\n"
        "2023-03-01 08:30:00-06:00,1,2,0.5,1.5,10,1.2,5\n"
        "2023-03-01 08:31:00-06:00,1,2,0.5,1.5,10,1.2,5\n",
    )
    bars = load_ohlcv(path)  # detected as IB, saved by a library with ISO times: fine
    assert bars.timestamps.tolist() == stamps("2023-03-01 14:30", "2023-03-01 14:31")
    with pytest.raises(DataError, match=r"line 2: cannot parse timestamp '2023-03-01 08:30:00-06"):
        load_ohlcv(path, DataSettings(format="ib"))


def test_a_zone_name_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "date,open,high,low,close,volume,average,barCount\n"
        "20230301 08:30:00 US/Central,1,2,0.5,1.5,10,1.2,5\n"
        "20230301 08:31:00 Mars/Olympus,1,2,0.5,1.5,10,1.2,5\n",
    )
    with pytest.raises(DataError, match=r"line 3: .* unknown time zone 'Mars/Olympus'"):
        load_ohlcv(path)


def databento_file(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    march, june = sample_bars(40), sample_bars(40)
    june[["open", "high", "low", "close"]] += 200.0
    path = databento(tmp_path / "glbx.ohlcv-1m.csv", {"NQH3": (4916, march), "NQM3": (7062, june)})
    return path, march, june


def test_databento_file_of_several_contracts_is_refused_naming_them(tmp_path: Path) -> None:
    path, _, _ = databento_file(tmp_path)
    with pytest.raises(DataError) as info:
        load_ohlcv(path, market="NQ")
    message = str(info.value)
    assert str(path) in message
    assert "2 contracts" in message
    assert "NQH3 (40 rows), NQM3 (40 rows)" in message
    assert "markets.NQ.data.symbol" in message
    assert "or markets.NQ.data.roll to join them" in message


def test_databento_symbol_picks_one_contract_with_exact_prices(tmp_path: Path) -> None:
    path, march, june = databento_file(tmp_path)
    assert f",{round(march['close'].iloc[0] * 1e9)}," in path.read_text()  # integers of 1e-9
    for contract, bars in (("NQH3", march), ("7062", june)):  # a symbol or an instrument_id
        loaded = load_ohlcv(path, DataSettings(symbol=contract))
        assert loaded.timestamps.tolist() == utc(bars)
        assert loaded.close.tolist() == bars["close"].tolist()  # 16850.25, not 16850.2500001
        assert loaded.high.tolist() == bars["high"].tolist()
    with pytest.raises(DataError, match=r"no rows of data\.symbol 'NQU3'; the file holds NQH3"):
        load_ohlcv(path, DataSettings(symbol="NQU3"))


def test_databento_integer_prices_are_read_exactly(tmp_path: Path) -> None:
    bars = sample_bars(3)
    bars[["open", "high", "low", "close"]] = [[70.02, 70.05, 70.01, 70.05]] * 3  # CL
    bars["close"] = [70.05, 70.02, 70.04]
    path = databento(tmp_path / "cl.csv", {"CLJ3": (1, bars)})
    assert ",70050000000," in path.read_text()
    assert load_ohlcv(path).close.tolist() == [70.05, 70.02, 70.04]  # 70.05, not 70.050000001


def test_databento_pretty_csv_and_explicit_scale(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts_event,rtype,publisher_id,instrument_id,open,high,low,close,volume,symbol\n"
        "2023-03-01T14:30:00.000000000Z,33,1,4916,16850.500000000,16851.0,16849.75,16850.5,9,NQH3\n"
        "2023-03-01T14:31:00.000000000Z,33,1,4916,16850.500000000,16852.0,16849.75,16851.0,9,NQH3\n",
    )
    loaded = load_ohlcv(path)
    assert loaded.timestamps.tolist() == stamps("2023-03-01 14:30", "2023-03-01 14:31")
    assert loaded.close.tolist() == [16850.5, 16851.0]  # decimals: no scaling
    assert load_ohlcv(path, DataSettings(price_scale=0.5)).close.tolist() == [8425.25, 8425.5]


def test_a_symbol_for_a_file_without_contracts_is_refused(tmp_path: Path) -> None:
    path = ninjatrader(tmp_path / "nq.txt", sample_bars(3))
    with pytest.raises(DataError, match=r"data\.symbol is 'NQH3', but the file has no symbol"):
        load_ohlcv(path, DataSettings(symbol="NQH3"))


def test_timezone_on_times_that_carry_their_own_is_refused(tmp_path: Path) -> None:
    path, _, _ = databento_file(tmp_path)
    with pytest.raises(DataError, match=r"line 2: data\.timezone is 'America/Chicago', but"):
        load_ohlcv(path, DataSettings(symbol="NQH3", timezone="America/Chicago"))


def test_local_times_across_daylight_saving_changes(tmp_path: Path) -> None:
    head = "Datetime,Open,High,Low,Close\n"
    chicago = DataSettings(timezone="America/Chicago")
    # The clocks go back at 02:00 on 5 Nov 2023: 01:00-01:59 happens twice, told by the order.
    back = write(
        tmp_path,
        head + "2023-11-05 00:30,1,2,0.5,1.5\n2023-11-05 01:30,1,2,0.5,1.25\n"
        "2023-11-05 01:30,1,2,0.5,1.75\n2023-11-05 02:30,1,2,0.5,1.5\n",
    )
    expected = stamps(
        "2023-11-05 05:30", "2023-11-05 06:30", "2023-11-05 07:30", "2023-11-05 08:30"
    )
    assert load_ohlcv(back, chicago).timestamps.tolist() == expected
    lone = write(tmp_path, head + "2023-11-05 01:30,1,2,0.5,1.5\n2023-11-05 03:30,1,2,0.5,1.5\n")
    with pytest.raises(DataError, match=r"line 2: '2023-11-05 01:30' happens twice in America"):
        load_ohlcv(lone, chicago)
    # ... and go forward at 02:00 on 12 Mar 2023: 02:30 does not exist there.
    gap = write(tmp_path, head + "2023-03-12 01:30,1,2,0.5,1.5\n2023-03-12 02:30,1,2,0.5,1.5\n")
    with pytest.raises(DataError, match=r"line 3: '2023-03-12 02:30' does not exist in America"):
        load_ohlcv(gap, chicago)


def test_iso_offsets_are_converted_and_cannot_mix_with_naive_times(tmp_path: Path) -> None:
    head = "Timestamp,Open,High,Low,Close\n"
    both = write(
        tmp_path,
        head + "2023-03-01T08:30:00-06:00,1,2,0.5,1.5\n2023-07-03T08:30:00-05:00,1,2,0.5,1.5\n",
    )
    assert load_ohlcv(both).timestamps.tolist() == stamps("2023-03-01 14:30", "2023-07-03 13:30")
    mixed = write(
        tmp_path, head + "2023-03-01T08:30:00-06:00,1,2,0.5,1.5\n2023-03-01 08:31,1,2,0.5,1.5\n"
    )
    with pytest.raises(
        ValueError, match=r"line 3: timestamp '2023-03-01 08:31' has no zone, but line 2"
    ):
        load_ohlcv(mixed)


def test_columns_by_name_and_by_number(tmp_path: Path) -> None:
    named = write(
        tmp_path,
        "Bar Start;Px Open;Px High;Px Low;Last;Contracts\n"
        "2023-03-01 08:30;1;2;0.5;1.5;7\n2023-03-01 08:31;1;2;0.5;1.25;8\n",
    )
    columns = {
        "time": "Bar Start",
        "open": "px open",  # any case
        "high": "Px High",
        "low": "Px Low",
        "last": "Last",
        "volume": "Contracts",
    }
    bars = load_ohlcv(named, DataSettings(columns=tuple(columns.items())))
    assert bars.close.tolist() == [1.5, 1.25] and bars.volume.tolist() == [7.0, 8.0]
    # no header, the open interest before the volume: volume is column 8
    headerless = write(
        tmp_path,
        "2023.03.01,08:30,1,2,0.5,1.5,900,7\n2023.03.01,08:35,1,2,0.5,1.25,900,8\n",
        name="mt.csv",
    )
    bars = load_ohlcv(headerless, DataSettings(columns=(("volume", 8),)))
    assert bars.timestamps.tolist() == stamps("2023-03-01 08:30", "2023-03-01 08:35")
    assert bars.volume.tolist() == [7.0, 8.0]
    with pytest.raises(DataError, match=r"data\.columns\.close names column 'Px Clos'.*did you"):
        load_ohlcv(named, DataSettings(columns=(("close", "Px Clos"),)))


def test_header_false_reads_the_first_line_as_a_bar(tmp_path: Path) -> None:
    path = write(tmp_path, "2023-03-01 08:30,1,2,0.5,1.5\n2023-03-01 08:31,1,2,0.5,1.25\n")
    assert len(load_ohlcv(path, DataSettings(header=False))) == 2
    assert len(load_ohlcv(path)) == 2  # detected: the first line's prices are numbers


# --- day-first or month-first -------------------------------------------------------------

MARCH_1_TO_10 = "".join(f"03/{day:02d}/2023,16:00,1,2,0.5,1.5,10\n" for day in range(1, 11))
HEADER = "Date,Time,Open,High,Low,Close,Volume\n"


def test_dates_that_read_both_ways_are_refused_with_examples_and_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MARCH_1_TO_10)
    with pytest.raises(DataError) as info:
        load_ohlcv(path, market="ES")
    message = str(info.value)
    assert message.startswith(f"{path}: the dates in column 'Date' read both ways")
    assert "line 2 '03/01/2023 16:00' is 3 Jan 2023 day-first or 1 Mar 2023 month-first" in message
    assert (
        "line 11 '03/10/2023 16:00' is 3 Oct 2023 day-first or 10 Mar 2023 month-first" in message
    )
    assert "markets.ES.data.dayfirst: false (month-first" in message
    assert "markets.ES.data.timestamp_format" in message


def test_dayfirst_false_or_a_format_reads_1_to_10_march(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MARCH_1_TO_10)
    march = stamps(*(f"2023-03-{day:02d} 16:00" for day in range(1, 11)))
    assert load_ohlcv(path, DataSettings(dayfirst=False)).timestamps.tolist() == march
    fmt = DataSettings(timestamp_format="%m/%d/%Y %H:%M")
    assert load_ohlcv(path, fmt).timestamps.tolist() == march
    bars = load_ohlcv(path, DataSettings(dayfirst=True))
    assert bars.timestamps[0] == np.datetime64("2023-01-03T16:00")  # as asked


def test_a_format_the_rows_do_not_match_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MARCH_1_TO_10)
    with pytest.raises(DataError, match=r"line 2: timestamp '03/01/2023 16:00' does not match"):
        load_ohlcv(path, DataSettings(timestamp_format="%Y-%m-%d %H:%M"))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("03/25/2023,16:00,1,2,0.5,1.5,10\n", "2023-03-01"),  # month-first, settled by 03/25
        ("25/03/2023,16:00,1,2,0.5,1.5,10\n", "2023-01-03"),  # day-first, settled by 25/03
    ],
)
def test_a_file_that_settles_it_itself(tmp_path: Path, extra: str, expected: str) -> None:
    bars = load_ohlcv(write(tmp_path, HEADER + MARCH_1_TO_10 + extra))
    assert bars.timestamps[0] == np.datetime64(f"{expected}T16:00")


def test_month_first_export_of_a_us_platform(tmp_path: Path) -> None:
    bars = sample_bars(30, start="2023-03-13 15:00", freq="1h")  # the 13th settles it
    loaded = load_ohlcv(month_first(tmp_path / "es.csv", bars))
    assert loaded.timestamps.tolist() == utc(bars)


def test_a_row_that_contradicts_dayfirst_is_refused_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MARCH_1_TO_10 + "03/25/2023,16:00,1,2,0.5,1.5,10\n")
    with pytest.raises(DataError) as info:
        load_ohlcv(path, DataSettings(dayfirst=True), market="ES")
    assert f"{path}, line 12: '03/25/2023 16:00' cannot be day-first" in str(info.value)
    assert "markets.ES.data.dayfirst is true" in str(info.value)


def test_rows_that_contradict_each_other_are_refused_naming_both(tmp_path: Path) -> None:
    rows = "03/25/2023,16:00,1,2,0.5,1.5,10\n26/03/2023,16:00,1,2,0.5,1.5,10\n"
    with pytest.raises(DataError) as info:
        load_ohlcv(write(tmp_path, HEADER + MARCH_1_TO_10 + rows))
    assert "mixes day-first and month-first dates" in str(info.value)
    assert "line 13 '26/03/2023 16:00'" in str(info.value)
    assert "line 12 '03/25/2023 16:00'" in str(info.value)


def test_a_twelve_hour_clock(tmp_path: Path) -> None:
    rows = "03/13/2023 12:05 AM,1,2,0.5,1.5\n03/13/2023 2:30:00 PM,1,2,0.5,1.5\n"
    bars = load_ohlcv(write(tmp_path, "Date,Open,High,Low,Close\n" + rows))
    assert bars.timestamps.tolist() == stamps("2023-03-13 00:05", "2023-03-13 14:30")
    bad = write(tmp_path, "Date,Open,High,Low,Close\n" + rows + "03/13/2023 13:00 PM,1,2,0.5,1.5\n")
    with pytest.raises(DataError, match=r"line 4: invalid date or time '03/13/2023 13:00 PM'"):
        load_ohlcv(bad)


def test_dayfirst_on_year_first_dates_is_refused(tmp_path: Path) -> None:
    path = ninjatrader(tmp_path / "nq.txt", sample_bars(3))
    with pytest.raises(DataError, match=r"data\.dayfirst is set, but the timestamps are year"):
        load_ohlcv(path, DataSettings(dayfirst=False))


# --- duplicates ---------------------------------------------------------------------------


def test_exact_duplicates_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bars = sample_bars(20)
    first = ninjatrader(tmp_path / "a.txt", bars[:15]).read_text()
    second = ninjatrader(tmp_path / "b.txt", bars[10:]).read_text()  # overlaps by 5 bars
    glued = write(tmp_path, first + second, name="glued.txt")
    with caplog.at_level(logging.WARNING, logger="tuner.trading.ohlcv"):
        loaded = load_ohlcv(glued, DataSettings(timezone="America/Chicago"))
    assert loaded.timestamps.tolist() == utc(bars)
    assert loaded.close.tolist() == bars["close"].tolist()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{glued}: dropped 5 rows: exact duplicates" in warnings[0]
    assert "line 16 repeats line 11" in warnings[0]


def test_two_different_bars_at_one_time_are_refused_naming_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "20230301 083000;16850.5;16851.0;16849.75;16850.5;2248\n"
        "20230301 083100;16850.5;16852.0;16849.75;16851.25;1000\n"
        "20230301 083000;16850.5;16851.0;16849.75;16850.75;2250\n",
    )
    with pytest.raises(DataError, match=r"line 1 and line 3 have the same timestamp 2023-03-01"):
        load_ohlcv(path)


def test_session_gaps_and_holidays_still_load(tmp_path: Path) -> None:
    bars = sample_bars(60, start="2023-03-02 20:00", freq="30min")  # Thu night to Mon: a weekend
    loaded = load_ohlcv(ninjatrader(tmp_path / "nq.txt", bars, zone="UTC"))  # naive: as UTC
    assert loaded.timestamps.tolist() == utc(bars)
    assert np.diff(loaded.timestamps).max() > np.timedelta64(2, "D")


# --- the data: keys in markets.yaml -------------------------------------------------------


def markets_yaml(tmp_path: Path, data: dict[str, Any]) -> Path:
    config = {
        "defaults": {
            "bar_interval": "5min",
            "n_bars": 1000,
            "seed": 1,
            "start": "2024-01-01",
            "split": {"train": 0.6, "validation": 0.4, "test": 0.0, "gap_bars": 0},
        },
        "markets": {
            "NQ": {
                "tick_size": 0.25,
                "tick_value": 5.0,
                "commission_per_side": 2.1,
                "slippage_ticks": 1,
                "session": "CME",
                "data": data,
            }
        },
    }
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_data_keys_reach_the_loader(tmp_path: Path) -> None:
    path, _, june = databento_file(tmp_path)
    data = {
        "file": path.name,
        "format": "databento",
        "symbol": 7062,  # an instrument_id, unquoted
        "price_scale": 1e-9,
        "columns": {"time": "ts_event", "last": "close"},
    }
    spec = load_markets(markets_yaml(tmp_path, data))["NQ"]
    assert isinstance(spec.data, FileSource)
    assert spec.data.settings == DataSettings(
        format="databento",
        columns=(("time", "ts_event"), ("close", "close")),  # in COLUMN_ROLES order
        price_scale=1e-9,
        symbol="7062",
    )
    bars = load_bars(spec)
    assert bars.close.tolist() == june["close"].tolist()
    everything = {
        "file": "x.txt",
        "format": "ninjatrader",
        "dayfirst": True,
        "timezone": "America/Chicago",
        "header": False,
    }
    settings = load_markets(markets_yaml(tmp_path, everything))["NQ"].data.settings  # type: ignore[union-attr]
    assert (settings.dayfirst, settings.timezone, settings.header) == (
        True,
        "America/Chicago",
        False,
    )


def test_errors_of_a_file_market_name_its_data_keys(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + MARCH_1_TO_10, name="es.csv")
    spec = load_markets(markets_yaml(tmp_path, {"file": path.name}))["NQ"]
    with pytest.raises(DataError, match=r"set markets\.NQ\.data\.dayfirst: false"):
        load_bars(spec)
    spec = load_markets(markets_yaml(tmp_path, {"file": path.name, "dayfirst": False}))["NQ"]
    assert load_bars(spec).timestamps[-1] == np.datetime64("2023-03-10T16:00")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"dayfrist": True},
            "unknown key markets.NQ.data.dayfrist (did you mean 'dayfirst'?); known keys: ",
        ),
        (
            {"format": "ninja"},
            "markets.NQ.data.format must be one of ['auto', 'ninjatrader', 'ib', 'databento'], "
            "got 'ninja' (did you mean 'ninjatrader'?)",
        ),
        (
            {"timezone": "America/Chicgo"},
            "markets.NQ.data.timezone must be an IANA time zone such as 'America/Chicago', got "
            "'America/Chicgo' (did you mean 'America/Chicago'?)",
        ),
        ({"price_scale": -1}, "markets.NQ.data.price_scale must be > 0, got -1.0"),
        ({"price_scale": "one"}, "markets.NQ.data.price_scale must be a number or null"),
        (
            {"price_scale": "1e-9"},  # as YAML reads price_scale: 1e-9
            "markets.NQ.data.price_scale must be a number, got '1e-9': YAML reads a number "
            "without a dot as text, write 1.0e-9",
        ),
        ({"header": "no"}, "markets.NQ.data.header must be true or false, got 'no'"),
        ({"dayfirst": "yes"}, "markets.NQ.data.dayfirst must be true or false, got 'yes'"),
        (
            {"columns": {"clse": "Close"}},
            "unknown key markets.NQ.data.columns.clse (did you mean 'close'?)",
        ),
        (
            {"columns": {"close": 0}},
            "markets.NQ.data.columns.close must be a column name or a number >= 1, got 0",
        ),
        (
            {"columns": {"close": ["a"]}},
            "markets.NQ.data.columns.close must be a column name or a 1-based column number",
        ),
        (
            {"columns": {"close": "Close", "last": "Last"}},
            "markets.NQ.data.columns gives close twice",
        ),
        (
            {"timestamp_format": "%m/%d/%Y", "dayfirst": False},
            "markets.NQ.data sets both timestamp_format and dayfirst",
        ),
        (
            {"timestamp_format": "MM/DD/YYYY"},
            "markets.NQ.data.timestamp_format must be a strptime format",
        ),
        ({"symbol": ""}, "markets.NQ.data.symbol must be a non-empty string"),
        (
            {"rol": "volume"},
            "unknown key markets.NQ.data.rol (did you mean 'roll'?); known keys: ",
        ),
        (
            {"roll": "volumes"},
            "markets.NQ.data.roll must be one of ['volume', 'calendar'], got 'volumes' "
            "(did you mean 'volume'?)",
        ),
        (
            {"roll": "volume", "adjust": "back"},
            "markets.NQ.data.adjust must be one of ['backward', 'none'], got 'back' "
            "(did you mean 'backward'?)",
        ),
        (
            {"adjust": "none"},
            "markets.NQ.data.adjust applies to contracts joined by roll; set "
            "markets.NQ.data.roll to volume or calendar, or remove adjust",
        ),
        (
            {"roll": "volume", "symbol": "NQH3"},
            "markets.NQ.data sets both symbol and roll; keep one",
        ),
        (
            {"roll": "volume", "roll_days_before_expiry": 5},
            "markets.NQ.data.roll_days_before_expiry applies to roll: calendar; this market "
            "rolls by volume",
        ),
        (
            {"roll": "calendar", "roll_days_before_expiry": -1},
            "markets.NQ.data.roll_days_before_expiry must be >= 0 and <= 366, got -1",
        ),
        (
            {"roll": "calendar", "roll_days_before_expiry": 2.5},
            "markets.NQ.data.roll_days_before_expiry must be an integer, got 2.5",
        ),
        (
            {"roll": "volume", "roll_gap": "keep"},
            "markets.NQ.data.roll_gap is keep, which needs markets.NQ.data.adjust: none",
        ),
        (
            {"roll": "volume", "adjust": "none", "roll_gap": "kep"},
            "markets.NQ.data.roll_gap must be one of ['skip', 'keep'], got 'kep' "
            "(did you mean 'keep'?)",
        ),
    ],
)
def test_bad_data_keys_are_refused_naming_the_key(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    path = markets_yaml(tmp_path, {"file": "nq.csv", **data})
    with pytest.raises(ConfigError) as info:
        load_markets(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_file_keys_on_synthetic_data_are_refused(tmp_path: Path) -> None:
    synthetic = {
        "start_price": 100.0,
        "annual_drift": 0.0,
        "annual_volatility": 0.2,
        "trend_persistence": 0.1,
        "mean_regime_bars": 100,
    }
    path = markets_yaml(tmp_path, {"synthetic": synthetic, "timezone": "UTC"})
    with pytest.raises(ConfigError, match=r"markets\.NQ\.data\.timezone is not a setting here"):
        load_markets(path)
