"""Event saves in a real run: phase boundaries, best saves at the evaluations that improved
(with the metrics that improved), and no boundary saved twice after a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpointing import learn_with_checkpoints, list_checkpoints, load_checkpoint
from checkpointing.naming import CheckpointName, parse_name
from tests.integration.train_script import (
    ScriptedEvaluator,
    make_callback,
    make_manager,
    make_model,
    make_raw_env,
    make_train_env,
    write_config,
)

pytestmark = pytest.mark.slow

# The metrics of each evaluation, and the monitored metrics that improve on their best by the
# 2% threshold (so a best save is due): the first evaluation is the baseline; +0.9% is not
# enough (and does not move the best, so the next +9% counts from 1.1); later evaluations
# repeat the last one.
RISING_METRICS = (
    ({"val_reward": 1.0, "sharpe_ratio": 1.0, "win_rate": 0.5}, []),
    ({"val_reward": 1.1, "sharpe_ratio": 1.0, "win_rate": 0.5}, ["val_reward"]),
    ({"val_reward": 1.1, "sharpe_ratio": 1.5, "win_rate": 0.6}, ["sharpe_ratio", "win_rate"]),
    ({"val_reward": 1.11, "sharpe_ratio": 1.5, "win_rate": 0.6}, []),
    ({"val_reward": 1.2, "sharpe_ratio": 1.52, "win_rate": 0.6}, ["val_reward"]),
)


def config_with_boundaries(tmp_path: Path) -> Path:
    path = write_config(tmp_path / "c.yaml", base_interval=256, target_timesteps=2048)
    text = path.read_text().replace(
        "    target_timesteps: 2048\n",
        "    target_timesteps: 2048\n"
        "    boundaries:\n"
        "      - {name: warmup, at_timesteps: 300}\n"
        "      - {name: late_stage, at_progress: 0.75}\n",
    )
    path.write_text(text)
    return path


def events(folder: Path) -> list[tuple[int, str]]:
    return [
        (i.timesteps, i.name.event)
        for i in list_checkpoints(folder)
        if isinstance(i.name, CheckpointName)
    ]


def test_boundaries_and_best_saves_in_a_real_run(tmp_path: Path) -> None:
    config = config_with_boundaries(tmp_path)
    manager = make_manager(config, tmp_path / "models")
    model = make_model(make_train_env())
    learn_with_checkpoints(model, 2048, make_callback(manager))
    manager.close()
    saved = events(manager.folder)
    boundary = {e: t for t, e in saved if e.startswith("phase_boundary_")}
    assert set(boundary) == {"phase_boundary_warmup", "phase_boundary_late_stage"}
    assert 300 <= boundary["phase_boundary_warmup"] < 300 + 2 * 64
    assert 1536 <= boundary["phase_boundary_late_stage"] < 1536 + 2 * 64
    assert saved[-1][1] == "phase_end"
    for info in list_checkpoints(manager.folder):
        meta = json.loads(info.metadata_path.read_text())
        if isinstance(info.name, CheckpointName) and info.name.event == "best":
            # A best save lists what improved, and sits beside the periodic save it shares.
            assert meta["improved_metrics"], info.path.name
            assert (info.timesteps, "periodic") in saved
        else:
            assert meta["improved_metrics"] == []
    state = json.loads(list_checkpoints(manager.folder)[-1].metadata_path.read_text())[
        "callback_state"
    ]
    assert set(state["fired_boundaries"]) == {"warmup", "late_stage"}


def test_a_resumed_run_does_not_save_a_boundary_twice(tmp_path: Path) -> None:
    config = config_with_boundaries(tmp_path)
    manager = make_manager(config, tmp_path / "models")
    model = make_model(make_train_env())
    learn_with_checkpoints(model, 1024, make_callback(manager, save_phase_end=False))
    manager.close()
    first = events(manager.folder)
    assert "phase_boundary_warmup" in {e for _, e in first}
    start = [i for i in list_checkpoints(manager.folder) if i.timesteps > 300][-1]

    resumed = make_manager(config, tmp_path / "models")
    loaded = load_checkpoint(start.path, env=make_raw_env())
    assert loaded.callback_state is not None
    resumed.load_state_dict(loaded.callback_state)
    learn_with_checkpoints(loaded.model, 2048 - loaded.model.num_timesteps, make_callback(resumed))
    resumed.close()
    after = events(resumed.folder)
    assert [e for _, e in after].count("phase_boundary_warmup") == 1
    assert [e for _, e in after].count("phase_boundary_late_stage") == 1


def test_best_saves_happen_exactly_at_the_evaluations_that_improve(tmp_path: Path) -> None:
    # A fixed interval: evaluations (and periodic saves) at 128, 256, ... 1024 steps.
    interval, total = 128, 1024
    config = write_config(tmp_path / "c.yaml", base_interval=interval, max_interval_multiplier=1)
    manager = make_manager(config, tmp_path / "models")
    model = make_model(make_train_env())
    evaluator = ScriptedEvaluator([metrics for metrics, _ in RISING_METRICS])
    learn_with_checkpoints(model, total, make_callback(manager, evaluator=evaluator))
    manager.close()

    periodic_steps = list(range(interval, total + 1, interval))
    assert evaluator.timesteps == [*periodic_steps, total]  # the last one for the phase end
    saved = events(manager.folder)
    assert [t for t, e in saved if e == "periodic"] == periodic_steps
    improved_at = {
        periodic_steps[i]: improved for i, (_, improved) in enumerate(RISING_METRICS) if improved
    }
    assert sorted(improved_at) == [256, 384, 640]
    assert [t for t, e in saved if e == "best"] == sorted(improved_at)
    assert manager.state.saves_by_event["best"] == len(improved_at)

    infos = {(i.timesteps, i.name.event): i for i in list_checkpoints(manager.folder)}
    for steps, improved in improved_at.items():
        best, twin = infos[steps, "best"], infos[steps, "periodic"]
        # The same model as its periodic twin: the same zip and VecNormalize bytes.
        assert best.path.read_bytes() == twin.path.read_bytes()
        assert best.vecnormalize_path.read_bytes() == twin.vecnormalize_path.read_bytes()
        meta = json.loads(best.metadata_path.read_text())
        assert meta["improved_metrics"] == improved, best.filename
        scripted = RISING_METRICS[periodic_steps.index(steps)][0]
        assert {k: meta[k] for k in scripted} == scripted
        assert json.loads(twin.metadata_path.read_text())["improved_metrics"] == []


def test_each_evaluation_names_every_checkpoint_it_saved_and_what_retention_freed(
    tmp_path: Path,
) -> None:
    """What a report to Tune carries (the report's history): the file names of every
    checkpoint an evaluation saved (a best and its periodic twin), and what retention deleted
    since the previous evaluation, adding up to what the passes deleted."""
    from checkpointing import load_config
    from checkpointing.retention import prune_folder

    interval, total = 128, 1024
    config = write_config(
        tmp_path / "c.yaml",
        base_interval=interval,
        max_interval_multiplier=1,
        retention={"keep_last_n": 1, "keep_top_k_by_sharpe": 1, "keep_top_k_by_reward": 1,
                   "prune_frequency": 2},
    )  # fmt: skip
    retention = load_config(config).retention
    passes = []

    def pruner(folder: Path) -> object:
        passes.append(prune_folder(folder, retention))
        return passes[-1]

    manager = make_manager(config, tmp_path / "models", pruner=pruner)
    seen: list[tuple[int, tuple[str, ...], tuple[int, int]]] = []

    def on_evaluation(t: int, metrics: object) -> None:
        seen.append((t, manager.last_saved, manager.take_pruned()))

    evaluator = ScriptedEvaluator([metrics for metrics, _ in RISING_METRICS])
    callback = make_callback(manager, evaluator=evaluator, on_evaluation=on_evaluation)
    learn_with_checkpoints(make_model(make_train_env()), total, callback)
    manager.close()

    def events(saved: tuple[str, ...], t: int) -> list[str]:
        names = [parse_name(s) for s in saved]
        assert all(isinstance(n, CheckpointName) and n.timesteps == t for n in names), saved
        return [n.event for n in names if isinstance(n, CheckpointName)]

    improved = {interval * (i + 1) for i, (_, better) in enumerate(RISING_METRICS) if better}
    *periodic, (end, end_saved, _) = seen
    assert [t for t, _, _ in periodic] == list(range(interval, total + 1, interval))
    for t, saved, _ in periodic:
        assert events(saved, t) == ["periodic", *(["best"] if t in improved else [])]
    assert events(end_saved, end) == ["phase_end"]
    deleted = sum(p.deleted for p in passes)
    freed = sum(p.bytes_freed for p in passes)
    left = manager.take_pruned()  # a pass after the last evaluation's report
    assert deleted > 0
    assert sum(n for _, _, (n, _) in seen) + left[0] == deleted
    assert sum(b for _, _, (_, b) in seen) + left[1] == freed > 0
