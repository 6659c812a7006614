"""Two seeds of one market saving and pruning one folder at full speed lose nothing they keep.

Two real processes (seeds 1 and 2 of NQ, phase 1, one models root) run for
``RELIABILITY_CONCURRENCY_SECONDS`` (default 20) seconds, and at least ``MIN_ROUNDS`` rounds
however slow the machine. Each saves a real small PPO model
through :class:`DynamicCheckpointManager` (snapshot, background writer, commit, registry
update on commit, in-run retention every ``prune_frequency`` saves) as fast as it can, under
``periodic``, ``periodic+best``, ``interrupt`` and ``phase_end`` events with random metrics,
and after every few saves runs a retention pass of its own over the shared folder. Each
process logs every checkpoint it committed, with the zip's mtime, taken under the folder lock.

Each process is one run. The retention policy here keeps, of each run, the last 3 periodic
checkpoints, the top 2 models by Sharpe and by val_reward (a ``best`` and its ``periodic``
twin are one model), every ``best`` (an extra ``keep_events`` rule), every ``phase_end``, and
every ``interrupt`` until a later ``phase_end`` of its run. Each rule is monotone (what it
drops once it never keeps later), so whatever the interleaving, every committed checkpoint the
policy keeps when judged over *all* that was committed must still exist at the end: the newest
of each seed, every best and phase_end, every unresolved interrupt. That set is computed here
from the commit logs, independently of the product's policy code (and compared with it).

Afterwards: both processes exited 0 and logged no warning, error or traceback; no save
failed; every checkpoint that must survive exists and verifies; the registry lists exactly the
checkpoints in the folder, each of which verifies, and equals a registry rebuilt from the
files; ``best_model.zip`` holds the best val_reward of both seeds; one last retention pass
leaves exactly the checkpoints that must survive, with their companions and nothing else.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from checkpointing.config import CheckpointConfig, config_from_dict
from checkpointing.manager import DynamicCheckpointManager, SaveOutcome
from checkpointing.naming import COMPANION_SUFFIXES, CheckpointName, parse_name
from checkpointing.policies import build_policy
from checkpointing.registry import Registry
from checkpointing.retention import prune_folder
from checkpointing.store import LOCK_NAME, CheckpointInfo, list_checkpoints, verify_checkpoint
from tests.integration.train_script import make_model, make_train_env, redirect_output
from tests.reliability.conftest import FaultLog

pytestmark = pytest.mark.reliability

MARKET = "NQ"
SEEDS = (1, 2)
KEEP_LAST_N = 3
TOP_K = 2
CONFIG: dict[str, Any] = {
    "retention": {
        "keep_last_n": KEEP_LAST_N,
        "keep_top_k_by_sharpe": TOP_K,
        "keep_top_k_by_reward": TOP_K,
        "prune_frequency": 2,
        "rules": [{"keep_events": ["best"]}],
    },
    "performance": {"min_disk_space_gb": 0.0},
}
STEP = 64
MIN_ROUNDS = 20  # rounds (1-4 saves and a retention pass) of each process, however slow


def _seconds() -> float:
    raw = os.environ.get("RELIABILITY_CONCURRENCY_SECONDS", "20")
    seconds = float(raw)
    if not seconds > 0:
        raise ValueError(f"RELIABILITY_CONCURRENCY_SECONDS must be > 0, got {raw!r}")
    return seconds


def _config() -> CheckpointConfig:
    return config_from_dict(CONFIG, "test_concurrency.CONFIG")


# --------------------------------------------------------------------------- one process


def _save_and_prune(root: str, seed: int, seconds: float, out: str, start: Barrier) -> None:
    """Save and prune into ``root`` for ``seconds``; log commits to ``{out}/committed.txt``
    and a summary (saves, rounds, failures) to ``{out}/summary.json``."""
    redirect_output(os.path.join(out, "stdout.txt"), os.path.join(out, "stderr.txt"))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import torch

    torch.set_num_threads(1)
    config = _config()
    registry = Registry(root, config)
    committed = open(os.path.join(out, "committed.txt"), "w", encoding="utf-8")  # noqa: SIM115

    def on_commit(zip_path: Path, metadata: dict[str, Any]) -> None:
        # Under the folder lock: right after it, the other process may delete the zip.
        committed.write(f"{zip_path.name} {zip_path.stat().st_mtime!r}\n")
        committed.flush()
        registry.record(zip_path, metadata)

    def prune(folder: Path) -> tuple[str, ...]:
        return prune_folder(folder, config.retention, registry=registry).errors

    # Retention runs inside the run too (the manager's pruner, every prune_frequency saves).
    manager = DynamicCheckpointManager(
        config,
        phase=1,
        market=MARKET,
        seed=seed,
        models_root=root,
        on_commit=on_commit,
        pruner=prune,
    )
    model = make_model(make_train_env(), seed=seed)
    venv = model.get_vec_normalize_env()
    rng = random.Random(seed)
    futures: list[Future[SaveOutcome]] = []
    prune_errors: list[str] = []
    rounds = 0
    start.wait()
    deadline = time.monotonic() + seconds
    while rounds < MIN_ROUNDS or time.monotonic() < deadline:
        rounds += 1
        for _ in range(rng.randint(1, 4)):
            model.num_timesteps += STEP
            draw = rng.random()
            events: list[str] = ["periodic"]
            if draw < 0.06:
                events = ["periodic", "best"]
            elif draw < 0.08:
                events = ["interrupt"]
            elif draw < 0.09:
                events = ["phase_end"]
            metrics = {"val_reward": rng.uniform(-1, 1), "sharpe_ratio": rng.uniform(-2, 3)}
            futures.append(
                manager.save(
                    model,
                    venv,
                    events,
                    metrics=metrics,
                    metrics_timesteps=model.num_timesteps,
                    improved=["val_reward"] if "best" in events else [],
                    wait=events[0] in ("interrupt", "phase_end"),
                )
            )
        prune_errors.extend(prune(manager.folder))
    manager.close()
    committed.close()
    outcomes = [f.result() for f in futures]
    summary = {
        "saves": len(outcomes),
        "rounds": rounds,
        "failed": [f"{o.events}@{o.timesteps}: {o.error!r}" for o in outcomes if o.error],
        "skipped": [f"{o.events}@{o.timesteps}: {o.skipped}" for o in outcomes if o.skipped],
        "prune_errors": prune_errors,
        "writer_errors": [repr(e) for e in manager.writer.errors],
    }
    Path(out, "summary.json").write_text(json.dumps(summary))


# --------------------------------------------------------------------------- what must survive


def _top(infos: list[CheckpointInfo], metric: str, k: int) -> set[str]:
    """Every file of the ``k`` best models by ``metric`` as the names carry it; ties: more
    timesteps, then the smaller file name; one model saved under two events counts once."""
    ranked = sorted(infos, key=lambda i: (-getattr(i.name, metric), -i.timesteps, i.filename))
    models: list[str] = []
    for info in ranked:
        model = info.filename.replace(f"_evt-{_event(info)}_", "_")
        if model not in models:
            models.append(model)
    chosen = set(models[:k])
    return {i.filename for i in infos if i.filename.replace(f"_evt-{_event(i)}_", "_") in chosen}


def _must_survive(committed: list[CheckpointInfo]) -> dict[str, list[str]]:
    """File name -> why the policy keeps it, judged over everything that was committed."""
    why: dict[str, list[str]] = defaultdict(list)
    by_seed: dict[int, list[CheckpointInfo]] = defaultdict(list)
    for info in committed:
        assert isinstance(info.name, CheckpointName)
        by_seed[info.name.seed].append(info)
    for seed, infos in by_seed.items():
        newest = max(infos, key=lambda i: (i.timesteps, i.filename))
        why[newest.filename].append(f"newest of seed {seed}")
        periodic = sorted((i for i in infos if _event(i) == "periodic"), key=lambda i: i.timesteps)
        for info in periodic[-KEEP_LAST_N:]:
            why[info.filename].append(f"last {KEEP_LAST_N} periodic of seed {seed}")
        ends = [i for i in infos if _event(i) == "phase_end"]
        for info in infos:
            if _event(info) in ("best", "phase_end"):
                why[info.filename].append(_event(info))
            resolved = any(e.timesteps >= info.timesteps and e.mtime >= info.mtime for e in ends)
            if _event(info) == "interrupt" and not resolved:
                why[info.filename].append("unresolved interrupt")
        for metric in ("sharpe_ratio", "val_reward"):
            for name in _top(infos, metric, TOP_K):
                why[name].append(f"top {TOP_K} {metric} of seed {seed}")
    return dict(why)


def _event(info: CheckpointInfo) -> str:
    assert isinstance(info.name, CheckpointName)
    return info.name.event


def _val_reward(info: CheckpointInfo) -> float:
    assert isinstance(info.name, CheckpointName)
    return info.name.val_reward


def _read_commits(path: Path, folder: Path) -> Iterator[CheckpointInfo]:
    for line in path.read_text(encoding="utf-8").splitlines():
        filename, mtime = line.rsplit(" ", 1)
        name = parse_name(filename)
        assert isinstance(name, CheckpointName), filename
        yield CheckpointInfo(folder / filename, name, 0, float(mtime))


# --------------------------------------------------------------------------- the test


def test_two_seeds_saving_and_pruning_one_folder_at_full_speed(
    fork_server: None, tmp_path: Path, fault_log: FaultLog
) -> None:
    seconds = _seconds()
    config = _config()
    root = tmp_path / "models"
    folder = config.checkpoint_dir(1, MARKET, root)
    folder.mkdir(parents=True)
    ctx = multiprocessing.get_context("forkserver")  # torch is imported once, in the server
    start = ctx.Barrier(len(SEEDS))  # the clock starts when both are up
    outs = {seed: tmp_path / f"seed{seed}" for seed in SEEDS}
    procs = []
    for seed, out in outs.items():
        out.mkdir()
        args = (str(root), seed, seconds, str(out), start)
        procs.append(ctx.Process(target=_save_and_prune, args=args, name=f"seed{seed}"))
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=seconds + 120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()

    with fault_log.tries("two processes saving and pruning one folder (per checkpoint)") as t:
        # Neither process crashed or failed a save, and each committed every save it made
        # (a periodic+best save commits two checkpoints).
        for p, (seed, out) in zip(procs, outs.items(), strict=True):
            stderr = (out / "stderr.txt").read_text()
            assert p.exitcode == 0, f"seed {seed} exited {p.exitcode}\n{stderr[-4000:]}"
            assert stderr == "", f"seed {seed} logged:\n{stderr[-4000:]}"
            summary = json.loads((out / "summary.json").read_text())
            assert summary["failed"] == [] and summary["skipped"] == [], summary
            assert summary["prune_errors"] == [] and summary["writer_errors"] == [], summary
            assert summary["rounds"] >= MIN_ROUNDS, summary
            logged = list(_read_commits(out / "committed.txt", folder))
            assert len(logged) >= summary["saves"] >= summary["rounds"], (len(logged), summary)
        committed = [
            c for out in outs.values() for c in _read_commits(out / "committed.txt", folder)
        ]
        names = [c.filename for c in committed]
        assert len(names) == len(set(names)), "a checkpoint name was committed twice"

        must = _must_survive(committed)
        policy = build_policy(config.retention).explain(committed)
        kept_by_policy = {c.filename for c, why in zip(committed, policy, strict=True) if why}
        assert kept_by_policy == set(must), (
            f"policy keeps {sorted(kept_by_policy - set(must))[:5]}, "
            f"drops {sorted(set(must) - kept_by_policy)[:5]}"
        )
        present = {info.filename for info in list_checkpoints(folder)}
        registry = Registry(root, config)
        indexed = json.loads(registry.path.read_text())["checkpoints"]
        indexed_names = {rel.rsplit("/", 1)[1] for rel in indexed}
        for c in committed:
            with t.attempt(c.filename):
                if c.filename in must:
                    assert c.filename in present, f"lost; kept by {must[c.filename]}"
                if c.filename in present:
                    verify_checkpoint(c.path)
                    assert c.filename in indexed_names, "in the folder, not in the registry"
                else:
                    assert c.filename not in indexed_names, "deleted, still in the registry"

        # The registry is the folder, as a rebuild from the files says.
        assert indexed_names == present
        assert present <= set(names), "a checkpoint in the folder that no process logged"
        registry.rebuild()
        assert json.loads(registry.path.read_text())["checkpoints"] == indexed

        # best_model.zip is the best of both seeds (by val_reward, as names round it).
        best = verify_checkpoint(config.layout(root).market_dir(1, MARKET) / "best_model.zip")
        source = parse_name(Path(best["source_checkpoint"]).name)
        assert isinstance(source, CheckpointName), best["source_checkpoint"]
        assert source.val_reward == max(_val_reward(c) for c in committed), source

        # A last pass leaves exactly what must survive, each with its companions.
        report = prune_folder(folder, config.retention, registry=registry)
        assert report.errors == ()
        present = {info.filename for info in list_checkpoints(folder)}
        assert present == set(must)
        files = {p.name for p in folder.iterdir()} - {LOCK_NAME}
        companions = {z[: -len(".zip")] + s for z in present for s in COMPANION_SUFFIXES}
        assert files == present | companions
