"""The folder layout: templates, moved roots, market and run folders, folders found on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.layout import CheckpointFolder, Layout, PathsConfig, locate_folder

DEFAULT = PathsConfig()
FLAT = PathsConfig(phase1="./models/p1/{market}", phase2="./models/p2/{market}")


@pytest.mark.parametrize(
    ("paths", "root", "phase", "market", "checkpoint_dir", "market_dir"),
    [
        (DEFAULT, None, 1, "NQ", "models/phase1/NQ/checkpoints", "models/phase1/NQ"),
        (DEFAULT, None, 2, "ES", "models/phase2/ES/checkpoints", "models/phase2/ES"),
        (DEFAULT, None, 3, "6E", "models/phase3_hybrid/6E/checkpoints", "models/phase3_hybrid/6E"),
        (DEFAULT, "/data/m", 2, "ES", "/data/m/phase2/ES/checkpoints", "/data/m/phase2/ES"),
        (DEFAULT, "models", 1, "NQ", "models/phase1/NQ/checkpoints", "models/phase1/NQ"),
        # {market} is the last part: the market folder is the checkpoint folder.
        (FLAT, None, 1, "NQ", "models/p1/NQ", "models/p1/NQ"),
        (FLAT, "/data/m", 2, "NQ", "/data/m/p2/NQ", "/data/m/p2/NQ"),
        (
            PathsConfig(phase1="./models/phase1/{market}/deep/checkpoints"),
            None,
            1,
            "NQ",
            "models/phase1/NQ/deep/checkpoints",
            "models/phase1/NQ",
        ),
    ],
)
def test_checkpoint_and_market_folders(
    paths: PathsConfig,
    root: str | None,
    phase: int,
    market: str,
    checkpoint_dir: str,
    market_dir: str,
) -> None:
    layout = Layout(paths, root)
    assert layout.checkpoint_dir(phase, market) == Path(checkpoint_dir)
    assert layout.market_dir(phase, market) == Path(market_dir)
    assert layout.run_dir(phase, market, "20261205-031644-3fa2") == Path(
        market_dir, "runs", "20261205-031644-3fa2"
    )


@pytest.mark.parametrize("run_id", ["../x", "a/b", "a_b", ""])
def test_run_dir_refuses_a_bad_run_id(run_id: str) -> None:
    with pytest.raises(CheckpointNameError, match="run id"):
        Layout(DEFAULT).run_dir(1, "NQ", run_id)


def test_a_template_outside_the_root_cannot_be_moved() -> None:
    paths = PathsConfig(phase2="/elsewhere/{market}/checkpoints")
    assert Layout(paths).checkpoint_dir(2, "NQ") == Path("/elsewhere/NQ/checkpoints")
    moved = Layout(paths, "/data/m")
    assert moved.checkpoint_dir(1, "NQ") == Path("/data/m/phase1/NQ/checkpoints")
    with pytest.raises(ConfigError, match=r"checkpointing\.paths\.phase2") as err:
        moved.checkpoint_dir(2, "NQ")
    assert "'/elsewhere/{market}/checkpoints'" in str(err.value)
    assert "'/data/m'" in str(err.value)


@pytest.mark.parametrize("root", ["", "a\x00b"])
def test_an_empty_or_nul_root_is_refused(root: str) -> None:
    with pytest.raises(ConfigError, match="models root"):
        Layout(DEFAULT, root)


@pytest.mark.parametrize("phase", [0, 4, True, "1"])
def test_an_unknown_phase_is_refused(phase: object) -> None:
    with pytest.raises(ConfigError, match="phase must be one of"):
        Layout(DEFAULT).checkpoint_dir(phase, "NQ")  # type: ignore[arg-type]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A models root with real market folders, symlinked ones and folders that are no market."""
    root = tmp_path / "models"
    for rel in (
        "phase1/NQ/checkpoints",
        "phase1/ES/checkpoints",
        "phase1/N_Q/checkpoints",  # "_" is not allowed in a market name
        "phase1/.hidden/checkpoints",
        "phase1/GC",  # a market folder without a checkpoint folder
        "phase1/CL/real-checkpoints",
        "phase2/NQ/checkpoints",
        "phase3_hybrid/RTY/checkpoints",
    ):
        (root / rel).mkdir(parents=True)
    (root / "phase1/YM").symlink_to(root / "phase1/NQ", target_is_directory=True)
    (root / "phase1/CL/checkpoints").symlink_to("real-checkpoints", target_is_directory=True)
    (root / "phase1/notes.txt").write_text("not a folder")
    return root


