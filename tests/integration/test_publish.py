"""best_model at the phase root survives a publish killed half-way.

Publishing replaces ``best_model_vecnormalize.pkl``, then ``best_model_metadata.json``, then
``best_model.zip``, each by rename. A kill between two renames leaves a torn copy (new metadata,
old zip) and, in the phase root, the temporaries of the dead publisher.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from checkpointing import verify_checkpoint
from checkpointing.errors import CheckpointCorruptError
from checkpointing.files import temp_name
from tests.integration.train_script import make_manager, make_model, make_train_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_torn_best_model_is_repaired_by_the_next_improvement_and_stale_temps_go(
    config_file: Path, models_root: Path
) -> None:
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config_file, models_root, async_saves=False)
    try:
        model.num_timesteps = 100
        assert manager.save(model, venv, "periodic", metrics={"val_reward": 1.0}).result().ok
        root = manager.market_dir
        best = root / "best_model.zip"
        assert verify_checkpoint(best)["val_reward"] == 1.0

        # A publisher of a val_reward 9.0 checkpoint died after renaming its metadata into
        # place, before its zip: the metadata describes a zip that is not there.
        model.num_timesteps = 150
        other = manager.save(model, venv, "periodic", metrics={"val_reward": 0.5}).result()
        assert other.ok
        torn = json.loads(
            other.paths[0].with_name(other.paths[0].stem + "_metadata.json").read_text()
        )
        torn["val_reward"] = 9.0
        torn["files"]["zip"]["name"] = "best_model.zip"
        torn["files"]["vecnormalize"]["name"] = "best_model_vecnormalize.pkl"
        (root / "best_model_metadata.json").write_text(json.dumps(torn))
        with pytest.raises(CheckpointCorruptError):
            verify_checkpoint(best)
        stale = root / temp_name("best_model.zip", pid=_dead_pid())
        stale.write_bytes(b"half a zip")

        # 2.0 beats the in-process best (1.0) but not the torn copy's claim (9.0): the torn
        # copy counts as absent and is replaced.
        model.num_timesteps = 200
        assert manager.save(model, venv, "periodic", metrics={"val_reward": 2.0}).result().ok
    finally:
        manager.close()
    published = verify_checkpoint(best)
    assert published["val_reward"] == 2.0
    assert not stale.exists()
