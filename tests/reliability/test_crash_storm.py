"""A training run SIGKILLed again and again on one models folder never loses a checkpoint.

The storm: ``KILLS`` times in a row, a real training process (``train_script.py``, retention
on) resumes from the newest checkpoint of the folder (fresh while there is none) and is
SIGKILLed after a random delay after its start, its first evaluation or its first commit (in
turn): while starting, loading, evaluating, training, snapshotting, writing, committing or
pruning. The delays come from a seeded RNG; the seed is printed and
``RELIABILITY_SEED=<seed>`` replays them. Then one more resumed run per stage of a commit is
killed exactly there (``train_script.py --kill-at-replace``, as in
``tests/integration/test_crash_consistency.py``), the last one leaving the temporaries of a
half-written checkpoint.

What holds after every kill: the run died of that SIGKILL (it did not stop on its own), every
listed checkpoint verifies, no temporary or orphan companion is listed, every temporary left
belongs to a killed run, and the checkpoint a resume picks is the newest one and never older
than the one the previous run resumed from. After a stage kill, exactly the pieces of the
second checkpoint that stage leaves are there. After the storm: every checkpoint loads, a
retention pass sweeps every leftover, and a last run resumes from the newest checkpoint and
trains to its end, saving only beyond the step it resumed from.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpointing import list_checkpoints, load_checkpoint, load_config, verify_checkpoint
from checkpointing.files import parse_temp_name
from checkpointing.naming import parse_name
from checkpointing.retention import prune_folder
from checkpointing.selection import find_resume_checkpoint
from checkpointing.store import CheckpointInfo
from tests.integration.train_script import (
    COMMIT_STAGE_LEFTOVERS,
    MARKET,
    SEED,
    base_of,
    checkpoint_folder,
    kill_at_stage,
    leftovers,
    make_raw_env,
    no_leftovers,
    suffixes,
    write_config,
)
from tests.reliability.conftest import FaultLog
from tests.training_processes import Child

pytestmark = pytest.mark.reliability

KILLS = 30
# Each kill comes up to MAX_DELAY seconds after one of these moments of the run, in turn: its
# start (most of those kills hit start-up and loading), its first evaluation (READY; from then
# on it writes, commits and prunes), and its first commit, so that runs of the storm resume
# from checkpoints on any machine, however slow.
ANCHORS = ("READY", "its first commit", "the start")
MAX_DELAY = 1.2
SAVED = "INFO:checkpointing.manager:saved "  # train_script's log line after each commit
# The last stage leaves temporaries behind for the final retention pass to sweep.
STAGE_ORDER = ("after_zip_rename", "after_json_rename", "after_pkl_rename", "temps_written")
FINAL_STEPS = 512


def _storm_seed() -> int:
    raw = os.environ.get("RELIABILITY_SEED")
    return int(raw) if raw else random.SystemRandom().randrange(2**32)


def _timesteps(path: Path | None) -> int:
    """The timesteps a checkpoint's name says; -1 for no checkpoint (a fresh run)."""
    if path is None:
        return -1
    name = parse_name(path.name)
    assert name is not None, path
    return name.timesteps


def _temporaries_by_owner(folder: Path) -> dict[str, int]:
    """Every commit temporary in ``folder``: file name -> pid of the process that wrote it."""
    names = os.listdir(folder) if folder.is_dir() else []  # a run killed before its first save
    parsed = {name: parse_temp_name(name) for name in names}
    return {name: p[2] for name, p in parsed.items() if p is not None}


class Storm:
    """Runs on one models folder, each resumed from the newest checkpoint the folder has."""

    def __init__(self, spawn: Callable[..., Child], work: Path) -> None:
        self.spawn = spawn
        self.work = work
        self.config = write_config(
            work / "checkpoint_config.yaml", retention={"keep_last_n": 4, "prune_frequency": 3}
        )
        self.root = work / "models"
        self.folder = checkpoint_folder(self.config, self.root)
        self.runs = 0
        self.killed: set[int] = set()
        self.resumed_from: list[int] = []  # timesteps of each run's starting checkpoint

    def start(self, *extra: object, timesteps: int = 10**7) -> Child:
        """A run resumed from the newest checkpoint (fresh while there is none)."""
        resume = self.newest()
        self.resumed_from.append(_timesteps(resume))
        args: list[object] = ["--models-root", self.root, "--config", self.config, "--prune"]
        args += ["--timesteps", timesteps, *extra]
        if resume is not None:
            args += ["--resume-from", resume]
        self.runs += 1
        return self.spawn(args, self.work / "logs" / f"run{self.runs:03d}")

    def newest(self) -> Path | None:
        return find_resume_checkpoint(self.folder, "latest", seed=SEED, market=MARKET)

    def check(self) -> list[CheckpointInfo]:
        """What holds after any kill (see the module docstring); returns the listing."""
        infos = list_checkpoints(self.folder)
        left = leftovers(self.folder)
        listed = {info.filename for info in infos}
        assert not {n for n in listed if n.startswith(".") or parse_temp_name(n)}, listed
        assert not listed & left["orphans"]
        for info in infos:
            verify_checkpoint(info.path)
        owners = set(_temporaries_by_owner(self.folder).values())
        assert owners <= self.killed, f"temporaries of live processes {owners - self.killed}"
        newest = self.newest()
        if infos:
            assert _timesteps(newest) == max(i.timesteps for i in infos), newest
        assert _timesteps(newest) >= self.resumed_from[-1], (
            f"the newest checkpoint {newest} is older than the one the killed run resumed "
            f"from ({self.resumed_from[-1]} steps)"
        )
        return infos


