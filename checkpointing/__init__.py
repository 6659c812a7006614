"""Dynamic checkpoint management for stable-baselines3 training runs.

Usable on its own by any SB3 user; imports neither ``ray`` nor ``tuner``, and SB3/torch only
where a model is saved or loaded (the names below load their module on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CheckpointConfig",
    "CheckpointCorruptError",
    "CheckpointDiff",
    "CheckpointName",
    "CheckpointNameError",
    "CheckpointRetentionManager",
    "ConfigError",
    "DynamicCheckpointManager",
    "LoadedCheckpoint",
    "MetricTrackingEvalCallback",
    "TrainingInterrupted",
    "TrainingStopped",
    "diff_checkpoints",
    "find_resume_checkpoint",
    "format_checkpoint_name",
    "learn_with_checkpoints",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "parse_checkpoint_filename",
    "read_checkpoint_metadata",
    "run_to_continue",
    "verify_checkpoint",
    "write_checkpoint_metadata",
]

_WHERE = {
    "CheckpointConfig": "config",
    "ConfigError": "errors",
    "load_config": "config",
    "CheckpointName": "naming",
    "CheckpointNameError": "errors",
    "format_checkpoint_name": "naming",
    "parse_checkpoint_filename": "naming",
    "read_checkpoint_metadata": "metadata",
    "write_checkpoint_metadata": "metadata",
    "CheckpointCorruptError": "errors",
    "list_checkpoints": "store",
    "verify_checkpoint": "store",
    "DynamicCheckpointManager": "manager",
    "MetricTrackingEvalCallback": "callback",
    "TrainingInterrupted": "callback",
    "TrainingStopped": "callback",
    "learn_with_checkpoints": "callback",
    "LoadedCheckpoint": "loading",
    "find_resume_checkpoint": "selection",
    "run_to_continue": "selection",
    "load_checkpoint": "loading",
    "CheckpointRetentionManager": "summary",
    "CheckpointDiff": "diff",
    "diff_checkpoints": "diff",
}

if TYPE_CHECKING:
    from checkpointing.callback import (
        MetricTrackingEvalCallback,
        TrainingInterrupted,
        TrainingStopped,
        learn_with_checkpoints,
    )
    from checkpointing.config import CheckpointConfig, load_config
    from checkpointing.diff import CheckpointDiff, diff_checkpoints
    from checkpointing.errors import CheckpointCorruptError, CheckpointNameError, ConfigError
    from checkpointing.loading import LoadedCheckpoint, load_checkpoint
    from checkpointing.manager import DynamicCheckpointManager
    from checkpointing.metadata import read_checkpoint_metadata, write_checkpoint_metadata
    from checkpointing.naming import (
        CheckpointName,
        format_checkpoint_name,
        parse_checkpoint_filename,
    )
    from checkpointing.selection import find_resume_checkpoint, run_to_continue
    from checkpointing.store import list_checkpoints, verify_checkpoint
    from checkpointing.summary import CheckpointRetentionManager


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'checkpointing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"checkpointing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
