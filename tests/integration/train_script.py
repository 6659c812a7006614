"""A tiny CartPole-v1 PPO run with checkpoints, and the builders the integration tests share.

The tests run this program in a separate process when they need to signal or kill a real
training process (as ``python train_script.py ...``, or forked from a preloaded server through
:func:`run_in_child`), and import its builders (env, model, manager, config) when they train
in-process::

    python tests/integration/train_script.py --models-root R --config C --timesteps 3000
        [--resume-from PATH] [--net-arch 8] [--prune] [--kill-at-replace N [--kill-after-replace]]

Output (stdout, one line each): ``READY`` after the first evaluation (training has started and
the signal handlers are installed), ``DONE <timesteps>`` when training completes, and
``INTERRUPTED <checkpoint>`` before exiting with ``TrainingInterrupted.exit_code`` (130 on
SIGINT, 143 on SIGTERM).

``--kill-at-replace N`` wraps ``os.replace`` so that the process SIGKILLs itself at the N-th
rename into the checkpoint folder (before it, or after it with ``--kill-after-replace``).
A commit renames the pkl, the json, then the zip, so N = 4, 5, 6 (before) and 6 (after) stop
the second checkpoint with its temporaries written, after the pkl rename, after the json
rename, and after the zip rename but before the folder fsync (:data:`COMMIT_STAGES`).

``--net-arch 80,80`` sizes the policy of a fresh run; ``--prune`` runs retention in the run
(every ``prune_frequency`` saves, and early when the disk runs short).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.files import parse_temp_name

if TYPE_CHECKING:
    from checkpointing.config import CheckpointConfig

MARKET = "NQ"
SEED = 42
PHASE = 1
N_ENVS = 2
N_STEPS = 64
ENV_ID = "CartPole-v1"

ZIP, PKL, JSON = ".zip", "_vecnormalize.pkl", "_metadata.json"
_COMPANIONS = (PKL, JSON)

# Stage of a commit -> (n-th os.replace into the folder, kill after it rather than before it):
# the ``--kill-at-replace`` arguments that SIGKILL a run there. The first checkpoint a run
# commits takes renames 1-3 (pkl, json, zip); the kill hits the second.
COMMIT_STAGES = {
    "temps_written": (4, False),
    "after_pkl_rename": (5, False),
    "after_json_rename": (6, False),
    "after_zip_rename": (6, True),
}
# What of the second checkpoint is left, by stage: (suffixes of its temporaries, suffixes of
# its companions without a zip, whether it is committed).
COMMIT_STAGE_LEFTOVERS = {
    "temps_written": ({ZIP, PKL, JSON}, set(), False),
    "after_pkl_rename": ({ZIP, JSON}, {PKL}, False),
    "after_json_rename": ({ZIP}, {PKL, JSON}, False),
    "after_zip_rename": (set(), set(), True),
}
# The disk guard's warning for a skipped save: (events, timesteps).
SKIP_WARNING = re.compile(
    rf"skipping (\S+) save at (\d+) steps of {MARKET} seed {SEED}: low disk space"
)


# --------------------------------------------------------------------------- builders


def write_config(
    path: str | os.PathLike[str],
    *,
    base_interval: int = 128,
    max_interval_multiplier: float = 2.0,
    target_timesteps: int = 3000,
    min_disk_space_gb: float = 0.0,
    async_saves: bool = True,
    retention: Mapping[str, int] | None = None,
) -> Path:
    """Write a checkpoint config with a small phase-1 schedule; return its path.

    ``retention``: integer settings of ``checkpointing.retention`` (``keep_last_n``,
    ``prune_frequency`` ...); the defaults otherwise.
    """
    p = Path(path)
    retention_lines = "".join(f"    {k}: {int(v)}\n" for k, v in (retention or {}).items())
    p.write_text(
        "checkpointing:\n"
        "  phase1:\n"
        f"    base_interval: {base_interval}\n"
        f"    max_interval_multiplier: {max_interval_multiplier}\n"
        f"    target_timesteps: {target_timesteps}\n"
        "  performance:\n"
        f"    async_saves: {'true' if async_saves else 'false'}\n"
        f"    min_disk_space_gb: {min_disk_space_gb}\n"
        + ("  retention:\n" + retention_lines if retention_lines else ""),
        encoding="utf-8",
    )
    return p


def make_raw_env(
    n_envs: int = N_ENVS,
    wrapper: Callable[[Any], Any] | None = None,
    max_episode_steps: int | None = None,
) -> Any:
    """``n_envs`` Monitor-wrapped CartPoles in a DummyVecEnv (what a checkpoint loads onto)."""
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    def one() -> Any:
        env = Monitor(gym.make(ENV_ID, max_episode_steps=max_episode_steps))
        return wrapper(env) if wrapper is not None else env

    return DummyVecEnv([one] * n_envs)


def make_train_env(n_envs: int = N_ENVS, wrapper: Callable[[Any], Any] | None = None) -> Any:
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize(make_raw_env(n_envs, wrapper))


def make_eval_env() -> Any:
    """One CartPole, episodes capped at 100 steps so that evaluations stay cheap."""
    from stable_baselines3.common.vec_env import VecNormalize

    return VecNormalize(make_raw_env(1, max_episode_steps=100), training=False, norm_reward=False)


def make_model(env: Any, net_arch: Sequence[int] = (8,), seed: int = 1) -> Any:
    from stable_baselines3 import PPO

    return PPO(
        "MlpPolicy",
        env,
        n_steps=N_STEPS,
        batch_size=64,
        n_epochs=1,
        policy_kwargs={"net_arch": list(net_arch)},
        seed=seed,
        device="cpu",
    )


def make_manager(
    config: CheckpointConfig | str | os.PathLike[str],
    models_root: str | os.PathLike[str],
    **kw: Any,
) -> Any:
    from checkpointing import DynamicCheckpointManager

    return DynamicCheckpointManager(
        config, phase=PHASE, market=MARKET, seed=SEED, models_root=models_root, **kw
    )


def checkpoint_folder(config: str | os.PathLike[str], models_root: str | os.PathLike[str]) -> Path:
    """The folder a run with this config and models root saves its checkpoints in."""
    from checkpointing import load_config

    return load_config(config).checkpoint_dir(PHASE, MARKET, models_root)


def make_callback(manager: Any, **kw: Any) -> Any:
    from checkpointing import MetricTrackingEvalCallback

    return MetricTrackingEvalCallback(manager, make_eval_env(), n_eval_episodes=2, **kw)


class ScriptedEvaluator:
    """An ``evaluator=`` for the callback whose metrics are known in advance.

    The i-th evaluation returns ``script[i]`` (the last entry again once the script runs out)
    without playing an episode, and ``timesteps`` records the step of each evaluation.
    """

    def __init__(self, script: Sequence[Mapping[str, float]]) -> None:
        if not script:
            raise ValueError("a script of at least one evaluation is needed")
        self.script = [dict(metrics) for metrics in script]
        self.timesteps: list[int] = []

    def __call__(self, model: Any, env: Any, n_episodes: int) -> dict[str, float]:
        self.timesteps.append(int(model.num_timesteps))
        return dict(self.script[min(len(self.timesteps), len(self.script)) - 1])


# --------------------------------------------------------------------------- folder checks


def temporary_target(name: str) -> str | None:
    """The file a commit temporary stands for, else None."""
    parsed = parse_temp_name(name)
    return parsed[0] if parsed else None


def leftovers(folder: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Temporaries and companions without a zip in a checkpoint folder, by file name.

    ``{"temporaries": {target names}, "orphans": {companion names}}``.
    """
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    temporaries = {t for n in names if (t := temporary_target(n)) is not None}
    orphans = {
        n
        for n in names
        for suffix in _COMPANIONS
        if n.endswith(suffix) and not n.startswith(".") and n[: -len(suffix)] + ".zip" not in names
    }
    return {"temporaries": temporaries, "orphans": orphans}


