"""A short PPO run on CartPole-v1 with dynamic checkpointing: ``python -m checkpointing.demo``.

Shows the checkpoint system on its own (no trading env, no Ray): adaptive periodic saves
after evaluations, ``best`` saves, ``phase_end`` with the legacy final model, companions,
and resume-from-best. Ctrl+C saves an ``interrupt`` checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m checkpointing.demo", description=__doc__)
    parser.add_argument("--models-root", default="models_demo", help="where checkpoints go")
    parser.add_argument("--timesteps", type=int, default=20_000, help="training steps")
    parser.add_argument("--config", default="config/checkpoint_config.yaml")
    parser.add_argument("--market", default="NQ", help="label used in checkpoint names")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from checkpointing.config import PhaseSchedule, load_config
    from checkpointing.errors import CheckpointNameError, ConfigError, usage_error

    try:
        config = load_config(args.config)
        if args.timesteps < 1:
            raise ConfigError(f"--timesteps must be >= 1, got {args.timesteps!r}")
    except (ConfigError, CheckpointNameError) as exc:
        return usage_error(exc)
    # A schedule scaled to the short run: about 10 periodic saves.
    config = replace(
        config,
        phase1=PhaseSchedule(max(1, args.timesteps // 20), 5.0, args.timesteps),
        performance=replace(config.performance, min_disk_space_gb=0.0),
    )

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from checkpointing import (
        DynamicCheckpointManager,
        MetricTrackingEvalCallback,
        TrainingInterrupted,
        find_resume_checkpoint,
        learn_with_checkpoints,
        list_checkpoints,
    )

    def make_env() -> Monitor:
        return Monitor(gym.make("CartPole-v1"))

    try:
        manager = DynamicCheckpointManager(
            config, phase=1, market=args.market, seed=args.seed, models_root=args.models_root
        )
    except (ConfigError, CheckpointNameError) as exc:
        return usage_error(exc)
    train_env = VecNormalize(DummyVecEnv([make_env, make_env]))
    eval_env = VecNormalize(DummyVecEnv([make_env]), training=False, norm_reward=False)
    model = PPO(
        "MlpPolicy",
        train_env,
        n_steps=256,
        batch_size=128,
        seed=args.seed,
        policy_kwargs={"net_arch": [32, 32]},
    )

    def report(t: int, metrics: object) -> None:
        assert isinstance(metrics, dict)
        print(f"  {t:>7,} steps  val_reward={metrics.get('val_reward', float('nan')):7.2f}")

    callback = MetricTrackingEvalCallback(
        manager, eval_env, n_eval_episodes=3, on_evaluation=report
    )
    print(f"training PPO on CartPole-v1 for {args.timesteps:,} steps ...")
    try:
        learn_with_checkpoints(model, args.timesteps, callback)
    except TrainingInterrupted as exc:
        print(exc)
        return exc.exit_code
    finally:
        manager.close()

    infos = list_checkpoints(manager.folder)
    print(f"\n{len(infos)} checkpoints in {manager.folder}/:")
    for info in infos:
        print(f"  {info.path.name}")
    best = find_resume_checkpoint(manager.folder, "best:val_reward", seed=args.seed)
    print(f"best by val_reward: {best}")
    print(f"best model:  {manager.market_dir / 'best_model.zip'}")
    print(f"final model: {manager.run_dir / 'phase1_foundational_final.zip'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
