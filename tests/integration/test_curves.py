"""Learning curves: a run writes TensorBoard event files with SB3's training figures, our
evaluation metrics and a marker per checkpoint event, and leaves nothing in the temp folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from checkpointing import list_checkpoints
from checkpointing.naming import CheckpointName
from tests.tiny_config import tiny_config_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _train(config_dir: Path, root: Path, curves: Path | None) -> object:
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    job = PhaseJob(
        market="NQ",
        seed=5,
        phase=1,
        timesteps=1536,
        base_interval=256,  # several evaluations: the first is the baseline a best beats
        models_root=root,
        quiet=True,
        curves_dir=curves,
        run_id="curves",
    )
    return train_phase(job, load_settings(config_dir), handle_signals=False)


def test_a_run_writes_its_learning_curves_and_nothing_to_the_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)  # where SB3 would put its own logs
    config_dir = tiny_config_dir(tmp_path / "config")
    root = tmp_path / "models"
    _train(config_dir, root, tmp_path / "tb")
    _train(config_dir, tmp_path / "other", None)
    # SB3 made no SB3-<date> folder for either run (torch may keep its own caches there).
    assert not [p.name for p in temp.iterdir() if p.name.startswith("SB3-")]

    runs = list((tmp_path / "tb").iterdir())
    assert [r.name for r in runs] == ["phase1_curves"]
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/entropy_loss", "train/explained_variance", "train/learning_rate"} <= tags
    assert {"eval/val_reward", "eval/sharpe_ratio"} <= tags
    assert {"checkpoints/periodic", "checkpoints/phase_end"} <= tags

    # Each evaluation is at the step of the checkpoint saved with it, with its metric.
    saved = {
        i.name.timesteps: i.name
        for i in list_checkpoints(root / "phase1" / "NQ" / "checkpoints")
        if isinstance(i.name, CheckpointName) and i.name.event in ("periodic", "phase_end")
    }
    curve = {e.step: e.value for e in events.Scalars("eval/val_reward")}
    assert set(curve) == set(saved)
    for step, name in saved.items():
        assert curve[step] == pytest.approx(name.val_reward, abs=1e-3)
    markers = {e.step for e in events.Scalars("checkpoints/phase_end")}
    assert markers == {max(saved)}
    # A marker for every checkpoint on disk, under its own event: a best beside its periodic
    # twin too (the same evaluation saved both).
    by_event: dict[str, set[int]] = {}
    for i in list_checkpoints(root / "phase1" / "NQ" / "checkpoints"):
        if isinstance(i.name, CheckpointName):
            by_event.setdefault(i.name.event, set()).add(i.name.timesteps)
    assert "best" in by_event  # the first evaluation's baseline and what beat it
    for event, steps in by_event.items():
        assert steps <= {e.step for e in events.Scalars(f"checkpoints/{event}")}, event
    # tensorboard --logdir on the folder finds the run
    assert any(p.name.startswith("events.out.tfevents") for p in runs[0].iterdir())