def test_a_crash_storm_on_one_folder_loses_nothing(
    spawn: Callable[..., Child], tmp_path: Path, fault_log: FaultLog
) -> None:
    seed = _storm_seed()
    print(f"crash storm seed {seed}: RELIABILITY_SEED={seed} replays the kill delays")
    rng = random.Random(seed)
    storm = Storm(spawn, tmp_path)

    with fault_log.tries(f"SIGKILL at a random moment, {KILLS} in a row on one folder") as t:
        for kill in range(1, KILLS + 1):
            anchor = ANCHORS[(kill - 1) % len(ANCHORS)]
            delay = rng.uniform(0.0, MAX_DELAY)
            with t.attempt(f"kill {kill}, {delay:.2f}s after {anchor} (seed {seed})"):
                child = storm.start()
                try:
                    if anchor == "READY":
                        child.wait_for_line("READY")
                    elif anchor == "its first commit":
                        child.wait_for_line(SAVED, stderr=True)
                    time.sleep(delay)  # the fault's timing, not a synchronisation
                    running = child.returncode is None
                finally:  # also after a slow start: nothing may train on into the next kill
                    child.kill()
                    storm.killed.add(child.pid)
                assert running, f"ended before the kill\n{child.diagnostics()}"
                assert child.returncode == -signal.SIGKILL, child.diagnostics()
                storm.check()
        # Every run after the second kill resumes from a checkpoint: at least the one the second
        # run committed before it was killed.
        assert min(storm.resumed_from[2:]) > 0, storm.resumed_from

    with fault_log.tries("SIGKILL at each stage of a commit, same folder") as t:
        for stage in STAGE_ORDER:
            with t.attempt(f"killed at {stage}"):
                before = {i.filename for i in storm.check()}
                child = storm.start(*kill_at_stage(stage))
                assert child.wait(timeout=90) == -signal.SIGKILL, child.diagnostics()
                storm.killed.add(child.pid)
                infos = storm.check()
                want_temporaries, want_orphans, committed = COMMIT_STAGE_LEFTOVERS[stage]
                left = leftovers(storm.folder)
                # The run swept what earlier kills left before its first commit; what is left
                # now is its second checkpoint's, of one base name.
                assert set(_temporaries_by_owner(storm.folder).values()) <= {child.pid}
                assert suffixes(left["temporaries"]) == want_temporaries, left
                assert suffixes(left["orphans"]) == want_orphans, left
                assert len({base_of(n) for n in left["temporaries"] | left["orphans"]}) <= 1
                new = {i.filename for i in infos} - before
                assert len(new) == (2 if committed else 1), sorted(new)

        # After the storm: everything listed loads, with the timesteps its name says.
        infos = storm.check()
        assert infos
        for info in infos:
            env = make_raw_env()
            loaded = load_checkpoint(info.path, env)
            assert loaded.model.num_timesteps == info.timesteps
            assert loaded.vec_normalize is not None
            env.close()

        # A retention pass sweeps every leftover of the killed runs; what it keeps stays listed.
        left = leftovers(storm.folder)
        assert left["temporaries"], "the last stage kill left no temporaries"
        temporaries = set(_temporaries_by_owner(storm.folder))
        report = prune_folder(storm.folder, load_config(storm.config).retention)
        assert report.errors == ()
        assert {p.name for p in report.swept.temporaries} == temporaries
        assert {p.name for p in report.swept.orphans} == left["orphans"]
        assert leftovers(storm.folder) == no_leftovers()
        kept = {row.info.filename for row in report.plan.rows if row.keep} if report.plan else set()
        assert {i.filename for i in list_checkpoints(storm.folder)} == kept

        # A last run resumes from the newest checkpoint and trains to its end.
        newest = storm.newest()
        start = _timesteps(newest)
        assert start == max(i.timesteps for i in infos)
        child = storm.start(timesteps=start + FINAL_STEPS)
        assert child.wait(timeout=120) == 0, child.diagnostics()
        done = child.wait_for_line("DONE")
        end = int(done.split()[1])
        assert end >= start + FINAL_STEPS
        after = list_checkpoints(storm.folder)
        saved = [i for i in after if i.filename not in kept]
        assert saved and all(i.timesteps > start for i in saved), [i.filename for i in saved]
        assert [i.timesteps for i in saved if "_evt-phase_end_" in i.filename] == [end]
        for info in after:
            verify_checkpoint(info.path)
        assert leftovers(storm.folder) == no_leftovers()
        assert storm.resumed_from == sorted(storm.resumed_from), storm.resumed_from
