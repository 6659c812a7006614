"""A full disk never costs a checkpoint already saved, and never stops training.

(a) A real 2 MB tmpfs fills up: the disk guard skips periodic/best saves with a warning and a
    counter, still tries the phase_end save, and leaves no partial checkpoint.
(b) ENOSPC in the middle of a write: the save reports the error, its temporaries are gone,
    older checkpoints verify, and later saves succeed.
(c) A run that resumes on a nearly full disk sizes its first save by the checkpoints already
    there, not by the model's uncompressed guess: it saves when there is room for one.
(d) A minimum of free space far above what the disk has: every periodic and best save is
    refused with a warning naming the folder and counted, and the interrupt or phase_end save
    is still tried (and written, since the disk really has room).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from checkpointing import (
    TrainingInterrupted,
    learn_with_checkpoints,
    list_checkpoints,
    read_checkpoint_metadata,
    verify_checkpoint,
)
from checkpointing.disk import METADATA_ROOM, estimated_checkpoint_bytes
from checkpointing.snapshot import ModelSnapshot
from tests.integration.train_script import (
    SKIP_WARNING,
    ScriptedEvaluator,
    leftovers,
    make_callback,
    make_manager,
    make_model,
    make_train_env,
    no_leftovers,
    write_config,
)
from tests.tmpfs import fill, mounted_tmpfs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

# The policy is sized so that a checkpoint is ~170 KB: the 2 MB tmpfs holds about five of them
# above the 1 MB floor, and the schedule asks for about ten.
NET_ARCH = (80, 80)
MIN_FREE_GB = 0.001
TOTAL = 1500


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for this test only (skipped where mounting is not permitted,
    failed under CI=true)."""
    with mounted_tmpfs(tmp_path / "tmpfs", "2m") as mount_point:
        yield mount_point


def _small_disk_config(tmp_path: Path, max_interval_multiplier: float) -> Path:
    """A save every 128 steps or more, with the 1 MB floor of free space."""
    return write_config(
        tmp_path / "checkpoint_config.yaml",
        base_interval=128,
        max_interval_multiplier=max_interval_multiplier,
        target_timesteps=TOTAL,
        min_disk_space_gb=MIN_FREE_GB,
    )


def _events(info: Any) -> str:
    return info.name.event


def test_disk_guard_skips_saves_on_a_full_tmpfs_and_keeps_older_checkpoints(
    small_tmpfs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, keep_signal_handlers: None
) -> None:
    config = _small_disk_config(tmp_path, max_interval_multiplier=1.5)
    model = make_model(make_train_env(), net_arch=NET_ARCH)
    manager = make_manager(config, small_tmpfs)
    callback = make_callback(manager)
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        learn_with_checkpoints(model, TOTAL, callback)
    manager.close()

    # Training finished; some saves were skipped, and each skip was announced by name.
    assert model.num_timesteps >= TOTAL
    skipped = manager.state.skipped_saves
    assert skipped > 0
    skips = [m for r in caplog.records if (m := SKIP_WARNING.match(r.getMessage()))]
    assert len(skips) == skipped, [r.getMessage() for r in caplog.records]
    assert {m[1] for m in skips} <= {"periodic", "periodic+best"}

    infos = list_checkpoints(manager.folder)
    saved_steps = {i.timesteps for i in infos}
    assert not saved_steps & {int(m[2]) for m in skips}
    assert len([i for i in infos if _events(i) == "periodic"]) >= 2, "saves before the disk filled"

    # No partial checkpoint; everything committed before the disk filled is intact.
    assert leftovers(manager.folder) == no_leftovers()
    for info in infos:
        verify_checkpoint(info.path)

    # The phase_end save was still attempted despite the shortage.
    assert any("trying the phase_end save anyway" in r.getMessage() for r in caplog.records)
    outcome = callback.phase_end_outcome
    assert outcome is not None and outcome.skipped is None
    if outcome.error is None:
        assert [i.timesteps for i in infos if _events(i) == "phase_end"] == [model.num_timesteps]
        assert (manager.run_dir / "phase1_foundational_final.zip").is_file()
    else:
        assert isinstance(outcome.error, OSError) and outcome.error.errno == errno.ENOSPC


