"""The Ray Tune trainable: one trial = one run of one (market, seed) through its phases.

A thin wrapper around :func:`tuner.training.trainer.train_phase`. The trial's run id comes
from its experiment and trial id (:func:`checkpointing.naming.run_id_for_trial`), the same on
every retry and after ``--resume``; its checkpoints go to the shared models root under that
run. Tune only gets a small checkpoint after each evaluation (a pointer to our latest
checkpoint, the run id and the callback state). A retried or restored trial continues each
phase from the newest checkpoint of its own run that verifies, so another run's files (a
rerun, another experiment) are never taken for its own. Uses the ``ray.tune`` API only.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tuner.driver.tune_files import write_pointer

__all__ = ["StopFlag", "TrialConfig", "train_trial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialConfig:
    """What a trial trains: Tune's ``config`` of the trial, typed.

    The driver builds Tune's ``param_space`` from it (:meth:`param_space`: ``market`` and
    ``seed`` as grid searches); the trainable reads it back with :meth:`from_tune`.
    """

    market: str
    seed: int
    phases: tuple[int, ...]
    experiment: str
    config_dir: str
    models_root: str
    timesteps: int | None = None
    base_interval: int | None = None
    cpus: float = 1.0
    stop_flag: str | None = None

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialConfig:
        """The trial config from Tune's ``config`` dict (unknown keys are refused)."""
        names = {f.name for f in fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"unknown trial config keys {sorted(unknown)}")
        values = dict(config)
        values["seed"] = int(values["seed"])
        values["phases"] = tuple(int(p) for p in values["phases"])
        return cls(**values)

    def param_space(self, markets: list[str], seeds: list[int]) -> dict[str, Any]:
        """Tune's ``param_space``: this config with one trial per (market, seed)."""
        from ray import tune

        space = asdict(self)
        space["phases"] = list(self.phases)
        space["market"] = tune.grid_search(markets)
        space["seed"] = tune.grid_search(seeds)
        return space


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


def _report(metrics: Mapping[str, Any], pointer: Mapping[str, Any] | None) -> None:
    from ray import tune

    if pointer is None:
        tune.report(dict(metrics))
        return
    with tempfile.TemporaryDirectory(prefix="tune-pointer-") as tmp:
        write_pointer(tmp, pointer)
        tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))


def _stop_requested(name: str | None) -> Callable[[], bool]:
    """Polls the driver's stop flag at most once a second; False when there is none."""
    if not name:
        return lambda: False
    import ray

    try:
        flag = ray.get_actor(name)
    except ValueError:
        log.warning("stop flag actor %r not found; trial will not see driver interrupts", name)
        return lambda: False
    last_poll = [0.0, False]

    def requested() -> bool:
        now = time.monotonic()
        if now - float(last_poll[0]) >= 1.0:
            last_poll[0] = now
            try:
                last_poll[1] = bool(ray.get(flag.is_set.remote(), timeout=10))
            except Exception:  # the driver is gone; keep training, Tune decides
                last_poll[1] = False
        return bool(last_poll[1])

    requested.flag = flag  # type: ignore[attr-defined]
    return requested


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable; ``config`` is a :class:`TrialConfig` as a dict."""
    from ray import tune

    from checkpointing import TrainingInterrupted
    from checkpointing.naming import run_id_for_trial
    from checkpointing.selection import find_resume_checkpoint
    from tuner.training.job import PhaseJob
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trial = TrialConfig.from_tune(config)
    experiment, trial_id = trial.experiment, tune.get_context().get_trial_id()
    run_id = run_id_for_trial(experiment, trial_id)
    settings = load_settings(trial.config_dir)
    models_root = Path(trial.models_root)
    stop_requested = _stop_requested(trial.stop_flag)
    about = {"market": trial.market, "seed": trial.seed, "run_id": run_id}

    completed = 0
    last = None
    latest: dict[str, Any] = {}  # the latest evaluation report, for the interrupt report
    for phase in trial.phases:
        folder = settings.checkpoint.checkpoint_dir(phase, trial.market, models_root)
        # Retried or restored: continue the phase from the newest checkpoint of this run that
        # verifies; a phase this run never started starts as usual.
        mine = find_resume_checkpoint(
            folder, "latest", seed=trial.seed, market=trial.market, run_id=run_id
        )

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
                **about,
                "phase": phase,
                "phase_timesteps": t,
                "timesteps": completed + t,
                "checkpoint": state.get("last_checkpoint"),
            }
            latest.clear()
            latest.update(report)
            _report(
                report,
                {
                    **about,
                    "phase": phase,
                    "folder": os.fspath(manager.folder),
                    "checkpoint": state.get("last_checkpoint"),
                    "callback_state": state,
                },
            )

        job = PhaseJob(
            market=trial.market,
            seed=trial.seed,
            phase=phase,
            timesteps=trial.timesteps,
            base_interval=trial.base_interval,
            models_root=models_root,
            resume_from="latest" if mine is not None else None,
            run_id=run_id,
            run_info=(("experiment", experiment), ("trial_id", trial_id)),
            torch_threads=max(1, int(trial.cpus)),
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
            _interrupted(exc, trial, about, phase, folder, completed, latest, stop_requested)
        completed += result.timesteps
        last = result
    assert last is not None
    _report(
        {
            **{k: float(v) for k, v in last.metrics.items()},
            **about,
            "phase": last.phase,
            "phase_timesteps": last.timesteps,
            "timesteps": completed,
            "checkpoint": last.phase_end.name if last.phase_end else None,
            "finished": True,
        },
        None,
    )


def _interrupted(
    exc: Any,
    trial: TrialConfig,
    about: Mapping[str, Any],
    phase: int,
    folder: Path,
    completed: int,
    latest: Mapping[str, Any],
    stop_requested: Callable[[], bool],
) -> None:
    """Point Tune at the interrupt checkpoint (so ``--resume`` starts from it), acknowledge
    the driver's stop, and stay unfinished: a returning function would mark the trial as
    completed. Never returns."""
    from checkpointing.naming import parse_name

    log.warning("%s seed %s: %s", trial.market, trial.seed, exc)
    name = Path(exc.checkpoint).name if exc.checkpoint else None
    parsed = parse_name(name) if name else None
    at = parsed.timesteps if parsed is not None else int(latest.get("phase_timesteps", 0))
    # The metrics are those of the latest evaluation, which the interrupt checkpoint carries.
    _report(
        {
            **{k: v for k, v in latest.items() if k not in ("checkpoint", "finished")},
            **about,
            "phase": phase,
            "phase_timesteps": at,
            "timesteps": completed + at,
            "checkpoint": name,
            "interrupted": True,
        },
        {
            **about,
            "phase": phase,
            "folder": os.fspath(folder),
            "checkpoint": name,
            "callback_state": None,
        },
    )
    flag = getattr(stop_requested, "flag", None)
    if flag is not None:
        from ray import tune

        flag.ack.remote(tune.get_context().get_trial_name() or trial.market, name)
    while True:
        time.sleep(1.0)
