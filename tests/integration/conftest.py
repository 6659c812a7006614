"""Fixtures for the integration tests: configs, and training processes that are always reaped.

The builders (env, model, manager, config) live in ``train_script.py`` beside this file, which
is also the program the training processes run. The processes themselves (``spawn``, a fork
server preloaded with torch and stable-baselines3) come from ``tests/training_processes.py``,
shared with the reliability suite. The S3 server on loopback (``s3``) is tests/s3.py's.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.train_script import write_config
from tests.s3 import s3, s3_server  # noqa: F401  (fixtures, used by name)
from tests.training_processes import (  # noqa: F401  (fixtures, used by name)
    fork_server,
    sb3_logs_in_tmp,
    spawn,
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The default tiny schedule (periodic saves every ~128-256 steps up to 3000)."""
    return write_config(tmp_path / "checkpoint_config.yaml")


@pytest.fixture
def models_root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny nets train faster on one thread, and the tests share 2 cores with subprocesses.

    Use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """Restore SIGINT/SIGTERM handlers after a test that trains in-process (pytest needs them)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
