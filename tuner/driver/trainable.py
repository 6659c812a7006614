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
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from tuner.driver.trial_config import TrialConfig
from tuner.driver.tune_files import read_pointer, write_pointer

__all__ = ["StopFlag", "train_trial"]

log = logging.getLogger(__name__)


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


def _report(
    metrics: Mapping[str, Any], pointer: Mapping[str, Any] | None, *, stoppable: bool = False
) -> None:
    """Report to Tune. A scheduler that stops the trial (ASHA) answers the report by ending
    the training thread; ``stoppable`` turns that into :class:`TrainingStopped`, so training
    ends without an interrupt checkpoint (the evaluation's checkpoint is saved already)."""
    from ray import tune

    from checkpointing import TrainingStopped

    try:
        if pointer is None:
            tune.report(dict(metrics))
            return
        with tempfile.TemporaryDirectory(prefix="tune-pointer-") as tmp:
            write_pointer(tmp, pointer)
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))
    except SystemExit:
        if not stoppable:
            raise
        raise TrainingStopped("stopped early by the scheduler") from None


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

    from checkpointing import TrainingInterrupted, TrainingStopped
    from tuner.training.settings import load_settings
    from tuner.training.trainer import train_phase

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    context = tune.get_context()
    trial = _Trial(TrialConfig.from_tune(config), context.get_trial_id())
    # Written straight into the trial's folder of the storage path (which every node sees),
    # not left for Tune to copy from the worker's working directory after the trial.
    folder = Path(context.get_trial_dir())
    root = Path(trial.config.curves_root) if trial.config.curves_root else folder.parent
    trial.curves_dir = root / folder.name / "tensorboard"
    settings = load_settings(
        trial.config.config_dir, trial.config.training, overlay_from="the trial's configuration"
    )
    trial.open_uploads(settings)
    try:
        phases, completed = trial.start(tune.get_checkpoint(), settings)
        last = None
        for phase in phases:
            job = trial.phase_job(phase, settings)
            try:
                last = train_phase(
                    job,
                    settings,
                    on_evaluation=trial.reporter(phase, completed),
                    stop_requested=trial.stop_requested,
                    handle_signals=False,
                    uploads=trial.uploads,
                )
            except TrainingInterrupted as exc:
                trial.interrupted(exc, job, completed)  # never returns
            except TrainingStopped:
                raise SystemExit(0) from None  # how Tune's own report ends a stopped trial
            completed += last.timesteps
        assert last is not None
    finally:
        trial.close_uploads()
    _report(
        {
            **{k: float(v) for k, v in last.metrics.items()},
            **trial.about,
            "phase": last.phase,
            "phase_timesteps": last.timesteps,
            "timesteps": completed,
            "checkpoint": last.phase_end.name if last.phase_end else None,
            "saved": [last.phase_end.name] if last.phase_end else [],
            **trial.unreported,  # what the last phase end's evaluation did not report
            "finished": True,
        },
        None,
    )


# Where a trial's run came from, kept in its pointers so that its later checkpoints say it too.
_LINEAGE = ("exploited", "start_metrics", "started_from", "started_from_run")


