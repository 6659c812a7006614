"""``python -m checkpointing.diff`` on real CartPole checkpoints: plain SB3 zips, and ours with
metadata and VecNormalize companions; and ``python -m tuner.diff --market`` on a tiny market."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from checkpointing import diff_checkpoints, load_checkpoint
from checkpointing.diff import compare_loaded, main
from checkpointing.observations import gym_observations
from tests.integration.train_script import make_manager, make_model, make_train_env
from tests.tiny_config import tiny_config_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMPANIONS = ("_vecnormalize.pkl", "_metadata.json")


def _strict_json(text: str) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plain SB3 zips: ``a`` (256 steps), ``b`` (a trained 512 more), ``hp`` (a's weights,
    another learning_rate and ent_coef), ``wide`` (another network)."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("plain")
    kwargs: dict[str, Any] = {"n_steps": 64, "batch_size": 64, "n_epochs": 1, "device": "cpu"}
    model = PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, seed=1, **kwargs)
    model.learn(256)
    model.save(folder / "a.zip")
    model.learn(512, reset_num_timesteps=False)
    model.save(folder / "b.zip")
    PPO.load(folder / "a.zip", learning_rate=1e-3, ent_coef=0.05, device="cpu").save(
        folder / "hp.zip"
    )
    PPO("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [16]}, **kwargs).save(
        folder / "wide.zip"
    )
    return {name: folder / f"{name}.zip" for name in ("a", "b", "hp", "wide")}


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two checkpoints of one run written by our manager (metadata, VecNormalize), 256 and
    768 steps, with val_reward 10 and 25; then the second's model saved again by a run whose
    metadata records a searched ``phase1.ppo.ent_coef``."""
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ours")
    config = tmp / "checkpoint_config.yaml"
    config.write_text("checkpointing:\n  performance:\n    min_disk_space_gb: 0\n")
    venv = make_train_env()
    model = make_model(venv)
    manager = make_manager(config, tmp / "models", async_saves=False, run_id="r1")
    paths = []
    for steps, reward in ((256, 10.0), (512, 25.0)):
        model.learn(steps, reset_num_timesteps=False)
        metrics = {"val_reward": reward, "sharpe_ratio": reward / 10}
        outcome = manager.save(model, venv, "periodic", metrics=metrics).result()
        assert outcome.ok
        paths.append(outcome.paths[0])
    manager.close()
    searched = {"hyperparameters": {"phase1.ppo.ent_coef": 0.02}}
    manager = make_manager(
        config, tmp / "models", async_saves=False, run_id="r2", run_info=searched
    )
    outcome = manager.save(model, venv, "periodic", metrics={"val_reward": 25.0}).result()
    assert outcome.ok
    paths.append(outcome.paths[0])
    manager.close()
    venv.close()
    return paths


def test_plain_zips_name_every_changed_layer_and_share_some_actions(plain: dict[str, Path]) -> None:
    from stable_baselines3 import PPO

    source = gym_observations("CartPole-v1", steps=200)
    diff = diff_checkpoints(plain["a"], plain["b"], observations=source)
    assert diff.same_network and diff.layers
    assert all(layer.status == "changed" for layer in diff.layers)
    assert all(
        layer.relative_change is not None and layer.relative_change > 0 for layer in diff.layers
    )
    relative = [layer.relative_change for layer in diff.layers]
    assert relative == sorted(relative, reverse=True)  # largest first
    assert {"action_net.weight", "mlp_extractor.policy_net.0.weight"} <= {
        layer.name for layer in diff.layers
    }
    assert diff.metadata == () and diff.normalization is None  # plain zips carry neither
    assert (diff.a.timesteps, diff.b.timesteps) == (256, 768)
    assert diff.agreement is not None and diff.agreement.observations == 200
    # The share is what the two policies do on the states policy A visits.
    raw = source.collect(load_checkpoint(plain["a"]))
    a, b = (PPO.load(plain[k], device="cpu").predict(raw, deterministic=True)[0] for k in "ab")
    assert diff.agreement.share == pytest.approx(float(np.mean(a == b)))
    assert 0.0 < diff.agreement.share < 1.0


