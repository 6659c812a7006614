"""Experiments and trials as Tune's files describe them (the browser's and the summary's view).

Reads what ``python -m tuner.run`` left under a storage path, through
:mod:`tuner.driver.tune_files`, without starting or importing Ray: per experiment its trials
(market, seed, run id, phases, models root, config folder), each trial's latest reported
result and its status, from the files:

``finished`` (the last result says ``finished``), ``stopped`` (a search's scheduler stopped
it early: Tune terminated it after a result that did not finish), ``interrupted`` (the last
result says ``interrupted``, or the trial stopped without finishing or failing), ``running``
(its worker process is alive on this machine, or for a remote worker, its results changed in
the last 10 minutes), ``errored`` (Tune left ``error.txt`` / ``error.pkl`` in the trial
folder, or its state says ERROR), ``pending`` (nothing reported yet).

A trial's checkpoints are those whose names carry its run id (every result reports it; a
trial of an experiment written before runs had ids owns the legacy run of its market and seed).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpointing.cleanup import pid_alive
from checkpointing.errors import ConfigError
from checkpointing.locations import StoreURI, is_uri, parse_location, shown
from checkpointing.naming import run_id_for_trial
from tuner.driver.tune_files import (
    ERROR_FILES,
    PARAMS_FILE,
    RESULT_FILE,
    STATE_GLOB,
    TUNER_FILE,
    Damaged,
    StateTrial,
    TrialResults,
    finite,
    integer,
    read_experiment_state,
    read_json,
    read_results,
)
from tuner.training.settings import overlay_id

__all__ = [
    "STATUSES",
    "BrowseError",
    "Experiment",
    "TrialInfo",
    "find_experiments",
    "json_ready",
    "load_experiment",
]

log = logging.getLogger(__name__)

STATUSES = ("running", "finished", "stopped", "interrupted", "errored", "pending")
REMOTE_RUNNING_S = 600.0  # a remote trial whose results changed this recently is running


class BrowseError(ValueError):
    """Bad input to the browser: a missing storage path, an unknown experiment, metric or
    market. The message names the culprit; the CLI prints it and exits with code 2."""


# --------------------------------------------------------------------------- small helpers


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a large experiment is read: the read makes
    millions of small objects, none of them garbage, and the collector's passes over them
    would add about a tenth to the time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _local(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def json_ready(value: Any) -> Any:
    """NaN/inf -> None and paths -> str, so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialInfo:
    """One Tune trial as its files describe it.

    ``run_id``: the run its checkpoints carry (None: the legacy run of its market and seed).
    ``metrics`` are those of the latest result that carried metrics (an interrupt report
    carries the previous evaluation's); ``timesteps`` is the most any result reported;
    ``checkpoint`` is the file name of our checkpoint in the last result that named one.
    ``started`` and ``last_activity`` are Unix times (or ``None``); ``error_file`` is Tune's
    ``error.txt`` (or ``.pkl``) of a failed trial. ``models_root`` is a folder, or a
    :class:`~checkpointing.locations.StoreURI` for a trial that recorded ``s3://...``.
    """

    trial_id: str
    folder: Path
    market: str | None
    seed: int | None
    run_id: str | None
    phases: tuple[int, ...]
    models_root: Path | StoreURI | None
    config_dir: Path | None
    status: str
    tune_status: str | None = None
    num_failures: int = 0
    results: int = 0
    phase: int | None = None
    timesteps: int | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    checkpoint: str | None = None
    started: float | None = None
    last_activity: float | None = None
    error_file: Path | None = None
    stage: str | None = None  # grid, search or confirm
    config_id: str | None = None  # the configuration's id (overlay_id of ``training``)
    training: Mapping[str, Any] = field(default_factory=dict)  # the overlay on training.yaml
    trainer: str = "sb3"  # the trial's --trainer (sb3 for experiments before it had one)

    def to_json(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "folder": os.fspath(self.folder),
            "market": self.market,
            "seed": self.seed,
            "run_id": self.run_id,
            "phases": list(self.phases),
            "status": self.status,
            "tune_status": self.tune_status,
            "num_failures": self.num_failures,
            "results": self.results,
            "phase": self.phase,
            "timesteps": self.timesteps,
            "metrics": dict(self.metrics),
            "checkpoint": self.checkpoint,
            "models_root": None if self.models_root is None else shown(self.models_root),
            "config_dir": None if self.config_dir is None else os.fspath(self.config_dir),
            "started": _iso(self.started),
            "last_activity": _iso(self.last_activity),
            "error_file": None if self.error_file is None else os.fspath(self.error_file),
            "stage": self.stage,
            "config_id": self.config_id,
            "training": dict(self.training),
            "trainer": self.trainer,
        }


