"""Cluster submission: ``cluster.yaml`` passes Ray's own validation, and ``ray job submit``
runs ``tuner.run`` on a real token-authenticated ``ray start --head`` on loopback.

The head is this test's alone: its own ``--temp-dir``, ports chosen here, and a marker in the
environment of every process it starts, so that it (and only it) is stopped afterwards. Never
``ray stop``: that kills every Ray process on the machine by name, other sessions' included.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from checkpointing import list_checkpoints
from checkpointing.naming import CheckpointName
from tests.tiny_config import PROJECT_ROOT, tiny_config_dir

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CLUSTER_YAML = PROJECT_ROOT / "cluster.yaml"
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `python` of this interpreter
MARKER = "FUTURES_RL_TEST_RAY_HEAD"  # set in the head's environment, inherited by all it starts
# What `--working-dir` must not upload (Ray also honours .gitignore; this does not rely on it).
EXCLUDES = [
    ".venv",
    ".git",
    "**/__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "models",
    "models_demo",
    "ray_results",
]


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
    assert "mount -t nfs4" in setup and "/mnt/shared" in setup
    assert {".venv", ".git"} <= set(prepared["rsync_exclude"])


# --------------------------------------------------------------------------- a real head


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class Head:
    """A ``ray start --head --block`` of our own, on 127.0.0.1, with token auth."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # Unix socket paths are limited to ~107 bytes: pytest's tmp_path is too deep for them.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        self.token = secrets.token_hex(32)
        (
            self.gcs_port,
            self.dashboard_port,
            agent_listen,
            agent_grpc,
            runtime_env_agent,
            metrics_export,
            node_manager,
            object_manager,
            client_server,
            autoscaler_metrics,
            dashboard_metrics,
        ) = _free_ports(11)
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        env = self.base_env()
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_USAGE_STATS_ENABLED": "0",
                # Job entrypoints run `python` through a shell: make it this venv's python.
                "PATH": os.pathsep.join([str(BIN), env.get("PATH", "")]),
                MARKER: self.marker,
                # Fixed by default (44217, 44227): would collide with another head here.
                "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
                "DASHBOARD_METRIC_PORT": str(dashboard_metrics),
            }
        )
        self.log = workdir / "head.log"
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=2",
            f"--temp-dir={self.temp_dir}",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={agent_listen}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics_export}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--ray-client-server-port={client_server}",
            "--disable-usage-stats",
        ]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.listening: set[tuple[str, int, int]] = set()  # (ip, port, pid) seen so far

    @staticmethod
    def base_env() -> dict[str, str]:
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    # ---- our processes, and only ours

    def processes(self) -> list[psutil.Process]:
        """The head and every process that carries our marker (workers, agents, job drivers)."""
        found: dict[int, psutil.Process] = {}
        if self.proc.poll() is None:  # not reaped yet, so its pid cannot have been reused
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.proc.pid)
                found[root.pid] = root
                found.update((p.pid, p) for p in root.children(recursive=True))
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if p.pid not in found and p.environ().get(MARKER) == self.marker:
                    found[p.pid] = p
        return list(found.values())

    def sample_listening(self) -> None:
        pids = {p.pid for p in self.processes()}
        for c in psutil.net_connections(kind="inet"):
            if c.pid in pids and c.laddr and (c.status == psutil.CONN_LISTEN or not c.raddr):
                self.listening.add((c.laddr.ip, c.laddr.port, c.pid))

    # ---- HTTP to the Jobs API

    def request(self, path: str, token: str | None) -> tuple[int, str]:
        req = urllib.request.Request(self.url + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            with contextlib.closing(e):
                return e.code, e.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ray start --head exited with {self.proc.returncode}:\n{self.output()[-4000:]}"
                )
            with contextlib.suppress(OSError):
                if self.request("/api/jobs/", self.token)[0] == 200:
                    return
            time.sleep(1)
        raise AssertionError(f"the head's Jobs API did not come up:\n{self.output()[-4000:]}")

    # ---- stop

    def stop(self) -> None:
        """SIGTERM the blocking `ray start` (it takes its processes down), then SIGKILL any of
        ours still alive. Processes of other Ray instances are never touched."""
        try:
            ours = self.processes()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            _, alive = psutil.wait_procs(ours, timeout=15)
            stragglers = alive + self.processes()
            for p in stragglers:
                with contextlib.suppress(psutil.Error):
                    p.kill()  # psutil checks it is still the same process
            psutil.wait_procs(stragglers, timeout=10)
        finally:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def head(tmp_path: Path) -> Iterator[Head]:
    deps = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ray._private.utils import get_dashboard_dependency_error as e; "
            "err = e(); print(err or '')",
        ],
        capture_output=True,
        text=True,
        env=Head.base_env(),
        timeout=120,
    )
    if deps.returncode != 0 or deps.stdout.strip():
        pytest.fail(
            "`ray job submit` needs the head's dashboard (the Jobs API), which needs "
            "ray[default]; it is not installed in this environment "
            f"({(deps.stdout + deps.stderr).strip()}). The project must depend on "
            "'ray[default,tune]'."
        )
    h = Head(tmp_path)
    try:
        yield h
    finally:
        h.stop()
    survivors = h.processes()
    assert not survivors, f"processes of the test's Ray survived it: {survivors}"