class _Trial:
    """One trial's run: its id, where it starts, its phase jobs, its reports to Tune."""

    def __init__(self, config: TrialConfig, trial_id: str) -> None:
        from checkpointing.naming import run_id_for_trial
        from tuner.search.space import flatten as flatten_overlay

        self.config = config
        self.trial_id = trial_id
        self.run_id = run_id_for_trial(config.experiment, trial_id)
        self.stop_requested = _StopPoll(config.stop_flag)
        self.latest: dict[str, Any] = {}  # the latest evaluation report, for an interrupt's
        self.unreported: dict[str, int] = {}  # retention's tally the final report carries
        # The models root the trial commits to: the folder, or its staging folder on this
        # node when models_root is a URI (open_uploads); uploads then mirror it to the bucket.
        self.models_root = Path(config.models_root)
        self.uploads: Any = None
        self.folder = self.models_root  # the checkpoint folder of the current phase
        self.hyperparameters = flatten_overlay(config.training)
        self.run_info: dict[str, Any] = {
            "experiment": config.experiment,
            "trial_id": trial_id,
            "config_id": config.config_id,
            "hyperparameters": self.hyperparameters or None,
        }
        self.exploit: Path | None = None  # the checkpoint of another trial to continue from
        self.curves_dir: Path | None = None  # TensorBoard files, in the trial's folder

    def open_uploads(self, settings: Any) -> None:
        """With an ``s3://`` models root: this node's staging folder and the trial's uploader
        (the bucket checked, earlier runs' staged checkpoints queued)."""
        from checkpointing.locations import is_uri

        if not is_uri(self.config.models_root):
            return
        from tuner.training.staging import open_uploads, resolve_models_root

        staging, remote = resolve_models_root(self.config.models_root, self.config.staging_dir)
        assert staging is not None and remote is not None
        self.models_root = self.folder = staging
        self.uploads = open_uploads(remote, settings.checkpoint, log.warning)

    def close_uploads(self) -> None:
        """Wait (at most ``upload_timeout``) for the trial's uploads; say what is still only
        on this node."""
        uploads, self.uploads = self.uploads, None
        if uploads is None:
            return
        for line in uploads.close(self.config.upload_timeout, log.warning).lines():
            log.warning("%s", line)

    def mirror(self) -> Any:
        """The bucket seen from the staging folder (None without an object-store root)."""
        return None if self.uploads is None else self.uploads.mirror()

    @property
    def about(self) -> dict[str, Any]:
        """What every result says of the trial, with the data splits its process has used
        (a search selects on validation only: ``test`` never appears)."""
        from tuner.trading.env import splits_opened

        c = self.config
        return {
            "market": c.market,
            "seed": c.seed,
            "run_id": self.run_id,
            "config_id": c.config_id,
            "stage": c.stage,
            "splits": ",".join(splits_opened()),
        }

    def start(self, checkpoint: Any, settings: Any) -> tuple[tuple[int, ...], int]:
        """The phases left to train and the steps before them, from the Tune checkpoint the
        trial starts with: none (a new trial: every phase), its own (a retry or ``--resume``:
        its run goes on from the pointer's phase), or another trial's (a PBT exploit: a new
        run of this trial continues from that trial's checkpoint, see :meth:`_exploit`)."""
        phases = self.config.phases
        if checkpoint is None:
            return phases, 0
        with checkpoint.as_directory() as folder:
            pointer = read_pointer(folder)
        phase = int(pointer["phase"])
        if phase not in phases:
            raise ValueError(f"the trial's checkpoint is of phase {phase}, not one of {phases}")
        completed = pointer.get("completed")
        if not isinstance(completed, int):  # a pointer of an older version: phase lengths
            completed = sum(_length(p, self.config, settings) for p in phases if p < phase)
        if self._owns(pointer):
            self.run_id = str(pointer.get("run_id") or self.run_id)
            lineage = pointer.get("lineage")  # a run continued after a PBT exploit keeps it
            if isinstance(lineage, Mapping):
                self.run_info.update({k: v for k, v in lineage.items() if k in _LINEAGE})
        else:
            self._exploit(pointer, settings)
        return phases[phases.index(phase) :], completed

    def _owns(self, pointer: Mapping[str, Any]) -> bool:
        owner = pointer.get("trial_id")
        if isinstance(owner, str):
            return owner == self.trial_id
        run_id = str(pointer.get("run_id") or "")
        return run_id == self.run_id or run_id.startswith(f"{self.run_id}-x")

    def _exploit(self, pointer: Mapping[str, Any], settings: Any) -> None:
        """PBT copies a better trial of the same market into this one: continue from that
        trial's checkpoint (weights, optimizer, VecNormalize statistics and callback state)
        as a new run of this trial, with this trial's (perturbed) configuration, and record
        the lineage in every checkpoint's metadata."""
        from tuner.search.space import flatten as flatten_overlay

        c = self.config
        if (pointer.get("market"), pointer.get("seed")) != (c.market, c.seed):
            raise ValueError(
                f"refusing to continue {c.market} seed {c.seed} from a checkpoint of "
                f"{pointer.get('market')} seed {pointer.get('seed')}"
            )
        phase = int(pointer["phase"])
        folder = settings.checkpoint.checkpoint_dir(phase, c.market, self.models_root)
        source = _verified_source(folder, pointer, self.mirror())
        self.run_id = _next_run(folder, c.market, c.seed, c.experiment, self.trial_id)
        self.exploit = source
        old = flatten_overlay(pointer.get("training") or {})
        changed = {
            key: {"old": old.get(key), "new": value}
            for key, value in self.hyperparameters.items()
            if old.get(key) != value
        }
        self.run_info["exploited"] = {
            "from_trial": pointer.get("trial_id"),
            "from_run": pointer.get("run_id"),
            "from_checkpoint": source.name,
            "at_timesteps": pointer.get("phase_timesteps"),
            "changed": changed,
        }
        log.warning(
            "%s seed %s: continuing from %s of run %s as run %s (%s)",
            c.market,
            c.seed,
            source.name,
            pointer.get("run_id"),
            self.run_id,
            ", ".join(f"{k} {v['old']} -> {v['new']}" for k, v in changed.items()) or "same",
        )

    def phase_job(self, phase: int, settings: Any) -> Any:
        """The phase as this trial's run. After a PBT exploit: from the source checkpoint.
        Retried or restored: it continues from the newest checkpoint of this run that
        verifies; a phase this run never started starts as usual."""
        from checkpointing.selection import find_resume_checkpoint
        from tuner.training.job import PhaseJob

        c = self.config
        folder = self.folder = settings.checkpoint.checkpoint_dir(phase, c.market, self.models_root)
        source, self.exploit = self.exploit, None
        mine = None
        if source is None:  # on another node, from the bucket (fetched, verified)
            mine = find_resume_checkpoint(
                folder,
                "latest",
                seed=c.seed,
                market=c.market,
                run_id=self.run_id,
                mirror=self.mirror(),
            )
        return PhaseJob(
            market=c.market,
            seed=c.seed,
            phase=phase,
            timesteps=c.timesteps,
            base_interval=c.base_interval,
            models_root=self.models_root,
            model_path=source,
            resume_from="latest" if mine is not None else None,
            run_id=self.run_id,
            run_info=tuple((k, v) for k, v in self.run_info.items() if v is not None),
            torch_threads=max(1, int(c.cpus)),
            quiet=True,
            check_start=source is not None,
            curves_dir=self.curves_dir,
            trainer=c.trainer,
            env_runners=c.env_runners,
        )

    def reporter(
        self, phase: int, completed: int
    ) -> Callable[[int, Mapping[str, float], Any], None]:
        """After each evaluation: a result and a pointer to the checkpoint just saved."""

        def on_evaluation(t: int, metrics: Mapping[str, float], manager: Any) -> None:
            state = manager.state_dict()
            pruned, pruned_bytes = manager.take_pruned()
            report: dict[str, Any] = {
                **{k: float(v) for k, v in metrics.items()},
                **self.about,
                "phase": phase,
                "phase_timesteps": t,
                "timesteps": completed + t,
                "checkpoint": state.get("last_checkpoint"),
                # Every checkpoint of this evaluation (a best is the periodic's twin), and
                # what retention deleted since the previous report: the report's history.
                "saved": list(manager.last_saved),
                "pruned": pruned,
                "pruned_bytes": pruned_bytes,
            }
            self.latest = report
            if phase == self.config.phases[-1] and t >= manager.phase_schedule.target_timesteps:
                # The phase-end evaluation of the last phase: the final report follows with
                # its metrics. A scheduler deciding on it could only stop a finished trial.
                self.unreported = {"pruned": pruned, "pruned_bytes": pruned_bytes}
                return
            pointer = {
                **self.about,
                "trial_id": self.trial_id,
                "training": self.config.training,
                "phase": phase,
                "completed": completed,
                "phase_timesteps": t,
                "folder": os.fspath(manager.folder),
                "checkpoint": state.get("last_checkpoint"),
                "callback_state": state,
                "lineage": {k: v for k, v in manager.run_info.items() if k in _LINEAGE},
            }
            _report(report, pointer, stoppable=True)

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
        # The metrics are those of the latest evaluation, which the interrupt carries too;
        # NaN before the first one (a search's scheduler needs its metric in every result).
        from checkpointing.ranking import METRICS

        report: dict[str, Any] = dict.fromkeys(METRICS, math.nan)
        skip = ("checkpoint", "finished", "saved", "pruned", "pruned_bytes")
        report.update((k, v) for k, v in self.latest.items() if k not in skip)
        report.update(self.about, phase=job.phase, phase_timesteps=at, timesteps=completed + at)
        report.update(checkpoint=name, saved=[name] if name else [], interrupted=True)
        self.close_uploads()  # the interrupt checkpoint on the bucket before Tune hears of it
        pointer = {
            **self.about,
            "trial_id": self.trial_id,
            "training": self.config.training,
            "phase": job.phase,
            "completed": completed,
            "phase_timesteps": at,
            "folder": os.fspath(self.folder),
            "checkpoint": name,
            "callback_state": None,
            "lineage": {k: v for k, v in self.run_info.items() if k in _LINEAGE},
        }
        _report(report, pointer)
        if self.stop_requested.flag is not None:
            from ray import tune

            self.stop_requested.ack(tune.get_context().get_trial_name() or self.trial_id, name)
        while True:
            time.sleep(1.0)