def _trial_status(
    results: TrialResults,
    error_file: Path | None,
    tune_status: str | None,
    result_mtime: float | None,
    stoppable: bool = False,
) -> str:
    last = results.last
    failed = error_file is not None or tune_status == "ERROR"
    if last is None:
        return "errored" if failed else "pending"
    if last.get("finished") is True:
        return "finished"
    if last.get("interrupted") is True:
        return "interrupted"
    if stoppable and tune_status == "TERMINATED" and not failed:
        return "stopped"  # only a search's scheduler ends a trial before it finishes
    pid, host = integer(last.get("pid")), last.get("hostname")
    if pid is not None and host == socket.gethostname():
        if pid_alive(pid):
            return "running"
    elif result_mtime is not None and time.time() - result_mtime < REMOTE_RUNNING_S:
        return "running"
    return "errored" if failed else "interrupted"


def _state_trials(experiment_dir: Path) -> dict[str, StateTrial]:
    """Per trial folder name: Tune's record of the trial in the newest experiment state file.
    A state file that is not Tune's JSON is ignored (the trial folders are used alone); its
    embedded pickles are left to the resume check (walking them takes seconds)."""
    try:
        trials = read_experiment_state(experiment_dir, check_pickles=False) or []
    except (Damaged, OSError) as exc:
        log.debug("%s: unreadable experiment state (%s)", experiment_dir, exc)
        return {}
    return {t.relative_logdir: t for t in trials if t.relative_logdir is not None}


def _path_or_none(value: object) -> Path | None:
    return Path(value) if isinstance(value, str) and value and "\x00" not in value else None


def _root_or_none(value: object) -> Path | StoreURI | None:
    """A recorded models root: a folder, or an object-store URI (never a path: ``s3://b/p``
    as a path is the folder ``s3:/b/p``); None when it is neither."""
    if isinstance(value, str) and is_uri(value):
        try:
            return parse_location(value, "models_root")
        except ConfigError:
            return None
    return _path_or_none(value)


def _run_id(experiment: str, trial_id: str, results: TrialResults) -> str | None:
    """The run a trial's checkpoints carry: what its results report; for a trial that reported
    nothing yet, the id it will use; None for a trial of an experiment from before run ids."""
    if results.run_id is not None:
        return results.run_id
    if results.count:
        return None
    try:
        return run_id_for_trial(experiment, trial_id)
    except ValueError:
        return None


