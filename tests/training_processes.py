"""Training processes for the integration and reliability tests, always reaped.

A training process runs ``tests/integration/train_script.py``: either a fresh
``python train_script.py ...`` (``fresh=True``: what a user runs) or, by default, a fork of a
server that has imported torch and stable-baselines3 once (``multiprocessing``'s forkserver,
itself started with ``sys.executable``): importing torch costs ~5 CPU seconds per process,
which would dominate tests that start dozens of them.

The fixtures (``sb3_logs_in_tmp``, ``fork_server``, ``spawn``) are made available to a test
folder by importing them into its ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.integration.train_script import run_in_child

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = PROJECT_ROOT / "tests" / "integration" / "train_script.py"
PRELOAD = [
    "tests.integration.train_script",
    "torch._dynamo",  # imported by the first optimizer: ~2 of the ~5 seconds
    "stable_baselines3",
    "stable_baselines3.common.evaluation",
    "gymnasium.envs.classic_control.cartpole",
    "checkpointing.callback",
    "checkpointing.loading",
    "checkpointing.retention",
]


class Child:
    """A training process running ``train_script.py``; stdout and stderr go to files."""

    def __init__(self, args: Sequence[object], log_dir: Path, *, fresh: bool = False) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / "stdout.txt"
        self.stderr_path = log_dir / "stderr.txt"
        self.stdout_path.write_bytes(b"")
        self.stderr_path.write_bytes(b"")
        argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
        self._popen: subprocess.Popen[bytes] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._exitcode: int | None = None
        if fresh:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
            )
            with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
                self._popen = subprocess.Popen(
                    [sys.executable, str(TRAIN_SCRIPT), *argv],
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            self.pid = self._popen.pid
        else:
            ctx = multiprocessing.get_context("forkserver")
            self._process = ctx.Process(
                target=run_in_child,
                args=(argv, str(self.stdout_path), str(self.stderr_path), str(PROJECT_ROOT)),
                name="train_script",
            )
            self._process.start()
            assert self._process.pid is not None
            self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, ``-signum`` if killed by a signal, None while running."""
        if self._popen is not None:
            return self._popen.poll()
        if self._process is not None:
            return self._process.exitcode
        return self._exitcode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def diagnostics(self) -> str:
        return (
            f"pid {self.pid}, exit code {self.returncode}\n--- stdout\n{self.stdout}\n"
            f"--- stderr (tail)\n{self.stderr[-4000:]}"
        )

    def wait_for_line(
        self, prefix: str, timeout: float = 60.0, *, stderr: bool = False, count: int = 1
    ) -> str:
        """The ``count``-th line of stdout (or stderr) starting with ``prefix``; fails if the
        process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.returncode is not None  # before reading: a last line is not missed
            lines = (self.stderr if stderr else self.stdout).splitlines()
            found = [line for line in lines if line.startswith(prefix)]
            if len(found) >= count:
                return found[count - 1]
            if exited:
                pytest.fail(
                    f"training exited before printing {prefix!r} {count} time(s)\n"
                    + self.diagnostics()
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no {count} {prefix!r} line(s) after {timeout:.0f}s\n{self.diagnostics()}"
                )
            time.sleep(0.02)

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout)
        elif self._process is not None:
            self._process.join(timeout)
        code = self.returncode
        if code is None:
            self.kill()
            pytest.fail(f"training did not exit within {timeout:.0f}s\n{self.diagnostics()}")
        return code

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._popen is not None:
            self._popen.wait()
        elif self._process is not None:
            self._process.join()
            self._exitcode = self._process.exitcode
            self._process.close()
            self._process = None


@pytest.fixture(scope="session", autouse=True)
def sb3_logs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SB3's ``learn()`` makes a log folder in /tmp each time unless ``SB3_LOGDIR`` is set.

    Set before the fork server starts, so its children inherit it.
    """
    before = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))
    yield
    if before is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = before


@pytest.fixture(scope="session")
def fork_server() -> Iterator[None]:
    """Preload the fork server (started on first use); stop it at the end of the session."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    yield
    stop = getattr(multiprocessing.forkserver._forkserver, "_stop", None)  # no public API
    if callable(stop):
        stop()


@pytest.fixture(scope="module")
def spawn(fork_server: None) -> Iterator[Callable[..., Child]]:
    """``spawn(args, log_dir, fresh=False) -> Child``: start ``train_script.py``.

    Every process still running at the end of the module is killed, and all are reaped.
    """
    children: list[Child] = []

    def start(args: Sequence[object], log_dir: Path, *, fresh: bool = False) -> Child:
        child = Child(args, log_dir, fresh=fresh)
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
