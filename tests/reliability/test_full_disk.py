"""A real disk that fills up under a training run costs no checkpoint and does not stop training.

Each test mounts its own small tmpfs as the models root (``tests/tmpfs.py``; skipped with the
reason where mounting is not permitted, failed with it under ``CI=true``) and runs real
training processes on it (``train_script.py``, policy sized so that a checkpoint takes
~180 KB).

- *The disk guard*: a run fills the tmpfs down to the ``min_disk_space_gb`` floor; from then on
  its periodic/best saves are skipped, each with a warning naming the save and its step. The
  floor is room kept for urgent saves: a SIGTERM still gets its ``interrupt`` checkpoint. A run
  resumed from it with retention on frees room (deleting what the policy no longer keeps),
  saves again, and ends with its ``phase_end`` checkpoint, exit code 0.
- *ENOSPC mid-write*: after a finished run, another file takes all but 64 KB of the tmpfs. A
  resumed run skips its periodic saves, tries its ``phase_end`` save anyway, which fails with a
  real ENOSPC while the zip is written; the run still finishes (exit 0).

Both: no temporary is left, every listed checkpoint verifies, and every file of the checkpoints
committed before the disk filled is byte-identical afterwards (or, where retention deleted a
checkpoint, all of its files are gone).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checkpointing import list_checkpoints, load_config, verify_checkpoint
from checkpointing.files import parse_temp_name
from checkpointing.naming import parse_name
from checkpointing.store import CheckpointInfo
from tests.integration.train_script import (
    SKIP_WARNING,
    base_of,
    checkpoint_folder,
    leftovers,
    no_leftovers,
    write_config,
)
from tests.reliability.conftest import FaultLog, Tries
from tests.reliability.helpers import snapshot_tree, tree_changes
from tests.tmpfs import fill, mounted_tmpfs
from tests.training_processes import Child

pytestmark = pytest.mark.reliability

NET_ARCH = "80,80"  # ~14k parameters: a deflated zip of ~170 KB
TMPFS_SIZE = "2m"
FLOOR_GB = 0.001  # 1 MB of the 2 MB kept free: periodic saves stop after about four
ROOM_LEFT = 64 * 1024  # what the other file leaves free: less than one checkpoint
DISK_FULL = re.compile(r"disk full while saving (\S+): nothing was committed")
SAVED = re.compile(r"manager:saved (\S+)")


def _event(info: CheckpointInfo) -> str:
    name = info.name
    return getattr(name, "event", "periodic")


def _skips(child: Child) -> list[tuple[str, int]]:
    """(events, timesteps) of every save the run's disk guard skipped, from its warnings."""
    return [(m[1], int(m[2])) for m in SKIP_WARNING.finditer(child.stderr)]


def _check_skips(t: Tries, run: Child, infos: list[CheckpointInfo]) -> None:
    """One try per save the run skipped: a periodic or best save, and nothing saved then."""
    steps = {i.timesteps for i in infos}
    for events, at in _skips(run):
        with t.attempt(f"{events} save at {at} steps on a full disk"):
            assert events in ("periodic", "periodic+best"), events
            assert at not in steps, f"a checkpoint at {at} steps, whose save was skipped"


def _no_temporaries(root: Path) -> list[str]:
    """Commit and publish temporaries anywhere under ``root`` (expected: none)."""
    return [
        os.path.join(folder, name)
        for folder, _, files in os.walk(root)
        for name in files
        if parse_temp_name(name) is not None
    ]


def _checkpoint_files(tree: dict[str, tuple[str, str]], folder: str) -> dict[str, str]:
    """Relative path -> sha256 of the checkpoint files (zips and companions) in ``folder``."""
    out = {}
    for rel, (kind, digest) in tree.items():
        head, name = os.path.split(rel)
        if kind == "file" and head == folder and not name.startswith("."):
            out[rel] = digest
    return out


def _config(tmp_path: Path, **extra: Any) -> Path:
    """A save every 128 steps of a 4,000-step phase; ``extra`` as for ``write_config``."""
    return write_config(
        tmp_path / "checkpoint_config.yaml",
        base_interval=128,
        max_interval_multiplier=1.0,
        target_timesteps=4000,
        **extra,
    )


def _run_to(
    total: int, spawn: Callable[..., Child], args: list[Any], workdir: Path
) -> tuple[Child, int]:
    """Run the training script with ``args`` to the end: exit code 0, at least ``total``
    steps; returns the process and the steps it reached."""
    child = spawn(args, workdir)
    assert child.wait(timeout=120) == 0, child.diagnostics()
    done = int(child.wait_for_line("DONE").split()[1])
    assert done >= total
    return child, done


def _assert_intact(before: dict[str, str], after: dict[str, str], listed: set[str]) -> None:
    """Files of ``before`` are unchanged; a checkpoint no longer listed is gone entirely."""
    changed = [rel for rel in before.keys() & after.keys() if before[rel] != after[rel]]
    assert not changed, f"checkpoint files changed: {changed}"
    for rel in before.keys() - after.keys():
        zip_name = base_of(os.path.basename(rel)) + ".zip"
        assert zip_name not in listed, f"{rel} is gone but its checkpoint is listed"


