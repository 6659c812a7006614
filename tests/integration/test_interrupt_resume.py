"""Ctrl+C, SIGTERM or an exception saves an ``interrupt`` checkpoint; resuming picks up from it.

A resumed run must continue at the same timesteps with the same VecNormalize statistics and
the same bests, make its next periodic save at the step the interrupted run had scheduled (no
re-save of a step already saved), and end with ``phase_end``.
"""

from __future__ import annotations

import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import PPO

from checkpointing import (
    TrainingInterrupted,
    learn_with_checkpoints,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)
from checkpointing.selection import find_resume_checkpoint
from checkpointing.triggers import improved_enough
from tests.integration.train_script import (
    MARKET,
    N_ENVS,
    SEED,
    ScriptedEvaluator,
    checkpoint_folder,
    leftovers,
    make_callback,
    make_manager,
    make_model,
    make_raw_env,
    make_train_env,
    no_leftovers,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TOTAL = 2000
SIGNALS = ("SIGINT", "SIGTERM")


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory: pytest.TempPathFactory, spawn) -> dict[str, dict[str, Any]]:
    """One training subprocess per signal, started together, signalled once training runs.

    As soon as the SIGTERM run has stopped, a copy of its models root is resumed from the
    command line (``--resume-from``) in the background, for the last test of this module.
    """
    runs: dict[str, dict[str, Any]] = {}
    for name in SIGNALS:
        work = tmp_path_factory.mktemp(f"interrupt_{name}")
        config = write_config(work / "checkpoint_config.yaml", target_timesteps=TOTAL)
        args = ["--models-root", work / "models", "--config", config, "--timesteps", TOTAL]
        runs[name] = {"work": work, "config": config, "child": spawn(args, work / "logs")}
    for name, run in runs.items():
        run["child"].wait_for_line("READY")
        run["child"].send(signal.Signals[name])
    for run in runs.values():
        run["returncode"] = run["child"].wait(timeout=60)
        run["folder"] = checkpoint_folder(run["config"], run["work"] / "models")

    run = runs["SIGTERM"]
    work = tmp_path_factory.mktemp("resume_cli")
    root = shutil.copytree(run["work"] / "models", work / "models")
    folder = checkpoint_folder(run["config"], root)
    checkpoint = find_resume_checkpoint(folder, "latest")
    if run["returncode"] == 143 and checkpoint is not None:
        args = ["--models-root", root, "--config", run["config"], "--timesteps", TOTAL]
        child = spawn([*args, "--resume-from", checkpoint], work / "logs", fresh=True)
        run["resume"] = {"folder": folder, "checkpoint": checkpoint, "child": child}
    return runs


def _event(info: Any) -> str:
    return info.name.event


@pytest.mark.parametrize("signame", SIGNALS)
def test_signal_saves_an_interrupt_checkpoint_and_exits_128_plus_signum(
    signame: str, interrupted_runs: dict[str, dict[str, Any]]
) -> None:
    run = interrupted_runs[signame]
    child, folder = run["child"], run["folder"]
    assert run["returncode"] == 128 + signal.Signals[signame], child.diagnostics()
    assert run["returncode"] == {"SIGINT": 130, "SIGTERM": 143}[signame]

    reported = Path(child.wait_for_line("INTERRUPTED ").split(" ", 1)[1])
    infos = list_checkpoints(folder)
    interrupts = [i for i in infos if _event(i) == "interrupt"]
    assert [i.path.resolve() for i in interrupts] == [reported.resolve()]
    assert not [i for i in infos if _event(i) == "phase_end"], "stopped early: no phase_end"
    meta = verify_checkpoint(reported)
    assert meta["interrupt_reason"] == signame
    assert 0 < meta["timesteps"] < TOTAL
    assert meta["metrics_timesteps"] <= meta["timesteps"]  # the latest evaluation, reused
    assert leftovers(folder) == no_leftovers()


