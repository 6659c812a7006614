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
from typing import Any, NoReturn

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


class _StopPoll:
    """Polls the driver's stop flag at most once a second (``poll()``); False when there is
    no flag or the driver is gone. ``ack`` tells the driver an interrupt checkpoint is saved."""

    def __init__(self, name: str | None) -> None:
        self.flag: Any = None
        self._at = 0.0
        self._set = False
        if not name:
            return
        import ray

        try:
            self.flag = ray.get_actor(name)
        except ValueError:
            log.warning("stop flag actor %r not found; trial will not see driver interrupts", name)

    def __call__(self) -> bool:
        if self.flag is None:
            return False
        now = time.monotonic()
        if now - self._at >= 1.0:
            import ray

            self._at = now
            try:
                self._set = bool(ray.get(self.flag.is_set.remote(), timeout=10))
            except Exception:  # the driver is gone; keep training, Tune decides
                self._set = False
        return self._set

    def ack(self, trial: str, checkpoint: str | None) -> None:
        if self.flag is not None:
            self.flag.ack.remote(trial, checkpoint)


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable; ``config`` is a :class:`TrialConfig` as a dict."""
    from ray import tune

    from checkpointing import TrainingInterrupted
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trial = _Trial(TrialConfig.from_tune(config), tune.get_context().get_trial_id())
    settings = load_settings(trial.config.config_dir)
    completed, last = 0, None
    for phase in trial.config.phases:
        job = trial.phase_job(phase, settings)
        try:
            last = train_phase(
                job,
                settings,
                on_evaluation=trial.reporter(phase, completed),
                stop_requested=trial.stop_requested,
                handle_signals=False,
            )
        except TrainingInterrupted as exc:
            trial.interrupted(exc, job, completed)  # never returns
        completed += last.timesteps
    assert last is not None
    _report(
        {
            **{k: float(v) for k, v in last.metrics.items()},
            **trial.about,
            "phase": last.phase,
            "phase_timesteps": last.timesteps,
            "timesteps": completed,
            "checkpoint": last.phase_end.name if last.phase_end else None,
            "finished": True,
        },
        None,
    )


class _Trial:
    """One trial's run: its id, its phase jobs, its reports to Tune."""

    def __init__(self, config: TrialConfig, trial_id: str) -> None:
        from checkpointing.naming import run_id_for_trial

        self.config = config
        self.trial_id = trial_id
        self.run_id = run_id_for_trial(config.experiment, trial_id)
        self.about = {"market": config.market, "seed": config.seed, "run_id": self.run_id}
        self.stop_requested = _StopPoll(config.stop_flag)
        self.latest: dict[str, Any] = {}  # the latest evaluation report, for an interrupt's
        self.folder = Path(config.models_root)  # the checkpoint folder of the current phase

    def phase_job(self, phase: int, settings: Any) -> Any:
        """The phase as this trial's run. Retried or restored: it continues from the newest
        checkpoint of this run that verifies; a phase this run never started starts as usual."""
        from checkpointing.selection import find_resume_checkpoint
        from tuner.training.job import PhaseJob

        c = self.config
        folder = self.folder = settings.checkpoint.checkpoint_dir(
            phase, c.market, Path(c.models_root)
        )
        mine = find_resume_checkpoint(
            folder, "latest", seed=c.seed, market=c.market, run_id=self.run_id
        )
        return PhaseJob(
            market=c.market,
            seed=c.seed,
            phase=phase,
            timesteps=c.timesteps,
            base_interval=c.base_interval,
            models_root=Path(c.models_root),
            resume_from="latest" if mine is not None else None,
            run_id=self.run_id,
            run_info=(("experiment", c.experiment), ("trial_id", self.trial_id)),
            torch_threads=max(1, int(c.cpus)),
            quiet=True,
        )

    def reporter(
        self, phase: int, completed: int
    ) -> Callable[[int, Mapping[str, float], Any], None]:
        """After each evaluation: a result and a pointer to the checkpoint just saved."""

        def on_evaluation(t: int, metrics: Mapping[str, float], manager: Any) -> None:
            state = manager.state_dict()
            report: dict[str, Any] = {
                **{k: float(v) for k, v in metrics.items()},
                **self.about,
                "phase": phase,
                "phase_timesteps": t,
                "timesteps": completed + t,
                "checkpoint": state.get("last_checkpoint"),
            }
            self.latest = report
            pointer = {
                **self.about,
                "phase": phase,
                "folder": os.fspath(manager.folder),
                "checkpoint": state.get("last_checkpoint"),
                "callback_state": state,
            }
            _report(report, pointer)

        return on_evaluation

    def interrupted(self, exc: Any, job: Any, completed: int) -> NoReturn:
        """Point Tune at the interrupt checkpoint (so ``--resume`` starts from it), acknowledge
        the driver's stop, and stay unfinished: a returning function would mark the trial as
        completed."""
        from checkpointing.naming import parse_name

        log.warning("%s seed %s: %s", job.market, job.seed, exc)
        name = Path(exc.checkpoint).name if exc.checkpoint else None
        parsed = parse_name(name) if name else None
        at = parsed.timesteps if parsed is not None else int(self.latest.get("phase_timesteps", 0))
        # The metrics are those of the latest evaluation, which the interrupt carries too.
        report = {k: v for k, v in self.latest.items() if k not in ("checkpoint", "finished")}
        report.update(self.about, phase=job.phase, phase_timesteps=at, timesteps=completed + at)
        report.update(checkpoint=name, interrupted=True)
        pointer = {
            **self.about,
            "phase": job.phase,
            "folder": os.fspath(self.folder),
            "checkpoint": name,
            "callback_state": None,
        }
        _report(report, pointer)
        if self.stop_requested.flag is not None:
            from ray import tune

            self.stop_requested.ack(tune.get_context().get_trial_name() or self.trial_id, name)
        while True:
            time.sleep(1.0)
