"""Checks that a checkpoint holds exactly a model and its VecNormalize statistics, read back
with plain SB3 (``PPO.load`` / ``VecNormalize.load``), no help from our loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from checkpointing.loading import vecnormalize_path_for
from tests.integration.train_script import make_raw_env


def assert_same_state(a: Any, b: Any, where: str = "parameters") -> None:
    """Every tensor (and every other leaf) of two nested ``get_parameters()`` results is equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_stats(a: VecNormalize, b: VecNormalize) -> None:
    for rms in ("obs_rms", "ret_rms"):
        x, y = getattr(a, rms), getattr(b, rms)
        np.testing.assert_array_equal(x.mean, y.mean)
        np.testing.assert_array_equal(x.var, y.var)
        assert x.count == y.count


def load_with_sb3(zip_path: Path) -> tuple[Any, VecNormalize]:
    """The model and statistics of a checkpoint, loaded the plain SB3 way."""
    return PPO.load(zip_path, device="cpu"), VecNormalize.load(
        str(vecnormalize_path_for(zip_path)), make_raw_env()
    )
