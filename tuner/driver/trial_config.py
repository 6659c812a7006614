"""What one trial trains, typed: :class:`TrialConfig`, Tune's ``config`` of the trial.

The driver builds Tune's ``param_space`` from it (one trial per market and seed); the
trainable (:mod:`tuner.driver.trainable`) reads each trial's back with
:meth:`TrialConfig.from_tune`. Nothing here imports Ray until ``param_space`` is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["TrialConfig"]


@dataclass(frozen=True)
class TrialConfig:
    """What a trial trains: Tune's ``config`` of the trial, typed.

    The driver builds Tune's ``param_space`` from it (:meth:`param_space`: ``market`` and
    ``seed`` as grid searches); the trainable reads it back with :meth:`from_tune`.
    """

    market: str
    seed: int
    phases: tuple[int, ...]
    experiment: str
    config_dir: str
    models_root: str
    timesteps: int | None = None
    base_interval: int | None = None
    cpus: float = 1.0
    stop_flag: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)  # overlay on training.yaml
    stage: str = "grid"  # grid (one trial per market and seed), search, confirm
    curves_root: str | None = None  # the experiment's folder: TensorBoard files per trial
    trainer: str = "sb3"  # sb3 | rllib (RLlib joins the trial's Ray; its runners are children)
    env_runners: int | None = None  # rllib: None is each phase's rllib.num_env_runners
    # With models_root s3://...: the staging folder on the trial's node (None: the node's
    # default) and how long the trial's end waits for its uploads.
    staging_dir: str | None = None
    upload_timeout: float = 300.0

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialConfig:
        """The trial config from Tune's ``config`` dict (unknown keys are refused). A
        ``case`` (a confirmation trial's market, seed and configuration) is merged in; the
        configuration is decoded from Tune's representation (networks as ``"64x64"``)."""
        from tuner.search.space import decode

        values = dict(config)
        values.update(values.pop("case", None) or {})
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown trial config keys {sorted(unknown)}")
        values["seed"] = int(values["seed"])
        values["phases"] = tuple(int(p) for p in values["phases"])
        values["training"] = decode(_plain(values.get("training") or {}))
        return cls(**values)

    @property
    def config_id(self) -> str:
        from tuner.training.settings import overlay_id

        return overlay_id(self.training)

    def param_space(self, markets: list[str], seeds: list[int]) -> dict[str, Any]:
        """Tune's ``param_space``: this config with one trial per (market, seed)."""
        from ray import tune

        space = asdict(self)
        space["phases"] = list(self.phases)
        space["market"] = tune.grid_search(markets)
        space["seed"] = tune.grid_search(seeds)
        return space


def _plain(value: Any) -> Any:
    """Tune's config values as plain JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
