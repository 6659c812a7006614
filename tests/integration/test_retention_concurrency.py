"""Two processes pruning and one saving into one folder at full speed.

The saver commits a fixed number of checkpoints and waits, every few commits, until each
pruner has finished one more pass, so the three interleave the same way on any machine,
however fast.

Every policy rule is monotone (a checkpoint it drops at some point it would drop later too),
so whatever the interleaving, the folder after a last prune must hold exactly what the policy
keeps out of *everything* that was committed; and before that last prune, nothing the policy
keeps may be missing.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.metadata import build_metadata
from checkpointing.naming import COMPANION_SUFFIXES, CheckpointName, parse_name
from checkpointing.policies import build_policy
from checkpointing.registry import Registry
from checkpointing.retention import prune_folder
from checkpointing.store import CheckpointInfo, commit_files, list_checkpoints

CONFIG = CheckpointConfig()
RETENTION = RetentionConfig(keep_last_n=4, keep_top_k_by_sharpe=3, keep_top_k_by_reward=2)
SAVES = 100  # commits before seed 1's phase_end
PASS_EVERY = 4  # commits between two waits for a pass of each pruner
PASS_WAIT_SECONDS = 60.0  # bounds the wait for a pass that must come


def _wait_for_a_pass_of_each(passes: Sequence[Synchronized[int]]) -> None:
    """Return once every pruner has finished one more pass than it had on the call."""
    before = [p.value for p in passes]
    deadline = time.monotonic() + PASS_WAIT_SECONDS
    while any(p.value <= b for p, b in zip(passes, before, strict=True)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"a pruner made no pass in {PASS_WAIT_SECONDS} s: {before}")
        time.sleep(0.001)


def _saver(
    root: str,
    log_path: str,
    start: Barrier,
    passes: Sequence[Synchronized[int]],
    done: Event,
) -> None:
    """Commit SAVES checkpoints of two seeds, then seed 1's phase_end, and set ``done``.

    Each committed zip is logged with its mtime (the interrupt rule looks at it), taken under
    the folder lock: right after, a pruner may delete it.
    """
    registry = Registry(root)
    mtimes: dict[str, float] = {}

    def on_commit(zip_path: Path, metadata: dict[str, Any]) -> None:
        mtimes[zip_path.name] = zip_path.stat().st_mtime
        registry.record(zip_path, metadata)

    folder = CONFIG.checkpoint_dir(1, "NQ", root)
    rng = random.Random(1)
    step = 0
    with open(log_path, "w", encoding="utf-8") as log:

        def save(event: str, seed: int) -> None:
            val, sharpe = rng.uniform(-1, 1), rng.uniform(-2, 3)
            if event == "interrupt":
                val, sharpe = -9.0, -9.0  # never in a top-K: only the interrupt rule keeps it
            name = CheckpointName("NQ", step * 1000, event, val, sharpe, seed)
            metadata = build_metadata(
                name=name,
                phase=1,
                metrics={"val_reward": name.val_reward, "sharpe_ratio": name.sharpe_ratio},
            )
            zip_path, _ = commit_files(
                folder,
                name.filename,
                lambda tmp: tmp.write_bytes(b"PK" + bytes(rng.randrange(64, 512))),
                b"vecnormalize",
                metadata,
                on_commit=on_commit,
            )
            log.write(f"{name.filename} {mtimes[zip_path.name]!r}\n")
            log.flush()

        start.wait()
        while step < SAVES:
            step += 1
            seed = 1 + step % 2
            event = "periodic"
            if step % 7 == 0:
                event = "best"
            if step in (9, 10):
                event = "interrupt"  # one for each seed; only seed 1's gets resolved
            save(event, seed)
            if step % PASS_EVERY == 0:
                _wait_for_a_pass_of_each(passes)
        step += 1
        save("phase_end", 1)
    done.set()


def _pruner(root: str, start: Barrier, passes: Synchronized[int], done: Event) -> None:
    """Prune until the saver is done, counting the passes."""
    registry = Registry(root)
    folder = CONFIG.checkpoint_dir(1, "NQ", root)
    start.wait()
    while not done.is_set():
        report = prune_folder(folder, RETENTION, registry=registry)
        if report.errors:
            raise RuntimeError(f"prune errors: {report.errors}")
        with passes.get_lock():
            passes.value += 1


@pytest.mark.slow
def test_two_pruners_and_a_saver(tmp_path: Path) -> None:
    root = tmp_path / "models"
    folder = CONFIG.checkpoint_dir(1, "NQ", root)
    folder.mkdir(parents=True)
    log_path = tmp_path / "saved.txt"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)  # the saving starts when all three are up
    passes = [ctx.Value("i", 0) for _ in range(2)]
    done = ctx.Event()
    procs = [ctx.Process(target=_saver, args=(str(root), str(log_path), start, passes, done))]
    procs += [ctx.Process(target=_pruner, args=(str(root), start, p, done)) for p in passes]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # Both pruners passed over the folder while it was being saved into.
    assert min(p.value for p in passes) >= SAVES // PASS_EVERY, [p.value for p in passes]

    committed: list[CheckpointInfo] = []
    for line in log_path.read_text().splitlines():
        filename, mtime = line.rsplit(" ", 1)
        name = parse_name(filename)
        assert isinstance(name, CheckpointName)
        committed.append(CheckpointInfo(folder / filename, name, 0, float(mtime)))
    assert len(committed) == SAVES + 1
    reasons = build_policy(RETENTION).explain(committed)
    must_keep = {info.path.name for info, why in zip(committed, reasons, strict=True) if why}
    interrupts = {i.name.seed: i.path.name for i in committed if i.name.event == "interrupt"}
    assert interrupts[1] not in must_keep  # resolved by seed 1's phase_end
    assert interrupts[2] in must_keep  # seed 2 never finished

    present = {info.path.name for info in list_checkpoints(folder)}
    assert must_keep <= present, f"lost: {sorted(must_keep - present)}"

    registry = Registry(root)
    report = prune_folder(folder, RETENTION, registry=registry)
    assert report.errors == ()
    present = {info.path.name for info in list_checkpoints(folder)}
    assert present == must_keep

    files = {p.name for p in folder.iterdir()} - {".checkpoint.lock"}
    companions = {z[: -len(".zip")] + s for z in present for s in COMPANION_SUFFIXES}
    assert files == present | companions  # no zip without companions, no orphans, no temporaries

    incremental = json.loads(registry.path.read_text())["checkpoints"]
    assert {k.rsplit("/", 1)[1] for k in incremental} == present
    registry.rebuild()
    assert json.loads(registry.path.read_text())["checkpoints"] == incremental
