"""Config loading: defaults, the llm overlay, and a clear refusal for each kind of mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpointing.config import load_config
from checkpointing.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "checkpoint_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_config_has_seed_note_defaults() -> None:
    cfg = load_config(ROOT / "config/checkpoint_config.yaml")
    assert (cfg.phase1.base_interval, cfg.phase1.max_interval_multiplier) == (25_000, 5.0)
    assert cfg.phase1.target_timesteps == 2_000_000
    assert (cfg.phase2.base_interval, cfg.phase2.target_timesteps) == (50_000, 5_000_000)
    assert cfg.phase3.base_interval == 10_000
    assert cfg.events.metric_improvement_threshold == 0.02
    assert cfg.events.monitored_metrics == ("val_reward", "sharpe_ratio", "win_rate")
    r = cfg.retention
    assert (r.keep_last_n, r.keep_top_k_by_sharpe, r.keep_top_k_by_reward, r.prune_frequency) == (
        8,
        3,
        2,
        10,
    )
    assert r.preserve_events == ("phase_end", "phase_boundary", "interrupt")
    assert cfg.performance.min_disk_space_gb == 5.0
    assert cfg.checkpoint_dir(3, "YM") == Path("models/phase3_hybrid/YM/checkpoints")


def test_llm_overlay_inherits_and_overrides_phase3() -> None:
    base = load_config(ROOT / "config/checkpoint_config.yaml")
    llm = load_config(ROOT / "config/llm_config.yaml")
    assert llm.phase1 == base.phase1 and llm.retention == base.retention
    assert llm.phase3.base_interval == 10_000
    assert "llm_confidence_avg" in llm.llm_metadata and base.llm_metadata == ()


def test_a_mistake_in_the_inherited_file_names_that_file_alone(tmp_path: Path) -> None:
    base = write(tmp_path, "checkpointing:\n  retention:\n    keep_lastn: 3\n")
    overlay = write(tmp_path, "checkpointing:\n  use_default_config: true\n", "llm_config.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(overlay)
    assert str(info.value).startswith(
        f"{base}: unknown key checkpointing.retention.keep_lastn (did you mean 'keep_last_n'?)"
    ), str(info.value)


def test_overlay_override_changes_only_phase3(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_config.yaml").write_text(
        (ROOT / "config/checkpoint_config.yaml").read_text()
    )
    overlay = write(
        tmp_path,
        "checkpointing:\n  use_default_config: true\n  base_interval: 777\n"
        "advisor:\n  kind: rule\n",
        "llm.yaml",
    )
    cfg = load_config(overlay)
    assert cfg.phase3.base_interval == 777 and cfg.phase1.base_interval == 25_000


def test_models_root_rebases_every_phase() -> None:
    cfg = load_config(ROOT / "config/checkpoint_config.yaml")
    assert cfg.checkpoint_dir(1, "NQ", "/data/m") == Path("/data/m/phase1/NQ/checkpoints")
    assert cfg.layout("/data/m").market_dir(3, "NQ") == Path("/data/m/phase3_hybrid/NQ")


BAD = [
    (
        "checkpointing:\n  retention:\n    keep_last_n: 0\n",
        "checkpointing.retention.keep_last_n must be >= 1, got 0",
    ),
    (
        "checkpointing:\n  retention:\n    keep_last_n: -1\n",
        "checkpointing.retention.keep_last_n must be >= 1, got -1",
    ),
    (
        "checkpointing:\n  retention:\n    keep_lastn: 3\n",
        "unknown key checkpointing.retention.keep_lastn (did you mean 'keep_last_n'?)",
    ),
    (
        "checkpointing:\n  phase1:\n    base_interval: ten\n",
        "checkpointing.phase1.base_interval must be an integer, got 'ten'",
    ),
    (
        "checkpointing:\n  phase1:\n    base_interval: no\n",
        "checkpointing.phase1.base_interval must be an integer, got False",
    ),
    (
        "checkpointing:\n  phase2:\n    max_interval_multiplier: .nan\n",
        "checkpointing.phase2.max_interval_multiplier must be a finite number, got nan",
    ),
    (
        "checkpointing:\n  phase2:\n    max_interval_multiplier: 0.5\n",
        "checkpointing.phase2.max_interval_multiplier must be >= 1, got 0.5",
    ),
    (
        "checkpointing:\n  events:\n    metric_improvement_threshold: -0.1\n",
        "checkpointing.events.metric_improvement_threshold must be >= 0, got -0.1",
    ),
    (
        "checkpointing:\n  events:\n    monitored_metrics: [val_reward, sharpe]\n",
        "checkpointing.events.monitored_metrics[1] must be one of",
    ),
    (
        "checkpointing:\n  events:\n    enabled: 'yes'\n",
        "checkpointing.events.enabled must be true or false, got 'yes'",
    ),
    (
        "checkpointing:\n  performance:\n    min_disk_space_gb: -5\n",
        "checkpointing.performance.min_disk_space_gb must be >= 0, got -5.0",
    ),
    (
        "checkpointing:\n  performance:\n    atomic_saves: false\n",
        "checkpointing.performance.atomic_saves must be true",
    ),
    (
        "checkpointing:\n  performance:\n    compression: zstd\n",
        "checkpointing.performance.compression must be one of ['stored', 'deflate', 'adaptive']"
        " (or true/false for deflate/stored), got 'zstd'",
    ),
    (
        "checkpointing:\n  performance:\n    compression: deflated\n",
        "got 'deflated' (did you mean 'deflate'?)",
    ),
    (
        "checkpointing:\n  performance:\n    compression_level: 10\n",
        "checkpointing.performance.compression_level must be an integer from 1 (fastest) to 9"
        " (smallest), got 10",
    ),
    (
        "checkpointing:\n  performance:\n    compression_level: 0\n",
        "checkpointing.performance.compression_level must be an integer from 1",
    ),
    (
        "checkpointing:\n  performance:\n    compress_below_free_gb: -1\n",
        "checkpointing.performance.compress_below_free_gb must be >= 0, got -1.0",
    ),
    (
        "checkpointing:\n  paths:\n    phase1: ./models/phase1/checkpoints/\n",
        "checkpointing.paths.phase1 must contain '{market}' exactly once",
    ),
    (
        "checkpointing:\n  paths:\n    phase1: ./models/{phase}/{market}/\n",
        "checkpointing.paths.phase1 must contain '{market}' exactly once",
    ),
    (
        "checkpointing:\n  phase1:\n    boundaries:\n"
        "      [{name: warm, at_progress: 0.2, at_timesteps: 5}]\n",
        "needs exactly one of at_progress or at_timesteps",
    ),
    (
        "checkpointing:\n  phase1:\n    boundaries: [{name: 'a-b', at_progress: 0.2}]\n",
        "invalid phase boundary name 'a-b'",
    ),
    (
        "checkpointing:\n  phase1:\n    boundaries: [{name: a, at_progress: 1.5}]\n",
        "checkpointing.phase1.boundaries[0].at_progress must be > 0 and <= 1, got 1.5",
    ),
    (
        "checkpointing:\n  retention: [1, 2]\n",
        "checkpointing.retention must be a mapping, got [1, 2]",
    ),
    ("checkpointing: 3\n", "checkpointing must be a mapping, got 3"),
    ("other: {}\n", "missing the 'checkpointing:' section"),
    ("checkpointing: {}\nadvisor: {}\n", "unknown key <top level>.advisor"),
    ("checkpointing:\n  retention:\n    keep_last_n: [\n", "not valid YAML"),
    ("", "the file is empty"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overlay_with_missing_base_names_both_files(tmp_path: Path) -> None:
    overlay = write(tmp_path, "checkpointing:\n  use_default_config: true\n", "llm.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(overlay)
    assert "llm.yaml" in str(err.value) and "checkpoint_config.yaml" in str(err.value)


def test_overlay_unknown_key(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_config.yaml").write_text("checkpointing: {}\n")
    overlay = write(
        tmp_path, "checkpointing:\n  use_default_config: true\n  base_intreval: 5\n", "llm.yaml"
    )
    with pytest.raises(ConfigError, match=r"base_intreval.*did you mean 'base_interval'\?"):
        load_config(overlay)


def test_config_is_immutable() -> None:
    cfg = load_config(ROOT / "config/checkpoint_config.yaml")
    with pytest.raises(AttributeError):
        cfg.retention.keep_last_n = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("stored", "stored"),
        ("deflate", "deflate"),
        ("adaptive", "adaptive"),
        ("true", "deflate"),
        ("false", "stored"),
    ],
)
def test_compression_modes_and_the_seed_notes_booleans(
    tmp_path: Path, value: str, mode: str
) -> None:
    path = write(
        tmp_path,
        f"checkpointing:\n  performance:\n    compression: {value}\n    compression_level: 6\n",
    )
    performance = load_config(path).performance
    assert (performance.compression, performance.compression_level) == (mode, 6)


def test_shipped_compression_is_adaptive_and_switches_on_free_space() -> None:
    performance = load_config(ROOT / "config/checkpoint_config.yaml").performance
    assert performance.compression == "adaptive"
    plenty = int(performance.compress_below_free_gb * 1e9)
    assert performance.zip_compression(plenty) == ("stored", 0)
    assert performance.zip_compression(plenty - 1) == ("deflate", performance.compression_level)
    assert performance.zip_compression(None) == ("stored", 0)  # free space unknown
