"""The single-run trainer: one phase of one (market, seed), no Ray.

Reads top to bottom: config -> data -> envs -> model -> checkpoint callback -> learn ->
summary. The Ray Tune trainable (:mod:`tuner.driver.trainable`) wraps :func:`train_phase`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.config import CheckpointConfig
from checkpointing.errors import ConfigError
from tuner.training.curves import CurveLog, run_logger
from tuner.training.job import PhaseJob, PhaseResult, prepare, tag
from tuner.training.setup import (
    phase_checkpoint_config,
    retention_hooks,
    run_manager,
    upload_policy,
    validation_env,
)
from tuner.training.start import Start, choose_start

if TYPE_CHECKING:
    from stable_baselines3 import PPO

    from checkpointing.uploads import Uploader
    from tuner.training.settings import Settings

__all__ = [
    "Reporter",
    "retention_hooks",
    "retention_line",
    "retention_pass",
    "retention_reports",
    "train_phase",
    "validation_env",
]

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


@dataclass
class _Envs:
    """The run's environments: training (raw, wrapped in VecNormalize by the model's start)
    and evaluation on the validation split."""

    raw_train: Any
    eval_env: Any


def train_phase(
    job: PhaseJob,
    settings: Settings,
    *,
    report: Reporter | None = None,
    on_evaluation: Callable[[int, Mapping[str, float], Any], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    handle_signals: bool = True,
    uploads: Uploader | None = None,
) -> PhaseResult:
    """Train one phase of one (market, seed) with dynamic checkpointing.

    Starts as :func:`tuner.training.start.choose_start` says: from ``job.model_path``
    (``--continue``), else from the checkpoint picked by ``job.resume_from``, else, for
    phases 2 and 3, from the previous phase's ``phase_end`` of the same run (VecNormalize
    carried over), else from scratch; as the run it says. With ``uploads`` (an object-store
    models root), ``job.models_root`` is the staging folder: each committed checkpoint is
    queued for upload, and retention there keeps what is not uploaded yet.

    Raises:
        ConfigError, CheckpointNameError, DataError: bad input, before anything is written.
        CheckpointCorruptError: the starting checkpoint fails verification or holds a
            pickle no checkpoint needs (nothing of it has been unpickled).
        TrainingInterrupted: a signal stopped training after an interrupt save.

    With ``job.trainer == "rllib"`` the phase trains with RLlib instead
    (:func:`tuner.training.rllib_trainer.train_rllib_phase`), under the same checkpoints.
    """
    if job.trainer == "rllib":
        from tuner.training.rllib_trainer import train_rllib_phase

        return train_rllib_phase(
            job,
            settings,
            report=report,
            on_evaluation=on_evaluation,
            stop_requested=stop_requested,
            handle_signals=handle_signals,
            uploads=uploads,
        )
    import torch

    from checkpointing import MetricTrackingEvalCallback, learn_with_checkpoints
    from tuner.trading.evaluation import evaluate_trading

    say = report or (lambda line: None)
    t0 = time.monotonic()

    # --- config, data, where to start and as which run --------------------------------------
    data, target = prepare(job, settings)
    checkpoint_cfg = phase_checkpoint_config(job, settings)
    torch.set_num_threads(max(1, job.torch_threads))
    start = choose_start(job, checkpoint_cfg, None if uploads is None else uploads.mirror())
    manager = run_manager(job, checkpoint_cfg, start, target, uploads)
    say(f"{tag(job)}: {start.describe()}")

    # --- environments and model ------------------------------------------------------------
    envs = _environments(job, settings, data)
    model, train_env = _model(job, settings, start, envs, manager)
    curves_dir = (
        None if job.curves_dir is None else job.curves_dir / f"phase{job.phase}_{manager.run_id}"
    )
    model.set_logger(run_logger(curves_dir))  # SB3's figures, ours, checkpoint markers
    curves = CurveLog(model)
    start_metrics = _check_start(job, settings, start, model, train_env, envs, manager, say)

    # --- checkpoint callback, learn ----------------------------------------------------------
    result = PhaseResult(
        job.market, job.seed, job.phase, manager.folder, model.num_timesteps, manager.run_id
    )
    result.started_from = start.how
    result.start_metrics = start_metrics
    last: dict[str, float] = {}
    callback = MetricTrackingEvalCallback(
        manager,
        envs.eval_env,
        evaluator=evaluate_trading,
        n_eval_episodes=settings.training.eval_episodes,
        handle_signals=handle_signals,
        on_evaluation=_progress(job, target, say, last, manager, curves, on_evaluation),
        stop_requested=stop_requested,
    )
    remaining = target - model.num_timesteps
    try:
        if remaining > 0:
            learn_with_checkpoints(
                model, remaining, callback, reset_num_timesteps=False, progress_bar=False
            )
        else:
            callback.init_callback(model)
            if manager.state.saves_by_event.get("phase_end", 0) == 0:
                callback.save_phase_end_checkpoint()
            result.skipped = True
    finally:
        manager.close()
        interrupt = callback.interrupt_outcome
        if interrupt is not None and interrupt.paths:
            curves.interrupt(interrupt.timesteps, interrupt.paths[0])
        curves.flush()
        envs.eval_env.close()
        train_env.close()

    # --- summary ---------------------------------------------------------------------------
    outcome = callback.phase_end_outcome
    result.timesteps = model.num_timesteps
    result.metrics = dict(last or manager.state.last_metrics)
    result.phase_end = outcome.paths[0] if outcome is not None and outcome.paths else None
    result.elapsed_seconds = time.monotonic() - t0
    return result


def _environments(job: PhaseJob, settings: Settings, data: Any) -> _Envs:
    from stable_baselines3.common.vec_env import VecNormalize

    from tuner.trading.evaluation import make_vec_env

    training = settings.training
    env_cfg = training.env_config()
    advisor = settings.advisor if job.phase == 3 else None
    raw_train = make_vec_env(
        data, job.phase, "train", job.seed, training.n_envs, config=env_cfg, advisor_config=advisor
    )
    eval_env = VecNormalize(
        validation_env(settings, data, job.phase, job.seed), training=False, norm_reward=False
    )
    return _Envs(raw_train, eval_env)


def _model(
    job: PhaseJob, settings: Settings, start: Start, envs: _Envs, manager: Any
) -> tuple[PPO, Any]:
    """The model and its VecNormalize: loaded from the starting checkpoint, or new."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from checkpointing import load_checkpoint

    training = settings.training
    ppo_cfg = training.phase(job.phase).ppo
    if start.path is None:
        train_env = VecNormalize(envs.raw_train, gamma=ppo_cfg.gamma)
        fresh = PPO(
            "MlpPolicy",
            train_env,
            seed=job.seed,
            device=training.device,
            policy_kwargs={"net_arch": list(training.net_arch)},
            verbose=0,
            **ppo_cfg.kwargs(),
        )
        return fresh, train_env
    loaded = load_checkpoint(
        start.path, env=envs.raw_train, device=training.device, **ppo_cfg.kwargs()
    )
    if loaded.vec_normalize is None:
        raise ConfigError(f"{start.path}: no companion VecNormalize .pkl to continue from")
    model: PPO = loaded.model  # type: ignore[assignment]
    train_env = loaded.vec_normalize
    train_env.training = True
    _in_effect(model, train_env, ppo_cfg)
    if start.new_phase:
        model.num_timesteps = 0  # a new phase counts from 0, with a fresh schedule
    elif loaded.callback_state is not None:
        manager.load_state_dict(loaded.callback_state)  # schedule, bests and counters
    else:  # a checkpoint without our state (v1): the schedule goes on from its timesteps
        manager.start_at(model.num_timesteps)
    return model, train_env


