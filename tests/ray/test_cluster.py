"""Cluster submission: ``cluster.yaml`` passes Ray's own validation, and ``ray job submit``
runs ``tuner.run`` on a real token-authenticated ``ray start --head`` on loopback (the test's
own, see ``tests/ray/head.py``), after refusing a models root and storage path in Ray's
temporary copy of the working directory. Clients without the token, and every port of such a
head, are tried in ``tests/reliability/test_cluster_access.py``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpointing import list_checkpoints
from checkpointing.naming import CheckpointName
from tests.ray.head import Head, client_env, is_loopback, job_submit, running_head
from tests.tiny_config import PROJECT_ROOT, tiny_config_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLUSTER_YAML = PROJECT_ROOT / "cluster.yaml"


# --------------------------------------------------------------------------- cluster.yaml


def _load_cluster_yaml() -> dict[str, Any]:
    with open(CLUSTER_YAML, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict), f"{CLUSTER_YAML} is not a mapping"
    return config


def test_cluster_yaml_passes_rays_validation() -> None:
    """What `ray up` does before it touches a cloud: prepare_config, then validate_config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load_cluster_yaml()
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError when wrong

    # The validator does catch mistakes (so passing above means something).
    import jsonschema

    broken = copy.deepcopy(raw)
    broken["head_node_typ"] = broken.pop("head_node_type")
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(broken))

    # What this project needs from it.
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert len(prepared["available_node_types"]) >= 2, "a head and a worker node type"
    head_start = " ".join(prepared["head_start_ray_commands"])
    worker_start = " ".join(prepared["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "RAY_AUTH_MODE=token ray start --address=" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert any("RAY_AUTH_MODE=token" in c for c in prepared["initialization_commands"])
    assert prepared["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = " ".join(raw["setup_commands"])
    assert "-c constraints.txt torch --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "make setup" in setup and "ray[default,tune]" in setup
    # Object storage by default, no shared mount; the NFS set-up kept as an alternative.
    assert "mount -t nfs4" not in setup
    text = CLUSTER_YAML.read_text(encoding="utf-8")
    assert "--models-root s3://" in text and "--storage-path s3://" in text
    assert "#   sudo mount -t nfs4 -o hard" in text
    assert {".venv", ".git"} <= set(prepared["rsync_exclude"])


# --------------------------------------------------------------------------- a real head


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    with running_head(tmp_path) as h:
        yield h


def test_job_submit_runs_tuner_on_a_token_authenticated_loopback_head(
    head: Head, tmp_path: Path
) -> None:
    configs = tiny_config_dir(tmp_path / "configs")
    models = tmp_path / "models"
    storage = tmp_path / "ray_results"
    home = tmp_path / "home"
    home.mkdir()
    head.wait_ready()
    head.sample_listening()

    # Without the token, or with a wrong one, the Jobs API refuses (`ray job submit` without
    # it: tests/reliability/test_cluster_access.py).
    assert head.request("/api/jobs/", None)[0] == 401
    assert head.request("/api/jobs/", "0" * 64)[0] == 403
    status, body = head.request("/api/jobs/", head.token)
    assert status == 200 and json.loads(body) == [], body

    # With it (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN), the experiment runs as a Ray job. The
    # default models root and storage path would be in Ray's temporary copy of the working
    # directory: refused before anything is written, naming the flag and where it resolves.
    command = ["python", "-m", "tuner.run", "--markets", "NQ", "--seeds", "1", "--timesteps"]
    command += ["1000", "--name", "cluster", "--config-dir", str(configs)]
    env = client_env(home, head.token, "token")
    rc, out = job_submit(head, env, command, 300, tmp_path / "refused.log")
    assert rc != 0 and "failed with exit code 2" in out, out[-5000:]
    ray_copy = r"/session_[^/']+/runtime_resources/working_dir_files/_ray_pkg_[0-9a-f]+"
    assert re.search(rf"--models-root resolves to '[^']*{ray_copy}/models'", out), out[-5000:]
    assert re.search(rf"--storage-path resolves to '[^']*{ray_copy}/ray_results'", out), out[-5000:]
    assert "--models-root /mnt/shared/models --storage-path /mnt/shared/ray_results" in out

    # With both on storage outside it, the job runs and says where its files are.
    entrypoint = [*command, "--models-root", str(models), "--storage-path", str(storage)]
    rc, out = job_submit(head, env, entrypoint, 300, tmp_path / "job.log")
    assert rc == 0 and "succeeded" in out, out[-5000:]
    assert "[done]   NQ seed 1" in out, out[-5000:]
    assert (
        out.count(f"on the cluster: checkpoints under {models.resolve()}, Tune results under ") == 2
    )

    infos = list_checkpoints(models / "phase1" / "NQ" / "checkpoints")
    names = [i.name for i in infos if isinstance(i.name, CheckpointName)]
    assert names, f"no checkpoints in {models}"
    assert {(n.market, n.seed) for n in names} == {("NQ", 1)}
    assert "phase_end" in {n.event for n in names}
    summary = json.loads((models / "summaries" / "cluster.json").read_text())
    rows = {(r["market"], r["seed"]): r for r in summary["trials"]}
    assert set(rows) == {("NQ", 1)}
    assert rows[("NQ", 1)]["status"] == "finished"

    status, body = head.request("/api/jobs/", head.token)
    jobs = sorted(json.loads(body), key=lambda j: j["start_time"])
    assert status == 200 and [j["status"] for j in jobs] == ["FAILED", "SUCCEEDED"], body

    # The upload was the project's code, not its venv, git objects or caches.
    uploads = head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    packages = {p.resolve() for p in uploads if p.is_dir()}  # session_latest is a symlink
    assert packages, "no uploaded working_dir found"
    for pkg in packages:
        assert (pkg / "tuner" / "run.py").exists()
        assert not any((pkg / name).exists() for name in (".venv", ".git", ".mypy_cache"))
        assert not any((pkg / name).exists() for name in ("models", "ray_results")), pkg
        size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
        assert size < 5 * 2**20, f"working_dir upload is {size} bytes"

    # Everything the head and its workers listened on was loopback.
    head.sample_listening()
    (tmp_path / "listening.json").write_text(json.dumps(sorted(head.listening)))
    ports = {port for _, port, _ in head.listening}
    assert {head.gcs_port, head.dashboard_port} <= ports, head.listening
    outside = sorted(x for x in head.listening if not is_loopback(x[0]))
    assert not outside, f"Ray listened outside loopback: {outside}"
