"""The driver's per-trial result files (``result.json``, ``progress.csv``), kept whole across
a crashed trial's retry.

Tune's JSON and CSV loggers write into the driver's staging folder, which Tune copies to the
storage path every 10 s or more. When a trial starts again after its worker died, they first
download the file from the storage path over the staging copy, so every row logged since the
last copy (the crashed worker's last results) was lost. Only this driver writes its staging
folder, so a staging copy that exists is the newer one and is kept; without one (``--resume``
in a new driver) the file still comes from the storage path.

Imported by the driver after Ray; ``tuner.run --help`` does not load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.logger.logger import LoggerCallback


class _KeepStagingCopy(LoggerCallback):
    def _restore_from_remote(self, file_name: str, trial: Any) -> None:
        if Path(trial.local_path, file_name).exists():
            return
        super()._restore_from_remote(file_name, trial)


class JsonResults(_KeepStagingCopy, JsonLoggerCallback):
    """``result.json``: one JSON object per reported result."""


class CsvResults(_KeepStagingCopy, CSVLoggerCallback):
    """``progress.csv``: the same results, flattened, one row each."""


def result_loggers() -> list[LoggerCallback]:
    """The loggers the driver hands to Tune (TensorBoard's is left out: it imports torch)."""
    return [JsonResults(), CsvResults()]
