"""All of a run's configuration, loaded and validated from one config folder.

``config/`` holds ``checkpoint_config.yaml``, ``llm_config.yaml`` (phase-3 overlay and the
``advisor:`` section), ``markets.yaml`` and ``training.yaml``. :func:`load_settings` reads
and checks them all before anything is trained or written.

Each setting has one home. A phase's length is ``checkpointing.phaseN.target_timesteps`` of
the checkpoint config (``llm_config.yaml`` may override phase 3; ``--timesteps`` overrides
both); the advisor's ``consult_every`` and ``min_confidence`` are in ``llm_config.yaml``.
``training.yaml`` refuses those keys with a message saying where they live.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig, load_config
from checkpointing.errors import ConfigError
from checkpointing.validation import Section, read_yaml
from tuner.cli import check_path_argument
from tuner.trading.advisor import AdvisorConfig, parse_advisor_config
from tuner.trading.env_config import EnvConfig
from tuner.trading.markets import MarketSpec, load_markets

__all__ = [
    "PHASES",
    "PPOConfig",
    "PhaseTraining",
    "RLlibConfig",
    "Settings",
    "TrainingConfig",
    "load_run_settings",
    "load_settings",
    "load_training_config",
    "merge_overlay",
    "overlay_id",
    "read_training_overlay",
]

PHASES = (1, 2, 3)


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters of one phase (stable-baselines3 names)."""

    learning_rate: float = 3e-4
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PPO(...)`` / ``PPO.load(...)`` (without the network)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "net_arch"}


