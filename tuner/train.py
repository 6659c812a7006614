"""One training run, no Ray: ``python -m tuner.train --market NQ --seed 42 --phase 1``.

Reads top to bottom: config -> data -> envs -> model -> checkpoint callback -> learn ->
summary. The Ray Tune trainable (``tuner.trainable``) wraps :func:`train_phase`.

Examples::

    python -m tuner.train --market NQ --seed 42 --phase 1 --timesteps 50000
    python -m tuner.train --market NQ --seed 42 --phases 1,2,3
    python -m tuner.train --phase 1 --market NQ --continue \\
        --model-path models/phase1/NQ/checkpoints/<name>.zip
    python -m tuner.train --market NQ --seed 42 --phase 2 --resume-from best:sharpe_ratio
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.config import CheckpointConfig
from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.naming import validate_market, validate_seed

if TYPE_CHECKING:
    from stable_baselines3 import PPO

    from tuner.settings import Settings

__all__ = ["PhaseJob", "PhaseResult", "main", "parse_phases", "prepare", "train_phase"]

log = logging.getLogger(__name__)

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class PhaseJob:
    """What to train: one phase of one (market, seed), and where to start from."""

    market: str
    seed: int
    phase: int
    timesteps: int | None = None  # None: training.yaml's target for the phase
    base_interval: int | None = None  # None: the checkpoint config's base_interval
    models_root: Path | None = None
    model_path: Path | None = None  # --continue --model-path
    resume_from: str | None = None  # latest | phase_end | best:<metric>
    torch_threads: int = 1
    quiet: bool = False


@dataclass
class PhaseResult:
    """How a phase ended."""

    market: str
    seed: int
    phase: int
    folder: Path
    timesteps: int
    metrics: dict[str, float] = field(default_factory=dict)
    phase_end: Path | None = None
    interrupted: bool = False
    skipped: bool = False
    started_from: str = "scratch"
    elapsed_seconds: float = 0.0


def parse_phases(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; phases must be 1-3, increasing, without gaps."""
    try:
        phases = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--phases must look like 1,2,3, got {text!r}") from None
    if not phases or any(p not in (1, 2, 3) for p in phases):
        raise ConfigError(f"--phases must list phases 1, 2 or 3, got {text!r}")
    if phases != list(range(phases[0], phases[0] + len(phases))):
        raise ConfigError(f"--phases must be consecutive and increasing, got {text!r}")
    return phases


def prepare(job: PhaseJob, settings: Settings) -> tuple[Any, int]:
    """Validate the job against the settings and load the market data (nothing is written).

    Returns the market data and the phase's target timesteps.
    """
    from tuner.env import MarketData
    from tuner.markets import get_market

    validate_market(job.market)
    validate_seed(job.seed)
    if job.phase not in (1, 2, 3):
        raise ConfigError(f"--phase must be 1, 2 or 3, got {job.phase!r}")
    if job.timesteps is not None and job.timesteps < 1:
        raise ConfigError(f"--timesteps must be >= 1, got {job.timesteps!r}")
    if job.base_interval is not None and job.base_interval < 1:
        raise ConfigError(f"--base-interval must be >= 1, got {job.base_interval!r}")
    spec = get_market(settings.markets, job.market)
    data = MarketData.load(spec)
    target = job.timesteps or settings.training.phase(job.phase).target_timesteps
    return data, target


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
    from tuner.evaluation import evaluate_trading, make_vec_env

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
        **_retention_hooks(checkpoint_cfg, job.models_root),
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
        say(f"{_tag(job)}: starting from {start} {start_path.name}")
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
        say(f"{_tag(job)}: starting from scratch")

    # --- checkpoint callback ------------------------------------------------------------
    rate = _Rate(model.num_timesteps)
    last: dict[str, float] = {}

    def progress(t: int, metrics: Mapping[str, float]) -> None:
        last.clear()
        last.update(metrics)
        if not job.quiet:
            say(
                f"{_tag(job)}: {t:>9,}/{target:,} steps  {rate(t):>6,.0f} steps/s  "
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


def _retention_hooks(config: CheckpointConfig, models_root: Path | None) -> dict[str, Any]:
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
            _tag(job),
            job.phase - 1,
            previous,
            job.phase,
        )
    return "scratch", None


def _tag(job: PhaseJob) -> str:
    return f"{job.market} seed {job.seed} phase {job.phase}"


