"""Can a Tune experiment folder be resumed? Checked by ``tuner.run --resume`` before Ray starts.

Tune keeps an experiment in ``tuner.pkl`` and the newest ``experiment_state-*.json`` of its
folder, and each trial's latest Tune checkpoint (for us a ``pointer.json``) in the trial's
folder. When Tune cannot read the state file it logs the error and *restarts every trial from
scratch*; a pointer that does not parse fails its trial on every retry. Neither is what a user
who asked to resume expects, so :func:`check_resumable` reads those files first and raises a
:class:`ConfigError` naming the damaged one and what to do. It parses JSON and walks pickle
opcodes only: nothing is unpickled, nothing is written.
"""

from __future__ import annotations

import binascii
import json
import os
import pickletools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from checkpointing.errors import ConfigError
from tuner.driver.trainable import POINTER_FILE

__all__ = ["STATE_GLOB", "TUNER_FILE", "check_resumable"]

TUNER_FILE = "tuner.pkl"
STATE_GLOB = "experiment_state-*.json"
_CHECKPOINT_DIR = re.compile(r"checkpoint_\d+\Z")
_EMBEDDED_PICKLE = "CLOUDPICKLE_FALLBACK"  # Tune's JSON wrapper of a hex-encoded pickle

T = TypeVar("T")


class _Damaged(ValueError):
    """Why a file cannot be resumed from (the detail of the ConfigError)."""


def check_resumable(
    experiment_dir: str | os.PathLike[str], models_root: str | os.PathLike[str]
) -> None:
    """Refuse an experiment folder that Tune could not resume from as it stands.

    Checks ``tuner.pkl`` (a complete pickle stream), the newest experiment state file (the one
    Tune reads: JSON of Tune's shape whose embedded pickles are complete) and the pointer of
    the latest Tune checkpoint of every trial that will be resumed.

    Raises:
        ConfigError: naming the damaged or missing file, with what the user can do.
    """
    folder, root = Path(experiment_dir), os.fspath(models_root)
    advice = (
        "Restore it from a backup, or start the experiment again without --resume under "
        f"another --name: the checkpoints under {root} are untouched, and `python -m "
        f"tuner.train --market M --seed S --phase N --models-root {root} --resume-from latest` "
        "continues one trial from them."
    )
    _read(folder / TUNER_FILE, _complete_pickle, advice)
    states = sorted(folder.glob(STATE_GLOB), key=lambda p: p.name)  # Tune takes the last name
    if not states:
        raise ConfigError(
            f"--resume: {os.fspath(folder)} holds no {STATE_GLOB}: the experiment stopped before "
            "Tune first saved its state, so there is nothing to resume. Start it again without "
            f"--resume under another --name; the checkpoints under {root} are untouched."
        )
    for trial, runtime in _read(states[-1], _experiment_state, advice):
        pointer = _pointer_of(folder, trial, runtime)
        if pointer is not None:
            _read(pointer, _pointer, advice)


def _read(path: Path, check: Callable[[bytes], T], advice: str) -> T:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        detail = "missing"
    except OSError as exc:
        detail = f"unreadable: {exc.strerror or exc}"
    else:
        try:
            return check(raw)
        except _Damaged as exc:
            detail = str(exc)
    raise ConfigError(
        f"--resume: {os.fspath(path)} is damaged ({detail}); Tune cannot resume the experiment "
        f"from it. {advice}"
    )


def _complete_pickle(raw: bytes) -> None:
    """A pickle stream that reaches its STOP opcode (read, never loaded)."""
    try:
        for _ in pickletools.genops(raw):
            pass
    except ValueError as exc:  # how genops reports truncation and unknown opcodes
        raise _Damaged(f"truncated or not a pickle: {exc}") from None


def _json(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise _Damaged(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _Damaged(f"{what} is truncated or not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Damaged(f"{what} is not a JSON object")
    return doc


def _experiment_state(raw: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    doc = _json(raw, "the file")
    trial_data, runner_data = doc.get("trial_data"), doc.get("runner_data")
    if not isinstance(trial_data, list) or not trial_data or not isinstance(runner_data, dict):
        raise _Damaged("not a Tune experiment state: no trial_data list or runner_data")
    trials = []
    for index, item in enumerate(trial_data):
        what = f"trial entry {index}"
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)
        ):
            raise _Damaged(f"{what} is not a pair of JSON texts")
        trials.append((_json(item[0], what), _json(item[1], what)))
    _embedded_pickles([runner_data, trials])
    return trials


def _embedded_pickles(value: Any) -> None:
    """Every ``{"_type": "CLOUDPICKLE_FALLBACK", "value": hex}`` in ``value`` is complete."""
    if isinstance(value, dict):
        if value.get("_type") == _EMBEDDED_PICKLE:
            try:
                raw = binascii.unhexlify(value.get("value", ""))
            except (TypeError, ValueError):
                raise _Damaged("an embedded pickle is not hexadecimal") from None
            _complete_pickle(raw)
        for item in value.values():
            _embedded_pickles(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _embedded_pickles(item)


def _pointer_of(folder: Path, trial: dict[str, Any], runtime: dict[str, Any]) -> Path | None:
    """The pointer Tune hands an unfinished trial on resume: its latest Tune checkpoint, the
    one of its last result (every report of an unfinished trial carries one)."""
    if trial.get("status") == "TERMINATED":
        return None
    logdir, last = trial.get("relative_logdir"), runtime.get("last_result")
    name = last.get("checkpoint_dir_name") if isinstance(last, dict) else None
    if not isinstance(logdir, str) or logdir in ("", ".", "..") or "/" in logdir or "\0" in logdir:
        return None
    if not isinstance(name, str) or not _CHECKPOINT_DIR.match(name):
        return None
    return folder / logdir / name / POINTER_FILE


def _pointer(raw: bytes) -> None:
    doc = _json(raw, "the pointer")
    phase = doc.get("phase")
    if isinstance(phase, bool) or not isinstance(phase, int) or phase not in (1, 2, 3):
        raise _Damaged(f"the pointer's phase must be 1, 2 or 3, got {phase!r}")
