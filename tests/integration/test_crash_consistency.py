"""A training process SIGKILLed at each stage of a commit leaves a folder that loads and resumes.

The child kills itself inside ``os.replace`` while committing its second checkpoint (the
first one is the "previous state" that must survive). Expected afterwards, per the commit
protocol: the previous checkpoints intact, at most temporaries and companions without a zip,
which ``sweep`` (or the next save) removes, and a resume from the newest valid checkpoint.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from checkpointing import (
    learn_with_checkpoints,
    list_checkpoints,
    load_checkpoint,
    parse_checkpoint_filename,
    verify_checkpoint,
)
from checkpointing.cleanup import sweep
from checkpointing.selection import find_resume_checkpoint
from checkpointing.store import folder_lock
from tests.integration.train_script import (
    COMMIT_STAGE_LEFTOVERS,
    COMMIT_STAGES,
    MARKET,
    SEED,
    ZIP,
    base_of,
    checkpoint_folder,
    kill_at_stage,
    leftovers,
    make_callback,
    make_manager,
    make_raw_env,
    no_leftovers,
    suffixes,
    temporary_target,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory: pytest.TempPathFactory, spawn) -> dict[str, dict]:
    """One run per stage, all started at once (they are independent), each SIGKILLed."""
    runs = {}
    for stage in COMMIT_STAGES:
        work = tmp_path_factory.mktemp(f"crash_{stage}")
        config = write_config(work / "checkpoint_config.yaml")
        args = ["--models-root", work / "models", "--config", config, "--timesteps", 3000]
        args += kill_at_stage(stage)
        runs[stage] = {"work": work, "config": config, "child": spawn(args, work / "logs")}
    for run in runs.values():
        run["returncode"] = run["child"].wait(timeout=120)
        run["folder"] = checkpoint_folder(run["config"], run["work"] / "models")
    return runs


@pytest.mark.parametrize("stage", list(COMMIT_STAGES))
def test_sigkill_mid_commit_leaves_a_loadable_resumable_folder(
    stage: str, killed_runs: dict[str, dict], tmp_path: Path, keep_signal_handlers: None
) -> None:
    run = killed_runs[stage]
    child, folder = run["child"], run["folder"]
    assert run["returncode"] == -signal.SIGKILL, child.diagnostics()
    want_temporaries, want_orphans, second_committed = COMMIT_STAGE_LEFTOVERS[stage]

    # Only the expected pieces of checkpoint 2 are left over, all of one base name.
    left = leftovers(folder)
    assert suffixes(left["temporaries"]) == want_temporaries, left
    assert suffixes(left["orphans"]) == want_orphans, left
    assert len({base_of(n) for n in left["temporaries"] | left["orphans"]}) <= 1, left

    # Every zip is a complete checkpoint: it is listed, verifies and loads.
    infos = list_checkpoints(folder)
    zips = sorted(p.name for p in folder.iterdir() if p.name.endswith(ZIP))
    assert zips == sorted(i.path.name for i in infos)
    assert len({i.timesteps for i in infos}) == (2 if second_committed else 1), zips
    for info in infos:
        meta = verify_checkpoint(info.path)
        env = make_raw_env()
        loaded = load_checkpoint(info.path, env)
        assert loaded.model.num_timesteps == info.timesteps == meta["timesteps"]
        assert loaded.vec_normalize is not None
        env.close()

    # sweep() under the folder lock removes exactly the leftovers and nothing else (run on a
    # copy: the original is left for the next save to clean up).
    copy = shutil.copytree(folder, tmp_path / "copy")
    with folder_lock(copy):
        report = sweep(copy)
    assert {temporary_target(p.name) for p in report.temporaries} == left["temporaries"]
    assert {p.name for p in report.orphans} == left["orphans"]
    assert leftovers(copy) == no_leftovers()
    assert [i.path.name for i in list_checkpoints(copy)] == [i.path.name for i in infos]

    # Resume from the newest checkpoint; the first save of the resumed run sweeps the rest.
    newest = max(infos, key=lambda i: i.timesteps)
    resume = find_resume_checkpoint(folder, "latest", seed=SEED, market=MARKET)
    assert resume is not None and base_of(resume.name) in {i.base for i in infos}
    parsed = parse_checkpoint_filename(resume.name)
    assert parsed is not None and parsed["timesteps"] == newest.timesteps
    loaded = load_checkpoint(resume, make_raw_env())
    assert loaded.model.num_timesteps == newest.timesteps
    manager = make_manager(run["config"], run["work"] / "models")
    manager.load_state_dict(loaded.metadata["callback_state"])
    callback = make_callback(manager)
    learn_with_checkpoints(loaded.model, 256, callback)
    manager.close()
    assert callback.phase_end_outcome is not None and callback.phase_end_outcome.ok
    assert leftovers(folder) == no_leftovers()
    after = list_checkpoints(folder)
    assert {i.path.name for i in infos} < {i.path.name for i in after}
    for info in after:
        verify_checkpoint(info.path)
    assert max(i.timesteps for i in after) >= newest.timesteps + 256
