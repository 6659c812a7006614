"""The cache of parsed data files (tuner/trading/data_cache.py, data_cache_entry.py): a cached
load gives what a parse gives, a changed file or setting is parsed again, a damaged entry is
never used, processes share one mapped entry, and a run parses each file once."""

from __future__ import annotations

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
from tuner.trading import data, data_cache
from tuner.trading.bars import Bars
from tuner.trading.data_cache import DataCache
from tuner.trading.data_settings import DataSettings
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


@pytest.mark.slow
def test_a_second_process_shares_the_mapped_pages(minute_file: Path, tmp_path: Path) -> None:
    folder, go = tmp_path / "cache", tmp_path / "go"
    # Parsed, written and mapped here; checking the entry read every page of it.
    mine, _ = DataCache(folder).load(minute_file, DataSettings())
    size = sum(a.nbytes for a in arrays_of(mine))

    go.touch()
    other, log_text = _finish(_start(minute_file, folder, go))

    assert "from the data cache" in log_text
    assert other["rss"] > 0.8 * size  # it read every page ...
    assert other["uss"] < 0.2 * size  # ... and holds almost none of them alone


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
    from tuner.driver.trainable import TrialConfig, _Trial
    from tuner.run import parse_options
    from tuner.training.job import prepare
    from tuner.training.settings import load_settings

    loads: list[Path] = []
    real = DataCache.load
    monkeypatch.setattr(
        DataCache,
        "load",
        lambda self, path, *a, **k: loads.append(path) or real(self, path, *a, **k),
    )
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
    assert (len(loads), len(parses)) == (5, 1)
    assert [p.parent for p in models.rglob("*.bars")] == [models / ".data-cache"]


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