def test_a_resumed_run_on_a_nearly_full_disk_saves_when_one_checkpoint_fits(
    small_tmpfs: Path, tmp_path: Path, keep_signal_handlers: None
) -> None:
    config = _small_disk_config(tmp_path, max_interval_multiplier=1.0)
    model = make_model(make_train_env(), net_arch=NET_ARCH)
    first = make_manager(config, small_tmpfs)
    learn_with_checkpoints(model, 256, make_callback(first))
    first.close()
    saved = list_checkpoints(first.folder)
    newest = max(saved, key=lambda i: i.timesteps)
    one = newest.size + newest.vecnormalize_path.stat().st_size  # its zip and pkl

    # Another program leaves room above the floor halfway between what the guard asks for a
    # checkpoint like that one (plus room for its metadata) and the model's guess for a
    # checkpoint (an uncompressed zip and slack).
    floor = int(MIN_FREE_GB * 1e9)
    asked, guess = one + METADATA_ROOM, estimated_checkpoint_bytes(model)
    room = (asked + guess) // 2
    assert asked < room < guess, (asked, guess)
    fill(small_tmpfs, floor + room)

    # A new run from scratch has no checkpoint of its own: the model's guess does not fit.
    fresh = make_manager(config, small_tmpfs)
    skipped = fresh.save(model, None, "periodic", wait=True).result()
    fresh.close()
    assert skipped.skipped is not None and "low disk space" in skipped.skipped, skipped

    # The first run resumed: sized by its own newest checkpoint, the save fits. So does a new
    # run started from that checkpoint (sized by it).
    started = {"started_from": os.path.relpath(newest.path, small_tmpfs)}
    for second in (
        make_manager(config, small_tmpfs, run_id=first.run_id),
        make_manager(config, small_tmpfs, run_info=started),
    ):
        model.num_timesteps += 1  # another name than the run's saves so far
        outcome = second.save(model, None, "periodic", wait=True).result()
        second.close()
        assert outcome.skipped is None and outcome.ok, outcome
        (path,) = outcome.paths
        assert verify_checkpoint(path)["timesteps"] == model.num_timesteps
        assert verify_checkpoint(path)["run_id"] == second.run_id
        path.unlink()  # room for the next one
    for info in saved:  # the older checkpoints are untouched
        verify_checkpoint(info.path)


def test_enospc_during_a_write_fails_that_save_only(
    config_file: Path,
    models_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    keep_signal_handlers: None,
) -> None:
    real_write_zip = ModelSnapshot.write_zip
    calls = 0

    def write_zip_then_fill_the_disk(self: ModelSnapshot, path: Any, **how: Any) -> None:
        nonlocal calls
        calls += 1
        if calls != 2:
            real_write_zip(self, path, **how)
            return
        with open(path, "wb") as fh:  # part of a zip, then the disk is full
            fh.write(b"PK\x03\x04" + bytes(4096))
        raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))

    monkeypatch.setattr(ModelSnapshot, "write_zip", write_zip_then_fill_the_disk)
    model = make_model(make_train_env())
    manager = make_manager(config_file, models_root)
    futures = []
    save = manager.save

    def recording_save(*args: Any, **kwargs: Any) -> Any:
        futures.append(save(*args, **kwargs))
        return futures[-1]

    monkeypatch.setattr(manager, "save", recording_save)
    callback = make_callback(manager)
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        learn_with_checkpoints(model, 1500, callback)
    manager.close()

    outcomes = [f.result() for f in futures]
    failed = [o for o in outcomes if o.error is not None]
    assert len(failed) == 1, outcomes
    (bad,) = failed
    assert isinstance(bad.error, OSError) and bad.error.errno == errno.ENOSPC
    assert bad.paths == [] and not bad.ok
    assert manager.state.failed_saves == 1
    assert any("disk full while saving" in r.getMessage() for r in caplog.records)

    # Nothing of the failed save is on disk, not even a temporary.
    folder = manager.folder
    assert leftovers(folder) == no_leftovers()
    assert not [p.name for p in folder.iterdir() if f"_ts-{bad.timesteps:07d}_" in p.name]
    # Older checkpoints verify; training went on and every later save succeeded.
    infos = list_checkpoints(folder)
    assert [i for i in infos if i.timesteps < bad.timesteps]
    for info in infos:
        verify_checkpoint(info.path)
    later = outcomes[outcomes.index(bad) + 1 :]
    assert later and all(o.ok for o in later)
    assert "phase_end" in later[-1].events
    assert model.num_timesteps >= 1500


