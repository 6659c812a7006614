"""Loading and validating config/markets.yaml (tuner/trading/markets.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.trading.markets import (
    ConfigError,
    FileSource,
    SyntheticSource,
    get_market,
    load_markets,
    validate_market_name,
)

ROOT = Path(__file__).resolve().parents[2]
MARKETS_YAML = ROOT / "config" / "markets.yaml"


def base_config() -> dict[str, Any]:
    return {
        "defaults": {
            "bar_interval": "5min",
            "n_bars": 1000,
            "seed": 1,
            "start": "2024-01-01",
            "split": {"train": 0.7, "validation": 0.15, "test": 0.15, "gap_bars": 10},
        },
        "markets": {
            "NQ": {
                "tick_size": 0.25,
                "tick_value": 5.0,
                "commission_per_side": 2.1,
                "slippage_ticks": 1,
                "session": "CME",
                "data": {
                    "synthetic": {
                        "start_price": 17000.0,
                        "annual_drift": 0.1,
                        "annual_volatility": 0.2,
                        "trend_persistence": 0.1,
                        "mean_regime_bars": 500,
                    }
                },
            }
        },
    }


def write(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def with_change(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(base_config())
    node = config
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return config


_DELETE = object()


def test_shipped_config_has_eight_markets_with_exchange_tick_specs() -> None:
    markets = load_markets(MARKETS_YAML)
    assert list(markets) == ["NQ", "ES", "YM", "RTY", "CL", "GC", "ZN", "6E"]
    specs = {name: (m.tick_size, m.tick_value) for name, m in markets.items()}
    assert specs["NQ"] == (0.25, 5.0)
    assert specs["ES"] == (0.25, 12.5)
    assert specs["YM"] == (1.0, 5.0)
    assert specs["RTY"] == (0.1, 5.0)
    assert specs["CL"] == (0.01, 10.0)
    assert specs["GC"] == (0.1, 10.0)
    assert specs["ZN"] == (0.015625, 15.625)
    assert specs["6E"] == (0.00005, 6.25)
    assert markets["NQ"].point_value == 20.0
    assert markets["ES"].point_value == 50.0


def test_shipped_config_defaults_reach_every_market() -> None:
    markets = load_markets(MARKETS_YAML)
    for spec in markets.values():
        assert isinstance(spec.data, SyntheticSource)
        assert spec.data.n_bars == 20000
        assert spec.data.bar_interval.total_seconds() == 300
        assert (spec.split.train, spec.split.validation, spec.split.test) == (0.7, 0.15, 0.15)
        assert spec.split.gap_bars == 100
    # markets differ in their synthetic behaviour
    vols = {name: m.data.annual_volatility for name, m in markets.items()}  # type: ignore[union-attr]
    assert len(set(vols.values())) > 4


def test_costs_are_per_side_and_round_turn_is_twice() -> None:
    spec = load_markets(MARKETS_YAML)["ES"]
    per_side = spec.commission_per_side + spec.slippage_ticks * spec.tick_value
    assert spec.cost_per_contract_side == pytest.approx(per_side)
    assert spec.round_turn_cost == pytest.approx(2 * per_side)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("markets", "NQ", "tick_size"),
            -0.25,
            "markets.NQ.tick_size must be > 0, got -0.25",
        ),
        (("markets", "NQ", "tick_size"), 0, "markets.NQ.tick_size must be > 0, got 0.0"),
        (
            ("markets", "NQ", "tick_value"),
            "five",
            "markets.NQ.tick_value must be a number, got 'five'",
        ),
        (
            ("markets", "NQ", "tick_value"),
            math.nan,
            "markets.NQ.tick_value must be a finite number, got nan",
        ),
        (
            ("markets", "NQ", "slippage_ticks"),
            True,
            "markets.NQ.slippage_ticks must be a number, got True",
        ),
        (
            ("markets", "NQ", "commission_per_side"),
            -1,
            "markets.NQ.commission_per_side must be >= 0, got -1.0",
        ),
        (
            ("markets", "NQ", "tick_sise"),
            0.25,
            "unknown key markets.NQ.tick_sise (did you mean 'tick_size'?); known keys: ",
        ),
        (
            ("markets", "NQ", "session"),
            _DELETE,
            "missing key markets.NQ.session",
        ),
        (
            ("markets", "NQ", "data", "synthetic", "trend_persistence"),
            1.5,
            "markets.NQ.data.synthetic.trend_persistence must be >= 0 and <= 0.95, got 1.5",
        ),
        (
            ("markets", "NQ", "data"),
            {"synthetic": {}, "file": "x.csv"},
            "markets.NQ.data must have exactly one key, 'synthetic' or 'file'",
        ),
        (
            ("defaults", "split", "test"),
            0.3,
            "defaults.split must add up to 1 (train + validation + test), got 0.7 + 0.15 + 0.3",
        ),
        (
            ("defaults", "split", "gap_bars"),
            2.5,
            "defaults.split.gap_bars must be an integer, got 2.5",
        ),
        (
            ("defaults", "bar_interval"),
            "5 parsecs",
            "defaults.bar_interval must be a positive count followed by s, min, h or d",
        ),
        (("defaults", "n_bars"), 10, "defaults.n_bars must be >= 100, got 10"),
        (("defaults", "colour"), "red", "unknown key defaults.colour; known keys: bar_interval"),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_rule(
    tmp_path: Path, path: tuple[str, ...], value: Any, message: str
) -> None:
    file = write(tmp_path, with_change(path, value))
    with pytest.raises(ConfigError) as info:
        load_markets(file)
    assert message in str(info.value)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("name", ["N_Q", "a..b", "a/b", "a\\b", "-NQ", "NQ-", "N Q", "N\x00Q", ""])
def test_bad_market_names_are_refused(tmp_path: Path, name: str) -> None:
    config = base_config()
    config["markets"][name] = config["markets"].pop("NQ")
    with pytest.raises(ConfigError, match="invalid market name") as info:
        load_markets(write(tmp_path, config))
    assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["6E", "BRK.B", "ES-MINI", "x1"])
def test_good_market_names_pass(name: str) -> None:
    assert validate_market_name(name) == name


def test_user_adds_a_file_market_resolved_next_to_the_yaml(tmp_path: Path) -> None:
    config = base_config()
    config["markets"]["MNQ"] = {
        **config["markets"]["NQ"],
        "data": {"file": "data/mnq.csv"},
        "split": {"train": 0.6, "validation": 0.4, "test": 0.0, "gap_bars": 0},
    }
    markets = load_markets(write(tmp_path, config))
    source = markets["MNQ"].data
    assert isinstance(source, FileSource)
    assert source.path == tmp_path / "data" / "mnq.csv"
    assert markets["MNQ"].split.test == 0.0
    assert markets["NQ"].split.test == 0.15  # the defaults stay for the others


def test_unknown_market_error_lists_known_ones() -> None:
    markets = load_markets(MARKETS_YAML)
    with pytest.raises(ConfigError) as info:
        get_market(markets, "XX")
    assert "unknown market 'XX'; known markets: NQ, ES, YM, RTY, CL, GC, ZN, 6E" in str(info.value)
    with pytest.raises(ConfigError, match="letters and digits"):
        get_market(markets, "../NQ")
    assert get_market(markets, "6E").name == "6E"


def test_unquoted_numeric_market_name_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "markets.yaml"
    text = yaml.safe_dump(base_config()).replace("  NQ:", "  10:")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="quote it"):
        load_markets(path)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_markets(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("markets: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_markets(bad)


def test_specs_are_frozen() -> None:
    spec = load_markets(MARKETS_YAML)["NQ"]
    with pytest.raises(AttributeError):
        spec.tick_size = 1.0  # type: ignore[misc]
