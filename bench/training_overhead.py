"""What checkpointing costs a whole PPO run: none vs SB3's callbacks vs ours, in one process.

The same PPO training (fixed seed, a 32-feature env that costs nothing, torch on one thread as
in a 1-CPU trial) runs three ways, for the small policy (``[64, 64]``) and the ~50 MB one
(``[1024, 1024, 1024]``, as in ``bench/save_overhead.py``):

- none: no checkpointing: ``model.learn`` with an ``EvalCallback`` that only evaluates (no
  ``best_model``), at the same steps as the other two;
- SB3: ``CheckpointCallback(save_vecnormalize=True)`` + ``EvalCallback(best_model_save_path)``,
  saving and evaluating every ``interval`` steps (``--saves`` saves in all);
- ours: the trainer's path: ``DynamicCheckpointManager`` with the registry and in-run
  retention hooks of ``tuner.train``, ``MetricTrackingEvalCallback`` and
  ``learn_with_checkpoints``: an evaluation and a periodic save every ``interval`` steps
  (``max_interval_multiplier`` 1, so both save at the same steps), ``best`` saves and
  ``best_model`` when a metric improves, metadata, registry, retention every 10 saves, and a
  final ``phase_end`` save (one more save than SB3 makes).

Evaluation is included in all three, identical, so the ratios measure checkpointing alone:
SB3's ``evaluate_policy`` (deterministic), the same eval env, ``--eval-episodes`` episodes of
``--eval-steps`` steps, every ``interval`` steps. Its time is measured in each run and shown.

The modes alternate, in a rotating order, ``--repeats`` times. Two figures per mode: the
fastest whole run (other load on the machine only ever adds time), and the median time from
one evaluation to the next (a save interval: training, one evaluation and, but for none, one
save), pooled over all runs: on a shared machine the median of ~30 intervals per run is far
steadier than a whole run, and the targets are judged on it. Targets: ours <= 1.02x none
(small policy) and <= 1.05x none (50 MB), ours <= 1.00x SB3.

Then the callback's own cost per training step: ns per ``on_step()`` on steps with no save or
evaluation due, with 0 and up to 10,000 checkpoints in its folder (it must not grow), beside
SB3's callbacks and a callback that does nothing::

    .venv/bin/python bench/training_overhead.py [--saves 30] [--repeats 3] [--policies small,50mb]
        [--compression adaptive] [--quick] [--dir /tmp] [--json PATH]

About 15 minutes on 2 cores; ``--quick`` (one run of each, up to 1,000 checkpoints) about 5.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import stable_baselines3.common.callbacks as sb3_callbacks
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, verdict, write_figures  # noqa: E402
from bench.retention import build_folder  # noqa: E402
from bench.save_overhead import BIG, SMALL, ModestEnv, bench_config  # noqa: E402
from bench.save_overhead import make_model as _make_model  # noqa: E402
from checkpointing import (  # noqa: E402
    DynamicCheckpointManager,
    MetricTrackingEvalCallback,
    learn_with_checkpoints,
)
from checkpointing.callback import default_evaluator  # noqa: E402
from checkpointing.config import COMPRESSION_MODES, CheckpointConfig, PhaseSchedule  # noqa: E402
from tuner.training.trainer import retention_hooks  # noqa: E402  (the registry + retention)


@dataclass(frozen=True)
class Policy:
    key: str
    label: str
    net_arch: list[int]
    interval: int  # timesteps between saves
    ppo: dict[str, Any]
    target: float  # ours / none


# 8 envs (the trainer's n_envs) x 128 steps per rollout; a save every 4,096 (small) or 1,024
# (50 MB) steps: 6 to 120 times as often as phase 1's defaults (25k-125k steps), so
# checkpointing weighs far more here than in a real run.
N_ENVS, N_STEPS = 8, 128
ROLLOUT = N_ENVS * N_STEPS
POLICIES = [
    Policy("small", "small", SMALL, 4 * ROLLOUT, {"n_epochs": 4}, 1.02),
    Policy("50mb", "50 MB", BIG, ROLLOUT, {"n_epochs": 1}, 1.05),
]
MODES = ("none", "sb3", "ours")
MODE_LABELS = {
    "none": "no checkpointing (EvalCallback only)",
    "sb3": "SB3 CheckpointCallback + EvalCallback",
    "ours": "ours (learn_with_checkpoints)",
}
MARKET, SEED = "NQ", 0


def make_model(net_arch: list[int], **ppo: Any) -> PPO:
    return _make_model(net_arch, N_ENVS, n_steps=N_STEPS, batch_size=256, **ppo)


class EvalClock:
    """Adds up the wall time spent evaluating, and notes when each evaluation started."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.stamps: list[float] = []

    def intervals(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.stamps)]

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            self.stamps.append(started)
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        return timed


