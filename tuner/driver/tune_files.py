"""The one reader of the files Ray Tune keeps for an experiment, and of our pointers in them.

An experiment folder (``<storage_path>/<experiment>/``) holds ``tuner.pkl``, the experiment
state ``experiment_state-<time>.json`` (Tune reads the one with the greatest name, and so does
everything here), and one folder per trial with ``params.json``, ``result.json`` (one JSON
result per line) and Tune checkpoints ``checkpoint_<n>/``, each holding our ``pointer.json``
(the run id, the phase, our latest checkpoint and the callback state).

The browser, the driver's summary and the resume check (``tuner.run --resume``) read them all
here. Nothing is unpickled (``tuner.pkl`` is only walked opcode by opcode) and nothing is
written except a new pointer. Ray is never imported.

Each reader takes ``fs=``, a ``pyarrow.fs.FileSystem`` (what Tune itself writes through, e.g.
:meth:`checkpointing.object_store.S3Settings.filesystem`), to read the same files from a
storage path in a bucket; paths are then that file system's (``bucket/prefix/experiment/...``).
Without it they are local paths, read as always.
"""

from __future__ import annotations

import binascii
import fnmatch
import json
import math
import os
import pickletools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.naming import CheckpointName, parse_name
from checkpointing.ranking import METRICS

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = [
    "ERROR_FILES",
    "PARAMS_FILE",
    "POINTER_FILE",
    "RESULT_FILE",
    "STATE_GLOB",
    "TUNER_FILE",
    "Damaged",
    "StateTrial",
    "TrialResults",
    "check_complete_pickle",
    "checkpoint_file_name",
    "finite",
    "integer",
    "newest_state_file",
    "parse_pointer",
    "pointer_of",
    "read_experiment_state",
    "read_json",
    "read_pointer",
    "read_result_rows",
    "read_results",
    "write_pointer",
]

TUNER_FILE = "tuner.pkl"
STATE_GLOB = "experiment_state-*.json"
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
POINTER_FILE = "pointer.json"
ERROR_FILES = ("error.txt", "error.pkl")
_CHECKPOINT_DIR = re.compile(r"checkpoint_\d+\Z")
_EMBEDDED_PICKLE = "CLOUDPICKLE_FALLBACK"  # Tune's JSON wrapper of a hex-encoded pickle


class Damaged(ValueError):
    """A file of Tune's (or a pointer) that cannot be read as what it should be; the message
    says what is wrong with it."""


# --------------------------------------------------------------------------- small readers


def _read_bytes(path: str | os.PathLike[str], fs: FileSystem | None) -> bytes:
    """The bytes of a file: local, or of the file system ``fs`` (OSError when missing)."""
    if fs is None:
        return Path(path).read_bytes()
    with fs.open_input_stream(Path(path).as_posix()) as src:
        return bytes(src.read())


def read_json(path: Path, *, fs: FileSystem | None = None) -> Any:
    """The JSON document at ``path``, or ``None`` if it is missing or does not parse."""
    try:
        return json.loads(_read_bytes(path, fs).decode("utf-8"))
    except (OSError, ValueError):
        return None


