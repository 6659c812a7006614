"""A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and
two worker nodes on 127.0.0.1), checkpoints on a real S3 server on loopback, no shared models
root: each node has its own staging folder (its own ``XDG_CACHE_HOME``). The node a trial runs
on is removed mid-run; the trial continues on the other node from the bucket, losing at most
one save interval, timesteps never going back."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psutil
import pytest

from checkpointing.naming import CheckpointName, parse_name
from checkpointing.store import list_checkpoints
from tests.ray.conftest import Driver, wait_for
from tests.s3 import S3Server
from tests.tiny_config import PROJECT_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODELS = "s3://acc/models"
FOLDER = "models/phase1/NQ/checkpoints/"
STAGED = "futures-rl-tuner/staging/acc/models/phase1/NQ/checkpoints"


def _timesteps(s3: S3Server) -> set[int]:
    """The timesteps of the checkpoints on the bucket (those whose zip is there)."""
    keys = [k for k in s3.keys("acc", FOLDER) if k.endswith(".zip")]
    names = [parse_name(k.rsplit("/", 1)[-1]) for k in keys]
    return {n.timesteps for n in names if isinstance(n, CheckpointName)}


def _staged(cache: Path) -> set[int]:
    return {i.timesteps for i in list_checkpoints(cache / STAGED)}


def _processes_of(cache: Path) -> list[psutil.Process]:
    """The processes of the node whose cache folder is ``cache`` (its raylet sets it, and its
    workers inherit it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("XDG_CACHE_HOME") == str(cache):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def cluster(s3: S3Server, tmp_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A head without CPUs (trials cannot run there) and two one-CPU worker nodes, each with
    its own cache folder; shut down after the test (its processes only)."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    temp = Path(tempfile.mkdtemp(prefix="rmn", dir="/tmp"))  # Ray's sockets: short paths
    common = {"node_ip_address": "127.0.0.1", "temp_dir": str(temp)}
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**common, "num_cpus": 0, "include_dashboard": False},
    )
    nodes = {}
    try:
        for name in ("a", "b"):
            cache = tmp_path / f"node-{name}"
            env = {"XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}
            nodes[name] = (cluster.add_node(**common, num_cpus=1, env_vars=env), cache)
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_trial_whose_node_is_removed_continues_on_the_other_node_from_the_bucket(
    s3: S3Server,
    cluster: tuple[Any, dict[str, Any]],
    tiny_configs: Path,
    tmp_path: Path,
    drivers: list[Driver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray_cluster, nodes = cluster
    s3.create_bucket("acc")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "driver-node"))  # the driver's copies
    args = ["--markets", "NQ", "--seeds", "7", "--timesteps", "12000", "--name", "nodes"]
    args += ["--config-dir", str(tiny_configs), "--models-root", MODELS]
    args += ["--storage-path", "s3://acc/tune", "--address", ray_cluster.address]
    args += ["--no-test-eval"]  # the end steps on a bucket: tests/reliability/test_ray_s3.py
    d = Driver(args, tmp_path)
    drivers.append(d)

    def running_on() -> str | None:  # the node whose staging folder has two checkpoints
        return next((n for n, (_, cache) in nodes.items() if len(_staged(cache)) >= 2), None)

    first = wait_for(running_on, 300, "a trial saving on one of the nodes", d)
    other = "b" if first == "a" else "a"
    wait_for(lambda: len(_timesteps(s3)) >= 2, 120, "checkpoints on the bucket", d)
    processes = _processes_of(nodes[first][1])  # its raylet and workers, trial included
    assert processes, "no process found for the node the trial runs on"
    ray_cluster.remove_node(nodes[first][0], allow_graceful=False)
    _, alive = psutil.wait_procs(processes, timeout=30)
    for process in alive:  # a worker slow to notice its raylet is gone (ours, by pid)
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    staged_there = _staged(nodes[first][1])  # what that node had committed when it went
    on_bucket = _timesteps(s3)  # and what it had uploaded
    mark = len(s3.requests)

    assert d.wait(600) == 0, d.output[-4000:]
    assert _staged(nodes[other][1]), "the trial did not continue on the other node"
    # It continued from the newest checkpoint on the bucket, fetched (zip and companions) by
    # the other node, and every checkpoint after it is newer.
    resumed_from = max(on_bucket)
    fetched = {
        unquote(r.key.rsplit("/", 1)[-1])
        for r in s3.requests[mark:]
        if r.method == "GET" and r.status < 300 and r.key.startswith(FOLDER)
    }
    newest = [n for n in fetched if n.endswith(".zip") and parse_name(n).timesteps == resumed_from]
    assert newest, (resumed_from, sorted(on_bucket), [n for n in fetched if n.endswith(".zip")])
    base = newest[0][: -len(".zip")]
    assert {base + "_metadata.json", base + "_vecnormalize.pkl"} <= fetched
    put = [
        parse_name(unquote(r.key.rsplit("/", 1)[-1]))
        for r in s3.requests[mark:]
        if r.completes_object and r.key.startswith(FOLDER) and r.key.endswith(".zip")
    ]
    steps = [n.timesteps for n in put if isinstance(n, CheckpointName)]
    assert steps and min(steps) > resumed_from
    assert max(steps) >= 12000
    # At most one save interval lost: the removed node had nothing staged beyond the next
    # save after the one the bucket had.
    lost = sorted(t for t in staged_there if t > resumed_from)
    assert len(lost) <= 1, (sorted(staged_there), sorted(on_bucket))
