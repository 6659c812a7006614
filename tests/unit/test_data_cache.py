"""The cache of parsed data files (tuner/trading/data_cache.py, data_cache_entry.py): a cached
load gives what a parse gives, a changed file or setting is parsed again, a damaged entry is
never used, processes share one mapped entry, and a run parses each file once."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.exports import CHICAGO, ninjatrader, sample_bars
from tuner.trading import data, data_cache, data_cache_entry
from tuner.trading.bars import Bars
from tuner.trading.data_cache import DataCache
from tuner.trading.data_settings import DataSettings
from tuner.trading.features import FeatureSet, compute_features
from tuner.trading.ohlcv import load_ohlcv_report

ROOT = Path(__file__).resolve().parents[2]
NINJA = DataSettings(format="ninjatrader", timezone=CHICAGO)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the cache parsed (rather than mapped), in order."""
    calls: list[Path] = []
    real = data_cache.load_ohlcv_report

    def counting(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_cache, "load_ohlcv_report", counting)
    monkeypatch.setattr(data, "load_ohlcv_report", counting)  # the loads without a cache
    return calls


def counting_features(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of bars of each features computation the cache made."""
    calls: list[int] = []
    real = data_cache.compute_features

    def counting(bars: Bars) -> Any:
        calls.append(len(bars))
        return real(bars)

    monkeypatch.setattr(data_cache, "compute_features", counting)
    return calls


def export(path: Path, n: int = 400) -> Path:
    """A NinjaTrader export of ``n`` bars whose second line repeats its first."""
    ninjatrader(path, sample_bars(n))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines]) + "\n")
    return path


def assert_same_bars(got: Bars, want: Bars) -> None:
    """Every field of Bars (an array or not) is equal, so a field added later is checked."""
    for f in fields(Bars):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b, f.name


def arrays_of(bars: Bars) -> list[np.ndarray]:
    """Every array of the bars (a field added later too)."""
    values = [getattr(bars, f.name) for f in fields(Bars)]
    return [v for v in values if isinstance(v, np.ndarray)]


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str = "tuner.trading") -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(logger)
    ]


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return warnings_of(caplog, data_cache.__name__)


# --- hits ---------------------------------------------------------------------------------


def test_a_cached_load_gives_what_a_parse_gives_memory_mapped(
    tmp_path: Path, parses: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache.beside(tmp_path / "models")
    want, want_report = load_ohlcv_report(file, NINJA, market="NQ")
    caplog.clear()

    cache.load(file, NINJA, market="NQ")
    first = warnings_of(caplog)
    caplog.clear()
    bars, report = cache.load(file, NINJA, market="NQ")

    assert parses == [file]  # the second load mapped the entry
    assert_same_bars(bars, want)
    assert report == want_report
    assert report.duplicates == 1
    assert warnings_of(caplog) == first  # the duplicate's warning, said again
    assert "dropped 1 row: exact duplicates" in first[0]
    entry = cache.entry_path(file, NINJA)
    assert entry.parent == tmp_path / "models" / ".data-cache"
    for array in arrays_of(bars):
        assert isinstance(array, np.memmap) and Path(array.filename) == entry
        assert not array.flags.writeable


def test_a_rolled_file_is_cached_with_its_roll_gaps_and_its_rolls(
    tmp_path: Path, parses: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.exports import databento, rolling_contracts

    caplog.set_level(logging.INFO, "tuner.trading")
    file = databento(tmp_path / "glbx.csv", rolling_contracts(sample_bars(1500, freq="10min")))
    settings = DataSettings(roll="volume", adjust="none")
    cache = DataCache(tmp_path / "cache")
    want, want_report = load_ohlcv_report(file, settings)
    parsed = [r.getMessage() for r in caplog.records if r.name == "tuner.trading.rolls"]
    caplog.clear()

    cache.load(file, settings)
    bars, report = cache.load(file, settings)

    assert len(parses) == 1
    assert_same_bars(bars, want)
    assert report == want_report and len(report.rolls) == 1
    assert bars.roll_gap.any()
    said = [r.getMessage() for r in caplog.records if r.name == "tuner.trading.rolls"]
    assert parsed and said == parsed * 2  # the roll's line, by the parse and by the hit


def test_one_file_serves_each_market_under_its_own_name(tmp_path: Path) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cache.load(file, NINJA, market="NQ")
    bars, report = cache.load(file, NINJA, market="MNQ")
    assert (bars.market, bars.source, report.file) == ("MNQ", str(file), str(file))


# --- what makes an entry stale ------------------------------------------------------------


def test_a_changed_file_of_the_same_size_is_parsed_again(
    tmp_path: Path,
    parses: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(data_cache, "SETTLE_SECONDS", 0.0)  # remember digests at once
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cache.load(file, NINJA)
    lines = file.read_text().splitlines()
    stamp, *prices, volume = lines[5].split(";")
    lines[5] = ";".join([stamp, *prices, "999"])  # same width: the file keeps its size
    size = file.stat().st_size
    file.write_text("\n".join(lines) + "\n")
    assert file.stat().st_size == size and volume != "999"

    bars, _ = cache.load(file, NINJA)

    assert len(parses) == 2
    assert bars.volume[4] == 999.0  # line 6 is bar 5 (line 2 repeats line 1)
    (warning,) = cache_warnings(caplog)
    assert str(cache.entry_path(file, NINJA)) in warning
    assert "the data file changed" in warning


def test_a_files_digest_is_reused_until_its_stat_changes(
    tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[Path] = []
    real = data_cache.file_sha256
    monkeypatch.setattr(data_cache, "file_sha256", lambda p: hashed.append(p) or real(p))
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")

    cache.load(file, NINJA)
    cache.load(file, NINJA)
    assert len(hashed) == 2  # just written: its times may not have settled, so not trusted

    monkeypatch.setattr(data_cache, "SETTLE_SECONDS", 0.0)
    cache.load(file, NINJA)
    cache.load(file, NINJA)
    cache.load(file, DataSettings(format="ninjatrader", timezone="America/New_York"))
    assert len(hashed) == 3  # remembered by the third load, for every setting
    os.utime(file)  # touched, not changed: hashed again, the entry still serves
    cache.load(file, NINJA)
    assert len(hashed) == 4
    assert len(parses) == 2  # one per setting


def test_other_settings_are_another_entry(tmp_path: Path, parses: list[Path]) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    eastern = DataSettings(format="ninjatrader", timezone="America/New_York")
    chicago, _ = cache.load(file, NINJA)
    new_york, _ = cache.load(file, eastern)
    again, _ = cache.load(file, NINJA)

    assert len(parses) == 2  # NINJA's entry served its second load
    hour = np.timedelta64(1, "h")
    assert np.array_equal(new_york.timestamps + hour, chicago.timestamps)
    assert_same_bars(again, chicago)
    assert cache.entry_path(file, NINJA) != cache.entry_path(file, eastern)


def test_every_settings_field_is_in_the_key() -> None:
    base = DataSettings()
    changed = {
        "format": "ib",
        "columns": (("close", "Last"),),
        "timestamp_format": "%Y",
        "dayfirst": True,
        "timezone": CHICAGO,
        "price_scale": 2.0,
        "header": False,
        "symbol": "NQM3",
        "roll": "volume",
        "roll_days_before_expiry": 5,
        "adjust": "none",
        "roll_gap": "keep",
    }
    assert set(changed) == {f.name for f in fields(DataSettings)}  # a new field: add it here
    keys = {data_cache.settings_key(DataSettings(**{k: v})) for k, v in changed.items()}
    assert len(keys | {data_cache.settings_key(base)}) == len(changed) + 1


def _truncate(entry: Path) -> None:
    os.truncate(entry, entry.stat().st_size - 8)


def _flip_last_byte(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0x40  # the last array's last byte
    entry.write_bytes(bytes(data))


def _flip_header_byte(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[data.index(b'"digest"') + 12] ^= 0x01
    entry.write_bytes(bytes(data))


def _empty(entry: Path) -> None:
    entry.write_bytes(b"")


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate, "corrupt"),
        (_flip_last_byte, "corrupt (array '"),  # Bars' last array, whichever it is
        (_flip_header_byte, "corrupt (its header fails its checksum)"),
        (_empty, "corrupt (empty file)"),
    ],
)
def test_a_damaged_entry_is_never_used(
    tmp_path: Path,
    parses: list[Path],
    caplog: pytest.LogCaptureFixture,
    damage: Any,
    why: str,
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cache.load(file, NINJA)
    want = load_ohlcv_report(file, NINJA)[0]
    entry = cache.entry_path(file, NINJA)
    damage(entry)
    caplog.clear()

    bars, _ = cache.load(file, NINJA)

    assert len(parses) == 2
    assert_same_bars(bars, want)
    (warning,) = cache_warnings(caplog)
    assert f"data cache entry {entry} not used: {why}" in warning
    cache.load(file, NINJA)
    assert len(parses) == 2  # rewritten whole


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("CACHE_FORMAT", 99, "written in cache format 1, this loader reads 99"),
        ("loader_code", lambda: "other", "written by another version of the loader"),
    ],
)
def test_an_entry_of_another_format_or_loader_is_parsed_again(
    tmp_path: Path,
    parses: list[Path],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: Any,
    why: str,
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cache.load(file, NINJA)
    monkeypatch.setattr(data_cache, name, value)
    cache.load(file, NINJA)
    assert len(parses) == 2
    assert f"{cache.entry_path(file, NINJA)} not used: {why}" in cache_warnings(caplog)[-1]


def test_the_loader_code_digest_covers_every_loader_module() -> None:
    folder = ROOT / "tuner" / "trading"
    listed = {p.name for pattern in data_cache._LOADER_CODE for p in folder.glob(pattern)}
    assert {"ohlcv.py", "ohlcv_table.py", "ohlcv_times.py", "bars.py"} <= listed


def test_a_cache_that_cannot_be_written_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    bars, _ = DataCache(blocked / "cache").load(file, NINJA)
    assert_same_bars(bars, load_ohlcv_report(file, NINJA)[0])
    assert f"data cache {blocked / 'cache'} cannot be used" in cache_warnings(caplog)[-1]


# --- features -----------------------------------------------------------------------------


def assert_same_features(got: FeatureSet, want: FeatureSet) -> None:
    """Every field of FeatureSet is equal (a field added later too)."""
    for f in fields(FeatureSet):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        else:
            assert a == b, f.name


def test_features_are_computed_once_and_then_mapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    computed = counting_features(monkeypatch)
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache.beside(tmp_path / "models")
    first = cache.features(cache.read(file, NINJA))
    cached = cache.read(file, NINJA)
    caplog.clear()
    features = cache.features(cached)

    assert computed == [len(cached.bars)]
    assert_same_features(features, compute_features(cached.bars))
    assert_same_features(first, features)
    entry = cache.entry_path(file, NINJA).with_suffix(".features")
    for f in fields(FeatureSet):
        array = getattr(features, f.name)
        if isinstance(array, np.ndarray):
            assert isinstance(array, np.memmap) and Path(array.filename) == entry
            assert not array.flags.writeable
    assert cache_warnings(caplog) == []


def test_the_features_key_is_the_bars_and_the_features_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    computed = counting_features(monkeypatch)
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    eastern = DataSettings(format="ninjatrader", timezone="America/New_York")
    for settings in (NINJA, eastern, NINJA, eastern):  # one entry each, computed once each
        cache.features(cache.read(file, settings))
    assert len(computed) == 2

    monkeypatch.setattr(data_cache, "features_code", lambda: "other")
    cache.features(cache.read(file, NINJA))
    assert len(computed) == 3
    entry = cache.entry_path(file, NINJA).with_suffix(".features")
    (warning,) = cache_warnings(caplog)
    assert f"{entry} not used: computed by another version of the features code" in warning

    caplog.clear()
    monkeypatch.setattr(data_cache, "loader_code", lambda: "another loader")  # other bars
    features = cache.features(cache.read(file, NINJA))
    assert len(computed) == 4
    assert "computed from other bars" in cache_warnings(caplog)[-1]
    assert_same_features(features, compute_features(load_ohlcv_report(file, NINJA)[0]))


def test_the_features_read_nothing_but_the_bars() -> None:
    # The features' key holds the bars' key and the features' code, nothing else: a new
    # argument to compute_features (a window, a setting) must join the key in data_cache.
    assert list(inspect.signature(compute_features).parameters) == ["bars"]


def test_the_features_code_digest_covers_the_features_and_their_libraries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "features.py" in data_cache._FEATURES_CODE
    before = data_cache.features_code()
    data_cache.features_code.cache_clear()
    monkeypatch.setattr(np, "__version__", "0.0.1")
    try:
        assert data_cache.features_code() != before
    finally:
        monkeypatch.undo()
        data_cache.features_code.cache_clear()


def test_a_damaged_features_entry_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    computed = counting_features(monkeypatch)
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cached = cache.read(file, NINJA)
    cache.features(cached)
    want = compute_features(cached.bars)  # not the mapped entry, which the flip changes
    entry = cache.entry_path(file, NINJA).with_suffix(".features")
    _flip_last_byte(entry)

    features = cache.features(cache.read(file, NINJA))

    assert len(computed) == 2
    assert_same_features(features, want)
    assert f"{entry} not used: corrupt (array '" in cache_warnings(caplog)[-1]


def test_bars_that_could_not_be_cached_get_their_features_computed_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    cache = DataCache(blocked / "cache")
    cached = cache.read(file, NINJA)
    assert cached.entry is None
    assert_same_features(cache.features(cached), compute_features(cached.bars))


# --- the fast path: an entry checked whole is trusted while its stat is unchanged -----------


@pytest.fixture
def checksums(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte count of every array checksum computed (written or checked)."""
    passes: list[int] = []
    real = data_cache_entry._checksum

    def counting(raw: Any) -> int:
        passes.append(len(raw))
        return real(raw)

    monkeypatch.setattr(data_cache_entry, "_checksum", counting)
    return passes


def _rewrite(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes())  # the same bytes, written again


def _touch(entry: Path) -> None:
    os.utime(entry)


def _replace_with_copy(entry: Path) -> None:
    copy = entry.with_name("copy")
    copy.write_bytes(entry.read_bytes())
    os.replace(copy, entry)


@pytest.mark.parametrize("change", [_rewrite, _touch, _replace_with_copy])
def test_a_verified_entry_skips_its_checksums_until_its_stat_changes(
    tmp_path: Path,
    parses: list[Path],
    checksums: list[int],
    monkeypatch: pytest.MonkeyPatch,
    change: Any,
) -> None:
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    n_arrays = len(arrays_of(load_ohlcv_report(file, NINJA)[0]))
    cache.load(file, NINJA)  # written (a checksum per array), read back (one more each)
    assert len(checksums) == 2 * n_arrays
    cache.load(file, NINJA)
    assert len(checksums) == 3 * n_arrays  # just written: its stat may not have settled

    monkeypatch.setattr(data_cache, "SETTLE_SECONDS", 0.0)
    cache.load(file, NINJA)  # checked whole again, and now remembered
    assert len(checksums) == 4 * n_arrays
    bars, _ = cache.load(file, NINJA)
    cache.load(file, NINJA)
    assert len(checksums) == 4 * n_arrays  # the fast path: no checksum at all
    assert_same_bars(bars, load_ohlcv_report(file, NINJA)[0])

    entry = cache.entry_path(file, NINJA)
    time.sleep(0.01)  # a later clock tick for the entry's times
    change(entry)
    cache.load(file, NINJA)
    assert len(checksums) == 5 * n_arrays  # any change to the entry's stat: checked whole
    cache.load(file, NINJA)
    assert len(checksums) == 5 * n_arrays
    assert len(parses) == 1


def test_a_truncated_verified_entry_is_caught_by_its_size(
    tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data_cache, "SETTLE_SECONDS", 0.0)
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    cache.load(file, NINJA)
    cache.load(file, NINJA)  # remembered as checked
    _truncate(cache.entry_path(file, NINJA))
    bars, _ = cache.load(file, NINJA)
    assert len(parses) == 2
    assert_same_bars(bars, load_ohlcv_report(file, NINJA)[0])


def test_a_bit_flip_that_leaves_the_stat_as_it_was_is_served(
    tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trade-off of the fast path, shown rather than hidden (module docstring)."""
    monkeypatch.setattr(data_cache, "SETTLE_SECONDS", 0.0)
    file = export(tmp_path / "NQ.Last.txt")
    cache = DataCache(tmp_path / "cache")
    want, _ = cache.load(file, NINJA)
    want_last = float(want.roll_gap[-1])
    cache.load(file, NINJA)  # remembered as checked
    entry = cache.entry_path(file, NINJA)
    verified = entry.with_name(entry.name + ".verified")
    st = entry.stat()

    _flip_last_byte(entry)  # the last array's last byte: Bars.roll_gap's last value
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))  # its mtime restored ...
    bars, _ = cache.load(file, NINJA)
    assert len(parses) == 2  # ... but not its ctime (no call sets it): checked, caught

    cache.load(file, NINJA)  # the new entry, remembered as checked
    _flip_last_byte(entry)
    record = json.loads(verified.read_text())
    record["stat"] = data_cache_entry.signature(
        entry.stat()
    )  # as if the flip had left the stat alone
    verified.write_text(json.dumps(record))
    bars, _ = cache.load(file, NINJA)
    assert len(parses) == 2  # served, flipped byte and all: the accepted risk
    assert float(bars.roll_gap[-1]) != want_last


# --- processes ----------------------------------------------------------------------------

_LOAD = textwrap.dedent(
    """
    import logging, os, sys, time, zlib
    from dataclasses import fields
    from pathlib import Path
    import numpy as np, psutil
    from tuner.trading.data_cache import DataCache
    from tuner.trading.data_settings import DataSettings

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    go = Path(sys.argv[3])
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)
    me = psutil.Process()
    before = me.memory_full_info()
    bars, _ = DataCache(Path(sys.argv[2])).load(sys.argv[1], DataSettings())
    crc = 0
    arrays = [getattr(bars, f.name) for f in fields(bars)]
    for array in (a for a in arrays if isinstance(a, np.ndarray)):
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    after = me.memory_full_info()
    print("crc", crc, "uss", after.uss - before.uss, "rss", after.rss - before.rss)
    """
)


def _start(file: Path, folder: Path, go: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _LOAD, str(file), str(folder), str(go)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(child: subprocess.Popen[str]) -> tuple[dict[str, int], str]:
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    words = out.split()
    return {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}, err


@pytest.fixture(scope="module")
def minute_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300,000 one-minute bars in an ISO CSV (14 MB of arrays)."""
    import pandas as pd

    n = 300_000
    close = 5000.0 + 0.25 * np.cumsum(np.random.default_rng(3).integers(-4, 5, n))
    frame = pd.DataFrame(
        {
            "time": pd.date_range("2020-01-01", periods=n, freq="1min"),
            "open": close,
            "high": close + 0.5,
            "low": close - 0.5,
            "close": close,
            "volume": 10,
        }
    )
    path = tmp_path_factory.mktemp("minute") / "ES_1min.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_two_processes_loading_at_once_parse_once_and_agree(
    minute_file: Path, tmp_path: Path
) -> None:
    folder, go = tmp_path / "cache", tmp_path / "go"
    children = [_start(minute_file, folder, go) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both ready: they load at once
    (a, a_log), (b, b_log) = (_finish(c) for c in children)

    assert a["crc"] == b["crc"]
    assert (a_log + b_log).count("parsed in") == 1  # one parsed; the other waited, then mapped
    assert (a_log + b_log).count("from the data cache") == 1
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []
    bars, _ = DataCache(folder).load(minute_file, DataSettings())
    assert_same_bars(bars, load_ohlcv_report(minute_file)[0])


_TRIAL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, psutil
    from tuner.trading.data_cache import DataCache
    from tuner.trading.data_settings import DataSettings
    from tuner.trading.env import FuturesTradingEnv, MarketData
    from tuner.trading.markets import load_markets

    spec = load_markets("config/markets.yaml")["ES"]
    me = psutil.Process()
    before = me.memory_full_info()
    cache = DataCache(Path(sys.argv[2]))
    cached = cache.read(sys.argv[1], DataSettings(), market="ES")
    features = cache.features(cached)
    data = MarketData.from_bars(spec, cached.bars, features)
    envs = [FuturesTradingEnv(data, "train", 2, seed=i) for i in range(4)]
    for env in envs:
        env.reset()
    total = 0.0  # read every page of the features, as the envs' episodes will
    for array in (features.values, features.atr, features.volatility, cached.bars.close):
        total += float(np.asarray(array, dtype=np.float64).sum())
    after = me.memory_full_info()
    print("uss", after.uss - before.uss, "rss", after.rss - before.rss)
    """
)


@pytest.mark.slow
def test_a_second_process_shares_the_mapped_pages_of_bars_and_features(
    minute_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "cache"
    # Parsed, computed, written and mapped here; reading them back read every page.
    cache = DataCache(folder)
    cached = cache.read(minute_file, DataSettings())
    features = cache.features(cached)
    size = sum(a.nbytes for a in arrays_of(cached.bars))
    size += features.values.nbytes + features.atr.nbytes + features.volatility.nbytes

    child = subprocess.run(
        [sys.executable, "-c", _TRIAL, str(minute_file), str(folder)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    words = child.stdout.split()
    other = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=True)}

    assert other["rss"] > 0.5 * size  # it read the bars and every feature ...
    assert other["uss"] < 0.2 * size  # ... and with 4 envs on them holds almost none alone


# --- where the cache is, and a run's loads ------------------------------------------------


def file_market_configs(tmp_path: Path, data_cache_setting: object = "auto") -> Path:
    """A tiny config folder whose NQ reads a NinjaTrader export of 3,000 bars."""
    import yaml

    from tests.tiny_config import tiny_config_dir

    configs = tiny_config_dir(tmp_path / "configs")
    markets = yaml.safe_load((configs / "markets.yaml").read_text())
    file = export(tmp_path / "NQ.Last.txt", n=3000)
    markets["markets"]["NQ"]["data"] = {"file": str(file), "format": "ninjatrader"}
    markets["markets"]["NQ"]["data"]["timezone"] = CHICAGO
    markets["defaults"]["data_cache"] = data_cache_setting
    (configs / "markets.yaml").write_text(yaml.safe_dump(markets, sort_keys=False))
    return configs


@pytest.mark.parametrize(
    ("setting", "where"),
    [("auto", "models/.data-cache"), (False, None), ("../moved", "moved")],
)
def test_data_cache_setting_moves_or_turns_off_the_cache(
    tmp_path: Path, parses: list[Path], setting: object, where: str | None
) -> None:
    from tuner.trading.data import load_file
    from tuner.trading.markets import load_markets

    configs = file_market_configs(tmp_path, setting)
    spec = load_markets(configs / "markets.yaml")["NQ"]
    for _ in range(2):
        load_file(spec, models_root=tmp_path / "models")
    entries = sorted(p.relative_to(tmp_path).parent for p in tmp_path.rglob("*.bars"))
    assert entries == ([] if where is None else [Path(where)])
    assert len(parses) == (2 if where is None else 1)
    load_file(spec, models_root=tmp_path / "models", cache=False)  # inspect's way: parse
    assert len(parses) == (3 if where is None else 2)


@pytest.mark.parametrize("setting", [3, "", ["a"]])
def test_a_bad_data_cache_setting_is_refused_naming_the_key(
    tmp_path: Path, setting: object
) -> None:
    from tuner.trading.markets import ConfigError, load_markets

    configs = file_market_configs(tmp_path, setting)
    with pytest.raises(ConfigError, match=r"defaults\.data_cache must be auto, false or a folder"):
        load_markets(configs / "markets.yaml")


def test_the_drivers_validation_loads_once_and_the_trials_map_its_cache(
    tmp_path: Path, parses: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.driver.experiment import _trial_base
    from tuner.driver.trainable import _Trial
    from tuner.driver.trial_config import TrialConfig
    from tuner.run import parse_options
    from tuner.training.job import prepare
    from tuner.training.settings import load_settings

    loads: list[Path] = []
    real = DataCache.read
    monkeypatch.setattr(
        DataCache,
        "read",
        lambda self, path, *a, **k: loads.append(path) or real(self, path, *a, **k),
    )
    computed = counting_features(monkeypatch)
    configs = file_market_configs(tmp_path)
    models = tmp_path / "elsewhere" / "models"
    opts, _ = parse_options(
        [
            *("--markets", "NQ", "--seeds", "1,2", "--phases", "1,2"),
            *("--config-dir", str(configs), "--models-root", str(models)),
            *("--storage-path", str(tmp_path / "ray_results")),
        ]
    )
    assert (len(loads), len(parses)) == (1, 1)  # the driver: one load for two phases

    for seed in (1, 2):  # each trial, as train_trial runs its phases
        config = TrialConfig.from_tune({**_trial_base(opts, ""), "market": "NQ", "seed": seed})
        settings = load_settings(config.config_dir, config.training)
        trial = _Trial(config, f"trial{seed}")
        for phase in config.phases:
            data, _ = prepare(trial.phase_job(phase, settings), settings)
            assert isinstance(data.bars.close, np.memmap)
            assert isinstance(data.features.values, np.memmap)
    assert (len(loads), len(parses), len(computed)) == (5, 1, 1)  # the first phase computed
    assert [p.parent for p in models.rglob("*.bars")] == [models / ".data-cache"]
    assert [p.parent for p in models.rglob("*.features")] == [models / ".data-cache"]


def test_an_unreadable_data_file_is_the_files_error_not_the_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tuner.trading.bars import DataError

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data_cache, "file_sha256", unreadable)
    file = export(tmp_path / "NQ.Last.txt")
    with pytest.raises(DataError, match=r"NQ\.Last\.txt: cannot read the file: .*Permission"):
        DataCache(tmp_path / "cache").load(file, NINJA)
    assert cache_warnings(caplog) == []  # the cache is not blamed