def test_a_checkpoint_against_itself_changes_nothing(
    plain: dict[str, Path], ours: list[Path]
) -> None:
    for path in (plain["a"], ours[1]):
        diff = diff_checkpoints(path, path, observations=gym_observations("CartPole-v1", steps=100))
        assert [layer.relative_change for layer in diff.layers] == [0.0] * len(diff.layers)
        assert {layer.status for layer in diff.layers} == {"same"}
        assert diff.changed_hyperparameters == ()
        assert diff.agreement is not None and diff.agreement.share == 1.0
        assert all(f.same for f in diff.metadata)
    assert diff.normalization is not None
    assert diff.normalization.largest_mean_shift is not None
    assert diff.normalization.largest_mean_shift.delta_mean_std == 0.0


def test_each_policy_sees_the_observations_through_its_own_vecnormalize(ours: list[Path]) -> None:
    a, b = load_checkpoint(ours[1]), load_checkpoint(ours[1])
    assert b.vec_normalize is not None
    b.vec_normalize.obs_rms.mean = b.vec_normalize.obs_rms.mean + 5 * np.sqrt(
        b.vec_normalize.obs_rms.var
    )
    source = gym_observations("CartPole-v1", steps=200)
    diff = compare_loaded(a, b, observations=source)
    assert {layer.status for layer in diff.layers} == {"same"}  # same weights ...
    assert diff.agreement is not None and diff.agreement.share < 1.0  # ... other inputs
    assert diff.normalization is not None
    assert diff.normalization.largest_mean_shift is not None
    assert diff.normalization.largest_mean_shift.delta_mean_std == pytest.approx(5.0, rel=1e-3)


