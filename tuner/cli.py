"""What the command lines share: the run flags of ``tuner.train`` and ``tuner.run``, and the
checks of path arguments made before anything touches the disk (a URI is never a path:
see :mod:`checkpointing.locations`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from checkpointing.errors import ConfigError
from checkpointing.locations import local_folder

__all__ = ["add_run_arguments", "check_path_argument"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``tuner.train`` and ``tuner.run`` share: phases, length, configs, models root,
    trainer."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--phase", type=int, help="the phase to train: 1, 2 or 3 (default 1)")
    group.add_argument("--phases", help="a curriculum, e.g. 1,2,3")
    parser.add_argument(
        "--timesteps",
        type=int,
        help="steps per phase (default: checkpointing.phaseN.target_timesteps)",
    )
    parser.add_argument(
        "--base-interval", type=int, help="checkpoint base interval (default: checkpoint config)"
    )
    parser.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    parser.add_argument(
        "--models-root",
        help="where checkpoints go: a folder (default: paths.root), or s3://bucket/prefix "
        "with python -m tuner.train",
    )
    parser.add_argument(
        "--training-config",
        metavar="PATH",
        help="a training.yaml overlay laid over the config folder's, e.g. the settings a "
        "search chose (<models-root>/summaries/<experiment>_<market>_training.yaml)",
    )
    parser.add_argument(
        "--trainer",
        choices=("sb3", "rllib"),
        default="sb3",
        help="stable-baselines3 PPO (default) or RLlib PPO, each with its own section of "
        "training.yaml; a run continues only checkpoints of its own trainer",
    )
    parser.add_argument(
        "--env-runners",
        type=int,
        metavar="N",
        help="with --trainer rllib: RLlib env runners sampling in parallel, one CPU each, on "
        "any node of the cluster (default: the phase's rllib.num_env_runners; 0 samples in "
        "the training process)",
    )
    parser.add_argument(
        "--allow-ephemeral",
        action="store_true",
        help="as a Ray job, write into Ray's temporary copy of the working directory anyway "
        "(Ray may delete it after the job)",
    )


def check_path_argument(
    value: str | os.PathLike[str],
    what: str,
    *,
    folder: bool = False,
    command: str = "this command",
) -> Path:
    """Refuse NUL and empty paths from the command line before anything touches the disk, and
    URIs (``s3://...``: never a path; ``command`` names who does not take one yet); with
    ``folder``, also a path that exists and is not a folder."""
    path = local_folder(value, what, command)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} must be a folder, but {os.fspath(value)!r} is a file")
    return path
