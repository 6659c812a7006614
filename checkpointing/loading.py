"""Loading and choosing checkpoints: verify first, then unpickle only what a checkpoint holds.

:func:`load_checkpoint` checks the sha256 of the zip and the ``.pkl`` against the metadata
before anything is unpickled, then unpickles the VecNormalize and the zip's cloudpickled
entries with :mod:`checkpointing.safe_pickle` (which refuses any global a checkpoint never
needs, so a forged file cannot run code even when its metadata matches) and returns the model
and its VecNormalize.
:func:`checkpointing.selection.find_resume_checkpoint` picks which checkpoint to load.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from checkpointing.errors import CheckpointCorruptError
from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import VECNORM_SUFFIX, CheckpointName, LegacyName, parse_name
from checkpointing.safe_pickle import UnsafePickleError, safe_loads, safe_zip_objects
from checkpointing.store import verify_checkpoint
from checkpointing.trainers import check_trainer

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize

__all__ = ["LoadedCheckpoint", "load_checkpoint", "vecnormalize_path_for"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Algorithms a checkpoint may name; anything else is refused rather than imported.
_ALGORITHMS = ("PPO", "A2C", "DQN", "SAC", "TD3", "DDPG")


@dataclass
class LoadedCheckpoint:
    """A verified, loaded checkpoint."""

    path: Path
    model: BaseAlgorithm
    vec_normalize: VecNormalize | None
    metadata: dict[str, Any]
    verified: bool

    @property
    def callback_state(self) -> dict[str, Any] | None:
        state = self.metadata.get("callback_state")
        return state if isinstance(state, dict) else None


def vecnormalize_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    p = Path(checkpoint)
    stem = p.name[:-4] if p.name.endswith(".zip") else p.name
    return p.with_name(stem + VECNORM_SUFFIX)


def _algorithm(name: object, path: Path) -> type[BaseAlgorithm]:
    import stable_baselines3

    if name is None:
        name = "PPO"
    if name not in _ALGORITHMS:
        raise CheckpointCorruptError(path, f"unknown algorithm {name!r} in metadata")
    cls: type[BaseAlgorithm] = getattr(stable_baselines3, str(name))
    return cls


def load_checkpoint(
    path: str | os.PathLike[str],
    env: VecEnv | None = None,
    *,
    device: str = "auto",
    custom_objects: dict[str, Any] | None = None,
    allow_unverified: bool = True,
    **load_kwargs: Any,
) -> LoadedCheckpoint:
    """Verify and load a checkpoint and its companion VecNormalize.

    Args:
        path: the checkpoint zip.
        env: the VecEnv to attach. When a ``_vecnormalize.pkl`` exists (for a v1
            ``phase{N}_{steps}_steps.zip`` also SB3's ``phase{N}_vecnormalize_{steps}_steps.pkl``)
            it wraps ``env`` (or is returned without a venv when ``env`` is None; call
            ``set_venv`` later).
        allow_unverified: load files without metadata digests (v1 checkpoints and
            ``best_model.zip`` / final models written by other tools) with a warning.
            v2 checkpoints always verify.
        load_kwargs: passed to ``Algorithm.load`` (e.g. a new phase's ``learning_rate``).

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointCorruptError: the metadata is missing or garbled, or a file fails its
            size/sha256 check (nothing has been unpickled); or a pickle in the ``.pkl`` or the
            zip references a global no checkpoint needs (refused before it is resolved).
        ConfigError: the checkpoint was written by another trainer (an RLlib checkpoint is
            loaded with :func:`checkpointing.trainers.unpack_checkpoint`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {os.fspath(p)!r}")
    name = parse_name(p.name)
    verified = False
    if isinstance(name, CheckpointName):
        metadata = verify_checkpoint(p)
        verified = True
    else:
        try:
            metadata = verify_checkpoint(p)
            verified = True
        except CheckpointCorruptError as exc:
            meta_path = p.with_name(
                (p.name[:-4] if p.name.endswith(".zip") else p.name) + "_metadata.json"
            )
            if meta_path.exists() and "files" in (read_checkpoint_metadata(p) or {}):
                raise  # it claims digests and fails them
            if not allow_unverified:
                raise
            log.warning("loading %s without verification: %s", p, exc.reason)
            metadata = read_checkpoint_metadata(p) or {}
    check_trainer(p, "sb3")  # an RLlib checkpoint's zip is no SB3 model
    cls = _algorithm(metadata.get("algorithm"), p)

    vec_normalize: VecNormalize | None = None
    pkl = vecnormalize_path_for(p)
    if isinstance(name, LegacyName) and not pkl.is_file():
        # SB3's CheckpointCallback (v1 runs) names it {prefix}_vecnormalize_{steps}_steps.pkl.
        pkl = p.with_name(f"phase{name.phase}_vecnormalize_{name.timesteps}_steps.pkl")
    if pkl.is_file():
        from stable_baselines3.common.vec_env import VecNormalize as _VecNormalize

        obj = _safely(pkl, lambda: safe_loads(pkl.read_bytes(), where=pkl.name))
        if not isinstance(obj, _VecNormalize):
            raise CheckpointCorruptError(
                pkl, f"expected a VecNormalize, found {type(obj).__name__}"
            )
        if env is not None:
            obj.set_venv(env)
        vec_normalize = obj
    model_env = vec_normalize if (vec_normalize is not None and env is not None) else env
    given = dict(custom_objects or {})
    objects = _safely(p, lambda: safe_zip_objects(p, skip=set(given)))
    try:
        model = cls.load(
            p, env=model_env, device=device, custom_objects={**objects, **given}, **load_kwargs
        )
    except pickle.UnpicklingError as exc:  # torch's weights-only load refused a .pth entry
        raise CheckpointCorruptError(p, f"refusing to unpickle a .pth entry: {exc}") from None
    return LoadedCheckpoint(p, model, vec_normalize, metadata, verified)


def _safely(path: Path, load: Callable[[], T]) -> T:
    """Run ``load``; a refused or malformed pickle becomes a CheckpointCorruptError on ``path``."""
    try:
        return load()
    except UnsafePickleError as exc:
        raise CheckpointCorruptError(path, str(exc)) from None
    except Exception as exc:  # a malformed pickle raises anything from EOFError up
        raise CheckpointCorruptError(path, f"cannot unpickle: {type(exc).__name__}: {exc}") from exc