@dataclass(frozen=True)
class RLlibConfig:
    """RLlib PPO settings of one phase (``--trainer rllib``), under RLlib's own names
    (``lambda_`` is ``lambda`` in the YAML). ``train_batch_size`` env steps are sampled per
    iteration by ``num_env_runners`` remote env runners (0: sampling in the training process)
    of ``num_envs_per_env_runner`` envs each."""

    lr: float = 3e-4
    gamma: float = 0.99
    lambda_: float = 0.95
    clip_param: float = 0.2
    entropy_coeff: float = 0.01
    vf_loss_coeff: float = 0.5
    grad_clip: float = 0.5
    train_batch_size: int = 4000
    minibatch_size: int = 128
    num_epochs: int = 10
    num_env_runners: int = 1
    num_envs_per_env_runner: int = 1
    net_arch: tuple[int, ...] | None = None

    def training_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PPOConfig().training(...)``."""
        names = (
            *("lr", "gamma", "lambda_", "clip_param", "entropy_coeff", "vf_loss_coeff"),
            *("grad_clip", "train_batch_size", "minibatch_size", "num_epochs"),
        )
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class PhaseTraining:
    """How one phase trains. Its length is not here: it is the checkpoint config's
    ``checkpointing.phaseN.target_timesteps`` (``settings.checkpoint.phase(N)``)."""

    ppo: PPOConfig
    rllib: RLlibConfig = RLlibConfig()


@dataclass(frozen=True)
class TrainingConfig:
    """The ``training:`` section of ``training.yaml``."""

    n_envs: int = 8
    eval_episodes: int = 4
    eval_episode_length: int | None = 700
    device: str = "cpu"
    env: EnvConfig = field(default_factory=EnvConfig)
    phase1: PhaseTraining = PhaseTraining(
        PPOConfig(net_arch=(64, 64)), RLlibConfig(net_arch=(64, 64))
    )
    phase2: PhaseTraining = PhaseTraining(
        PPOConfig(learning_rate=2e-4), RLlibConfig(lr=2e-4, entropy_coeff=0.005)
    )
    phase3: PhaseTraining = PhaseTraining(
        PPOConfig(learning_rate=1e-4), RLlibConfig(lr=1e-4, entropy_coeff=0.005, clip_param=0.15)
    )

    def phase(self, phase: int) -> PhaseTraining:
        if phase not in PHASES:
            raise ConfigError(f"phase must be 1, 2 or 3, got {phase!r}")
        value: PhaseTraining = getattr(self, f"phase{phase}")
        return value

    @property
    def net_arch(self) -> tuple[int, ...]:
        return self.phase1.ppo.net_arch or (64, 64)

    @property
    def rllib_net_arch(self) -> tuple[int, ...]:
        """The RLlib network of every phase: ``training.phase1.rllib.net_arch``."""
        return self.phase1.rllib.net_arch or (64, 64)

    def env_config(self) -> EnvConfig:
        from dataclasses import replace

        return replace(self.env, eval_episode_length=self.eval_episode_length)


_PPO_FLOATS: dict[str, dict[str, float]] = {
    "learning_rate": {"gt": 0.0, "le": 1.0},
    "gamma": {"gt": 0.0, "le": 1.0},
    "gae_lambda": {"ge": 0.0, "le": 1.0},
    "clip_range": {"gt": 0.0, "le": 10.0},
    "ent_coef": {"ge": 0.0},
    "vf_coef": {"ge": 0.0},
    "max_grad_norm": {"gt": 0.0},
}
_PPO_INTS = {"n_steps": 2, "batch_size": 2, "n_epochs": 1}
_DEVICES = ("cpu", "cuda", "cuda:N", "auto")


def _parse_ppo(sec: Section, default: PPOConfig, phase: int) -> PPOConfig:
    values: dict[str, Any] = {}
    for key, bounds in _PPO_FLOATS.items():
        values[key] = sec.get_float(key, getattr(default, key), **bounds)
    for key, low in _PPO_INTS.items():
        values[key] = sec.get_int(key, getattr(default, key), ge=low)
    values["net_arch"] = _parse_net_arch(sec, default.net_arch, phase)
    sec.done()
    return PPOConfig(**values)


_RLLIB_FLOATS: dict[str, tuple[str, dict[str, float]]] = {
    "lr": ("lr", {"gt": 0.0, "le": 1.0}),
    "gamma": ("gamma", {"gt": 0.0, "le": 1.0}),
    "lambda": ("lambda_", {"ge": 0.0, "le": 1.0}),
    "clip_param": ("clip_param", {"gt": 0.0, "le": 10.0}),
    "entropy_coeff": ("entropy_coeff", {"ge": 0.0}),
    "vf_loss_coeff": ("vf_loss_coeff", {"ge": 0.0}),
    "grad_clip": ("grad_clip", {"gt": 0.0}),
}
_RLLIB_INTS = {
    "train_batch_size": 2,
    "minibatch_size": 2,
    "num_epochs": 1,
    "num_env_runners": 0,
    "num_envs_per_env_runner": 1,
}


def _parse_rllib(sec: Section, default: RLlibConfig, phase: int) -> RLlibConfig:
    values: dict[str, Any] = {}
    for key, (name, bounds) in _RLLIB_FLOATS.items():
        values[name] = sec.get_float(key, getattr(default, name), **bounds)
    for key, low in _RLLIB_INTS.items():
        values[key] = sec.get_int(key, getattr(default, key), ge=low)
    values["net_arch"] = _parse_net_arch(sec, default.net_arch, phase, "rllib")
    sec.done()
    if values["minibatch_size"] > values["train_batch_size"]:
        raise ConfigError(
            f"{sec.where('minibatch_size')} must be <= train_batch_size "
            f"({values['train_batch_size']}), got {values['minibatch_size']!r}"
        )
    return RLlibConfig(**values)


def _parse_net_arch(
    sec: Section, default: tuple[int, ...] | None, phase: int, section: str = "ppo"
) -> tuple[int, ...] | None:
    """``net_arch`` of phase 1; later phases continue from the phase-1 network."""
    if phase == 1:
        if sec.has("net_arch"):
            arch = sec.raw("net_arch")
            if (
                not isinstance(arch, list)
                or not arch
                or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in arch)
            ):
                raise ConfigError(
                    f"{sec.where('net_arch')} must be a non-empty list of positive integers, "
                    f"got {arch!r}"
                )
            return tuple(arch)
        return default
    sec.refuse(
        "net_arch",
        f"phase {phase} continues from the phase-1 network; its shape is "
        f"training.phase1.{section}.net_arch",
    )
    return default


def _parse_phase(sec: Section, default: PhaseTraining, phase: int) -> PhaseTraining:
    overlay = " (llm_config.yaml's checkpointing.target_timesteps overrides it)"
    sec.refuse(
        "target_timesteps",
        f"a phase's length is checkpointing.phase{phase}.target_timesteps in "
        f"checkpoint_config.yaml{overlay if phase == 3 else ''}, or --timesteps",
    )
    ppo = _parse_ppo(sec.section("ppo"), default.ppo, phase) if sec.has("ppo") else default.ppo
    rllib = (
        _parse_rllib(sec.section("rllib"), default.rllib, phase)
        if sec.has("rllib")
        else default.rllib
    )
    sec.known("ppo", "rllib")
    sec.done()
    return PhaseTraining(ppo, rllib)


def _parse_training(sec: Section) -> TrainingConfig:
    d = TrainingConfig()
    phases = {
        f"phase{n}": (
            _parse_phase(sec.section(f"phase{n}"), d.phase(n), n)
            if sec.has(f"phase{n}")
            else d.phase(n)
        )
        for n in PHASES
    }
    sec.known(*phases)
    device = sec.get_str("device", d.device)
    if device not in ("cpu", "auto", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"{sec.where('device')} must be one of {list(_DEVICES)}, got {device!r}")
    cfg = TrainingConfig(
        n_envs=sec.get_int("n_envs", d.n_envs, ge=1),
        eval_episodes=sec.get_int("eval_episodes", d.eval_episodes, ge=1),
        eval_episode_length=sec.get_int_or_none("eval_episode_length", d.eval_episode_length, ge=2),
        device=device,
        env=EnvConfig.from_mapping(sec.raw("env"), sec.where("env")) if sec.has("env") else d.env,
        **phases,
    )
    sec.known("env")
    sec.done()
    for n in PHASES:
        ppo = cfg.phase(n).ppo
        if ppo.batch_size > ppo.n_steps * cfg.n_envs:
            raise ConfigError(
                f"{sec.where(f'phase{n}.ppo.batch_size')} must be <= n_steps x n_envs "
                f"({ppo.n_steps} x {cfg.n_envs} = {ppo.n_steps * cfg.n_envs}), "
                f"got {ppo.batch_size!r}"
            )
    return cfg


def _training_section(path: str | os.PathLike[str]) -> Any:
    """The ``training:`` mapping of a file shaped like ``training.yaml``."""
    where_file = os.fspath(path)
    doc = read_yaml(path)
    if doc is None:
        raise ConfigError(f"{where_file}: the file is empty; expected a 'training:' section")
    try:
        top = Section(doc, "<top level>")
        top.only("training")
        section = top.raw("training")
        Section(section, "training")  # a mapping
    except ConfigError as exc:
        raise ConfigError(f"{where_file}: {exc}") from None
    return section


def merge_overlay(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` laid over it: mappings merge key by key, anything else
    (a number, a list such as ``net_arch``) replaces."""
    merged = dict(base)
    for key, value in overlay.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = merge_overlay(below, value)
        else:
            merged[key] = value
    return merged


