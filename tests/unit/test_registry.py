"""The registry: incremental updates equal a rebuild; stale or missing means a scan; find_best."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpointing.cleanup import delete_checkpoint
from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.errors import CheckpointNameError, RegistryError
from checkpointing.layout import locate_folder
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName
from checkpointing.policies import TopK
from checkpointing.registry import (
    Registry,
    find_best,
)
from checkpointing.retention import prune_folder
from checkpointing.selection import find_resume_checkpoint
from checkpointing.store import commit_files, list_checkpoints

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = CheckpointConfig()
NAN = float("nan")


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not under test here."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def save(
    root: Path,
    phase: int,
    market: str,
    ts: int,
    *,
    event: str = "periodic",
    val: float = 0.1,
    sharpe: float = 1.0,
    win_rate: float = 0.5,
    seed: int = 42,
    registry: Registry | None = None,
) -> Path:
    """Commit a small real checkpoint, telling ``registry`` through the on_commit hook."""
    name = CheckpointName(market, ts, event, val, sharpe, seed)
    zip_path, _ = commit_files(
        CONFIG.checkpoint_dir(phase, market, root),
        name.filename,
        lambda tmp: tmp.write_bytes(b"PK" + name.filename.encode()),
        b"vec" * ts.bit_length(),
        build_metadata(
            name=name,
            phase=phase,
            metrics={"val_reward": val, "sharpe_ratio": sharpe, "win_rate": win_rate},
            metrics_timesteps=ts,
        ),
        on_commit=None if registry is None else registry.record,
    )
    return zip_path


def stored(registry: Registry) -> dict[str, object]:
    doc = json.loads(registry.path.read_text())
    checkpoints: dict[str, object] = doc["checkpoints"]
    return checkpoints


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three folders (phase1/NQ, phase1/ES, phase2/NQ), saved through the registry hook."""
    root = tmp_path / "models"
    registry = Registry(root)
    for i in range(1, 13):
        save(
            root,
            1,
            "NQ",
            i * 1000,
            val=i / 100,
            sharpe=(i % 5) / 2,
            win_rate=i / 20,
            seed=42 if i % 2 else 7,
            registry=registry,
        )
    save(root, 1, "NQ", 13_000, event="interrupt", val=NAN, sharpe=NAN, registry=registry)
    save(root, 1, "ES", 1000, event="best", val=0.5, sharpe=2.0, registry=registry)
    save(root, 2, "NQ", 5000, event="phase_end", val=0.2, sharpe=0.3, registry=registry)
    return root


def test_incremental_registry_equals_a_rebuild(root: Path) -> None:
    registry = Registry(root)
    prune_folder(
        CONFIG.checkpoint_dir(1, "NQ", root), RetentionConfig(keep_last_n=2), registry=registry
    )
    save(root, 1, "NQ", 20_000, registry=registry)
    incremental = stored(registry)
    assert len(incremental) == len(list(root.glob("phase*/*/checkpoints/*.zip")))
    registry.rebuild()
    assert stored(registry) == incremental


def test_entries_carry_the_essential_metadata(root: Path) -> None:
    (entry,) = Registry(root).entries(phase=1, market="ES")
    assert (
        entry.path
        == "phase1/ES/checkpoints/" + CheckpointName("ES", 1000, "best", 0.5, 2.0, 42).filename
    )
    assert (entry.phase, entry.market, entry.seed, entry.timesteps, entry.event) == (
        1,
        "ES",
        42,
        1000,
        "best",
    )
    assert entry.metrics == {
        "val_reward": 0.5,
        "sharpe_ratio": 2.0,
        "win_rate": 0.5,
        "max_drawdown": None,
        "total_return": None,
    }
    zip_path = entry.absolute(root)
    assert entry.files["zip"]["size"] == zip_path.stat().st_size
    assert len(entry.files["zip"]["sha256"]) == 64
    pkl = zip_path.with_name(zip_path.name[: -len(".zip")] + "_vecnormalize.pkl")
    assert entry.files["vecnormalize"]["size"] == pkl.stat().st_size


def test_registry_has_no_absolute_paths_and_survives_a_moved_root(
    root: Path, tmp_path: Path
) -> None:
    text = Registry(root).path.read_text()
    assert str(tmp_path) not in text
    moved = tmp_path / "elsewhere" / "models"
    moved.parent.mkdir()
    root.rename(moved)
    best = find_best(moved, 1, "NQ", "val_reward")
    assert best is not None and best.absolute(moved).exists()
    assert best.timesteps == 12_000