def test_best_model_after_a_failed_save_is_the_best_checkpoint_on_disk(
    config_file: Path, models_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_zip = ModelSnapshot.write_zip

    def no_room_for_the_second(self: ModelSnapshot, path: Any, **how: Any) -> None:
        if "_ts-0000200_" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
        write_zip(self, path, **how)

    monkeypatch.setattr(ModelSnapshot, "write_zip", no_room_for_the_second)
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config_file, models_root, async_saves=False)
    outcomes = []
    for steps, reward in ((100, 1.0), (200, 3.0), (300, 2.0)):
        model.num_timesteps = steps
        outcomes.append(manager.save(model, venv, "periodic", metrics={"val_reward": reward}))
    manager.close()
    assert [o.result().ok for o in outcomes] == [True, False, True]

    best = read_checkpoint_metadata(manager.market_dir / "best_model.zip")
    assert best is not None and best["val_reward"] == 2.0


@pytest.mark.parametrize("ending", ["phase_end", "interrupt"])
def test_disk_guard_refuses_periodic_and_best_saves_that_do_not_fit(
    ending: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, keep_signal_handlers: None
) -> None:
    min_free_gb = 1e6  # a petabyte: far above the free space of the test's folder
    assert psutil.disk_usage(tmp_path).free < min_free_gb * 1e9 / 2
    config = write_config(
        tmp_path / "c.yaml",
        base_interval=128,
        max_interval_multiplier=1,
        min_disk_space_gb=min_free_gb,
    )
    model = make_model(make_train_env())
    manager = make_manager(config, tmp_path / "models")
    # Rising metrics: the second and third evaluations are due a best save too.
    evaluator = ScriptedEvaluator([{"val_reward": 1.0}, {"val_reward": 1.5}, {"val_reward": 2.0}])
    stop_at = 600  # after the fourth evaluation (512 steps), before the fifth
    callback = make_callback(
        manager,
        evaluator=evaluator,
        stop_requested=lambda: ending == "interrupt" and model.num_timesteps >= stop_at,
        stop_poll_seconds=0.0,
    )
    with caplog.at_level(logging.WARNING, logger="checkpointing"):
        if ending == "interrupt":
            with pytest.raises(TrainingInterrupted):
                learn_with_checkpoints(model, 1024, callback)
        else:
            learn_with_checkpoints(model, 1024, callback)
    manager.close()
    end = model.num_timesteps
    assert end == (stop_at if ending == "interrupt" else 1024)

    # One skipped save per periodic evaluation, each announced with the folder, and counted.
    messages = [r.getMessage() for r in caplog.records]
    skips = [(m[1], int(m[2])) for msg in messages if (m := SKIP_WARNING.match(msg))]
    assert skips == [
        ("periodic+best" if t in (256, 384) else "periodic", t) for t in range(128, end + 1, 128)
    ], messages
    named = f"low disk space on {manager.folder}: "
    assert all(named in msg for msg in messages if SKIP_WARNING.match(msg)), messages
    assert manager.state.skipped_saves == len(skips)

    # The interrupt or phase_end save was still tried, and written: the disk has room for it.
    assert any(f"trying the {ending} save anyway" in msg for msg in messages), messages
    (info,) = list_checkpoints(manager.folder)
    assert (info.name.event, info.timesteps) == (ending, end)
    verify_checkpoint(info.path)