def load_training_config(
    path: str | os.PathLike[str],
    overlay: Mapping[str, Any] | None = None,
    overlay_from: str = "the overlay",
) -> TrainingConfig:
    """Load ``training.yaml``, with ``overlay`` (a ``training:`` mapping: a search trial's
    configuration, ``--training-config``) laid over it; errors name the file, the key path
    and the value, and ``overlay_from`` when the overlay holds the culprit."""
    section = _training_section(path)
    where_file = os.fspath(path)
    if overlay:
        where_file = f"{where_file} with {overlay_from}"
        section = merge_overlay(section or {}, overlay)
    try:
        return _parse_training(Section(section, "training"))
    except ConfigError as exc:
        raise ConfigError(f"{where_file}: {exc}") from None


def read_training_overlay(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``training:`` mapping of an overlay file (``--training-config``: the settings a
    search chose, written beside its summary); validated when laid over ``training.yaml``."""
    check_path_argument(path, "--training-config")
    section = _training_section(path)
    return dict(section or {})


@dataclass(frozen=True)
class Settings:
    """Everything a run needs from the config folder."""

    config_dir: Path
    checkpoint: CheckpointConfig
    markets: Mapping[str, MarketSpec]
    training: TrainingConfig
    advisor: AdvisorConfig
    training_overlay: Mapping[str, Any] = field(default_factory=dict)


def load_settings(
    config_dir: str | os.PathLike[str] = "config",
    training_overlay: Mapping[str, Any] | None = None,
    overlay_from: str = "the overlay",
) -> Settings:
    """Load and validate every config file of ``config_dir``, with ``training_overlay`` (a
    ``training:`` mapping) laid over ``training.yaml``.

    The checkpoint config is ``llm_config.yaml`` when present (it inherits
    ``checkpoint_config.yaml`` and overrides phase 3), else ``checkpoint_config.yaml``.

    Raises:
        ConfigError: naming the file and the key of the first problem found.
    """
    folder = check_path_argument(config_dir, "--config-dir")
    if not folder.is_dir():
        raise ConfigError(f"config folder not found: {os.fspath(folder)!r}")
    llm_path = folder / "llm_config.yaml"
    checkpoint = load_config(llm_path if llm_path.exists() else folder / "checkpoint_config.yaml")
    advisor = AdvisorConfig()
    if llm_path.exists():
        doc = read_yaml(llm_path)
        if isinstance(doc, Mapping) and "advisor" in doc:
            try:
                advisor = parse_advisor_config(doc["advisor"])
            except ConfigError as exc:
                raise ConfigError(f"{os.fspath(llm_path)}: {exc}") from None
    markets = load_markets(folder / "markets.yaml")
    overlay = dict(training_overlay or {})
    training = load_training_config(folder / "training.yaml", overlay, overlay_from)
    return Settings(folder, checkpoint, markets, training, advisor, overlay)


def load_run_settings(
    config_dir: str | os.PathLike[str], training_config: str | None = None
) -> Settings:
    """The settings of ``--config-dir`` with the overlay file ``--training-config`` (if any)
    laid over its ``training.yaml``."""
    if not training_config:
        return load_settings(config_dir)
    overlay = read_training_overlay(training_config)
    return load_settings(config_dir, overlay, overlay_from=training_config)


def overlay_id(overlay: Mapping[str, Any]) -> str:
    """A short id of a configuration (an overlay): the same settings give the same id, in
    any key order; ``default`` for no overlay (training.yaml as it is)."""
    import hashlib
    import json

    if not overlay:
        return "default"
    text = json.dumps(overlay, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2s(text.encode(), digest_size=4).hexdigest()
