"""Where two checkpoints' actions are compared: observation sources for :mod:`checkpointing.diff`.

An :class:`ObservationSource` collects raw (unnormalized) observations, given checkpoint A:
typically by letting A's deterministic policy drive an environment, so the observations are
the states A's own run would visit. Each policy then sees them through its own VecNormalize.
This package brings gymnasium environments::

    source = gym_observations("CartPole-v1", steps=500, seed=0)
    raw = source.collect(load_checkpoint("a.zip"))      # (500, 4)

Other packages bring their own (``tuner.diff`` a market's validation data) by building a
VecEnv and calling :func:`collect_observations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from checkpointing.comparison import policy_actions

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

    from checkpointing.loading import LoadedCheckpoint

__all__ = [
    "DEFAULT_STEPS",
    "MAX_STEPS",
    "ObservationSource",
    "collect_observations",
    "gym_observations",
]

DEFAULT_STEPS = 500
MAX_STEPS = 100_000  # per env, collecting until every env has ended an episode


@dataclass(frozen=True)
class ObservationSource:
    """Raw observations to compare the policies' actions on.

    ``collect`` gets checkpoint A (its model and VecNormalize, e.g. to drive an environment)
    and returns an array ``(n, *observation_shape)`` of raw, unnormalized observations.
    ``feature_names`` names the features of a flat observation (for the VecNormalize drift).
    """

    label: str
    collect: Callable[[LoadedCheckpoint], np.ndarray]
    feature_names: tuple[str, ...] | None = None


def collect_observations(
    venv: VecEnv, checkpoint: LoadedCheckpoint, steps: int | None = None
) -> np.ndarray:
    """Raw observations of ``venv`` driven by the checkpoint's deterministic policy (seeing
    them through its VecNormalize): ``steps`` steps, or with None until every env has ended
    an episode (at most :data:`MAX_STEPS`); ``num_envs`` rows per step.

    Seed ``venv`` first for repeatable observations.

    Raises:
        ValueError: ``steps`` < 1, or the environment's observations do not fit the policy.
    """
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    obs = _array(venv.reset())
    ended = np.zeros(venv.num_envs, dtype=bool)
    rows = []
    for _ in range(steps or MAX_STEPS):
        rows.append(np.array(obs, copy=True))
        actions = policy_actions(checkpoint.model, checkpoint.vec_normalize, obs)
        step = venv.step(actions.reshape((venv.num_envs, *_action_shape(venv))))
        obs, ended = _array(step[0]), ended | step[2]
        if steps is None and ended.all():
            break
    return np.concatenate(rows)


def _array(obs: Any) -> np.ndarray:
    if not isinstance(obs, np.ndarray):
        raise ValueError("only array observations can be compared (not Dict or Tuple spaces)")
    return obs


def _action_shape(venv: VecEnv) -> tuple[int, ...]:
    return tuple(venv.action_space.shape or ())


def gym_observations(
    env_id: str, *, steps: int = DEFAULT_STEPS, seed: int = 0
) -> ObservationSource:
    """``steps`` observations of the gymnasium environment ``env_id``, collected with policy
    A, the environment seeded with ``seed``.

    Raises:
        ValueError: gymnasium knows no such environment, or ``steps`` < 1.
    """
    import gymnasium as gym

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps!r}")
    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise ValueError(f"unknown gymnasium environment {env_id!r}: {exc}") from None

    def collect(checkpoint: LoadedCheckpoint) -> np.ndarray:
        from stable_baselines3.common.vec_env import DummyVecEnv

        venv = DummyVecEnv([lambda: gym.make(env_id)])
        try:
            venv.seed(seed)
            return collect_observations(venv, checkpoint, steps)
        finally:
            venv.close()

    return ObservationSource(f"{env_id}, {steps} steps driven by policy A, seed {seed}", collect)
