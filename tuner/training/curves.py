"""Learning curves: TensorBoard event files written by the run itself.

Every run gets its own SB3 logger (so SB3 never makes an ``SB3-<date>`` folder in the temp
directory). With a folder, it writes TensorBoard event files there: SB3's training figures
(``train/*``: losses, entropy, explained variance, clip fraction, learning rate), our
evaluation metrics (``eval/*``) and a marker per checkpoint event (``checkpoints/<event>``,
1 at the step of each save: ``periodic``, ``best``, ``phase_end``, ``interrupt``,
``phase_boundary_<name>``). A Tune trial writes into its trial folder, so
``tensorboard --logdir <storage path>/<experiment>`` shows every trial; the driver never
imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from checkpointing.naming import CheckpointName, parse_name

__all__ = ["CurveLog", "run_logger"]


def run_logger(folder: str | os.PathLike[str] | None) -> Any:
    """An SB3 logger writing TensorBoard files into ``folder`` (None: nothing written)."""
    from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat

    if folder is None:
        return Logger(folder=None, output_formats=[])
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return Logger(folder=os.fspath(path), output_formats=[TensorBoardOutputFormat(os.fspath(path))])


class CurveLog:
    """What a run adds to SB3's figures after each evaluation: the metrics and a marker per
    event of the checkpoints saved with it (a ``best`` and its ``periodic`` twin are two
    markers), and the ``interrupt`` a stop saves. Recorded on the training thread; SB3 writes
    them with its next dump (after the next rollout), or :meth:`flush` at the end."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def evaluation(
        self, timesteps: int, metrics: Mapping[str, float], saved: Sequence[str] = ()
    ) -> None:
        """``saved``: the file names of the checkpoints this evaluation led to, one per event
        (:attr:`checkpointing.manager.DynamicCheckpointManager.last_saved`)."""
        logger = self.model.logger
        for key, value in metrics.items():
            logger.record(f"eval/{key}", float(value))
        self._markers(saved)
        logger.dump(timesteps)

    def interrupt(self, timesteps: int, checkpoint: str | os.PathLike[str] | None) -> None:
        """The marker of an ``interrupt`` checkpoint (saved without an evaluation)."""
        if checkpoint is not None:
            self._markers([Path(checkpoint).name])
            self.model.logger.dump(timesteps)

    def _markers(self, saved: Sequence[str]) -> None:
        for filename in saved:
            name = parse_name(filename)
            if isinstance(name, CheckpointName):
                self.model.logger.record(f"checkpoints/{name.event}", 1.0)

    def flush(self) -> None:
        self.model.logger.close()