def no_leftovers() -> dict[str, set[str]]:
    return {"temporaries": set(), "orphans": set()}


def suffixes(names: set[str]) -> set[str]:
    """The checkpoint file kinds (:data:`ZIP`, :data:`PKL`, :data:`JSON`) among ``names``."""
    return {next(s for s in (ZIP, PKL, JSON) if n.endswith(s)) for n in names}


def base_of(name: str) -> str:
    """The checkpoint base name of a zip or companion file name."""
    return next(name[: -len(s)] for s in (ZIP, PKL, JSON) if name.endswith(s))


def kill_at_stage(stage: str) -> list[str]:
    """The arguments that SIGKILL a run at ``stage`` of its second commit (see COMMIT_STAGES)."""
    n, after = COMMIT_STAGES[stage]
    return ["--kill-at-replace", str(n)] + (["--kill-after-replace"] if after else [])


# --------------------------------------------------------------------------- the run


def _install_kill_switch(folder: Path, n: int, after: bool) -> None:
    """SIGKILL this process at the ``n``-th ``os.replace`` into ``folder``."""
    real_replace = os.replace
    target = os.path.abspath(folder)
    lock = threading.Lock()
    count = 0

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        nonlocal count
        if os.path.dirname(os.path.abspath(dst)) != target:
            real_replace(src, dst, **kwargs)
            return
        with lock:
            count += 1
            hit = count == n
        if hit and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, **kwargs)
        if hit and after:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-root", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--timesteps", type=int, required=True, help="total, resumed or not")
    parser.add_argument("--resume-from", help="checkpoint zip to continue from")
    parser.add_argument("--net-arch", default="8", help="hidden layer sizes of a fresh policy")
    parser.add_argument("--prune", action="store_true", help="run retention during the run")
    parser.add_argument("--kill-at-replace", type=int, metavar="N")
    parser.add_argument("--kill-after-replace", action="store_true")
    args = parser.parse_args(argv)

    import logging

    import torch

    from checkpointing import (
        TrainingInterrupted,
        learn_with_checkpoints,
        load_checkpoint,
        load_config,
    )
    from checkpointing.retention import prune_folder
    from checkpointing.selection import run_to_continue

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    torch.set_num_threads(1)

    config = load_config(args.config)
    pruner = (lambda folder: prune_folder(folder, config.retention)) if args.prune else None
    # Resuming from a run's newest checkpoint continues that run (its id, its files).
    folder = config.checkpoint_dir(PHASE, MARKET, args.models_root)
    run = run_to_continue(folder, MARKET, SEED, args.resume_from)
    manager = make_manager(config, args.models_root, pruner=pruner, run_id=run.run_id)
    if args.kill_at_replace is not None:
        _install_kill_switch(manager.folder, args.kill_at_replace, args.kill_after_replace)
    if args.resume_from:
        loaded = load_checkpoint(args.resume_from, make_raw_env())
        model = loaded.model
        manager.load_state_dict(loaded.metadata["callback_state"])
    else:
        model = make_model(make_train_env(), [int(n) for n in args.net_arch.split(",")])

    ready = False

    def on_evaluation(timesteps: int, metrics: Any) -> None:
        nonlocal ready
        if not ready:
            ready = True
            print("READY", flush=True)

    callback = make_callback(manager, on_evaluation=on_evaluation)
    try:
        learn_with_checkpoints(model, args.timesteps - model.num_timesteps, callback)
    except TrainingInterrupted as exc:
        print(f"INTERRUPTED {exc.checkpoint}", flush=True)
        return exc.exit_code
    finally:
        manager.close()
    print(f"DONE {model.num_timesteps}", flush=True)
    return 0


def redirect_output(stdout: str, stderr: str) -> None:
    """Send this process's stdout and stderr (file descriptors 1 and 2) to files (appending)."""
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def run_in_child(argv: Sequence[str], stdout: str, stderr: str, cwd: str) -> None:
    """``main(argv)`` as the target of a forked process: output to files, exit with its code."""
    redirect_output(stdout, stderr)
    os.chdir(cwd)
    sys.exit(main(argv))


if __name__ == "__main__":
    sys.exit(main())
