"""The single-run trainer: one phase of one (market, seed), no Ray.

Reads top to bottom: config -> data -> envs -> model -> checkpoint callback -> learn ->
summary. The Ray Tune trainable (:mod:`tuner.driver.trainable`) wraps :func:`train_phase`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.config import CheckpointConfig
from checkpointing.errors import ConfigError
from tuner.training.job import PhaseJob, PhaseResult, prepare, tag

if TYPE_CHECKING:
    from stable_baselines3 import PPO

    from tuner.training.settings import Settings

__all__ = ["Reporter", "retention_hooks", "train_phase"]

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


def train_phase(
    job: PhaseJob,
    settings: Settings,
    *,
    report: Reporter | None = None,
    on_evaluation: Callable[[int, Mapping[str, float], Any], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    handle_signals: bool = True,
) -> PhaseResult:
    """Train one phase of one (market, seed) with dynamic checkpointing.

    Starts from ``job.model_path`` (``--continue``), else from the checkpoint picked by
    ``job.resume_from``, else, for phases 2 and 3, from the previous phase's ``phase_end``
    of the same market and seed (VecNormalize carried over), else from scratch.

    Raises:
        ConfigError, CheckpointNameError, DataError: bad input, before anything is written.
        TrainingInterrupted: a signal stopped training after an interrupt save.
    """
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from checkpointing import (
        DynamicCheckpointManager,
        MetricTrackingEvalCallback,
        find_resume_checkpoint,
        learn_with_checkpoints,
        load_checkpoint,
    )
    from tuner.trading.evaluation import evaluate_trading, make_vec_env

    say = report or (lambda line: None)
    t0 = time.monotonic()

    # --- config and data ----------------------------------------------------------------
    data, target = prepare(job, settings)
    training = settings.training
    ppo_cfg = training.phase(job.phase).ppo
    checkpoint_cfg = settings.checkpoint
    if job.base_interval is not None:
        schedule = replace(checkpoint_cfg.phase(job.phase), base_interval=job.base_interval)
        checkpoint_cfg = checkpoint_cfg.with_phase(job.phase, schedule)
    torch.set_num_threads(max(1, job.torch_threads))

    manager = DynamicCheckpointManager(
        checkpoint_cfg,
        phase=job.phase,
        market=job.market,
        seed=job.seed,
        models_root=job.models_root,
        target_timesteps=target,
        **retention_hooks(checkpoint_cfg, job.models_root),
    )

    # --- environments -------------------------------------------------------------------
    env_cfg = training.env_config()
    advisor = settings.advisor if job.phase == 3 else None
    raw_train = make_vec_env(
        data, job.phase, "train", job.seed, training.n_envs, config=env_cfg, advisor_config=advisor
    )
    eval_env = VecNormalize(
        make_vec_env(
            data,
            job.phase,
            "validation",
            job.seed,
            training.eval_episodes,
            config=env_cfg,
            evaluation=True,
            advisor_config=advisor,
        ),
        training=False,
        norm_reward=False,
    )

    # --- model: continue, resume, previous phase, or scratch ------------------------------
    start, start_path = _starting_point(job, manager.folder, settings, find_resume_checkpoint)
    model: PPO
    new_phase = True
    if start_path is not None:
        loaded = load_checkpoint(
            start_path, env=raw_train, device=training.device, **ppo_cfg.kwargs()
        )
        if loaded.vec_normalize is None:
            raise ConfigError(f"{start_path}: no companion _vecnormalize.pkl to continue from")
        model = loaded.model  # type: ignore[assignment]
        train_env = loaded.vec_normalize
        train_env.training = True
        meta = loaded.metadata
        same_run = (
            meta.get("phase") == job.phase
            and meta.get("market") == job.market
            and meta.get("seed") == job.seed
        )
        state = loaded.callback_state
        if same_run and state is not None:
            manager.load_state_dict(state)
            new_phase = False
        elif same_run:
            new_phase = False
        if new_phase:
            model.num_timesteps = 0
        say(f"{tag(job)}: starting from {start} {start_path.name}")
    else:
        train_env = VecNormalize(raw_train, gamma=ppo_cfg.gamma)
        model = PPO(
            "MlpPolicy",
            train_env,
            seed=job.seed,
            device=training.device,
            policy_kwargs={"net_arch": list(training.net_arch)},
            verbose=0,
            **ppo_cfg.kwargs(),
        )
        say(f"{tag(job)}: starting from scratch")

    # --- checkpoint callback ------------------------------------------------------------
    rate = _Rate(model.num_timesteps)
    last: dict[str, float] = {}

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
        if on_evaluation is not None:
            on_evaluation(t, metrics, manager)

    callback = MetricTrackingEvalCallback(
        manager,
        eval_env,
        evaluator=evaluate_trading,
        n_eval_episodes=training.eval_episodes,
        handle_signals=handle_signals,
        on_evaluation=progress,
        stop_requested=stop_requested,
    )

    # --- learn --------------------------------------------------------------------------
    result = PhaseResult(job.market, job.seed, job.phase, manager.folder, model.num_timesteps)
    result.started_from = start
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
        eval_env.close()
        train_env.close()

    # --- summary ------------------------------------------------------------------------
    outcome = callback.phase_end_outcome
    result.timesteps = model.num_timesteps
    result.metrics = dict(last or manager.state.last_metrics)
    result.phase_end = outcome.paths[0] if outcome is not None and outcome.paths else None
    result.elapsed_seconds = time.monotonic() - t0
    return result


def retention_hooks(config: CheckpointConfig, models_root: Path | None) -> dict[str, Any]:
    """The registry and in-run pruning, when those modules are available."""
    hooks: dict[str, Any] = {}
    try:
        from checkpointing.registry import Registry
        from checkpointing.retention import prune_folder
    except ImportError:  # pragma: no cover - retention ships with the package
        return hooks
    registry = Registry(config.models_root(models_root))
    hooks["on_commit"] = registry.record
    if config.retention.enabled:

        def pruner(folder: Path) -> Any:
            return prune_folder(folder, config.retention, registry=registry)

        hooks["pruner"] = pruner
    return hooks


def _starting_point(
    job: PhaseJob, folder: Path, settings: Settings, find: Callable[..., Path | None]
) -> tuple[str, Path | None]:
    if job.model_path is not None:
        if not job.model_path.is_file():
            raise ConfigError(f"--model-path: no such checkpoint {os.fspath(job.model_path)!r}")
        return "--model-path", job.model_path
    if job.resume_from is not None:
        path = find(folder, job.resume_from, seed=job.seed, market=job.market)
        if path is None:
            raise ConfigError(
                f"--resume-from {job.resume_from}: no checkpoint of {job.market} seed {job.seed} "
                f"that verifies in {folder}"
            )
        return job.resume_from, path
    if job.phase > 1:
        previous = settings.checkpoint.checkpoint_dir(job.phase - 1, job.market, job.models_root)
        path = find(previous, "phase_end", seed=job.seed, market=job.market)
        if path is not None:
            return f"phase {job.phase - 1} phase_end", path
        log.warning(
            "%s: no phase %d phase_end checkpoint in %s; phase %d starts from scratch",
            tag(job),
            job.phase - 1,
            previous,
            job.phase,
        )
    return "scratch", None


class _Rate:
    """Steps per second since the last call."""

    def __init__(self, start: int) -> None:
        self.t, self.steps = time.monotonic(), start

    def __call__(self, steps: int) -> float:
        now = time.monotonic()
        rate = (steps - self.steps) / max(now - self.t, 1e-9)
        self.t, self.steps = now, steps
        return rate
