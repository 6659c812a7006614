"""Helpers for tests that run the real driver (``python -m tuner.run``) with a real Ray.

Every driver runs as a subprocess in its own session, with Ray on loopback
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``; the driver binds 127.0.0.1). A driver left running
by a failing test is killed with its process group, which takes its Ray down with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from checkpointing import list_checkpoints
from checkpointing.naming import CheckpointName, parse_name
from checkpointing.selection import find_resume_checkpoint
from tests.s3 import s3, s3_server  # noqa: F401  (fixtures, used by name)
from tests.tiny_config import PROJECT_ROOT, tiny_config_dir


def common(configs: Path, root: Path, *extra: str) -> list[str]:
    """The arguments every test's driver shares: its config folder and where it writes."""
    return [
        "--config-dir",
        str(configs),
        "--models-root",
        str(root / "models"),
        "--storage-path",
        str(root / "ray_results"),
        *extra,
    ]


def driver_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("RAY_ADDRESS", None)
    return env


class Driver:
    """A ``python -m tuner.run`` process; output goes to a file."""

    def __init__(self, args: Sequence[str], workdir: Path, log_name: str = "driver.log") -> None:
        self.log = workdir / log_name
        self.workdir = workdir
        self.started = time.time()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tuner.run", *args],
                cwd=workdir,
                env=driver_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"driver did not finish in {timeout}s:\n{self.output[-3000:]}"
            ) from None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)  # the driver alone, not its process group

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    started: list[Driver] = []
    yield started
    for d in started:
        d.kill()


@pytest.fixture(scope="module")
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_dir(tmp_path_factory.mktemp("configs"))


def trial_results(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every reported result of every trial, by ``market/seed``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for result_file in sorted(experiment_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if rows:
            key = f"{rows[0]['config']['market']}/{rows[0]['config']['seed']}"
            out.setdefault(key, []).extend(rows)
    return out


def results_so_far(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """:func:`trial_results` of a running experiment: ``{}`` while Tune's sync is rewriting a
    result file (a line cut short, a file gone for a moment)."""
    try:
        return trial_results(experiment_dir)
    except (OSError, ValueError):
        return {}


def wait_for(predicate: Any, timeout: float, what: str, driver: Driver | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if driver is not None and driver.proc.poll() is not None:
            raise AssertionError(
                f"driver exited while waiting for {what}:\n{driver.output[-3000:]}"
            )
        time.sleep(0.5)
    raise AssertionError(
        f"timed out waiting for {what}" + (f":\n{driver.output[-3000:]}" if driver else "")
    )


def session_processes(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid``: a driver started in its own session and all it
    started (its Ray stays in the session, also once the driver is gone)."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def trial_worker(driver: Driver, market: str, seed: int) -> psutil.Process | None:
    """The Ray worker running trial (market, seed) of ``driver``'s experiment, if any: Tune
    runs a trial in an actor whose working directory is the trial's, named after its config."""
    tag = f"market={market},seed={seed}_"
    for p in session_processes(driver.proc.pid):
        with contextlib.suppress(psutil.Error):
            running = " ".join(p.cmdline()).startswith("ray::ImplicitFunc")
            if running and tag in Path(p.cwd()).name:
                return p
    return None


@dataclass(frozen=True)
class Crash:
    """A trial's worker process killed by :func:`crash_trial`."""

    pid: int
    saved: int  # timesteps of the newest checkpoint of the trial that verified after the crash


def crash_trial(
    driver: Driver, folder: Path, market: str, seed: int, *, saves: int = 2, timeout: float = 300
) -> Crash:
    """SIGKILL the worker process of trial (market, seed) once ``folder`` holds ``saves``
    periodic checkpoints of its seed: a real crash of a running trial, timed by what is on
    disk (Tune's result files in the storage path lag by up to its sync period).

    Returns once the process is gone, with the checkpoint a retry should resume from.
    """

    def worker() -> psutil.Process | None:
        periodic = [
            i
            for i in list_checkpoints(folder)
            if isinstance(i.name, CheckpointName)
            and i.name.seed == seed
            and i.name.event == "periodic"
        ]
        return trial_worker(driver, market, seed) if len(periodic) >= saves else None

    victim = wait_for(worker, timeout, f"{saves} checkpoints of {market} seed {seed}", driver)
    try:
        victim.kill()  # psutil checks that the pid is still that process
        victim.wait(timeout=30)
    except psutil.NoSuchProcess:
        raise AssertionError(f"the worker of {market} seed {seed} had exited already") from None
    path = find_resume_checkpoint(folder, "latest", seed=seed, market=market)
    parsed = parse_name(path.name) if path is not None else None
    return Crash(victim.pid, parsed.timesteps if parsed is not None else 0)