class _Rate:
    """Steps per second since the last call."""

    def __init__(self, start: int) -> None:
        self.t, self.steps = time.monotonic(), start

    def __call__(self, steps: int) -> float:
        now = time.monotonic()
        rate = (steps - self.steps) / max(now - self.t, 1e-9)
        self.t, self.steps = now, steps
        return rate


# --------------------------------------------------------------------------- CLI


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags ``tuner.train`` and ``tuner.run`` share: phases, length, configs, models root."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--phase", type=int, help="the phase to train: 1, 2 or 3 (default 1)")
    group.add_argument("--phases", help="a curriculum, e.g. 1,2,3")
    parser.add_argument("--timesteps", type=int, help="steps per phase (default: training.yaml)")
    parser.add_argument(
        "--base-interval", type=int, help="checkpoint base interval (default: checkpoint config)"
    )
    parser.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    parser.add_argument("--models-root", help="where checkpoints go (default: paths.root)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tuner.train",
        description="Train one (market, seed) through one phase or the curriculum, no Ray.",
    )
    parser.add_argument("--market", required=True, help="market name from markets.yaml, e.g. NQ")
    parser.add_argument("--seed", type=int, default=42, help="training seed (default 42)")
    add_run_arguments(parser)
    parser.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="continue from --model-path (with its companion VecNormalize)",
    )
    parser.add_argument("--model-path", help="checkpoint zip to continue from")
    parser.add_argument(
        "--resume-from", help="pick a checkpoint: latest, phase_end or best:<metric>"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="only the final lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from checkpointing import TrainingInterrupted
    from checkpointing.loading import parse_resume_spec
    from tuner.data import DataError
    from tuner.settings import check_path_argument, load_settings

    try:
        phases = parse_phases(args.phases) if args.phases else [args.phase or 1]
        if args.continue_ != (args.model_path is not None):
            raise ConfigError("--continue and --model-path go together")
        if args.model_path and args.resume_from:
            raise ConfigError("use either --continue --model-path or --resume-from, not both")
        if args.resume_from:
            parse_resume_spec(args.resume_from)
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads!r}")
        settings = load_settings(args.config_dir)
        models_root = (
            check_path_argument(args.models_root, "--models-root", folder=True)
            if args.models_root is not None
            else None
        )
        model_path = (
            check_path_argument(args.model_path, "--model-path")
            if args.model_path is not None
            else None
        )
        jobs = [
            PhaseJob(
                market=args.market,
                seed=args.seed,
                phase=phase,
                timesteps=args.timesteps,
                base_interval=args.base_interval,
                models_root=models_root,
                model_path=model_path if i == 0 else None,
                resume_from=args.resume_from if i == 0 else None,
                torch_threads=args.threads,
                quiet=args.quiet,
            )
            for i, phase in enumerate(phases)
        ]
        for job in jobs:
            prepare(job, settings)  # every phase checked before the first one trains
    except (ConfigError, CheckpointNameError, DataError, ValueError) as exc:
        return usage_error(exc)

    def say(line: str) -> None:
        print(line, flush=True)

    results: list[PhaseResult] = []
    for job in jobs:
        try:
            result = train_phase(job, settings, report=say)
        except TrainingInterrupted as exc:
            print(f"{_tag(job)}: {exc}", flush=True)
            root = f" --models-root {args.models_root}" if args.models_root else ""
            rest = ",".join(str(j.phase) for j in jobs[jobs.index(job) :])
            print(
                f"resume with: python -m tuner.train --market {job.market} --seed {job.seed} "
                f"--phases {rest} --resume-from latest{root}",
                flush=True,
            )
            return exc.exit_code
        except (ConfigError, CheckpointNameError, DataError) as exc:
            return usage_error(exc)
        results.append(result)
        metrics = "  ".join(
            f"{k}={v:+.3f}"
            for k, v in result.metrics.items()
            if k in ("val_reward", "sharpe_ratio", "win_rate") and not math.isnan(v)
        )
        say(
            f"{_tag(job)}: done at {result.timesteps:,} steps in {result.elapsed_seconds:.0f}s"
            + (f"  {metrics}" if metrics else "")
        )
        say(f"checkpoints: {result.folder}/")
        if result.phase_end is not None:
            say(f"phase_end:   {result.phase_end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