def found(folders: list[CheckpointFolder]) -> list[tuple[int, str, Path]]:
    return [(f.phase, f.market, f.path) for f in folders]


def test_folders_finds_real_market_folders_only(root: Path) -> None:
    layout = Layout(DEFAULT, root)
    assert found(layout.folders()) == [
        (1, "ES", root / "phase1/ES/checkpoints"),
        (1, "NQ", root / "phase1/NQ/checkpoints"),
        (2, "NQ", root / "phase2/NQ/checkpoints"),
        (3, "RTY", root / "phase3_hybrid/RTY/checkpoints"),
    ]
    for folder in layout.folders():
        assert folder.path == layout.checkpoint_dir(folder.phase, folder.market)


def test_folders_of_given_phases_and_markets(root: Path) -> None:
    layout = Layout(DEFAULT, root)
    assert found(layout.folders(phases=[2, 3])) == [
        (2, "NQ", root / "phase2/NQ/checkpoints"),
        (3, "RTY", root / "phase3_hybrid/RTY/checkpoints"),
    ]
    assert found(layout.folders(markets=["NQ", "YM", "CL", "GC", "ZZ"])) == [
        (1, "NQ", root / "phase1/NQ/checkpoints"),
        (2, "NQ", root / "phase2/NQ/checkpoints"),
    ]
    with pytest.raises(CheckpointNameError, match="market"):
        layout.folders(markets=["N_Q"])


def test_folders_of_a_root_that_does_not_exist(tmp_path: Path) -> None:
    assert Layout(DEFAULT, tmp_path / "nothing").folders() == []


def test_folders_with_market_last_template(tmp_path: Path) -> None:
    for rel in ("p1/NQ", "p1/ES", "p1/bad_name"):
        (tmp_path / rel).mkdir(parents=True)
    (tmp_path / "p1/YM").symlink_to(tmp_path / "p1/NQ", target_is_directory=True)
    layout = Layout(FLAT, tmp_path)
    assert found(layout.folders(phases=[1])) == [
        (1, "ES", tmp_path / "p1/ES"),
        (1, "NQ", tmp_path / "p1/NQ"),
    ]


@pytest.mark.parametrize(
    ("rel", "paths", "expected"),
    [
        ("models/phase1/NQ/checkpoints", None, ("models", 1, "NQ")),
        ("models/phase1/NQ/checkpoints/", None, ("models", 1, "NQ")),
        ("deep/er/phase2/BRK.B/checkpoints", None, ("deep/er", 2, "BRK.B")),
        ("models/phase3_hybrid/ES/checkpoints", None, ("models", 3, "ES")),
        ("models/phase1/N_Q/checkpoints", None, None),
        ("models/phase1/NQ", None, None),
        ("models/phase4/NQ/checkpoints", None, None),
        ("models/p2/ES", FLAT, ("models", 2, "ES")),
    ],
)
def test_locate_folder(
    tmp_path: Path,
    rel: str,
    paths: PathsConfig | None,
    expected: tuple[str, int, str] | None,
) -> None:
    located = locate_folder(os.path.join(tmp_path, rel), paths)
    if expected is None:
        assert located is None
    else:
        assert located == (tmp_path / expected[0], expected[1], expected[2])


def test_locate_folder_of_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert locate_folder("models/phase1/NQ/checkpoints") == (tmp_path / "models", 1, "NQ")