def _job_submit(
    head: Head, env: dict[str, str], entrypoint: list[str], timeout: float, log: Path
) -> tuple[int, str]:
    """`ray job submit` (waits for the job, streams its logs); samples listening sockets."""
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head.url,
        "--working-dir",
        str(PROJECT_ROOT),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
        "--",
        *entrypoint,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"ray job submit did not finish in {timeout}s:\n"
                        f"{log.read_text(errors='replace')[-4000:]}"
                    )
                head.sample_listening()
                time.sleep(1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    return proc.returncode, log.read_text(errors="replace")


def _client_env(home: Path, token: str | None, mode: str | None) -> dict[str, str]:
    env = Head.base_env()
    env["HOME"] = str(home)  # no ~/.ray/auth_token of this machine's user is picked up
    if mode is not None:
        env["RAY_AUTH_MODE"] = mode
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


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

    # Without the token, or with a wrong one, the Jobs API refuses: nothing is submitted.
    assert head.request("/api/jobs/", None)[0] == 401
    assert head.request("/api/jobs/", "0" * 64)[0] == 403
    echo = ["python", "-c", "print('should not run')"]
    rc, out = _job_submit(head, _client_env(home, None, None), echo, 120, tmp_path / "no_token.log")
    assert rc != 0 and "Unauthorized: Missing authentication token" in out, out[-3000:]
    rc, out = _job_submit(
        head, _client_env(home, "0" * 64, "token"), echo, 120, tmp_path / "bad_token.log"
    )
    assert rc != 0 and "Forbidden: Invalid authentication token" in out, out[-3000:]
    status, body = head.request("/api/jobs/", head.token)
    assert status == 200 and json.loads(body) == [], body

    # With it (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN), the experiment runs as a Ray job.
    entrypoint = [
        "python",
        "-m",
        "tuner.run",
        "--markets",
        "NQ",
        "--seeds",
        "1",
        "--timesteps",
        "1000",
        "--name",
        "cluster",
        "--config-dir",
        str(configs),
        "--models-root",
        str(models),
        "--storage-path",
        str(storage),
    ]
    rc, out = _job_submit(
        head, _client_env(home, head.token, "token"), entrypoint, 300, tmp_path / "job.log"
    )
    assert rc == 0 and "succeeded" in out, out[-5000:]
    assert "[done]   NQ seed 1" in out, out[-5000:]

    infos = list_checkpoints(models / "phase1" / "NQ" / "checkpoints")
    names = [i.name for i in infos if isinstance(i.name, CheckpointName)]
    assert names, f"no checkpoints in {models}"
    assert {(n.market, n.seed) for n in names} == {("NQ", 1)}
    assert "phase_end" in {n.event for n in names}
    summary = json.loads((models / "summaries" / "cluster.json").read_text())
    rows = {(r["market"], r["seed"]): r for r in summary["trials"]}
    assert set(rows) == {("NQ", 1)}
    assert rows[("NQ", 1)]["status"] == "TERMINATED"

    status, body = head.request("/api/jobs/", head.token)
    jobs = json.loads(body)
    assert status == 200 and [j["status"] for j in jobs] == ["SUCCEEDED"], body

    # The upload was the project's code, not its venv, git objects or caches.
    uploads = head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    packages = {p.resolve() for p in uploads if p.is_dir()}  # session_latest is a symlink
    assert packages, "no uploaded working_dir found"
    for pkg in packages:
        assert (pkg / "tuner" / "run.py").exists()
        assert not any((pkg / name).exists() for name in (".venv", ".git", ".mypy_cache"))
        size = sum(f.stat().st_size for f in pkg.rglob("*") if f.is_file())
        assert size < 5 * 2**20, f"working_dir upload is {size} bytes"

    # Everything the head and its workers listened on was loopback.
    head.sample_listening()
    (tmp_path / "listening.json").write_text(json.dumps(sorted(head.listening)))
    ports = {port for _, port, _ in head.listening}
    assert {head.gcs_port, head.dashboard_port} <= ports, head.listening
    outside = sorted(x for x in head.listening if not _is_loopback(x[0]))
    assert not outside, f"Ray listened outside loopback: {outside}"
