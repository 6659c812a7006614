"""One RLlib trial on a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
a head and a worker node on 127.0.0.1, one CPU each, no dashboard). A trial with one env
runner reserves two one-CPU bundles packed as closely as the cluster allows; no node holds
both, so the trial runs on one node and its env runner samples on the other. Each checkpoint's
metadata says where: the learner's node and the runner's."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.naming import CheckpointName
from tests.ray.conftest import Driver, common
from tests.tiny_config import PROJECT_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

STEPS = 1000  # four iterations of 256 steps: a periodic save at 512, phase_end at 1024


@pytest.fixture
def cluster() -> Iterator[tuple[Any, set[str]]]:
    """The cluster and its two node ids; shut down after the test (its processes only)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp = Path(tempfile.mkdtemp(prefix="rml", dir="/tmp"))  # Ray's sockets: short paths
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    node = {
        "node_ip_address": "127.0.0.1",
        "temp_dir": str(temp),
        "num_cpus": 1,
        "object_store_memory": 80 * 1024**2,
        "env_vars": {"PYTHONPATH": path},
    }
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        worker = cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster, {cluster.head_node.node_id, worker.node_id}
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_trials_env_runner_samples_on_another_node(
    cluster: tuple[Any, set[str]], tiny_configs: Path, tmp_path: Path, drivers: list[Driver]
) -> None:
    ray_cluster, nodes = cluster
    args = ["--markets", "NQ", "--seeds", "7", "--timesteps", str(STEPS), "--name", "mn"]
    args += ["--trainer", "rllib", "--env-runners", "1", "--address", ray_cluster.address]
    args += ["--no-test-eval"]
    d = Driver([*args, *common(tiny_configs, tmp_path)], tmp_path)
    drivers.append(d)
    assert d.wait(600) == 0, d.output[-4000:]

    folder = tmp_path / "models" / "phase1" / "NQ" / "checkpoints"
    infos = list_checkpoints(folder)
    names = [i.name for i in infos if isinstance(i.name, CheckpointName)]
    assert [(n.event, n.timesteps) for n in names if n.event != "best"] == [
        ("periodic", 512),
        ("phase_end", 1024),
    ]
    assert {(n.market, n.seed) for n in names} == {("NQ", 7)}
    learners = set()
    for info in infos:
        meta = verify_checkpoint(info.path)  # size and sha256 of the zip, as written
        assert meta["trainer"] == "rllib" and meta["env_runners"] == 1
        (runner,) = meta["env_runner_node_ids"]
        assert meta["ray_node_id"] in nodes and runner in nodes
        assert runner != meta["ray_node_id"], info.filename  # sampled on the other node
        learners.add(meta["ray_node_id"])
    assert len(learners) == 1  # one trial, on one node throughout
    summary = json.loads((tmp_path / "models" / "summaries" / "mn.json").read_text())
    ((row),) = summary["trials"]
    assert (row["status"], row["trainer"], row["timesteps"]) == ("finished", "rllib", 1024)