def _length(phase: int, config: TrialConfig, settings: Any) -> int:
    """A phase's length: ``--timesteps``, else the checkpoint config's target."""
    return int(config.timesteps or settings.checkpoint.phase(phase).target_timesteps)


def _verified_source(folder: Path, pointer: Mapping[str, Any], mirror: Any = None) -> Path:
    """The checkpoint a pointer names if it verifies, else the newest of its run that does
    (with ``mirror``, on the bucket too: another trial's checkpoints may be on another node)."""
    from checkpointing.errors import CheckpointCorruptError
    from checkpointing.selection import find_resume_checkpoint
    from checkpointing.store import verify_checkpoint

    name = pointer.get("checkpoint")
    if isinstance(name, str) and name and "/" not in name:
        path = folder / name
        try:
            if mirror is not None and not path.is_file():
                mirror.fetch(path)
            verify_checkpoint(path)
            return path
        except (CheckpointCorruptError, OSError) as exc:
            log.warning("%s does not verify (%s); taking its run's newest that does", name, exc)
    run_id = pointer.get("run_id")
    found = find_resume_checkpoint(
        folder,
        "latest",
        seed=int(pointer["seed"]),
        market=str(pointer["market"]),
        run_id=str(run_id) if run_id else None,
        mirror=mirror,
    )
    if found is None:
        raise ValueError(f"no checkpoint of run {run_id} that verifies in {folder}")
    return found


def _next_run(folder: Path, market: str, seed: int, experiment: str, trial_id: str) -> str:
    """The id of this trial's next run after a PBT exploit: ``<run id>-x<N>``, the first N
    without checkpoints of the market and seed in ``folder``."""
    from checkpointing.naming import CheckpointName, run_id_for_trial
    from checkpointing.store import list_checkpoints

    runs = {
        i.name.run_id
        for i in list_checkpoints(folder)
        if isinstance(i.name, CheckpointName) and i.name.market == market and i.name.seed == seed
    }
    n = 1
    while run_id_for_trial(experiment, f"{trial_id}-x{n}") in runs:
        n += 1
    return run_id_for_trial(experiment, f"{trial_id}-x{n}")