def _load_trial(folder: Path, state: StateTrial | None) -> TrialInfo:
    params = read_json(folder / PARAMS_FILE)
    results = read_results(folder / RESULT_FILE)
    config: dict[str, Any] = {}
    # The newest config last: a PBT exploit gives a trial another configuration.
    for source in (
        state.config if state else None,
        (results.first or {}).get("config"),
        params,
        (results.last or {}).get("config"),
    ):
        if isinstance(source, dict):
            config.update(source)
    case = config.pop("case", None)  # a confirmation trial's market, seed and configuration
    if isinstance(case, dict):
        config.update(case)
    training = _training(config)
    phases = config.get("phases")
    phase_list = (
        tuple(p for p in (integer(x) for x in phases) if p is not None)
        if isinstance(phases, list)
        else ()
    )
    error_file = next((folder / n for n in ERROR_FILES if (folder / n).is_file()), None)
    tune_status = state.status if state else None
    status = _trial_status(
        results,
        error_file,
        tune_status,
        _mtime(folder / RESULT_FILE),
        stoppable=config.get("stage") == "search",
    )

    first = results.first or {}
    starts = [state.start_time if state else None]
    first_time, first_total = finite(first.get("timestamp")), finite(first.get("time_total_s"))
    if first_time is not None:
        starts.append(first_time - (first_total or 0.0))
    started = min((s for s in starts if s is not None), default=None)
    # From the results' own timestamps, not file times (a copied result.json looks new).
    activity = [results.last_time]
    if error_file is not None:
        activity.append(_mtime(error_file))
    last_activity = max((a for a in activity if a is not None), default=None)

    trial_id = str((state.trial_id if state else None) or first.get("trial_id") or folder.name)
    experiment = config.get("experiment")
    market = config.get("market")
    return TrialInfo(
        trial_id=trial_id,
        folder=folder,
        market=market if isinstance(market, str) else None,
        seed=integer(config.get("seed")),
        run_id=_run_id(
            experiment if isinstance(experiment, str) else folder.parent.name, trial_id, results
        ),
        phases=phase_list,
        models_root=_root_or_none(config.get("models_root")),
        config_dir=_path_or_none(config.get("config_dir")),
        status=status,
        tune_status=tune_status,
        num_failures=state.num_failures if state else 0,
        results=results.count,
        phase=results.phase,
        timesteps=results.timesteps,
        metrics=results.metrics,
        checkpoint=results.checkpoint,
        started=started,
        last_activity=last_activity,
        error_file=error_file,
        stage=str(config.get("stage") or "grid"),
        config_id=None if training is None else overlay_id(training),
        training=training or {},
        trainer=str(config.get("trainer") or "sb3"),
    )