def _check_start(
    job: PhaseJob,
    settings: Settings,
    start: Start,
    model: PPO,
    train_env: Any,
    envs: _Envs,
    manager: Any,
    say: Reporter,
) -> dict[str, float]:
    """With ``job.check_start``: the starting checkpoint evaluated on validation as loaded
    (weights and VecNormalize statistics), recorded in every checkpoint of the run. A model
    continued from another run's checkpoint (a PBT exploit) must score what that checkpoint
    scored."""
    if not job.check_start or start.path is None:
        return {}
    from stable_baselines3.common.vec_env import sync_envs_normalization

    from tuner.trading.evaluation import evaluate_trading

    sync_envs_normalization(train_env, envs.eval_env)
    metrics = {
        k: float(v)
        for k, v in evaluate_trading(model, envs.eval_env, settings.training.eval_episodes).items()
    }
    manager.run_info["start_metrics"] = metrics
    say(
        f"{tag(job)}: {start.path.name} evaluates at val_reward={metrics.get('val_reward', 0):+.3f}"
    )
    return metrics


def _in_effect(model: PPO, train_env: Any, ppo: Any) -> None:
    """Make this run's settings the ones in effect on a loaded model: SB3 rebuilds the
    learning-rate and clip-range schedules from the values passed to ``load``, but the
    optimizer keeps the learning rate it was saved with until the first update, and the
    VecNormalize keeps its own discount for the return statistics."""
    lr = float(model.lr_schedule(model._current_progress_remaining))
    for group in model.policy.optimizer.param_groups:
        group["lr"] = lr
    train_env.gamma = ppo.gamma


