"""The Ray Tune trainable: one trial = one (market, seed) through its phases.

A thin wrapper around :func:`tuner.train.train_phase`. Our checkpoints go to the shared
models root; Tune only gets a small checkpoint after each evaluation (a pointer to our
latest checkpoint plus the callback state), which is what ``FailureConfig`` retries and
``Tuner.restore`` resume from. Uses the ``ray.tune`` API only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["POINTER_FILE", "StopFlag", "read_pointer", "train_trial"]

log = logging.getLogger(__name__)

POINTER_FILE = "pointer.json"


class StopFlag:
    """A tiny Ray actor the driver sets on Ctrl+C / SIGTERM; trials poll it and acknowledge."""

    def __init__(self) -> None:
        self._set = False
        self._acks: dict[str, str | None] = {}

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def ack(self, trial: str, checkpoint: str | None) -> None:
        self._acks[trial] = checkpoint

    def acks(self) -> dict[str, str | None]:
        return dict(self._acks)


def read_pointer(checkpoint_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The pointer stored in one of our Tune checkpoints."""
    with open(Path(checkpoint_dir) / POINTER_FILE, encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _report(metrics: Mapping[str, Any], pointer: Mapping[str, Any] | None) -> None:
    from ray import tune

    if pointer is None:
        tune.report(dict(metrics))
        return
    with tempfile.TemporaryDirectory(prefix="tune-pointer-") as tmp:
        with open(Path(tmp) / POINTER_FILE, "w", encoding="utf-8") as fh:
            json.dump(pointer, fh)
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))


def _flag(name: str | None) -> Any:
    if not name:
        return None
    import ray

    try:
        return ray.get_actor(name)
    except ValueError:
        log.warning("stop flag actor %r not found; trial will not see driver interrupts", name)
        return None


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` keys: market, seed, phases, timesteps,
    config_dir, models_root, cpus, stop_flag (actor name)."""
    import ray
    from ray import tune

    from checkpointing import TrainingInterrupted, find_resume_checkpoint
    from checkpointing.naming import parse_name
    from tuner.train import PhaseJob, train_phase
    from tuner.training.settings import load_settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    market, seed = str(config["market"]), int(config["seed"])
    phases = [int(p) for p in config["phases"]]
    settings = load_settings(config["config_dir"])
    models_root = Path(config["models_root"])
    trial = tune.get_context().get_trial_name() or f"{market}-{seed}"
    flag = _flag(config.get("stop_flag"))

    restored = tune.get_checkpoint()
    pointer: dict[str, Any] | None = None
    if restored is not None:
        with restored.as_directory() as d:
            pointer = read_pointer(d)
        log.warning("%s: restoring from Tune checkpoint at phase %s", trial, pointer.get("phase"))

    last_poll = [0.0, False]

    def stop_requested() -> bool:
        if flag is None:
            return False
        now = time.monotonic()
        if now - float(last_poll[0]) >= 1.0:
            last_poll[0] = now
            try:
                last_poll[1] = bool(ray.get(flag.is_set.remote(), timeout=10))
            except Exception:  # the driver is gone; keep training, Tune decides
                last_poll[1] = False
        return bool(last_poll[1])

    completed = 0
    last = None
    latest: dict[str, Any] = {}  # the latest evaluation report, for the interrupt report
    for phase in phases:
        target = config.get("timesteps") or settings.checkpoint.phase(phase).target_timesteps
        folder = settings.checkpoint.checkpoint_dir(phase, market, models_root)
        resume = None
        # Retried or restored: continue from the newest checkpoint of this phase that
        # verifies (at least as new as the pointer), else start the phase normally.
        if (
            pointer is not None
            and int(pointer.get("phase", 0)) >= phase
            and find_resume_checkpoint(folder, "latest", seed=seed, market=market) is not None
        ):
            resume = "latest"

        def on_evaluation(
            t: int,
            metrics: Mapping[str, float],
            manager: Any,
            phase: int = phase,
            completed: int = completed,
        ) -> None:
            state = manager.state_dict()
            report: dict[str, Any] = {
                **{k: float(v) for k, v in metrics.items()},
                "phase": phase,
                "phase_timesteps": t,
                "timesteps": completed + t,
                "market": market,
                "seed": seed,
                "checkpoint": state.get("last_checkpoint"),
            }
            latest.clear()
            latest.update(report)
            _report(
                report,
                {
                    "phase": phase,
                    "market": market,
                    "seed": seed,
                    "folder": os.fspath(manager.folder),
                    "checkpoint": state.get("last_checkpoint"),
                    "callback_state": state,
                },
            )

        job = PhaseJob(
            market=market,
            seed=seed,
            phase=phase,
            timesteps=config.get("timesteps"),
            base_interval=config.get("base_interval"),
            models_root=models_root,
            resume_from=resume,
            torch_threads=max(1, int(config.get("cpus", 1))),
            quiet=True,
        )
        try:
            result = train_phase(
                job,
                settings,
                on_evaluation=on_evaluation,
                stop_requested=stop_requested,
                handle_signals=False,
            )
        except TrainingInterrupted as exc:
            log.warning("%s: %s", trial, exc)
            name = Path(exc.checkpoint).name if exc.checkpoint else None
            parsed = parse_name(name) if name else None
            at = parsed.timesteps if parsed is not None else int(latest.get("phase_timesteps", 0))
            # Point Tune at the interrupt checkpoint, so --resume starts from it; the metrics
            # are those of the latest evaluation, which the interrupt checkpoint carries too.
            _report(
                {
                    **{k: v for k, v in latest.items() if k not in ("checkpoint", "finished")},
                    "phase": phase,
                    "phase_timesteps": at,
                    "timesteps": completed + at,
                    "market": market,
                    "seed": seed,
                    "checkpoint": name,
                    "interrupted": True,
                },
                {
                    "phase": phase,
                    "market": market,
                    "seed": seed,
                    "folder": os.fspath(folder),
                    "checkpoint": name,
                    "callback_state": None,
                },
            )
            if flag is not None:
                flag.ack.remote(trial, name)
            # Stay unfinished: the driver saves the experiment state and ends the run; a
            # returning function would mark this trial as completed.
            while True:
                time.sleep(1.0)
        completed += max(result.timesteps, target)
        last = result
    assert last is not None
    _report(
        {
            **{k: float(v) for k, v in last.metrics.items()},
            "phase": last.phase,
            "phase_timesteps": last.timesteps,
            "timesteps": completed,
            "market": market,
            "seed": seed,
            "checkpoint": last.phase_end.name if last.phase_end else None,
            "finished": True,
        },
        None,
    )
