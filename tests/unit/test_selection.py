"""Choosing the checkpoint to resume from, and the run that continues: one folder of many runs.

The folder holds two markets, several seeds, runs with ids and the legacy run (names without
a run id), written at controlled times (``os.utime``), with fake zips committed as the product
commits them (no SB3).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest

from checkpointing.errors import CheckpointNameError
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName, parse_name, validate_run_id
from checkpointing.selection import RunChoice, find_resume_checkpoint, run_to_continue
from checkpointing.store import commit_files

NAN = math.nan

# label: (market, seed, run, timesteps, event, mtime, metadata metrics)
CHECKPOINTS: dict[str, tuple[str, int, str | None, int, str, float, dict[str, float]]] = {
    # NQ seed 42, legacy run: the most timesteps, written first.
    "L3": ("NQ", 42, None, 3000, "periodic", 100, {"win_rate": 0.7}),
    "L12": ("NQ", 42, None, 12000, "periodic", 110, {"win_rate": 0.1}),
    "L12e": ("NQ", 42, None, 12000, "phase_end", 110, {"win_rate": 0.1}),
    # NQ seed 42, run a: phase ends, a best/periodic twin, an interrupt with the top value.
    "a4": ("NQ", 42, "a", 4000, "periodic", 200, {"win_rate": 0.3, "total_return": -0.2}),
    "a6e": ("NQ", 42, "a", 6000, "phase_end", 205, {"win_rate": 0.2}),
    "a8b": ("NQ", 42, "a", 8000, "best", 210, {"win_rate": 0.6}),
    "a8": ("NQ", 42, "a", 8000, "periodic", 210, {"win_rate": 0.6}),
    "a10e": ("NQ", 42, "a", 10000, "phase_end", 220, {"win_rate": 0.5}),
    "a11i": ("NQ", 42, "a", 11000, "interrupt", 230, {"win_rate": 0.9}),
    # NQ seed 42, run b: written last, fewest timesteps, no phase_end.
    "b2": ("NQ", 42, "b", 2000, "periodic", 300, {"win_rate": 0.2}),
    "b5": ("NQ", 42, "b", 5000, "periodic", 310, {"win_rate": 0.1}),
    # Other seeds and markets in the same folder, mostly written after NQ seed 42.
    "c1": ("NQ", 7, "c", 1000, "periodic", 400, {"win_rate": 0.99}),
    "c9e": ("NQ", 7, "c", 9000, "phase_end", 410, {"win_rate": 0.95}),
    # NQ seed 3: the legacy run was written last.
    "d9": ("NQ", 3, "d", 9000, "periodic", 100, {}),
    "s3L": ("NQ", 3, None, 500, "periodic", 600, {}),
    # NQ seed 5: run f's newest file (written after the legacy run's) is not its most steps.
    "f9": ("NQ", 5, "f", 9000, "periodic", 100, {}),
    "f5L": ("NQ", 5, None, 5000, "periodic", 600, {}),
    "f1": ("NQ", 5, "f", 1000, "periodic", 700, {}),
    # ES seed 42: a run "b" of its own (run ids are per market and seed), and run e.
    "eb30": ("ES", 42, "b", 30000, "periodic", 320, {"win_rate": 0.99}),
    "e20": ("ES", 42, "e", 20000, "periodic", 500, {"win_rate": 0.99}),
    "e20e": ("ES", 42, "e", 20000, "phase_end", 500, {"win_rate": 0.99}),
}


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is not under test here."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def save(
    folder: Path,
    market: str,
    seed: int,
    run: str | None,
    ts: int,
    event: str,
    mtime: float,
    metrics: dict[str, float],
) -> Path:
    """Commit a fake checkpoint (metrics in its metadata) and date its zip ``mtime``."""
    name = CheckpointName(market, ts, event, NAN, NAN, seed, run)

    def write_zip(tmp: Path) -> None:
        tmp.write_bytes(b"PK" + name.filename.encode())

    zip_path, _ = commit_files(
        folder,
        name.filename,
        write_zip,
        b"vec",
        build_metadata(name=name, phase=1, metrics=metrics, metrics_timesteps=ts),
    )
    os.utime(zip_path, (mtime, mtime))
    return zip_path


def corrupt(path: Path) -> None:
    """Truncate a zip, keeping its mtime (so the run it belongs to is still written last)."""
    st = path.stat()
    path.write_bytes(path.read_bytes()[:-1])
    os.utime(path, (st.st_atime, st.st_mtime))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints"
    for fields in CHECKPOINTS.values():
        save(folder, *fields)
    (folder / "phase1_99999_steps.zip").write_bytes(b"PK v1")  # a v1 name: never a candidate
    os.utime(folder / "phase1_99999_steps.zip", (999, 999))
    return folder


def path_of(folder: Path, label: str) -> Path:
    market, seed, run, ts, event, _, _ = CHECKPOINTS[label]
    return folder / CheckpointName(market, ts, event, NAN, NAN, seed, run).filename


def label_of(folder: Path, path: Path | None) -> str | None:
    if path is None:
        return None
    return next(label for label in CHECKPOINTS if path_of(folder, label) == path)


NQ42 = {"market": "NQ", "seed": 42}

FIND_CASES = [
    # --- latest
    pytest.param("latest", {**NQ42, "run_id": "b"}, "b5", id="latest-in-run-ignores-others"),
    pytest.param("latest", {**NQ42, "run_id": "a"}, "a11i", id="latest-in-run-interrupt"),
    pytest.param("latest", NQ42, "b5", id="latest-of-run-written-last-not-most-steps"),
    pytest.param("latest", {**NQ42, "any_run": True}, "L12e", id="latest-any-run-crosses"),
    pytest.param("latest", {"market": "NQ", "seed": 7}, "c9e", id="latest-other-seed"),
    pytest.param("latest", {"market": "NQ", "seed": 3}, "s3L", id="latest-legacy-written-last"),
    pytest.param("latest", {"market": "NQ", "seed": 5}, "f9", id="latest-run-by-its-newest-file"),
    pytest.param("latest", {"market": "ES", "seed": 42}, "e20e", id="latest-ends-first-on-tie"),
    pytest.param("latest", {**NQ42, "run_id": "e"}, None, id="latest-run-of-other-market"),
    pytest.param("latest", {**NQ42, "run_id": "zz"}, None, id="latest-unknown-run"),
    # --- phase_end
    pytest.param("phase_end", NQ42, "a10e", id="phase-end-among-runs-that-have-one"),
    pytest.param("phase_end", {**NQ42, "run_id": "a"}, "a10e", id="phase-end-newest-of-run"),
    pytest.param("phase_end", {**NQ42, "run_id": "b"}, None, id="phase-end-none-in-run"),
    pytest.param("phase_end", {**NQ42, "any_run": True}, "L12e", id="phase-end-any-run"),
    # --- best:<metric>, from the metadata (the names carry no metrics)
    pytest.param(
        "best:win_rate", {**NQ42, "run_id": "a"}, "a8b", id="best-interrupt-never-wins-twin-once"
    ),
    pytest.param("best:win_rate", NQ42, "b2", id="best-of-run-written-last"),
    pytest.param("best:win_rate", {**NQ42, "any_run": True}, "L3", id="best-any-run"),
    pytest.param(
        "best:total_return", {**NQ42, "run_id": "a"}, "a4", id="best-nan-never-ranks-negative-does"
    ),
    pytest.param("best:total_return", {**NQ42, "run_id": "b"}, None, id="best-all-nan"),
]


@pytest.mark.parametrize(("spec", "kwargs", "expected"), FIND_CASES)
def test_find_resume_checkpoint(
    folder: Path, spec: str, kwargs: dict[str, object], expected: str | None
) -> None:
    found = find_resume_checkpoint(folder, spec, **kwargs)  # type: ignore[arg-type]
    assert label_of(folder, found) == expected


def test_the_chosen_name_says_its_run(folder: Path) -> None:
    found = find_resume_checkpoint(folder, "latest", market="NQ", seed=42)
    assert found is not None
    name = parse_name(found.name)
    assert isinstance(name, CheckpointName) and name.run_id == "b"


@pytest.mark.parametrize(
    ("spec", "kwargs", "damaged", "expected"),
    [
        pytest.param("latest", NQ42, "b5", "b2", id="latest-next-of-same-run"),
        pytest.param("best:win_rate", NQ42, "b2", "b5", id="best-next-of-same-run"),
        pytest.param("latest", {**NQ42, "any_run": True}, "L12e", "L12", id="latest-any-run-next"),
        pytest.param("phase_end", {**NQ42, "run_id": "a"}, "a10e", "a6e", id="phase-end-next"),
    ],
)
def test_a_checkpoint_failing_verification_is_skipped_for_the_next_of_its_run(
    folder: Path,
    caplog: pytest.LogCaptureFixture,
    spec: str,
    kwargs: dict[str, object],
    damaged: str,
    expected: str,
) -> None:
    corrupt(path_of(folder, damaged))
    with caplog.at_level(logging.WARNING, logger="checkpointing.selection"):
        found = find_resume_checkpoint(folder, spec, **kwargs)  # type: ignore[arg-type]
    assert label_of(folder, found) == expected
    assert "fails verification" in caplog.text
    assert path_of(folder, damaged).name in caplog.text


def test_a_run_whose_checkpoints_all_fail_gives_nothing_rather_than_another_runs(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt(path_of(folder, "b2"))
    corrupt(path_of(folder, "b5"))
    with caplog.at_level(logging.WARNING, logger="checkpointing.selection"):
        assert find_resume_checkpoint(folder, "latest", market="NQ", seed=42) is None
    assert caplog.text.count("fails verification") == 2


def test_run_id_and_any_run_together_are_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match="either run_id or any_run"):
        find_resume_checkpoint(folder, "latest", seed=42, run_id="a", any_run=True)


@pytest.mark.parametrize("run_id", ["a_b", "../a", ""])
def test_a_bad_run_id_is_refused(folder: Path, run_id: str) -> None:
    with pytest.raises(CheckpointNameError, match="invalid run id"):
        find_resume_checkpoint(folder, "latest", seed=42, run_id=run_id)


@pytest.mark.parametrize("spec", ["newest", "best:sharpe", "best:"])
def test_a_bad_spec_is_refused(folder: Path, spec: str) -> None:
    with pytest.raises(ValueError, match=repr(spec)):
        find_resume_checkpoint(folder, spec, seed=42)


# --------------------------------------------------------------------------- run_to_continue

FRESH = "<fresh>"

CONTINUE_CASES = [
    # checkpoint label (None: from scratch), requested, expected run, continues, from_run
    pytest.param("b5", None, "b", True, "b", id="newest-of-run-continues-it"),
    pytest.param("a11i", None, "a", True, "a", id="newest-interrupt-continues-its-run"),
    pytest.param("b5", "b", "b", True, "b", id="newest-with-its-run-requested"),
    pytest.param("a4", None, FRESH, False, "a", id="older-checkpoint-starts-new-run"),
    pytest.param("a8b", None, FRESH, False, "a", id="older-best-starts-new-run"),
    pytest.param("L12e", None, FRESH, False, None, id="legacy-starts-new-run"),
    pytest.param("a4", "new-1", "new-1", False, "a", id="older-with-free-requested"),
    pytest.param("b5", "new-1", "new-1", False, "b", id="newest-with-other-run-requested"),
    pytest.param(None, "new-1", "new-1", False, None, id="scratch-requested-free"),
    pytest.param(None, "e", "e", False, None, id="requested-used-by-other-market-only"),
    pytest.param(None, "c", "c", False, None, id="requested-used-by-other-seed-only"),
    pytest.param(None, None, FRESH, False, None, id="scratch-fresh"),
]


def runs_of(folder: Path, market: str = "NQ", seed: int = 42) -> set[str | None]:
    """The run ids of (market, seed) that have checkpoints in ``folder``."""
    names = [parse_name(p.name) for p in folder.glob("*.zip")]
    return {
        n.run_id
        for n in names
        if isinstance(n, CheckpointName) and (n.market, n.seed) == (market, seed)
    }


def assert_fresh(choice: RunChoice, folder: Path) -> None:
    assert validate_run_id(choice.run_id) == choice.run_id
    assert choice.run_id not in runs_of(folder)
    assert choice.run_id != choice.from_run


@pytest.mark.parametrize(("label", "requested", "run", "continues", "from_run"), CONTINUE_CASES)
def test_run_to_continue(
    folder: Path,
    label: str | None,
    requested: str | None,
    run: str,
    continues: bool,
    from_run: str | None,
) -> None:
    checkpoint = None if label is None else path_of(folder, label)
    choice = run_to_continue(folder, "NQ", 42, checkpoint, requested)
    assert (choice.continues, choice.started_from, choice.from_run) == (
        continues,
        checkpoint,
        from_run,
    )
    if run == FRESH:
        assert_fresh(choice, folder)
    else:
        assert choice.run_id == run


@pytest.mark.parametrize("label", ["e20e", "e20"])
def test_newest_step_saved_under_two_events_continues_its_run_from_either(
    folder: Path, label: str
) -> None:
    checkpoint = path_of(folder, label)
    assert run_to_continue(folder, "ES", 42, checkpoint) == RunChoice("e", True, checkpoint, "e")


@pytest.mark.parametrize(
    ("label", "newer"),
    [
        pytest.param("b2", True, id="older-checkpoint-of-the-requested-run"),
        pytest.param("a4", False, id="checkpoint-of-another-run"),
        pytest.param(None, False, id="from-scratch"),
    ],
)
def test_requesting_a_run_that_has_checkpoints_is_refused_with_how_to_continue_it(
    folder: Path, label: str | None, newer: bool
) -> None:
    checkpoint = None if label is None else path_of(folder, label)
    with pytest.raises(CheckpointNameError) as err:
        run_to_continue(folder, "NQ", 42, checkpoint, requested="b")
    message = str(err.value)
    assert "run 'b' already has checkpoints of NQ seed 42" in message
    assert "--resume-from latest --run-id b" in message
    assert ("newer than" in message) is newer


def test_a_bad_requested_run_id_is_refused(folder: Path) -> None:
    with pytest.raises(CheckpointNameError, match="invalid run id 'a_b'"):
        run_to_continue(folder, "NQ", 42, None, requested="a_b")


@pytest.mark.parametrize(
    ("previous_run", "target", "expected"),
    [
        pytest.param("p", "shared", "p", id="unused-in-target-keeps-its-id"),
        pytest.param("a", "shared", FRESH, id="used-in-target-gets-fresh-id"),
        pytest.param("a", "missing", "a", id="target-not-yet-created-keeps-its-id"),
    ],
)
def test_continuing_from_the_previous_phases_checkpoint(
    folder: Path, tmp_path: Path, previous_run: str, target: str, expected: str
) -> None:
    previous = save(tmp_path / "phase1", "NQ", 42, previous_run, 7000, "phase_end", 900, {})
    into = folder if target == "shared" else tmp_path / "phase2"
    choice = run_to_continue(into, "NQ", 42, previous)
    assert (choice.continues, choice.started_from, choice.from_run) == (
        False,
        previous,
        previous_run,
    )
    if expected == FRESH:
        assert_fresh(choice, folder)
    else:
        assert choice.run_id == expected