@pytest.mark.parametrize("signame", SIGNALS)
def test_resume_from_interrupt_continues_where_it_stopped(
    signame: str,
    interrupted_runs: dict[str, dict[str, Any]],
    tmp_path: Path,
    keep_signal_handlers: None,
) -> None:
    run = interrupted_runs[signame]
    root = shutil.copytree(run["work"] / "models", tmp_path / "models")
    manager = make_manager(run["config"], root)
    folder = manager.folder

    checkpoint = find_resume_checkpoint(folder, "latest", seed=SEED, market=MARKET)
    assert checkpoint is not None and "_evt-interrupt_" in checkpoint.name
    meta = verify_checkpoint(checkpoint)
    state = meta["callback_state"]
    stopped_at = meta["timesteps"]
    with open(checkpoint.with_name(checkpoint.name[:-4] + "_vecnormalize.pkl"), "rb") as fh:
        saved_stats = pickle.load(fh)  # verified above

    loaded = load_checkpoint(checkpoint, make_raw_env())
    model = loaded.model
    assert model.num_timesteps == stopped_at
    stats = model.get_vec_normalize_env()
    assert stats is loaded.vec_normalize
    for rms in ("obs_rms", "ret_rms"):
        np.testing.assert_array_equal(getattr(stats, rms).mean, getattr(saved_stats, rms).mean)
        np.testing.assert_array_equal(getattr(stats, rms).var, getattr(saved_stats, rms).var)
        assert getattr(stats, rms).count == getattr(saved_stats, rms).count
    # The statistics are those of the step the model was stopped at, not of an earlier save.
    assert stats.ret_rms.count == pytest.approx(stopped_at, abs=0.01)

    manager.load_state_dict(state)
    assert manager.next_save_step == state["next_save_step"] > stopped_at
    assert state["bests"] and manager.tracker.state() == state["bests"]

    before = {i.path.name for i in list_checkpoints(folder)}
    old_periodic = {i.timesteps for i in list_checkpoints(folder) if _event(i) == "periodic"}
    callback = make_callback(manager)
    learn_with_checkpoints(model, TOTAL - stopped_at, callback)
    manager.close()

    new = [i for i in list_checkpoints(folder) if i.path.name not in before]
    new_periodic = sorted(i.timesteps for i in new if _event(i) == "periodic")
    assert new_periodic, [i.path.name for i in new]
    # The first periodic save lands on the stored schedule (checked every N_ENVS steps) ...
    assert state["next_save_step"] <= new_periodic[0] < state["next_save_step"] + N_ENVS
    # ... and no step is saved twice.
    assert all(t > stopped_at for t in new_periodic)
    assert not old_periodic & set(new_periodic)
    assert len(new_periodic) == len(set(new_periodic))
    # Bests were not forgotten: any best after the resume beats the bests stored at the stop.
    threshold = manager.config.events.metric_improvement_threshold
    floor = manager.config.events.improvement_floor
    for info in new:
        if _event(info) == "best":
            best_meta = verify_checkpoint(info.path)
            for metric in best_meta["improved_metrics"]:
                value = best_meta[metric]
                assert improved_enough(value, state["bests"][metric], threshold, floor), info
    # The run ends with one phase_end at the end of training, and the counters carried on.
    (phase_end,) = [i for i in new if _event(i) == "phase_end"]
    assert phase_end.timesteps == model.num_timesteps >= TOTAL
    end_state = verify_checkpoint(phase_end.path)["callback_state"]
    periodic_count = end_state["saves_by_event"]["periodic"]
    assert periodic_count == state["saves_by_event"]["periodic"] + len(new_periodic)
    assert end_state["elapsed_seconds"] > state["elapsed_seconds"]
    assert leftovers(folder) == no_leftovers()


def test_resume_from_the_command_line_ends_with_phase_end(
    interrupted_runs: dict[str, dict[str, Any]],
) -> None:
    run = interrupted_runs["SIGTERM"]
    assert "resume" in run, f"no interrupt checkpoint to resume from\n{run['child'].diagnostics()}"
    folder, checkpoint, child = (
        run["resume"]["folder"],
        run["resume"]["checkpoint"],
        run["resume"]["child"],
    )
    meta = verify_checkpoint(checkpoint)
    stopped_at, next_save = meta["timesteps"], meta["callback_state"]["next_save_step"]
    assert "_evt-interrupt_" in checkpoint.name

    assert child.wait(timeout=60) == 0, child.diagnostics()
    done_at = int(child.wait_for_line("DONE ").split()[1])
    infos = list_checkpoints(folder)
    assert [i.timesteps for i in infos if _event(i) == "phase_end"] == [done_at]
    assert done_at >= TOTAL
    periodic = [i.timesteps for i in infos if _event(i) == "periodic"]
    assert len(periodic) == len(set(periodic))
    resumed = [t for t in periodic if t > stopped_at]
    assert resumed and next_save <= resumed[0] < next_save + N_ENVS
    for info in infos:
        verify_checkpoint(info.path)
    assert leftovers(folder) == no_leftovers()


class _FailAtStep(gym.Wrapper):
    """Raises on its ``n``-th step, as a broken data feed or env bug would."""

    def __init__(self, env: gym.Env, n: int) -> None:
        super().__init__(env)
        self.n = n
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps == self.n:
            raise RuntimeError(f"simulated env failure at step {self.n}")
        return self.env.step(action)