def _training(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """A trial's configuration (its overlay on training.yaml) as the trial trained with it,
    or None for a trial of an experiment from before configurations."""
    from tuner.search.space import decode

    training = config.get("training")
    if not isinstance(training, dict):
        return None
    try:
        return decode(training)
    except ValueError:  # ConfigError: a network that is no network
        return None


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    """One Tune experiment folder and its trials (ordered by market, seed, trial id)."""

    name: str
    path: Path
    trials: tuple[TrialInfo, ...]
    state_updated: float | None = None

    @property
    def markets(self) -> list[str]:
        return sorted({t.market for t in self.trials if t.market})

    @property
    def seeds(self) -> list[int]:
        return sorted({t.seed for t in self.trials if t.seed is not None})

    @property
    def phases(self) -> list[int]:
        return sorted({p for t in self.trials for p in t.phases})

    @property
    def status_counts(self) -> dict[str, int]:
        """Trials per status, in :data:`STATUSES` order, statuses with no trial left out."""
        counts = {s: sum(t.status == s for t in self.trials) for s in STATUSES}
        return {s: n for s, n in counts.items() if n}

    @property
    def last_update(self) -> float | None:
        times = [t.last_activity for t in self.trials] + [self.state_updated]
        return max((x for x in times if x is not None), default=None)

    @property
    def models_roots(self) -> list[Path | StoreURI]:
        return sorted({t.models_root for t in self.trials if t.models_root is not None}, key=shown)

    def overview(self) -> dict[str, Any]:
        """The listing row: name, trials, markets, seeds, phases, status counts, last update."""
        return {
            "name": self.name,
            "path": os.fspath(self.path),
            "trials": len(self.trials),
            "markets": self.markets,
            "seeds": self.seeds,
            "phases": self.phases,
            "status": self.status_counts,
            "last_update": _iso(self.last_update),
            "models_roots": [shown(p) for p in self.models_roots],
        }


def _is_experiment(folder: Path) -> bool:
    if any(folder.glob(STATE_GLOB)) or (folder / TUNER_FILE).is_file():
        return True
    try:
        children = list(os.scandir(folder))
    except OSError:
        return False
    return any(
        c.is_dir(follow_symlinks=False)
        and (Path(c.path, PARAMS_FILE).is_file() or Path(c.path, RESULT_FILE).is_file())
        for c in children
    )


def _storage(storage_path: str | os.PathLike[str], name: str | None = None) -> Path:
    """The storage path as a local folder. On a bucket (``s3://...``): the cache copy with
    experiment ``name`` (else every one) downloaded afresh (:func:`tuner.driver.remote.
    bucket_copy`)."""
    text = os.fspath(storage_path)
    try:
        where = parse_location(text, "--storage-path")
    except ConfigError as exc:
        raise BrowseError(str(exc)) from None
    if isinstance(where, StoreURI):
        from checkpointing.errors import ObjectStoreError
        from tuner.driver.remote import bucket_copy

        try:
            return bucket_copy(where, name).resolve()
        except ObjectStoreError as exc:
            raise BrowseError(str(exc)) from None
    path = where
    if not path.is_dir():
        raise BrowseError(
            f"storage path {text!r} does not exist or is not a folder (the --storage-path "
            "given to python -m tuner.run; default 'ray_results')"
        )
    if any(path.glob(STATE_GLOB)):
        raise BrowseError(
            f"{text!r} is an experiment folder, not a storage path: use --storage-path "
            f"{os.fspath(path.parent)!r} --experiment {path.name!r}"
        )
    return path.resolve()


def _experiment_names(storage: Path) -> list[str]:
    try:
        entries = sorted(os.scandir(storage), key=lambda e: e.name)
    except OSError as exc:
        raise BrowseError(f"cannot read storage path {os.fspath(storage)!r}: {exc}") from None
    return [
        e.name
        for e in entries
        if not e.name.startswith(".")
        and e.is_dir(follow_symlinks=False)
        and _is_experiment(Path(e.path))
    ]


def _read_experiment(folder: Path) -> Experiment:
    with _gc_paused():
        state = _state_trials(folder)
        trial_dirs = set(state)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and any(
                    Path(entry.path, f).is_file() for f in (PARAMS_FILE, RESULT_FILE)
                ):
                    trial_dirs.add(entry.name)
        trials = [_load_trial(folder / d, state.get(d)) for d in trial_dirs]
    trials.sort(key=lambda t: (t.market or "", t.seed if t.seed is not None else 0, t.trial_id))
    state_files = [_mtime(p) for p in folder.glob(STATE_GLOB)]
    return Experiment(
        name=folder.name,
        path=folder,
        trials=tuple(trials),
        state_updated=max((t for t in state_files if t is not None), default=None),
    )


def load_experiment(storage_path: str | os.PathLike[str], name: str) -> Experiment:
    """Read experiment ``name`` under ``storage_path`` (finished, interrupted or running).

    Raises:
        BrowseError: the storage path or the experiment does not exist.
    """
    storage = _storage(storage_path, name)
    names = _experiment_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none"
        where = storage_path if is_uri(storage_path) else storage
        raise BrowseError(f"no experiment {name!r} in {os.fspath(where)!r} (experiments: {known})")
    return _read_experiment(storage / name)


def find_experiments(storage_path: str | os.PathLike[str]) -> list[Experiment]:
    """Every experiment under ``storage_path``, most recently updated first.

    Raises:
        BrowseError: the storage path does not exist.
    """
    storage = _storage(storage_path)
    found = [_read_experiment(storage / n) for n in _experiment_names(storage)]
    found.sort(key=lambda e: (-(e.last_update or 0.0), e.name))
    return found