def _progress(
    job: PhaseJob,
    target: int,
    say: Reporter,
    last: dict[str, float],
    manager: Any,
    curves: CurveLog,
    on_evaluation: Callable[[int, Mapping[str, float], Any], None] | None,
) -> Callable[[int, Mapping[str, float]], None]:
    """What happens after each evaluation: ``last`` updated, a progress line, the learning
    curves, the caller's hook (the trainable's report to Tune) with the manager."""
    rate = _Rate(curves.model.num_timesteps)

    def progress(t: int, metrics: Mapping[str, float]) -> None:
        last.clear()
        last.update(metrics)
        if not job.quiet:
            say(
                f"{tag(job)}: {t:>9,}/{target:,} steps  {rate(t):>6,.0f} steps/s  "
                + "  ".join(
                    f"{k}={metrics[k]:+.3f}"
                    for k in ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown")
                    if k in metrics
                )
            )
        curves.evaluation(t, metrics, manager.last_saved)
        if on_evaluation is not None:
            on_evaluation(t, metrics, manager)

    return progress


def retention_reports(
    config: CheckpointConfig,
    models_root: Path | None,
    phases: Sequence[int],
    markets: Sequence[str],
    uploads: Uploader | None = None,
) -> list[Any]:
    """Retention over every checkpoint folder of ``phases`` x ``markets`` under the models root,
    as every run ends (``tuner.train`` and the driver alike); the
    :class:`~checkpointing.retention.PruneReport` of each folder. With ``uploads``, pending
    uploads are kept and deletions are made on the bucket too."""
    from checkpointing.registry import Registry
    from checkpointing.retention import prune_tree

    root = config.models_root(models_root)
    reports = prune_tree(
        root,
        config,
        phases,
        markets,
        registry=Registry(root, config),
        policy=upload_policy(config, uploads),
    )
    if uploads is not None:
        uploads.forget(row.info.path for r in reports for row in r.deleted_rows)
    return list(reports)


def retention_line(reports: Sequence[Any]) -> str:
    """The line a retention pass prints."""
    deleted = sum(r.deleted for r in reports)
    return f"retention: {len(reports)} folders pruned, {deleted} checkpoints deleted"


def retention_pass(
    config: CheckpointConfig,
    models_root: Path | None,
    phases: Sequence[int],
    markets: Sequence[str],
    uploads: Uploader | None = None,
) -> str:
    """:func:`retention_reports`, returning the line to print. With ``uploads``, pending
    uploads are kept and deletions are made on the bucket too."""
    return retention_line(retention_reports(config, models_root, phases, markets, uploads))


class _Rate:
    """Steps per second since the last call."""

    def __init__(self, start: int) -> None:
        self.t, self.steps = time.monotonic(), start

    def __call__(self, steps: int) -> float:
        now = time.monotonic()
        rate = (steps - self.steps) / max(now - self.t, 1e-9)
        self.t, self.steps = now, steps
        return rate