def _train_until_env_fails(config_file: Path, models_root: Path) -> tuple[Any, Any]:
    model = make_model(make_train_env(wrapper=lambda env: _FailAtStep(env, 200)))
    manager = make_manager(config_file, models_root)
    callback = make_callback(manager)
    with pytest.raises(RuntimeError, match="simulated env failure at step 200"):
        learn_with_checkpoints(model, TOTAL, callback)
    manager.close()
    return model, manager


def test_exception_inside_learn_saves_interrupt_and_reraises(
    config_file: Path, models_root: Path, keep_signal_handlers: None
) -> None:
    model, manager = _train_until_env_fails(config_file, models_root)

    infos = list_checkpoints(manager.folder)
    interrupts = [i for i in infos if _event(i) == "interrupt"]
    assert len(interrupts) == 1
    (interrupt,) = interrupts
    # Env 0 of 2 fails on its 200th step: 199 full vector steps were taken.
    assert interrupt.timesteps == model.num_timesteps == 199 * N_ENVS
    meta = verify_checkpoint(interrupt.path)
    assert meta["interrupt_reason"] == "RuntimeError: simulated env failure at step 200"
    assert not [i for i in infos if _event(i) == "phase_end"]
    loaded = load_checkpoint(interrupt.path, make_raw_env())
    assert loaded.model.num_timesteps == interrupt.timesteps
    assert find_resume_checkpoint(manager.folder, "latest") == interrupt.path
    assert leftovers(manager.folder) == no_leftovers()


def test_exception_inside_learn_restores_the_signal_handlers(
    config_file: Path, models_root: Path, keep_signal_handlers: None
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _train_until_env_fails(config_file, models_root)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_stop_during_the_final_update_still_saves_the_final_model(
    config_file: Path,
    models_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    keep_signal_handlers: None,
) -> None:
    total = 512
    model = make_model(make_train_env())
    manager = make_manager(config_file, models_root)
    callback = make_callback(manager)
    train = PPO.train

    def train_with_a_sigterm_arriving(self: PPO) -> None:
        if self.num_timesteps >= total:  # the update after the last rollout
            callback.request_stop(signal.SIGTERM)  # what the SIGTERM handler does
        train(self)

    monkeypatch.setattr(PPO, "train", train_with_a_sigterm_arriving)
    stopped: TrainingInterrupted | None = None
    try:
        learn_with_checkpoints(model, total, callback)
    except TrainingInterrupted as exc:
        stopped = exc
    manager.close()

    final = [
        i
        for i in list_checkpoints(manager.folder)
        if i.timesteps == model.num_timesteps and _event(i) in ("interrupt", "phase_end")
    ]
    assert final, "neither an interrupt nor a phase_end checkpoint of the final model"
    assert stopped is None or stopped.checkpoint is not None


def test_an_interrupt_carries_the_last_evaluation_and_says_when_it_was_made(
    tmp_path: Path, keep_signal_handlers: None
) -> None:
    config = write_config(tmp_path / "c.yaml", base_interval=128, max_interval_multiplier=1)
    manager = make_manager(config, tmp_path / "models")
    model = make_model(make_train_env())
    evaluator = ScriptedEvaluator(
        [
            {"val_reward": 0.25, "sharpe_ratio": 0.5, "win_rate": 0.4},
            {"val_reward": 0.75, "sharpe_ratio": 1.25, "win_rate": 0.6},
        ]
    )
    stop_at = 256 + 40  # 40 steps after the second evaluation, long before the third (384)
    callback = make_callback(
        manager,
        evaluator=evaluator,
        stop_requested=lambda: model.num_timesteps >= stop_at,
        stop_poll_seconds=0.0,
    )
    with pytest.raises(TrainingInterrupted) as stopped:
        learn_with_checkpoints(model, TOTAL, callback)
    manager.close()

    assert evaluator.timesteps == [128, 256]  # the interrupt reuses the last evaluation
    assert stopped.value.checkpoint is not None
    interrupt = Path(stopped.value.checkpoint)
    meta = verify_checkpoint(interrupt)
    assert meta["event_tag"] == "interrupt"
    assert meta["timesteps"] == model.num_timesteps == stop_at
    assert meta["metrics_timesteps"] == 256
    assert (meta["val_reward"], meta["sharpe_ratio"], meta["win_rate"]) == (0.75, 1.25, 0.6)
    assert "_val-+0.750_sharpe-+1.25_" in interrupt.name