def make_eval_env(steps: int) -> VecNormalize:
    return VecNormalize(
        DummyVecEnv([lambda: Monitor(ModestEnv(steps))]), training=False, norm_reward=False
    )


def ours_config(interval: int, total: int, compression: str) -> CheckpointConfig:
    return bench_config(
        compression, base=CheckpointConfig().with_phase(1, PhaseSchedule(interval, 1.0, total))
    )


def run_once(mode: str, policy: Policy, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train one fresh model (same seed) ``mode``'s way: wall, CPU and eval seconds, intervals."""
    total = policy.interval * args.saves
    model = make_model(policy.net_arch, **policy.ppo)
    clock = EvalClock()
    work.mkdir(parents=True)
    finish: Callable[[], None] = lambda: None  # noqa: E731
    if mode in ("none", "sb3"):
        every = policy.interval // N_ENVS  # SB3 counts callback calls, one per N_ENVS steps
        evaluate = EvalCallback(
            make_eval_env(args.eval_steps),
            n_eval_episodes=args.eval_episodes,
            eval_freq=every,
            best_model_save_path=str(work / "sb3_best") if mode == "sb3" else None,
            deterministic=True,
            verbose=0,
        )
        callbacks = CallbackList(
            [CheckpointCallback(every, str(work / "sb3"), save_vecnormalize=True), evaluate]
            if mode == "sb3"
            else [evaluate]
        )
        real_evaluate = sb3_callbacks.evaluate_policy

        def train() -> None:
            sb3_callbacks.evaluate_policy = clock.wrap(real_evaluate)
            try:
                model.learn(total, callback=callbacks)
            finally:
                sb3_callbacks.evaluate_policy = real_evaluate

    else:
        cfg = ours_config(policy.interval, total, args.compression)
        manager = DynamicCheckpointManager(
            cfg,
            phase=1,
            market=MARKET,
            seed=SEED,
            models_root=work,
            target_timesteps=total,
            **retention_hooks(cfg, work),
        )
        callback = MetricTrackingEvalCallback(
            manager,
            make_eval_env(args.eval_steps),
            evaluator=clock.wrap(default_evaluator),
            n_eval_episodes=args.eval_episodes,
        )

        def train() -> None:
            learn_with_checkpoints(model, total, callback, progress_bar=False)

        def finish() -> None:
            manager.close()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    train()
    finish()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    if mode in ("none", "sb3"):
        saves = len(list((work / "sb3").glob("*.zip")))
        if saves != (args.saves if mode == "sb3" else 0) or clock.calls != args.saves:
            raise SystemExit(f"{mode}: {saves} saves and {clock.calls} evaluations")
    elif mode == "ours":
        state = manager.state
        saves = state.saves_by_event.get("periodic", 0)
        if (
            saves != args.saves
            or state.saves_by_event.get("phase_end") != 1
            or state.failed_saves
            or state.skipped_saves
        ):
            raise SystemExit(f"ours: unexpected saves {state.saves_by_event}, {state}")
    return {
        "wall": wall,
        "cpu": cpu,
        "eval": clock.seconds,
        "best": float(manager.state.saves_by_event.get("best", 0)) if mode == "ours" else 0.0,
        "intervals": clock.intervals(),
    }


def compare(policy: Policy, args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Best run of each mode (the modes alternating in a rotating order) + median interval."""
    best: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[float]] = {mode: [] for mode in MODES}
    make_model(policy.net_arch, **policy.ppo).learn(policy.interval)  # warm-up
    for rep in range(args.repeats):
        order = MODES[rep % len(MODES) :] + MODES[: rep % len(MODES)]
        for mode in order:
            run_dir = work / f"{policy.key}-{mode}-{rep}"
            result = run_once(mode, policy, args, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            os.sync()  # SB3 does not fsync: its writeback must not land in the next run
            pooled[mode] += result["intervals"]
            print(
                f"  {policy.label:<6} run {rep + 1}/{args.repeats} {MODE_LABELS[mode]:<38} "
                f"{result['wall']:7.2f} s",
                flush=True,
            )
            if mode not in best or result["wall"] < best[mode]["wall"]:
                best[mode] = result
    for mode in MODES:
        best[mode]["interval"] = statistics.median(pooled[mode])
        best[mode]["n_intervals"] = len(pooled[mode])
    return best


# --------------------------------------------------------------------------- per step


class Nothing(BaseCallback):
    def _on_step(self) -> bool:
        return True


def ns_per_call(callback: BaseCallback, calls: int, batches: int = 5) -> float:
    """Best of ``batches`` timings of ``calls`` consecutive ``on_step()`` calls, in ns each."""
    for _ in range(1000):  # warm-up
        callback.on_step()
    best = float("inf")
    for _ in range(batches):
        started = time.perf_counter_ns()
        for _ in range(calls):
            callback.on_step()
        best = min(best, (time.perf_counter_ns() - started) / calls)
    return best


def per_step(sizes: list[int], calls: int, work: Path) -> list[tuple[str, float]]:
    """ns per on_step() with no save or evaluation due."""
    model: PPO = make_model(SMALL)
    model.learn(ROLLOUT)
    never = 10**9
    rows: list[tuple[str, float]] = []

    nothing = Nothing()
    nothing.init_callback(model)
    rows.append(("SB3 BaseCallback doing nothing", ns_per_call(nothing, calls)))
    sb3 = CallbackList(
        [
            CheckpointCallback(never, str(work / "sb3")),
            EvalCallback(make_eval_env(5), eval_freq=never, verbose=0),
        ]
    )
    sb3.init_callback(model)
    rows.append(("SB3 CheckpointCallback + EvalCallback", ns_per_call(sb3, calls)))

    for n in sizes:
        root = work / f"folder-{n}"
        cfg = ours_config(10**9, 10**9, "stored")
        folder = cfg.checkpoint_dir(1, MARKET, root)
        if n:
            build_folder(folder, n)
        for label, poll in (("", None), (", stop poll (Ray trial)", lambda: False)):
            manager = DynamicCheckpointManager(
                cfg,
                phase=1,
                market=MARKET,
                seed=SEED,
                models_root=root,
                **retention_hooks(cfg, root),
            )
            callback = MetricTrackingEvalCallback(
                manager, make_eval_env(5), handle_signals=False, stop_requested=poll
            )
            callback.init_callback(model)
            manager.state.next_save_step = never
            rows.append(
                (f"ours, {n:,} checkpoints in the folder{label}", ns_per_call(callback, calls))
            )
            manager.close()
        shutil.rmtree(root, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=30, help="periodic saves per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the best counts")
    parser.add_argument("--policies", default="small,50mb", help="small, 50mb or both")
    parser.add_argument("--eval-episodes", type=int, default=2, help="episodes per evaluation")
    parser.add_argument("--eval-steps", type=int, default=10, help="steps per eval episode")
    parser.add_argument(
        "--compression",
        choices=COMPRESSION_MODES,
        default=CheckpointConfig().performance.compression,
        help="ours: performance.compression (default: the shipped default)",
    )
    parser.add_argument("--step-calls", type=int, default=100_000, help="on_step() calls timed")
    parser.add_argument(
        "--folder-sizes", default="0,1000,10000", help="checkpoints in the folder, per-step part"
    )
    parser.add_argument("--quick", action="store_true", help="1 run each; folders up to 1,000")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        args.folder_sizes = "0,1000"
        args.step_calls = min(args.step_calls, 50_000)
    if args.saves < 1 or args.repeats < 1:
        parser.error("--saves and --repeats must be >= 1")
    keys = [k.strip().lower().replace(" ", "") for k in args.policies.split(",") if k.strip()]
    policies = [p for p in POLICIES if p.key in keys]
    if not policies:
        parser.error(f"--policies: choose from small, 50mb; got {args.policies!r}")
    sizes = [int(s) for s in args.folder_sizes.split(",")]
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # as in a 1-CPU Ray trial; the writer has the other core

    resolved = CheckpointConfig().performance
    resolved = replace(resolved, compression=args.compression)
    work = Path(tempfile.mkdtemp(prefix="bench-training-overhead-", dir=args.dir))
    import psutil

    free = psutil.disk_usage(str(work)).free
    zip_mode, zip_level = resolved.zip_compression(free)
    print(
        f"training overhead: {args.saves} saves per run, best of {args.repeats} alternating "
        f"runs, torch threads 1, ours' zips {args.compression} -> {zip_mode}"
        + (f" level {zip_level}" if zip_mode == "deflate" else "")
        + f" ({free / 1e9:.0f} GB free)"
    )
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for policy in policies:
            results[policy.key] = compare(policy, args, work)
        step_rows = per_step(sizes, args.step_calls, work / "per-step")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nevaluation included in all three, identical: evaluate_policy, {args.eval_episodes} "
        f"episodes x {args.eval_steps} steps at each of the {args.saves} save steps"
    )
    head = (
        f"{'policy':<6} {'mode':<38} {'steps':>7} | {'best run s':>10} {'vs none':>7} "
        f"{'vs SB3':>6} {'CPU vs none':>11} {'eval s':>6} | {'interval s':>10} {'vs none':>7} "
        f"{'vs SB3':>6}"
    )
    print(head)
    print("-" * len(head))
    figures: list[Figure] = []
    verdicts: list[str] = []
    for policy in policies:
        r = results[policy.key]
        none, sb3 = r["none"], r["sb3"]
        for mode in MODES:
            x = r[mode]
            run_sb3 = f"{x['wall'] / sb3['wall']:.3f}" if mode != "none" else ""
            interval_sb3 = f"{x['interval'] / sb3['interval']:.3f}" if mode != "none" else ""
            print(
                f"{policy.label:<6} {MODE_LABELS[mode]:<38} {policy.interval * args.saves:>7,} | "
                f"{x['wall']:>10.2f} {x['wall'] / none['wall']:>7.3f} {run_sb3:>6} "
                f"{x['cpu'] / none['cpu']:>11.3f} {x['eval']:>6.2f} | "
                f"{x['interval']:>10.3f} {x['interval'] / none['interval']:>7.3f} {interval_sb3:>6}"
            )
        ours = r["ours"]
        ratio, vs_sb3 = ours["interval"] / none["interval"], ours["interval"] / sb3["interval"]
        run_ratio, run_vs_sb3 = ours["wall"] / none["wall"], ours["wall"] / sb3["wall"]
        per_save = (ours["interval"] - none["interval"]) * 1e3
        verdicts.append(
            f"  {policy.label}: ours {ratio:.3f}x no checkpointing per save interval (target "
            f"<= {policy.target}: {verdict(ratio <= policy.target)}; best whole "
            f"run {run_ratio:.3f}x), {vs_sb3:.3f}x SB3's callbacks (target <= 1.00: "
            f"{verdict(vs_sb3 <= 1.0)}; best whole run {run_vs_sb3:.3f}x); "
            f"{per_save:+.1f} ms per save ({ours['best']:.0f} of the {args.saves} also 'best')"
        )
        figures += [
            Figure(
                "training_overhead",
                f"PPO wall time, ours / no checkpointing, {policy.label} policy, {args.saves} "
                "saves (median save interval; best whole run)",
                f"<= {policy.target:.2f}",
                f"{ratio:.3f}; {run_ratio:.3f}",
                ratio <= policy.target,
            ),
            Figure(
                "training_overhead",
                f"same, ours / SB3 CheckpointCallback + EvalCallback, {policy.label}",
                "<= 1.00",
                f"{vs_sb3:.3f}; {run_vs_sb3:.3f}",
                vs_sb3 <= 1.0,
            ),
        ]
    print("\n".join(verdicts))
    n = results[policies[0].key]["none"]["n_intervals"]
    print(
        f"'best run' = fastest whole run of {args.repeats} (ours includes its phase_end save); "
        "'CPU' = the process's CPU time (training thread + writer); 'eval s' = time inside "
        f"evaluate_policy; 'interval' = median time from one evaluation to the next ({n} "
        "intervals per mode, pooled over the runs)"
    )

    print(f"\nper training step, no save or evaluation due: best of 5 x {args.step_calls:,} calls")
    for label, ns in step_rows:
        print(f"  {label:<58} {ns:>8,.0f} ns")
    ours_rows = [
        (label, ns) for label, ns in step_rows if label.startswith("ours") and "poll" not in label
    ]
    first, last = ours_rows[0][1], ours_rows[-1][1]
    figures.append(
        Figure(
            "training_overhead",
            f"ns per on_step() without a save, {sizes[0]:,} vs {sizes[-1]:,} checkpoints "
            "in the folder",
            "flat, tiny",
            f"{first:,.0f} vs {last:,.0f} ns",
            last <= max(1.5 * first, first + 500),
        )
    )
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