def finite(value: object) -> float | None:
    """A finite number as float, else None (bools, NaN, infinities and non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def integer(value: object) -> int | None:
    """An integer (or an integral float) as int, else None (bools and non-integers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise Damaged(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise Damaged(f"{what} is truncated or not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Damaged(f"{what} is not a JSON object")
    return doc


def check_complete_pickle(raw: bytes) -> None:
    """A pickle stream that reaches its STOP opcode (read, never loaded)."""
    try:
        for _ in pickletools.genops(raw):
            pass
    except ValueError as exc:  # how genops reports truncation and unknown opcodes
        raise Damaged(f"truncated or not a pickle: {exc}") from None


# --------------------------------------------------------------------------- experiment state


@dataclass(frozen=True)
class StateTrial:
    """Tune's record of one trial in the experiment state."""

    relative_logdir: str | None
    trial_id: str | None
    status: str | None
    config: Mapping[str, Any]
    start_time: float | None
    num_failures: int
    checkpoint_dir_name: str | None  # the Tune checkpoint of its last result


def newest_state_file(experiment_dir: Path, *, fs: FileSystem | None = None) -> Path | None:
    """The experiment state Tune reads: the ``experiment_state-*.json`` with the greatest
    name (names carry their time)."""
    if fs is not None:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(experiment_dir.as_posix(), allow_not_found=True)
        states = [
            Path(info.path)
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.base_name, STATE_GLOB)
        ]
    else:
        states = [p for p in experiment_dir.glob(STATE_GLOB) if p.is_file()]
    return max(states, key=lambda p: p.name) if states else None


def _embedded_pickles(value: Any) -> None:
    """Every ``{"_type": "CLOUDPICKLE_FALLBACK", "value": hex}`` in ``value`` is complete."""
    if isinstance(value, dict):
        if value.get("_type") == _EMBEDDED_PICKLE:
            try:
                raw = binascii.unhexlify(value.get("value", ""))
            except (TypeError, ValueError):
                raise Damaged("an embedded pickle is not hexadecimal") from None
            check_complete_pickle(raw)
        for item in value.values():
            _embedded_pickles(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _embedded_pickles(item)


def _state_trial(trial: dict[str, Any], runtime: dict[str, Any]) -> StateTrial:
    logdir = trial.get("relative_logdir")
    if not isinstance(logdir, str) or logdir in ("", ".", "..") or "/" in logdir or "\0" in logdir:
        logdir = None  # not a folder of the experiment's
    last = runtime.get("last_result")
    name = last.get("checkpoint_dir_name") if isinstance(last, dict) else None
    config = trial.get("config")
    return StateTrial(
        relative_logdir=logdir,
        trial_id=str(trial["trial_id"]) if isinstance(trial.get("trial_id"), str) else None,
        status=trial.get("status") if isinstance(trial.get("status"), str) else None,
        config=config if isinstance(config, dict) else {},
        start_time=finite(runtime.get("start_time")),
        num_failures=integer(runtime.get("num_failures")) or 0,
        checkpoint_dir_name=name if isinstance(name, str) and _CHECKPOINT_DIR.match(name) else None,
    )


def parse_experiment_state(raw: bytes, *, check_pickles: bool = True) -> list[StateTrial]:
    """The trials of an experiment state file.

    ``check_pickles=False`` leaves the embedded pickles unchecked: walking them is most of the
    time, seconds at 1,000 trials, and only a resume unpickles them.

    Raises:
        Damaged: not JSON of Tune's shape, or an embedded pickle cut short.
    """
    doc = _json_object(raw, "the file")
    trial_data, runner_data = doc.get("trial_data"), doc.get("runner_data")
    if not isinstance(trial_data, list) or not trial_data or not isinstance(runner_data, dict):
        raise Damaged("not a Tune experiment state: no trial_data list or runner_data")
    trials, pairs = [], []
    for index, item in enumerate(trial_data):
        what = f"trial entry {index}"
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ):
            raise Damaged(f"{what} is not a pair of JSON texts")
        trial, runtime = _json_object(item[0], what), _json_object(item[1], what)
        trials.append(_state_trial(trial, runtime))
        if check_pickles:  # else each trial's documents are dropped as soon as read
            pairs.append((trial, runtime))
    if check_pickles:
        _embedded_pickles([runner_data, pairs])
    return trials


def read_experiment_state(
    experiment_dir: Path, *, check_pickles: bool = True, fs: FileSystem | None = None
) -> list[StateTrial] | None:
    """The trials of the newest experiment state; None when there is no state file.

    Raises:
        Damaged: the newest state file cannot be read or parsed (see
            :func:`parse_experiment_state`).
        OSError: it cannot be read.
    """
    path = newest_state_file(experiment_dir, fs=fs)
    if path is None:
        return None
    return parse_experiment_state(_read_bytes(path, fs), check_pickles=check_pickles)


def pointer_of(experiment_dir: Path, trial: StateTrial) -> Path | None:
    """The pointer Tune hands an unfinished trial on resume: that of its latest Tune
    checkpoint, the one of its last result (every report of an unfinished trial carries one)."""
    if trial.status == "TERMINATED" or trial.relative_logdir is None:
        return None
    if trial.checkpoint_dir_name is None:
        return None
    return experiment_dir / trial.relative_logdir / trial.checkpoint_dir_name / POINTER_FILE


# --------------------------------------------------------------------------- pointers


def parse_pointer(raw: bytes) -> dict[str, Any]:
    """A pointer's content: ``phase`` (1-3), ``run_id``, ``market``, ``seed``, ``folder``,
    ``checkpoint`` and ``callback_state``.

    Raises:
        Damaged: not a JSON object, or a phase that is not 1, 2 or 3.
    """
    doc = _json_object(raw, "the pointer")
    phase = doc.get("phase")
    if isinstance(phase, bool) or not isinstance(phase, int) or phase not in (1, 2, 3):
        raise Damaged(f"the pointer's phase must be 1, 2 or 3, got {phase!r}")
    return doc


def read_pointer(
    checkpoint_dir: str | os.PathLike[str], *, fs: FileSystem | None = None
) -> dict[str, Any]:
    """The pointer stored in one of our Tune checkpoints (see :func:`parse_pointer`)."""
    return parse_pointer(_read_bytes(Path(checkpoint_dir, POINTER_FILE), fs))


def write_pointer(checkpoint_dir: str | os.PathLike[str], pointer: Mapping[str, Any]) -> Path:
    """Write ``pointer.json`` into a new Tune checkpoint folder; returns its path."""
    path = Path(checkpoint_dir, POINTER_FILE)
    path.write_text(json.dumps(dict(pointer)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- results


@dataclass
class TrialResults:
    """What one pass over a trial's ``result.json`` yields.

    ``metrics``: of the latest result that carried any (an interrupt report carries the
    previous evaluation's); ``timesteps``: the most any result reported; ``checkpoint``: our
    checkpoint's file name in the last result that named one; ``run_id``: the run the trial's
    checkpoints carry (None when its results never said: written before runs had ids).
    """

    count: int = 0
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    phase: int | None = None
    timesteps: int | None = None
    checkpoint: str | None = None
    run_id: str | None = None
    last_time: float | None = None


def checkpoint_file_name(value: object) -> str | None:
    """Our checkpoint's file name from a reported ``checkpoint`` (a name or a path)."""
    if not isinstance(value, str) or not value:
        return None
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    return name if parse_name(name) is not None else None


@dataclass
class _Pending:
    """What a pass over the results settles at the end, so that a row costs little beyond its
    JSON parse: the latest row that carried metrics, and the ``checkpoint`` values not checked
    yet, latest last (a row that reports its run id needs its checkpoint's name checked only
    if no later row names one of ours)."""

    metrics_row: dict[str, Any] | None = None
    names: list[object] = field(default_factory=list)


def _take(out: TrialResults, row: dict[str, Any], pending: _Pending) -> None:
    out.count += 1
    if out.first is None:
        out.first = row
    out.last = row
    for m in METRICS:
        if isinstance(row.get(m), (int, float)):
            pending.metrics_row = row
            break
    phase, steps = integer(row.get("phase")), integer(row.get("timesteps"))
    if phase is not None:
        out.phase = phase
    if steps is not None:
        out.timesteps = steps if out.timesteps is None else max(out.timesteps, steps)
    run_id = row.get("run_id")
    if isinstance(run_id, str):
        if row.get("checkpoint"):
            pending.names.append(row["checkpoint"])
        out.run_id = run_id
    else:
        name = checkpoint_file_name(row.get("checkpoint"))
        if name is not None:
            out.checkpoint = name
            pending.names.clear()
            parsed = parse_name(name)
            if isinstance(parsed, CheckpointName) and parsed.run_id:
                out.run_id = parsed.run_id
    stamp = finite(row.get("timestamp"))
    if stamp is not None:
        out.last_time = stamp if out.last_time is None else max(out.last_time, stamp)


def _settle(out: TrialResults, pending: _Pending) -> None:
    if pending.metrics_row is not None:
        out.metrics = {m: finite(pending.metrics_row.get(m)) for m in METRICS}
    for value in reversed(pending.names):
        name = checkpoint_file_name(value)
        if name is not None:
            out.checkpoint = name
            break


def read_result_rows(path: Path, *, fs: FileSystem | None = None) -> list[dict[str, Any]]:
    """Every result of a ``result.json`` in the order reported (a retried trial's crashed
    worker's first); lines cut short (a crash, a copy in progress) and anything that is not
    a JSON object are skipped. A missing file has none."""
    try:
        if fs is None:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = list(fh)
        else:
            lines = _read_bytes(path, fs).decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_results(path: Path, *, fs: FileSystem | None = None) -> TrialResults:
    """What :func:`read_result_rows` of a ``result.json`` come to (see
    :class:`TrialResults`)."""
    out, pending = TrialResults(), _Pending()
    for row in read_result_rows(path, fs=fs):
        _take(out, row, pending)
    _settle(out, pending)
    return out
