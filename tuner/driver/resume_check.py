"""Can a Tune experiment folder be resumed? Checked by ``tuner.run --resume`` before Ray starts.

Tune keeps an experiment in ``tuner.pkl`` and the newest ``experiment_state-*.json`` of its
folder, and each trial's latest Tune checkpoint (for us a ``pointer.json``) in the trial's
folder. When Tune cannot read the state file it logs the error and *restarts every trial from
scratch*; a pointer that does not parse fails its trial on every retry. Neither is what a user
who asked to resume expects, so :func:`check_resumable` reads those files first (through
:mod:`tuner.driver.tune_files`, the reader the browser and the summary use too) and raises a
:class:`ConfigError` naming the damaged one and what to do. Nothing is unpickled or written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from checkpointing.errors import ConfigError
from tuner.driver.tune_files import (
    STATE_GLOB,
    TUNER_FILE,
    Damaged,
    check_complete_pickle,
    newest_state_file,
    parse_experiment_state,
    parse_pointer,
    pointer_of,
)

__all__ = ["check_resumable"]

T = TypeVar("T")


def check_resumable(
    experiment_dir: str | os.PathLike[str],
    models_root: str | os.PathLike[str],
    *,
    trainer: str = "sb3",
) -> None:
    """Refuse an experiment folder that Tune could not resume from as it stands.

    Checks ``tuner.pkl`` (a complete pickle stream), the newest experiment state file (the one
    Tune reads: JSON of Tune's shape whose embedded pickles are complete) and the pointer of
    the latest Tune checkpoint of every trial that will be resumed; and that its trials were
    run with ``trainer`` (a trial continues only checkpoints of its own trainer).

    Raises:
        ConfigError: naming the damaged or missing file, with what the user can do.
    """
    folder, root = Path(experiment_dir), os.fspath(models_root)
    advice = (
        "Restore it from a backup, or start the experiment again without --resume under "
        f"another --name: the checkpoints under {root} are untouched, and `python -m "
        f"tuner.train --market M --seed S --phase N --models-root {root} --resume-from latest "
        "--run-id RUN` continues one trial from them (RUN: the run id in its checkpoint names)."
    )
    _read(folder / TUNER_FILE, check_complete_pickle, advice)
    state = newest_state_file(folder)
    if state is None:
        raise ConfigError(
            f"--resume: {os.fspath(folder)} holds no {STATE_GLOB}: the experiment stopped before "
            "Tune first saved its state, so there is nothing to resume. Start it again without "
            f"--resume under another --name; the checkpoints under {root} are untouched."
        )
    for trial in _read(state, parse_experiment_state, advice):
        ran_with = trial.config.get("trainer") or "sb3"  # older experiments: sb3 only
        if ran_with != trainer:
            raise ConfigError(
                f"--resume --trainer {trainer}: experiment {folder.name!r} was run with "
                f"--trainer {ran_with}; resume it with --trainer {ran_with}"
            )
        pointer = pointer_of(folder, trial)
        if pointer is not None:
            _read(pointer, parse_pointer, advice)


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
        except Damaged as exc:
            detail = str(exc)
    raise ConfigError(
        f"--resume: {os.fspath(path)} is damaged ({detail}); Tune cannot resume the experiment "
        f"from it. {advice}"
    )
