"""What both trainers set up the same way for a phase: its checkpoint config, the run's
checkpoint manager (with the registry and in-run retention) and the validation env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.config import CheckpointConfig
from tuner.training.job import PhaseJob
from tuner.training.start import Start

if TYPE_CHECKING:
    from checkpointing.uploads import Uploader
    from tuner.training.settings import Settings

__all__ = [
    "phase_checkpoint_config",
    "retention_hooks",
    "run_manager",
    "upload_policy",
    "validation_env",
]


def phase_checkpoint_config(job: PhaseJob, settings: Settings) -> CheckpointConfig:
    """The checkpoint config of the job's phase, with ``--base-interval``."""
    config = settings.checkpoint
    if job.base_interval is not None:
        schedule = replace(config.phase(job.phase), base_interval=job.base_interval)
        config = config.with_phase(job.phase, schedule)
    return config


def run_manager(
    job: PhaseJob,
    config: CheckpointConfig,
    start: Start,
    target: int,
    uploads: Uploader | None = None,
) -> Any:
    """The run's checkpoint manager, with the registry, in-run retention and, with
    ``uploads`` (an object-store models root), each commit queued for upload."""
    from checkpointing import DynamicCheckpointManager

    return DynamicCheckpointManager(
        config,
        phase=job.phase,
        market=job.market,
        seed=job.seed,
        run_id=start.run.run_id,
        run_info=start.run_info(config.models_root(job.models_root), dict(job.run_info)),
        models_root=job.models_root,
        target_timesteps=target,
        **retention_hooks(config, job.models_root, uploads),
    )


def validation_env(settings: Settings, data: Any, phase: int, seed: int) -> Any:
    """The raw VecEnv a run of ``phase`` evaluates on: ``eval_episodes`` envs walking the
    validation split. The trainer sees it through a VecNormalize synced from training;
    ``tuner.diff`` through each checkpoint's own."""
    from tuner.trading.evaluation import make_vec_env

    training = settings.training
    return make_vec_env(
        data,
        phase,
        "validation",
        seed,
        training.eval_episodes,
        config=training.env_config(),
        evaluation=True,
        advisor_config=settings.advisor if phase == 3 else None,
    )


def retention_hooks(
    config: CheckpointConfig, models_root: Path | None, uploads: Uploader | None = None
) -> dict[str, Any]:
    """The registry and in-run pruning, when those modules are available; with ``uploads``,
    each commit is also queued for upload, pending uploads are kept by retention, and what
    retention deletes is deleted on the bucket too."""
    hooks: dict[str, Any] = {}
    try:
        from checkpointing.registry import Registry
        from checkpointing.retention import prune_folder
    except ImportError:  # pragma: no cover - retention ships with the package
        return hooks
    registry = Registry(config.models_root(models_root))
    hooks["on_commit"] = registry.record if uploads is None else _both(registry.record, uploads)
    if config.retention.enabled:

        def pruner(folder: Path) -> Any:
            report = prune_folder(
                folder, config.retention, registry=registry, policy=upload_policy(config, uploads)
            )
            if uploads is not None:
                uploads.forget(row.info.path for row in report.deleted_rows)
            return report

        hooks["pruner"] = pruner
    return hooks


def upload_policy(config: CheckpointConfig, uploads: Uploader | None) -> Any:
    """The retention policy of the config plus the pending uploads' rule (None: the config's
    own, without ``uploads``)."""
    if uploads is None:
        return None
    from checkpointing.policies import build_policy

    return build_policy(config.retention, extra=[uploads.retention_rule()])


def _both(record: Callable[[Path, dict[str, Any]], None], uploads: Uploader) -> Any:
    def on_commit(zip_path: Path, metadata: dict[str, Any]) -> None:
        record(zip_path, metadata)
        uploads.committed(zip_path, metadata)

    return on_commit