def test_find_best(root: Path) -> None:
    assert find_best(root, 1, "NQ", "val_reward").timesteps == 12_000  # type: ignore[union-attr]
    assert find_best(root, 1, "NQ", "val_reward", seed=7).timesteps == 12_000  # type: ignore[union-attr]
    assert find_best(root, 1, "NQ", "val_reward", seed=42).timesteps == 11_000  # type: ignore[union-attr]
    # win_rate is not in the name: the registry has it from the metadata
    assert find_best(root, 1, "NQ", "win_rate").timesteps == 12_000  # type: ignore[union-attr]
    # Sharpe 2.0 at 4K and 9K: a tie goes to more timesteps
    assert find_best(root, 1, "NQ", "sharpe_ratio").timesteps == 9_000  # type: ignore[union-attr]
    assert find_best(root, 1, "NQ", "max_drawdown") is None  # never measured: NaN never ranks
    assert find_best(root, 3, "NQ", "val_reward") is None  # no folder
    assert find_best(root, 1, "NQ", "val_reward", seed=99) is None


def test_metric_ties_go_to_the_smaller_name_everywhere(tmp_path: Path) -> None:
    """The registry, resume-from-best (registry or files) and retention's top-K agree."""
    root = tmp_path / "models"
    registry = Registry(root)
    # One run, two models with the same value at the same timesteps (another Sharpe).
    larger = save(root, 1, "NQ", 50_000, event="periodic", val=0.3, registry=registry)
    smaller = save(root, 1, "NQ", 50_000, event="best", val=0.3, sharpe=2.0, registry=registry)
    save(root, 1, "NQ", 40_000, val=0.3, registry=registry)  # the same value, fewer timesteps
    assert smaller.name < larger.name
    folder = CONFIG.checkpoint_dir(1, "NQ", root)
    best = find_best(root, 1, "NQ", "val_reward")
    assert best is not None and best.absolute(root) == smaller
    assert find_resume_checkpoint(folder, "best:val_reward", any_run=True) == smaller
    infos = list_checkpoints(folder)
    decisions = TopK("val_reward", 1).decide(infos)
    assert [i.path for i, why in zip(infos, decisions, strict=True) if why] == [smaller]


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((1, "NQ", "profit"), RegistryError, "metric must be one of"),
        ((4, "NQ", "val_reward"), RegistryError, "phase must be one of [1, 2, 3], got 4"),
        ((1, "N/Q", "val_reward"), CheckpointNameError, "invalid market name 'N/Q'"),
    ],
)
def test_find_best_refuses_bad_queries(
    root: Path, args: tuple[int, str, str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as excinfo:
        find_best(root, *args)
    assert message in str(excinfo.value)


def test_missing_registry_falls_back_to_a_scan(root: Path) -> None:
    registry = Registry(root)
    before = [e.to_json() for e in registry.entries()]
    registry.path.unlink()
    assert [e.to_json() for e in registry.entries()] == before
    assert find_best(root, 2, "NQ", "val_reward").event == "phase_end"  # type: ignore[union-attr]
    assert not registry.path.exists()  # readers never write


def test_stale_registry_falls_back_to_a_scan(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry(root)
    best = find_best(root, 1, "NQ", "val_reward")
    assert best is not None
    delete_checkpoint(best.absolute(root))  # deleted behind the registry's back
    better = save(root, 1, "NQ", 30_000, val=0.9)  # saved without the hook
    with caplog.at_level(logging.INFO, logger="checkpointing.registry"):
        entries = registry.entries(1, "NQ")
    assert "is stale for phase1/NQ/checkpoints" in caplog.text
    names = {e.name for e in entries}
    assert best.name not in names and better.name in names
    assert find_best(root, 1, "NQ", "val_reward").name == better.name  # type: ignore[union-attr]
    # the next record brings the folder in line
    save(root, 1, "NQ", 31_000, registry=registry)
    incremental = stored(registry)
    registry.rebuild()
    assert stored(registry) == incremental


def test_a_reader_reads_the_registry_again_once_it_changed(root: Path) -> None:
    reader = Registry(root)  # a browser reads several folders through one reader
    (entry,) = reader.entries(1, "ES")
    assert reader.entries(1, "ES") == [entry]
    meta = build_metadata(name=CheckpointName("ES", 1000, "best", 0.5, 2.0, 42), phase=1)
    meta["val_reward"] = 0.7  # the same checkpoint, indexed again with other figures
    Registry(root).record(entry.absolute(root), meta)
    (again,) = reader.entries(1, "ES")
    assert (entry.metric("val_reward"), again.metric("val_reward")) == (0.5, 0.7)


def test_first_record_indexes_what_was_already_there(tmp_path: Path) -> None:
    root = tmp_path / "models"
    save(root, 1, "NQ", 1000)
    save(root, 2, "ES", 1000)
    registry = Registry(root)
    save(root, 1, "NQ", 2000, registry=registry)
    assert len(stored(registry)) == 3


def test_unreadable_registry_is_scanned_and_repaired(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(root)
    expected = stored(registry)
    registry.path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="checkpointing.registry"):
        assert len(registry.entries()) == len(expected)
    assert "is unreadable" in caplog.text
    zip_path = save(root, 1, "ES", 2000, registry=registry)
    assert set(stored(registry)) == set(expected) | {registry.relative(zip_path)}


def test_record_outside_the_root_warns_and_never_fails_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "models")
    (tmp_path / "models").mkdir()
    with caplog.at_level(logging.WARNING, logger="checkpointing.registry"):
        zip_path = save(tmp_path / "other", 1, "NQ", 1000, registry=registry)
    assert zip_path.exists()
    assert "is not under the registry root" in caplog.text
    assert not registry.path.exists()


def test_record_outside_the_layout_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What rebuild() would not find is not recorded either: incremental == rebuilt."""
    root = tmp_path / "models"
    registry = Registry(root)
    save(root, 1, "NQ", 1000, registry=registry)
    name = CheckpointName("NQ", 2000, "periodic", 0.1, 1.0, 42)
    with caplog.at_level(logging.WARNING, logger="checkpointing.registry"):
        commit_files(
            root / "scratch",
            name.filename,
            lambda p: p.write_bytes(b"PK"),
            None,
            build_metadata(name=name, phase=1),
            on_commit=registry.record,
        )
    assert "is not a checkpoint folder of the layout" in caplog.text
    assert len(stored(registry)) == 1


def test_forget_without_a_registry_creates_none(tmp_path: Path) -> None:
    root = tmp_path / "models"
    zip_path = save(root, 1, "NQ", 1000)
    delete_checkpoint(zip_path)
    Registry(root).forget([zip_path])
    assert not (root / "registry.json").exists()


def test_layout_helpers(root: Path) -> None:
    (root / "phase1" / "bad_name").mkdir()
    (root / "phase1" / "YM").mkdir()  # no checkpoints/ below: not a folder of the layout
    assert [(f.phase, f.market) for f in CONFIG.layout(root).folders()] == [
        (1, "ES"),
        (1, "NQ"),
        (2, "NQ"),
    ]
    assert [f.market for f in CONFIG.layout(root).folders([1], ["NQ", "YM"])] == ["NQ"]
    assert locate_folder(CONFIG.checkpoint_dir(3, "6E", root)) == (root, 3, "6E")
    assert locate_folder(root / "phase1") is None


def test_resume_from_best_skips_a_checkpoint_that_fails_verification(root: Path) -> None:
    folder = CONFIG.checkpoint_dir(1, "NQ", root)
    best = find_resume_checkpoint(folder, "best:val_reward", any_run=True)
    assert best is not None and best.name.startswith("NQ_ts-0012000")
    with open(best, "ab") as fh:
        fh.write(b"corrupted")
    second = find_resume_checkpoint(folder, "best:val_reward", any_run=True)
    assert second is not None and second.name.startswith("NQ_ts-0011000")
    # seed 7's best (12K) is the corrupted one -> its next best
    seed7 = find_resume_checkpoint(folder, "best:val_reward", seed=7)
    assert seed7 is not None and seed7.name.startswith("NQ_ts-0010000")


def test_resume_from_a_folder_outside_the_layout(tmp_path: Path) -> None:
    folder = tmp_path / "my_checkpoints"
    for ts, sharpe in ((1000, 1.0), (2000, 3.0), (3000, 2.0)):
        name = CheckpointName("NQ", ts, "periodic", 0.1, sharpe, 1)
        commit_files(
            folder,
            name.filename,
            lambda p: p.write_bytes(b"PK"),
            None,
            build_metadata(name=name, phase=1, metrics={"sharpe_ratio": sharpe}),
        )
    best = find_resume_checkpoint(folder, "best:sharpe_ratio")
    assert best is not None and best.name.startswith("NQ_ts-0002000")


@pytest.mark.parametrize("spec", ["best", "best:profit", "worst:val_reward"])
def test_resume_spec_is_checked(root: Path, spec: str) -> None:
    with pytest.raises(ValueError, match=r"resume spec must be|unknown metric"):
        find_resume_checkpoint(root, spec)


def test_cli_rebuild(root: Path) -> None:
    expected = stored(Registry(root))
    Registry(root).path.unlink()
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    cmd = [sys.executable, "-m", "checkpointing.registry", "rebuild", "--root", str(root)]
    out = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"indexed {len(expected)} checkpoints" in out.stdout
    assert stored(Registry(root)) == expected
    cmd[-1] = str(root / "missing")
    out = subprocess.run(cmd, cwd=root.parent, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr
