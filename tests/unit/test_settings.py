"""Loading a whole config folder (tuner/training/settings.py): each setting has one home, and
every file speaks with one voice."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpointing.errors import ConfigError
from tests.tiny_config import tiny_config_dir
from tuner.training.settings import load_settings


def refusal(folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(folder)
    return str(info.value)


def edit(file: Path, path: str, *, value: Any = None, rename: str | None = None) -> None:
    """Set the key at the dotted ``path`` of a YAML file, or rename it to ``rename``."""
    doc = yaml.safe_load(file.read_text())
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if rename is not None:
        node[rename] = node.pop(last)
    else:
        node[last] = value
    file.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_a_phase_length_in_training_yaml_is_refused_naming_where_it_lives(
    tmp_path: Path, phase: int
) -> None:
    folder = tiny_config_dir(tmp_path, training={f"phase{phase}": {"target_timesteps": 1000}})
    message = refusal(folder)
    assert message.startswith(
        f"{os.fspath(folder / 'training.yaml')}: training.phase{phase}.target_timesteps is not "
        f"a setting here: a phase's length is checkpointing.phase{phase}.target_timesteps in "
        "checkpoint_config.yaml"
    ), message
    assert message.endswith("or --timesteps"), message
    assert ("llm_config.yaml" in message) == (phase == 3), message


def test_the_phase_length_is_the_checkpoint_configs(tmp_path: Path) -> None:
    folder = tiny_config_dir(tmp_path, checkpoint={"phase1": {"target_timesteps": 1234}})
    edit(folder / "llm_config.yaml", "checkpointing.target_timesteps", value=4321)
    settings = load_settings(folder)
    assert settings.checkpoint.phase(1).target_timesteps == 1234
    assert settings.checkpoint.phase(3).target_timesteps == 4321  # the overlay's, for phase 3


@pytest.mark.parametrize(
    ("key", "lives"),
    [
        ("consult_every", "advisor.rules.consult_every"),
        ("consult_every", "advisor.http.consult_every"),
        ("min_confidence", "advisor.min_confidence"),
    ],
)
def test_advisor_settings_in_training_env_are_refused_naming_llm_config(
    tmp_path: Path, key: str, lives: str
) -> None:
    folder = tiny_config_dir(tmp_path, training={"env": {key: 1}})
    message = refusal(folder)
    assert message.startswith(
        f"{os.fspath(folder / 'training.yaml')}: training.env.{key} is not a setting here: "
    ), message
    assert lives in message and message.endswith("in llm_config.yaml"), message


def test_evaluation_windows_in_training_env_are_refused_naming_their_key(tmp_path: Path) -> None:
    folder = tiny_config_dir(tmp_path, training={"env": {"eval_episode_length": 50}})
    message = refusal(folder)
    assert "training.env.eval_episode_length is not a setting here" in message, message
    assert "training.eval_episode_length in training.yaml" in message, message


# One shape for a misspelt key, whichever file it is in:
#   {file}: unknown key {section}.{typo} (did you mean '{key}'?); known keys: ..., {key}, ...
TYPOS = [
    ("checkpoint_config.yaml", "checkpointing.retention.keep_last_n", "keep_lastn"),
    ("checkpoint_config.yaml", "checkpointing.phase1.target_timesteps", "target_timestep"),
    ("llm_config.yaml", "checkpointing.base_interval", "base_intervall"),
    ("llm_config.yaml", "advisor.min_confidence", "min_confidense"),
    ("llm_config.yaml", "advisor.rules.trend_threshold", "trend_treshold"),
    ("llm_config.yaml", "advisor.http.timeout_seconds", "timeout_secs"),
    ("markets.yaml", "markets.NQ.tick_size", "tick_sise"),
    ("markets.yaml", "markets.NQ.data.synthetic.annual_drift", "anual_drift"),
    ("markets.yaml", "defaults.split.gap_bars", "gap_bar"),
    ("training.yaml", "training.n_envs", "n_env"),
    ("training.yaml", "training.env.max_position", "max_positions"),
    ("training.yaml", "training.phase2.ppo.learning_rate", "learning_rat"),
    ("training.yaml", "training.phase1.rllib.train_batch_size", "train_batch_sise"),
    ("training.yaml", "training.phase3.rllib.num_env_runners", "num_env_runner"),
]


@pytest.mark.parametrize(("file", "path", "typo"), TYPOS, ids=[t[2] for t in TYPOS])
def test_a_misspelt_key_gets_the_same_message_in_every_file(
    tmp_path: Path, file: str, path: str, typo: str
) -> None:
    folder = tiny_config_dir(tmp_path)
    edit(folder / file, path, rename=typo)
    section, key = path.rsplit(".", 1)
    message = refusal(folder)
    shape = (
        re.escape(f"{os.fspath(folder / file)}: unknown key {section}.{typo} ")
        + re.escape(f"(did you mean {key!r}?); known keys: ")
        + r"([a-z0-9_]+, )*"
        + re.escape(key)
        + r"(, [a-z0-9_]+)*"
    )
    assert re.fullmatch(shape, message), message


def test_a_training_overlay_changes_only_what_it_names(tmp_path: Path) -> None:
    from tuner.training.settings import load_run_settings, overlay_id

    folder = tiny_config_dir(tmp_path / "config")
    overlay = tmp_path / "chosen.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {"training": {"phase1": {"ppo": {"learning_rate": 0.0007, "net_arch": [8]}}}}
        )
    )
    base = load_settings(folder).training
    laid = load_run_settings(folder, str(overlay))
    assert laid.training.phase1.ppo.learning_rate == 0.0007
    assert laid.training.net_arch == (8,)
    assert laid.training.phase1.ppo.gamma == base.phase1.ppo.gamma  # the rest as it was
    assert laid.training.phase2 == base.phase2 and laid.training.n_envs == base.n_envs
    assert overlay_id(laid.training_overlay) == overlay_id(
        {"phase1": {"ppo": {"net_arch": [8], "learning_rate": 0.0007}}}
    )
    assert overlay_id({}) == "default"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"training": {"phase1": {"ppo": {"learning_rat": 0.1}}}}, "did you mean 'learning_rate'"),
        ({"training": {"phase1": {"ppo": {"gamma": 1.5}}}}, "training.phase1.ppo.gamma"),
        ({"trainin": {}}, "trainin"),
        ({"training": {"phase2": {"ppo": {"net_arch": [8]}}}}, "net_arch"),
    ],
)
def test_a_bad_training_overlay_is_refused_naming_the_overlay_file(
    tmp_path: Path, doc: dict[str, Any], message: str
) -> None:
    from tuner.training.settings import load_run_settings

    folder = tiny_config_dir(tmp_path / "config")
    overlay = tmp_path / "chosen.yaml"
    overlay.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as info:
        load_run_settings(folder, str(overlay))
    assert message in str(info.value) and os.fspath(overlay) in str(info.value), info.value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("training.phase1.rllib.minibatch_size", 512, "must be <= train_batch_size (256), got 512"),
        ("training.phase2.rllib.lr", 0, "training.phase2.rllib.lr must be > 0"),
        ("training.phase1.rllib.num_env_runners", -1, "num_env_runners must be >= 0, got -1"),
        ("training.phase2.rllib.net_arch", [8], "training.phase1.rllib.net_arch"),
    ],
)
def test_bad_rllib_settings_are_refused_naming_the_file_and_key(
    tmp_path: Path, path: str, value: Any, expected: str
) -> None:
    folder = tiny_config_dir(tmp_path)
    edit(folder / "training.yaml", path, value=value)
    message = refusal(folder)
    assert message.startswith(os.fspath(folder / "training.yaml"))
    assert expected in message


def test_the_rllib_settings_of_each_phase_are_read(tmp_path: Path) -> None:
    folder = tiny_config_dir(tmp_path)
    edit(folder / "training.yaml", "training.phase2.rllib.lambda", value=0.9)
    training = load_settings(folder).training
    assert training.phase(2).rllib.lambda_ == 0.9
    assert training.phase(2).rllib.training_kwargs()["lambda_"] == 0.9
    assert training.phase(1).rllib.train_batch_size == 256  # the tiny config's
    assert training.rllib_net_arch == (16,)
