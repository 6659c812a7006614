"""A ``ray start --head`` of a test's own on 127.0.0.1, with token auth, and its clients.

The head is the test's alone: its own ``--temp-dir``, ports chosen here, and a marker in the
environment of every process it starts, so that it (and only it) is stopped afterwards. Never
``ray stop``: that kills every Ray process on the machine by name, other sessions' included.
"""

from __future__ import annotations

import contextlib
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

from tests.tiny_config import PROJECT_ROOT

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


def free_ports(n: int) -> list[int]:
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


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _program(cmdline: list[str]) -> str:
    """``gcs_server``, ``raylet``, ``dashboard.py``, ``ray::IDLE`` ... from a command line."""
    scripts = [Path(arg).name for arg in cmdline if arg.endswith(".py")]
    if scripts:
        return scripts[0]
    return Path(cmdline[0]).name if cmdline and cmdline[0] else "?"


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
        ) = free_ports(11)
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
        self.names: dict[int, str] = {}  # what each of those pids runs

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
        """Add the sockets our processes listen on now (TCP LISTEN, or unconnected UDP)."""
        procs = {p.pid: p for p in self.processes()}
        for c in psutil.net_connections(kind="inet"):
            if c.pid in procs and c.laddr and (c.status == psutil.CONN_LISTEN or not c.raddr):
                self.listening.add((c.laddr.ip, c.laddr.port, c.pid))
                if c.pid not in self.names:
                    with contextlib.suppress(psutil.Error):
                        self.names[c.pid] = _program(procs[c.pid].cmdline())

    # ---- HTTP to the Jobs API

    def request(
        self, path: str, token: str | None, *, post: dict[str, Any] | None = None
    ) -> tuple[int, str]:
        """GET ``path`` (POST the JSON ``post`` if given), with the token as a bearer if any."""
        body = json.dumps(post).encode() if post is not None else None
        req = urllib.request.Request(self.url + path, data=body)
        if body is not None:
            req.add_header("Content-Type", "application/json")
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


@contextlib.contextmanager
def running_head(workdir: Path) -> Iterator[Head]:
    """Start a head in ``workdir`` (its log goes there); stop it and all it started after."""
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
    h = Head(workdir)
    try:
        yield h
    finally:
        h.stop()
    survivors = h.processes()
    assert not survivors, f"processes of the test's Ray survived it: {survivors}"


def job_submit(
    head: Head,
    env: dict[str, str],
    entrypoint: list[str],
    timeout: float,
    log: Path,
    *,
    working_dir: bool = True,
) -> tuple[int, str]:
    """`ray job submit` (waits for the job, streams its logs); samples listening sockets.
    With ``working_dir`` the project is uploaded (what ``EXCLUDES`` leaves of it)."""
    upload = [
        "--working-dir",
        str(PROJECT_ROOT),
        "--runtime-env-json",
        json.dumps({"excludes": EXCLUDES}),
    ]
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        head.url,
        *(upload if working_dir else []),
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


def client_env(home: Path, token: str | None, mode: str | None) -> dict[str, str]:
    env = Head.base_env()
    env["HOME"] = str(home)  # no ~/.ray/auth_token of this machine's user is picked up
    if mode is not None:
        env["RAY_AUTH_MODE"] = mode
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env
