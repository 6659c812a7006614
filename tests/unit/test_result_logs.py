"""``tuner.driver.result_logs``: a crashed trial's retry keeps the rows its killed worker reported.

Tune's own logger classes, driven through the calls Tune makes (start, results, end after a
failure, start of the retry), on a trial whose staging folder and storage path are real
folders. ``tests/reliability/test_ray_faults.py`` checks the same on a real experiment.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest

from tuner.driver.result_logs import CsvResults, JsonResults, result_loggers


class Storage:
    def __init__(self, path: Path) -> None:
        self.trial_fs_path = str(path)
        self.storage_filesystem = pyarrow.fs.LocalFileSystem()


class Trial:
    """What Tune's loggers read of a trial."""

    def __init__(self, staging: Path, storage: Path) -> None:
        self.config = {"market": "NQ", "seed": 1}
        self.local_path = str(staging)
        self.storage = Storage(storage)
        self.checkpoint: Any = None
        self.init_local_path()  # as Tune's Trial does when it is created

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def _result(timesteps: int, pid: int) -> dict[str, Any]:
    return {"timesteps": timesteps, "pid": pid, "config": {"market": "NQ", "seed": 1}}


FILES: dict[type, str] = {JsonResults: "result.json", CsvResults: "progress.csv"}


def _timesteps(path: Path) -> list[int]:
    if path.name == "result.json":
        return [json.loads(line)["timesteps"] for line in path.read_text().splitlines()]
    with open(path, newline="") as fh:
        return [int(row["timesteps"]) for row in csv.DictReader(fh)]


@pytest.mark.parametrize("logger_class", [JsonResults, CsvResults], ids=lambda c: c.__name__)
def test_a_retry_keeps_the_rows_logged_since_the_last_sync(
    tmp_path: Path, logger_class: type
) -> None:
    name = FILES[logger_class]
    staging, storage = tmp_path / "staging", tmp_path / "storage"
    storage.mkdir()
    trial = Trial(staging, storage)
    logger = logger_class()
    logger.on_trial_start(0, [trial], trial)
    logger.on_trial_result(1, [trial], trial, _result(1000, pid=11))
    shutil.copy(staging / name, storage / name)  # Tune's periodic sync: one row so far
    logger.on_trial_result(2, [trial], trial, _result(2000, pid=11))
    logger.on_trial_result(3, [trial], trial, _result(3000, pid=11))
    # The worker is killed; Tune ends the trial as failed and starts it again from its
    # checkpoint, before the next sync.
    logger.on_trial_error(4, [trial], trial)
    trial.checkpoint = "checkpoint_000001"
    logger.on_trial_start(5, [trial], trial)
    logger.on_trial_result(6, [trial], trial, _result(4000, pid=12))
    logger.on_trial_complete(7, [trial], trial)

    assert _timesteps(staging / name) == [1000, 2000, 3000, 4000]


@pytest.mark.parametrize("logger_class", [JsonResults, CsvResults], ids=lambda c: c.__name__)
def test_a_new_driver_takes_the_file_from_the_storage_path(
    tmp_path: Path, logger_class: type
) -> None:
    """``--resume``: the new driver's staging folder is empty; the stored rows carry on."""
    name = FILES[logger_class]
    first = Trial(tmp_path / "first", tmp_path / "storage")
    logger = logger_class()
    logger.on_trial_start(0, [first], first)
    logger.on_trial_result(1, [first], first, _result(1000, pid=11))
    logger.on_trial_complete(2, [first], first)
    shutil.copytree(tmp_path / "first", tmp_path / "storage")

    resumed = Trial(tmp_path / "second", tmp_path / "storage")
    resumed.checkpoint = "checkpoint_000000"
    logger = logger_class()
    logger.on_trial_start(0, [resumed], resumed)
    logger.on_trial_result(1, [resumed], resumed, _result(2000, pid=21))
    logger.on_trial_complete(2, [resumed], resumed)

    assert _timesteps(tmp_path / "second" / name) == [1000, 2000]


def test_the_driver_logs_json_and_csv_only() -> None:
    assert [type(c) for c in result_loggers()] == [JsonResults, CsvResults]