def test_hyperparameters_that_differ_are_listed(
    plain: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    diff = diff_checkpoints(plain["a"], plain["hp"])
    changed = {h.name: (h.a, h.b) for h in diff.changed_hyperparameters}
    assert changed == {"learning_rate": (3e-4, 1e-3), "ent_coef": (0.0, 0.05)}
    assert {layer.relative_change for layer in diff.layers} == {0.0}  # same weights

    assert main([str(plain["a"]), str(plain["hp"])]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("hyperparameters that differ") :].splitlines()
    assert any(line.split()[:2] == ["learning_rate", "model"] for line in lines)
    assert any(line.split()[:2] == ["ent_coef", "model"] for line in lines)


def test_searched_hyperparameters_in_the_metadata_are_compared(ours: list[Path]) -> None:
    diff = diff_checkpoints(ours[1], ours[2])
    changed = {(h.name, h.source): (h.a, h.b) for h in diff.changed_hyperparameters}
    assert changed == {("phase1.ppo.ent_coef", "metadata"): (None, 0.02)}
    assert {layer.status for layer in diff.layers} == {"same"}
    assert not {f.name: f for f in diff.metadata}["run_id"].same


def test_another_network_is_listed_layer_by_layer(plain: dict[str, Path]) -> None:
    diff = diff_checkpoints(plain["a"], plain["wide"])
    assert not diff.same_network
    shapes = {layer.name: (layer.status, layer.shape_a, layer.shape_b) for layer in diff.layers}
    assert shapes["mlp_extractor.policy_net.0.weight"] == ("shape differs", (8, 4), (16, 4))
    assert shapes["action_net.bias"][0] in ("changed", "same")


def test_our_checkpoints_show_metric_deltas_and_vecnormalize_drift(
    ours: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    diff = diff_checkpoints(*ours[:2])
    assert diff.a.verified and diff.b.verified
    fields = {f.name: f for f in diff.metadata}
    assert fields["val_reward"].delta == pytest.approx(15.0)
    assert fields["sharpe_ratio"].delta == pytest.approx(1.5)
    assert fields["timesteps"].delta == 512
    assert fields["run_id"].same and fields["market"].same
    assert fields["seed"].same and fields["seed"].delta is None  # an identifier, not a quantity

    drift = diff.normalization
    assert drift is not None and len(drift.features) == 4  # CartPole's observation
    assert drift.count_b > drift.count_a
    assert drift.largest_mean_shift is not None and drift.largest_var_change is not None
    assert abs(drift.largest_mean_shift.delta_mean_std) > 0
    assert abs(drift.largest_var_change.log_var_ratio) > 0
    assert drift.return_var[0] != drift.return_var[1]

    assert main([str(ours[0]), str(ours[1]), "--env", "CartPole-v1", "--steps", "50"]) == 0
    out = capsys.readouterr().out
    assert "VecNormalize drift" in out and "val_reward" in out
    assert "same action on" in out and "of 50 observations" in out


def test_json_is_one_strict_document(ours: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([str(ours[0]), str(ours[1]), "--json", "--env", "CartPole-v1", "--steps", "20"]) == 0
    )
    doc = _strict_json(capsys.readouterr().out)
    assert doc["a"]["path"] == str(ours[0]) and doc["b"]["vec_normalize"] is True
    fields = {f["field"]: f for f in doc["metadata"]}
    assert fields["val_reward"]["delta"] == pytest.approx(15.0)
    assert fields["win_rate"]["a"] is None  # not measured: NaN is written null
    assert {layer["status"] for layer in doc["layers"]} == {"changed"}
    assert doc["vec_normalize"]["max_abs_delta_mean_std"] > 0
    assert 0.0 <= doc["agreement"]["share"] <= 1.0 and doc["agreement"]["observations"] == 20


def test_a_damaged_or_missing_checkpoint_is_refused_and_nothing_is_written(
    ours: list[Path], plain: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours_copy = tmp_path / ours[0].name
    for suffix in (".zip", *COMPANIONS):
        name = ours[0].name.removesuffix(".zip") + suffix
        shutil.copy(ours[0].with_name(name), tmp_path / name)
    plain_copy = tmp_path / "plain.zip"
    shutil.copy(plain["a"], plain_copy)
    for damaged in (ours_copy, plain_copy):
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    before = _files(tmp_path)

    for damaged in (ours_copy, plain_copy):
        assert main([str(damaged), str(ours[1])]) == 2
        err = capsys.readouterr().err
        assert f"refusing to load {damaged}" in err
    assert main([str(ours[1]), str(ours_copy)]) == 2  # B is checked as A is
    assert f"refusing to load {ours_copy}: the model zip is" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.zip"), str(ours[1])]) == 2
    assert "missing.zip" in capsys.readouterr().err
    assert _files(tmp_path) == before


@pytest.mark.slow
def test_market_agreement_on_validation_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.diff import main as tuner_main
    from tuner.diff import market_observations
    from tuner.trading.env import POSITION_FEATURE_NAMES, MarketData
    from tuner.trading.markets import get_market
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    config_dir = tiny_config_dir(tmp_path / "config")
    settings = load_settings(config_dir)
    root = tmp_path / "models"

    def train(**job: Any) -> Path:
        result = train_phase(
            PhaseJob(market="NQ", phase=1, models_root=root, quiet=True, **{"seed": 3, **job}),
            settings,
            handle_signals=False,
        )
        assert result.phase_end is not None
        return result.phase_end

    first = train(timesteps=512, run_id="first")
    second = train(timesteps=512, run_id="second", seed=4)
    before = _files(first.parent)

    market = ["--market", "NQ", "--config-dir", str(config_dir), "--json"]
    assert tuner_main([str(first), str(second), *market]) == 0
    doc = _strict_json(capsys.readouterr().out)
    agreement = doc["agreement"]
    assert agreement["observations"] == 2 * 100  # 2 validation envs, one 100-step episode each
    assert 0.0 <= agreement["share"] <= 1.0
    assert agreement["source"].startswith("NQ validation split")
    names = {f["name"] for f in doc["vec_normalize"]["features"]}
    assert {"ret_1", "position"} <= names  # the market's feature names
    assert doc["vec_normalize"]["max_abs_delta_mean_std"] > 0

    # The metadata's runtime learning_rate and n_envs (written by the training callback).
    sources = {(h["name"], h["source"]) for h in doc["hyperparameters"]}
    assert {("learning_rate", "metadata"), ("n_envs", "metadata")} <= sources

    # The observations: the validation split from its first bar, as an evaluation walks it.
    data = MarketData.load(get_market(settings.markets, "NQ"))
    raw = market_observations(settings, "NQ").collect(load_checkpoint(first))
    assert raw.shape == (200, len(data.features.names) + len(POSITION_FEATURE_NAMES))
    validation = data.features.values[data.ranges.validation]
    np.testing.assert_allclose(raw[0, : validation.shape[1]], validation[0], rtol=1e-6)

    assert tuner_main([str(second), str(second), *market]) == 0
    assert _strict_json(capsys.readouterr().out)["agreement"]["share"] == 1.0
    assert _files(first.parent) == before

    assert (
        tuner_main([str(first), str(second), "--market", "NOPE", "--config-dir", str(config_dir)])
        == 2
    )
    assert "NOPE" in capsys.readouterr().err
