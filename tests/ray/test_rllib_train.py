"""``python -m tuner.train --trainer rllib``: real RLlib PPO, tiny runs, one Ray on loopback.

The runs go through ``tuner.train.main`` in this process, which finds the module's Ray running
and uses it (one Ray start for the module instead of one per run).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.errors import CheckpointCorruptError
from checkpointing.naming import CheckpointName
from checkpointing.selection import find_resume_checkpoint
from tests.tiny_config import tiny_config_dir
from tuner.train import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RUN = ["--market", "NQ", "--seed", "42", "--trainer", "rllib", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One Ray for the module, on loopback, small, without a dashboard."""
    import ray

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        object_store_memory=80 * 1024**2,
        num_cpus=2,
        log_to_driver=False,
    )
    yield
    ray.shutdown()
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_dir(tmp_path_factory.mktemp("rllib") / "config")


def train(configs: Path, root: Path, *extra: str) -> int:
    return main([*RUN, "--config-dir", str(configs), "--models-root", str(root), *extra])


def folder_of(root: Path, phase: int = 1) -> Path:
    return root / f"phase{phase}" / "NQ" / "checkpoints"


def names(folder: Path) -> list[CheckpointName]:
    found = [info.name for info in list_checkpoints(folder)]
    assert all(isinstance(n, CheckpointName) for n in found)
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def first_run(configs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,500 steps of phase 1 (256 per iteration; periodic saves from 500 steps on)."""
    root = tmp_path_factory.mktemp("first") / "models"
    assert train(configs, root, "--phase", "1", "--timesteps", "1500", "--run-id", "r1") == 0
    return root


def test_a_run_writes_checkpoints_with_the_usual_names_and_metadata(first_run: Path) -> None:
    folder = folder_of(first_run)
    found = names(folder)
    assert [n.event for n in found] == ["periodic", "phase_end"]
    assert [n.timesteps for n in found] == [512, 1536]  # whole iterations of 256 steps
    assert {(n.market, n.seed, n.run_id) for n in found} == {("NQ", 42, "r1")}
    for info in list_checkpoints(folder):
        meta = verify_checkpoint(info.path)
        assert meta["trainer"] == "rllib" and meta["algorithm"] == "PPO"
        assert meta["timesteps"] == info.timesteps and meta["phase"] == 1
        assert meta["val_reward"] == pytest.approx(info.name.val_reward, abs=5e-4)  # type: ignore[union-attr]
        assert set(meta["files"]) == {"zip"}  # the observation filter is inside the zip
        assert not info.vecnormalize_path.exists()
    best = first_run / "phase1" / "NQ" / "best_model.zip"
    assert verify_checkpoint(best)["trainer"] == "rllib"


def test_the_checkpoint_holds_the_policy_that_scored_its_metrics(
    first_run: Path, configs: Path, tmp_path: Path
) -> None:
    """The greedy policy read back from the file (network and observation filter) scores on
    validation exactly what the run recorded, by the project's own evaluation."""
    from checkpointing.trainers import unpack_checkpoint
    from tuner.trading.env import MarketData
    from tuner.trading.evaluation import evaluate_trading
    from tuner.trading.markets import get_market
    from tuner.training.job import PhaseJob
    from tuner.training.rllib_algo import load_greedy_policy
    from tuner.training.settings import load_settings
    from tuner.training.trainer import validation_env

    settings = load_settings(configs)
    data = MarketData.load(get_market(settings.markets, "NQ"))
    env = validation_env(settings, data, 1, 42)
    for info in list_checkpoints(folder_of(first_run)):
        meta = unpack_checkpoint(info.path, tmp_path / info.base)
        job = PhaseJob("NQ", 42, 1, trainer="rllib")
        policy = load_greedy_policy(tmp_path / info.base, job, settings, env)
        metrics = evaluate_trading(policy, env, settings.training.eval_episodes)  # type: ignore[arg-type]
        assert metrics["val_reward"] == pytest.approx(meta["val_reward"], rel=1e-9)
        assert metrics["sharpe_ratio"] == pytest.approx(meta["sharpe_ratio"], rel=1e-9)
    env.close()


def test_resume_continues_the_run_and_timesteps_never_go_back(
    configs: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    assert train(configs, root, "--phase", "1", "--timesteps", "600", "--run-id", "r2") == 0
    before = names(folder_of(root))
    assert (
        train(configs, root, "--phase", "1", "--timesteps", "1300", "--resume-from", "latest") == 0
    )
    after = names(folder_of(root))
    new = [n for n in after if n not in before]
    assert {n.run_id for n in after} == {"r2"}  # the same run goes on
    assert min(n.timesteps for n in new) > max(n.timesteps for n in before)
    assert new[-1].event == "phase_end" and new[-1].timesteps >= 1300
    meta = verify_checkpoint(folder_of(root) / new[-1].filename)
    # The schedule went on from the checkpoint's state: no save repeated an earlier step.
    assert meta["callback_state"]["saves"] == len(after)


def test_a_damaged_checkpoint_is_refused_before_anything_is_unpickled(
    first_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuner.training.rllib_algo import restore

    source = list_checkpoints(folder_of(first_run))[-1]
    raw = source.path.read_bytes()
    meta = source.metadata_path.read_bytes()

    class Algo:
        restored = False

        def restore_from_path(self, path: Any) -> None:
            Algo.restored = True

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", tripwire)
    monkeypatch.setattr(pickle, "loads", tripwire)
    damaged = {"truncated": raw[: len(raw) // 2], "bit-flipped": bytearray(raw)}
    damaged["bit-flipped"][len(raw) // 3] ^= 0x10  # type: ignore[index]
    for kind, data in damaged.items():
        folder = tmp_path / kind
        folder.mkdir()
        (folder / source.path.name).write_bytes(bytes(data))
        (folder / source.metadata_path.name).write_bytes(meta)
        with pytest.raises(CheckpointCorruptError, match=r"truncated|sha256"):
            restore(Algo(), folder / source.path.name)  # type: ignore[arg-type]
        assert not Algo.restored and not list((folder).glob("*/"))


def test_resume_takes_the_newest_checkpoint_that_verifies(configs: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    assert train(configs, root, "--phase", "1", "--timesteps", "1100", "--run-id", "r3") == 0
    *older, newest = list_checkpoints(folder_of(root))
    raw = bytearray(newest.path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    newest.path.write_bytes(bytes(raw))
    assert find_resume_checkpoint(folder_of(root), "latest", seed=42, market="NQ") == older[-1].path
    assert (
        train(configs, root, "--phase", "1", "--timesteps", "1100", "--resume-from", "latest") == 0
    )
    resumed = [n for n in names(folder_of(root)) if n.timesteps > older[-1].timesteps]
    # Continued from the older one: new saves after it, next to the damaged file (kept).
    assert newest.path.exists()
    assert len(resumed) >= 2 and resumed[-1].event == "phase_end"


def test_retention_keeps_and_prunes_rllib_checkpoints(configs: Path, tmp_path: Path) -> None:
    from checkpointing.config import load_config
    from checkpointing.retention import prune_folder

    custom = tiny_config_dir(
        tmp_path / "config",
        checkpoint={
            "phase1": {"base_interval": 200},
            "retention": {
                "enabled": False,
                "keep_last_n": 1,
                "keep_top_k_by_sharpe": 1,
                "keep_top_k_by_reward": 1,
            },
        },
    )
    root = tmp_path / "models"
    assert train(custom, root, "--phase", "1", "--timesteps", "2600", "--run-id", "r4") == 0
    infos = list_checkpoints(folder_of(root))
    periodic = [i for i in infos if i.name.event == "periodic"]  # type: ignore[union-attr]
    assert len(periodic) >= 4
    metas = {i.filename: verify_checkpoint(i.path) for i in periodic}
    keep = {
        periodic[-1].filename,
        max(metas, key=lambda f: metas[f]["sharpe_ratio"]),
        max(metas, key=lambda f: metas[f]["val_reward"]),
    }
    keep |= {i.filename for i in infos if i.name.event != "periodic"}  # type: ignore[union-attr]
    config = load_config(custom / "checkpoint_config.yaml")
    prune_folder(folder_of(root), dataclasses.replace(config.retention, enabled=True))
    left = {i.filename for i in list_checkpoints(folder_of(root))}
    assert left == keep and len(keep) < len(infos)  # some pruned, the rules' picks kept
    for info in infos:
        assert info.metadata_path.exists() == (info.filename in keep)


@pytest.mark.parametrize("runners", [0, 2])
def test_the_same_seed_gives_the_same_names_and_metrics(
    configs: Path, tmp_path: Path, runners: int
) -> None:
    """Also with remote env runners: each samples its share of an iteration with its own
    seeded envs, and RLlib concatenates their batches in the runners' order."""
    runs = []
    for which in ("a", "b"):
        root = tmp_path / which
        assert (
            train(
                configs,
                root,
                *("--phase", "1", "--timesteps", "700", "--run-id", "same"),
                *("--env-runners", str(runners)),
            )
            == 0
        )
        infos = list_checkpoints(folder_of(root))
        for info in infos:  # sampled by that many remote runners (none: in this process)
            meta = verify_checkpoint(info.path)
            assert meta["env_runners"] == len(meta["env_runner_node_ids"]) == runners
        runs.append(
            [
                (
                    i.filename,
                    json.dumps(
                        {
                            k: verify_checkpoint(i.path)[k]
                            for k in ("val_reward", "sharpe_ratio", "win_rate")
                        }
                    ),
                )
                for i in infos
            ]
        )
    assert runs[0] == runs[1]
    assert len(runs[0]) >= 2


def test_continuing_a_checkpoint_of_the_other_trainer_exits_2_naming_both(
    first_run: Path, configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rllib_zip = list_checkpoints(folder_of(first_run))[-1].path
    common = ["--config-dir", str(configs), "--models-root", str(tmp_path / "m"), "--quiet"]
    assert main(["--continue", "--model-path", str(rllib_zip), *common]) == 2
    err = capsys.readouterr().err
    assert rllib_zip.name in err and "written by the rllib trainer" in err
    assert "--trainer sb3" in err

    sb3_root = tmp_path / "sb3"
    sb3 = ["--market", "NQ", "--seed", "42", "--phase", "1", "--timesteps", "128"]
    assert (
        main([*sb3, "--config-dir", str(configs), "--models-root", str(sb3_root), "--quiet"]) == 0
    )
    capsys.readouterr()
    sb3_zip = list_checkpoints(folder_of(sb3_root))[-1].path
    code = main(["--continue", "--model-path", str(sb3_zip), "--trainer", "rllib", *common])
    err = capsys.readouterr().err
    assert code == 2
    assert sb3_zip.name in err and "written by the sb3 trainer" in err
    assert "--trainer rllib" in err
    assert not (tmp_path / "m").exists()  # nothing written


def test_a_run_continued_from_another_runs_checkpoint_has_its_own_values_at_once(
    first_run: Path, configs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a PBT exploit does with RLlib: the source checkpoint (verified) restored into an
    algorithm built with new values; the optimizer takes the new learning rate from its first
    step (RLlib would restore the saved one), and the loaded policy scores on validation
    exactly what the source recorded."""
    from tuner.training import rllib_algo
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    source = list_checkpoints(folder_of(first_run))[0]  # periodic, at 512 steps
    recorded = verify_checkpoint(source.path)
    assert recorded["learning_rate"] == pytest.approx(3e-4)
    in_effect: list[float] = []
    original = rllib_algo.restore

    def restore(algo: Any, checkpoint: Path) -> dict[str, Any]:
        metadata = original(algo, checkpoint)
        in_effect.append(rllib_algo.optimizer_lr(algo))
        return metadata

    monkeypatch.setattr(rllib_algo, "restore", restore)
    new = {"lr": 1e-3, "clip_param": 0.3, "entropy_coeff": 0.02}
    settings = load_settings(configs, {"phase1": {"rllib": new}})
    root = tmp_path / "models"
    job = PhaseJob(
        "NQ",
        42,
        1,
        timesteps=1100,
        models_root=root,
        model_path=source.path,
        run_id="r1-x1",
        check_start=True,
        trainer="rllib",
        quiet=True,
    )
    result = train_phase(job, settings, handle_signals=False)
    assert in_effect == [pytest.approx(1e-3)]
    assert result.start_metrics["val_reward"] == pytest.approx(recorded["val_reward"], rel=1e-12)
    assert result.start_metrics["sharpe_ratio"] == pytest.approx(
        recorded["sharpe_ratio"], rel=1e-12
    )
    infos = list_checkpoints(folder_of(root))
    assert infos and min(i.timesteps for i in infos) > source.timesteps  # it went on from there
    for info in infos:
        meta = verify_checkpoint(info.path)
        assert meta["run_id"] == "r1-x1" and meta["learning_rate"] == pytest.approx(1e-3)
        assert meta["start_metrics"] == result.start_metrics
