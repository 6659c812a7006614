"""A config folder for tests: the shipped configs, shrunk so a phase trains in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "config"


def tiny_config_dir(
    target: Path,
    *,
    n_bars: int = 3000,
    checkpoint: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    markets: dict[str, Any] | None = None,
) -> Path:
    """Copy ``config/`` to ``target`` with small data, tiny PPO and short evaluations.

    ``checkpoint``, ``training`` and ``markets`` are merged (recursively) into the
    ``checkpointing:``, ``training:`` and ``markets:`` sections.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in ("checkpoint_config.yaml", "llm_config.yaml", "markets.yaml", "training.yaml"):
        shutil.copy(CONFIG_DIR / name, target / name)

    m = yaml.safe_load((target / "markets.yaml").read_text())
    m["defaults"]["n_bars"] = n_bars
    m["defaults"]["split"]["gap_bars"] = 70
    _merge(m["markets"], markets or {})
    (target / "markets.yaml").write_text(yaml.safe_dump(m, sort_keys=False))

    t = yaml.safe_load((target / "training.yaml").read_text())
    tr = t["training"]
    tr.update({"n_envs": 2, "eval_episodes": 2, "eval_episode_length": 100})
    tr["env"]["episode_length"] = 256
    for phase in ("phase1", "phase2", "phase3"):
        tr[phase]["ppo"].update({"n_steps": 64, "batch_size": 64, "n_epochs": 2})
    tr["phase1"]["ppo"]["net_arch"] = [16]
    for phase in ("phase1", "phase2", "phase3"):
        tr[phase]["rllib"].update(
            {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 2, "num_env_runners": 0}
        )
    tr["phase1"]["rllib"]["net_arch"] = [16]
    _merge(tr, training or {})
    (target / "training.yaml").write_text(yaml.safe_dump(t, sort_keys=False))

    c = yaml.safe_load((target / "checkpoint_config.yaml").read_text())
    c["checkpointing"]["performance"]["min_disk_space_gb"] = 0.0
    for phase in ("phase1", "phase2", "phase3"):
        c["checkpointing"][phase]["base_interval"] = 500
    _merge(c["checkpointing"], checkpoint or {})
    (target / "checkpoint_config.yaml").write_text(yaml.safe_dump(c, sort_keys=False))

    llm = yaml.safe_load((target / "llm_config.yaml").read_text())
    llm["checkpointing"]["base_interval"] = c["checkpointing"]["phase3"]["base_interval"]
    (target / "llm_config.yaml").write_text(yaml.safe_dump(llm, sort_keys=False))
    return target


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