def test_a_filling_tmpfs_skips_saves_and_keeps_room_for_interrupt_and_phase_end(
    spawn: Callable[..., Child], tmp_path: Path, fault_log: FaultLog
) -> None:
    config = _config(
        tmp_path,
        min_disk_space_gb=FLOOR_GB,
        retention={"keep_last_n": 1, "keep_top_k_by_reward": 1, "keep_top_k_by_sharpe": 0},
    )
    with (
        mounted_tmpfs(tmp_path / "tmpfs", TMPFS_SIZE) as root,
        fault_log.tries("disk full: a real tmpfs fills up under training") as t,
    ):
        folder = checkpoint_folder(config, root)
        base = ["--models-root", root, "--config", config]

        # Run 1 fills the disk down to the floor, skips saves, then gets a SIGTERM.
        first = spawn([*base, "--net-arch", NET_ARCH, "--timesteps", 10**6], tmp_path / "run1")
        first.wait_for_line("WARNING:checkpointing.manager:skipping", 120, stderr=True, count=3)
        first.send(signal.SIGTERM)
        assert first.wait(timeout=60) == 143, first.diagnostics()
        interrupted = Path(first.wait_for_line("INTERRUPTED").split(" ", 1)[1])
        saved_before = list_checkpoints(folder)
        assert len(saved_before) >= 3, "run 1 saved too little before the disk filled"
        before = _checkpoint_files(snapshot_tree(root), os.path.relpath(folder, root))
        _check_skips(t, first, saved_before)
        with t.attempt("interrupt save on a full disk"):
            assert "trying the interrupt save anyway" in first.stderr, first.diagnostics()
            assert interrupted.name in {i.filename for i in saved_before}
            verify_checkpoint(interrupted)

        # Run 2 resumes from the interrupt with retention on and finishes the phase.
        start = parse_name(interrupted.name)
        assert start is not None
        total = start.timesteps + 512
        args = [*base, "--prune", "--timesteps", total, "--resume-from", interrupted]
        second, done = _run_to(total, spawn, args, tmp_path / "run2")
        infos = list_checkpoints(folder)
        _check_skips(t, second, infos)
        with t.attempt("retention frees room on a full disk, then the phase_end save"):
            deleted = re.findall(r"checkpointing\.plan:.*: delete (\S+)", second.stderr)
            assert deleted, f"retention freed no room\n{second.diagnostics()}"
            saved = [m[1] for m in SAVED.finditer(second.stderr)]
            assert [n for n in saved if "_evt-periodic_" in n], second.diagnostics()
            assert [i.timesteps for i in infos if _event(i) == "phase_end"] == [done]
            assert start.run_id is not None
            run_dir = load_config(config).layout(root).run_dir(1, "NQ", start.run_id)
            final = run_dir / "phase1_foundational_final.zip"
            assert verify_checkpoint(final)["timesteps"] == done

        # No partial checkpoint anywhere, everything listed verifies, and what was committed
        # before the disk filled is byte-identical or was deleted whole by retention.
        assert _no_temporaries(root) == []
        assert leftovers(folder) == no_leftovers()
        for info in infos:
            verify_checkpoint(info.path)
        after = _checkpoint_files(snapshot_tree(root), os.path.relpath(folder, root))
        _assert_intact(before, after, {i.filename for i in infos})


def test_enospc_mid_write_on_a_real_full_disk_loses_nothing(
    spawn: Callable[..., Child], tmp_path: Path, fault_log: FaultLog
) -> None:
    config = _config(tmp_path)
    with (
        mounted_tmpfs(tmp_path / "tmpfs", TMPFS_SIZE) as root,
        fault_log.tries("disk full: ENOSPC in the middle of a write (real tmpfs)") as t,
    ):
        folder = checkpoint_folder(config, root)
        base = ["--models-root", root, "--config", config]
        first = spawn([*base, "--net-arch", NET_ARCH, "--timesteps", 384], tmp_path / "run1")
        assert first.wait(timeout=120) == 0, first.diagnostics()
        saved_before = list_checkpoints(folder)
        newest = max(saved_before, key=lambda i: (i.timesteps, _event(i) == "phase_end"))
        tree_before = snapshot_tree(root)

        ballast = fill(root, ROOM_LEFT)
        statvfs = os.statvfs(root)
        assert statvfs.f_bavail * statvfs.f_frsize < newest.size, "the disk still has room"
        total = newest.timesteps + 256
        args = [*base, "--timesteps", total, "--resume-from", newest.path]
        second, _ = _run_to(total, spawn, args, tmp_path / "run2")

        infos = list_checkpoints(folder)
        _check_skips(t, second, infos)
        failed = DISK_FULL.findall(second.stderr)
        for name in failed:
            with t.attempt(f"save of {name} hits ENOSPC"):
                assert not (folder / name).exists()
                # The guard stops periodic saves before they write; only urgent ones try.
                assert "_evt-phase_end_" in name, "a periodic save ran into the full disk"
        with t.attempt("phase_end save on a full disk"):
            assert "trying the phase_end save anyway" in second.stderr, second.diagnostics()
            assert [n for n in failed if "_evt-phase_end_" in n], failed
            # Nothing of any failed save is on disk; every file that was there is unchanged.
            assert [i.filename for i in infos] == [i.filename for i in saved_before]
            assert _no_temporaries(root) == []
            assert leftovers(folder) == no_leftovers()
            tree_after = snapshot_tree(root)
            changes = tree_changes(tree_before, tree_after)
            assert changes == [f"created {ballast.name!r}"], changes
            for info in infos:
                verify_checkpoint(info.path)
