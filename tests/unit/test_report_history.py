"""A trial's history for the report (``tuner/reporting/history.py``): every checkpoint its
runs saved, from its reports and its folder, and which of them retention kept."""

from __future__ import annotations

from pathlib import Path

from checkpointing.naming import CheckpointName
from tests.report_files import checkpoint_dir, report_row, write_checkpoint, write_trial
from tuner.driver.experiments import load_experiment
from tuner.reporting.history import Folders, trial_history

RUN = "hist-a1b2c-00000"


def _name(steps: int, event: str, val: float = 0.1, run: str | None = RUN) -> CheckpointName:
    return CheckpointName("NQ", steps, event, val, val * 10, 7, run)


def _history(tmp_path: Path, rows: list[dict[str, object]], phases: tuple[int, ...] = (1,)):
    storage = tmp_path / "ray_results"
    write_trial(
        storage / "hist", "a1b2c_00000", market="NQ", seed=7, models=tmp_path / "models",
        rows=rows, phases=phases,
    )  # fmt: skip
    (trial,) = load_experiment(storage, "hist").trials
    folders = {p: checkpoint_dir(tmp_path / "models", "NQ", p) for p in phases}
    return trial_history(trial, folders, Folders())


def test_every_saved_checkpoint_is_an_event_and_kept_means_its_zip_is_there(
    tmp_path: Path,
) -> None:
    folder = checkpoint_dir(tmp_path / "models", "NQ")
    p1, b1 = _name(500, "periodic", 0.3), _name(500, "best", 0.3)
    p2, p3 = _name(1000, "periodic", -0.2), _name(1500, "periodic", 0.1)
    stop, end = _name(1700, "interrupt", 0.1), _name(2500, "phase_end", 0.4)
    for name in (p1, p3, stop, end):
        write_checkpoint(folder, name)
    write_checkpoint(folder, b1, twin_of=p1)  # p2 was deleted by retention
    write_checkpoint(folder, _name(500, "periodic", 0.9, run="other-run"))  # not this trial's
    rows = [
        report_row(p1, saved=[p1, b1]),
        report_row(p2, pruned=1, pruned_bytes=1234),
        report_row(p3),
        report_row(
            None,
            checkpoint=stop.filename,
            saved=[stop.filename],
            interrupted=True,
            timesteps=1700,
            phase_timesteps=1700,
            val_reward=0.1,
            run_id=RUN,
        ),
        report_row(p3, val_reward=0.25),  # the retry evaluated the same step again
        report_row(end, finished=True, pruned=2, pruned_bytes=10),
    ]
    history = _history(tmp_path, rows)

    assert [(e.name, e.kind, e.kept) for e in history.events] == [
        (p1.filename, "periodic", True),
        (b1.filename, "best", True),
        (p2.filename, "periodic", False),
        (p3.filename, "periodic", True),
        (stop.filename, "interrupt", True),
        (end.filename, "phase_end", True),
    ]
    assert [e.timesteps for e in history.events] == [500, 500, 1000, 1500, 1700, 2500]
    # One point per evaluated step (the retry's value), none for the interrupt's report.
    assert [p.timesteps for p in history.points] == [500, 1000, 1500, 2500]
    assert history.points[2].metrics["val_reward"] == 0.25
    assert history.pruned == {1: (3, 1244)}
    assert history.reports_saved


def test_reports_from_before_saved_still_show_the_files_on_disk(tmp_path: Path) -> None:
    folder = checkpoint_dir(tmp_path / "models", "NQ")
    p1, b1, p2 = _name(500, "periodic"), _name(500, "best"), _name(1000, "periodic")
    write_checkpoint(folder, p1)
    write_checkpoint(folder, b1, twin_of=p1)
    rows = [
        {"phase": 1, "timesteps": 500, "phase_timesteps": 500, "val_reward": 0.1,
         "run_id": RUN, "checkpoint": p1.filename},
        {"phase": 1, "timesteps": 1000, "phase_timesteps": 1000, "val_reward": 0.1,
         "run_id": RUN, "checkpoint": p2.filename},
    ]  # fmt: skip
    history = _history(tmp_path, rows)
    assert [(e.name, e.kept) for e in history.events] == [
        (p1.filename, True),
        (b1.filename, True),  # found on disk: no report named it
        (p2.filename, False),  # named by a report, gone since
    ]
    assert not history.reports_saved and history.pruned == {}


def test_a_later_phase_counts_from_where_the_earlier_ones_ended(tmp_path: Path) -> None:
    first, second = (
        checkpoint_dir(tmp_path / "models", "NQ", 1),
        checkpoint_dir(tmp_path / "models", "NQ", 2),
    )
    end1 = _name(3000, "phase_end")
    p = _name(400, "periodic")
    unreported = _name(800, "phase_boundary_warmup")
    write_checkpoint(first, end1)
    write_checkpoint(second, p, phase=2)
    write_checkpoint(second, unreported, phase=2)
    rows = [report_row(end1), report_row(p, completed=3000, phase=2)]
    history = _history(tmp_path, rows, phases=(1, 2))
    assert history.phase_starts == {1: 0, 2: 3000}
    steps = {e.name: (e.phase, e.timesteps, e.kind) for e in history.events}
    assert steps[end1.filename] == (1, 3000, "phase_end")
    assert steps[p.filename] == (2, 3400, "periodic")
    assert steps[unreported.filename] == (2, 3800, "boundary")
