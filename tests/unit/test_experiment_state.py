"""``tuner.driver.resume_check.check_resumable``: a Tune experiment folder made by hand (the real
thing, damaged by real faults, is in ``tests/reliability/test_ray_faults.py``)."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from checkpointing.errors import ConfigError
from tuner.driver.resume_check import check_resumable

RUNNING = "train_trial_0_market=NQ,seed=1_2026"
DONE = "train_trial_1_market=ES,seed=1_2026"
STATE = "experiment_state-2026-01-02_03-04-05.json"


class _Canary:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mknod, (os.fspath(self.path),))


def _embedded(value: object) -> dict[str, str]:
    return {"_type": "CLOUDPICKLE_FALLBACK", "value": pickle.dumps(value).hex()}


def _trial(logdir: str, status: str, checkpoint: str | None) -> list[str]:
    trial = {"relative_logdir": logdir, "status": status, "storage": _embedded([1, 2])}
    runtime = {"last_result": {"checkpoint_dir_name": checkpoint}}
    return [json.dumps(trial), json.dumps(runtime)]


def _experiment(root: Path) -> Path:
    """A Tune-shaped folder: one running trial with a pointer, one finished trial."""
    folder = root / "exp"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"_tune_config": None}))
    state = {
        "trial_data": [
            _trial(RUNNING, "RUNNING", "checkpoint_000002"),
            _trial(DONE, "TERMINATED", None),
        ],
        "runner_data": {"_stopper": _embedded(None), "canary": _embedded(_Canary(root / "x"))},
    }
    (folder / STATE).write_text(json.dumps(state))
    for logdir in (RUNNING, DONE):
        for index in (1, 2):
            pointer = _pointer(folder, logdir, index)
            pointer.parent.mkdir(parents=True)
            pointer.write_text(json.dumps({"phase": 1, "market": "NQ", "seed": 1}))
    return folder


def _pointer(folder: Path, logdir: str = RUNNING, index: int = 2) -> Path:
    return folder / logdir / f"checkpoint_00000{index}" / "pointer.json"


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _rewrite_state(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((folder / STATE).read_text())
    change(doc)
    (folder / STATE).write_text(json.dumps(doc))


def _cut_embedded(doc: dict[str, Any]) -> None:
    trial = json.loads(doc["trial_data"][0][0])
    trial["storage"]["value"] = trial["storage"]["value"][:10]
    doc["trial_data"][0][0] = json.dumps(trial)


def _escaping_logdir(doc: dict[str, Any]) -> None:
    trial = json.loads(doc["trial_data"][0][0])
    trial["relative_logdir"] = "../elsewhere"
    doc["trial_data"][0][0] = json.dumps(trial)


ACCEPTED: dict[str, Callable[[Path], object]] = {
    "untouched": lambda f: None,
    "a finished trial's pointer garbled": lambda f: _pointer(f, DONE).write_text("{"),
    "an older pointer of the running trial garbled": lambda f: _pointer(f, index=1).write_text(""),
    "an older state file garbled": lambda f: (f / "experiment_state-2025.json").write_text("{"),
    "a trial folder outside the experiment (not followed)": lambda f: _rewrite_state(
        f, _escaping_logdir
    ),
}
REFUSED: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "state truncated": (lambda f: _cut(f / STATE), STATE, "truncated or not JSON"),
    "state not UTF-8": (lambda f: (f / STATE).write_bytes(b"\xff{}"), STATE, "not UTF-8"),
    "state a list": (lambda f: (f / STATE).write_text("[]"), STATE, "not a JSON object"),
    "state without trials": (
        lambda f: (f / STATE).write_text('{"trial_data": [], "runner_data": {}}'),
        STATE,
        "not a Tune experiment state",
    ),
    "embedded pickle cut": (
        lambda f: _rewrite_state(f, _cut_embedded),
        STATE,
        "truncated or not a pickle",
    ),
    "pointer truncated": (lambda f: _cut(_pointer(f)), "pointer.json", "truncated or not JSON"),
    "pointer deleted": (lambda f: _pointer(f).unlink(), "pointer.json", "(missing)"),
    "pointer without a phase": (
        lambda f: _pointer(f).write_text("{}"),
        "pointer.json",
        "phase must be 1, 2 or 3, got None",
    ),
    "tuner.pkl truncated": (lambda f: _cut(f / "tuner.pkl"), "tuner.pkl", "not a pickle"),
    "tuner.pkl deleted": (lambda f: (f / "tuner.pkl").unlink(), "tuner.pkl", "(missing)"),
    "state deleted": (lambda f: (f / STATE).unlink(), "exp holds no", "nothing to resume"),
}


@pytest.mark.parametrize("change", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_resumable_experiment_passes(tmp_path: Path, change: Callable[[Path], object]) -> None:
    folder = _experiment(tmp_path)
    change(folder)
    check_resumable(folder, tmp_path / "models")
    assert not (tmp_path / "x").exists(), "an embedded pickle was loaded"


@pytest.mark.parametrize(("change", "names", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_a_damaged_experiment_is_refused_naming_the_file(
    tmp_path: Path, change: Callable[[Path], object], names: str, why: str
) -> None:
    folder = _experiment(tmp_path)
    change(folder)
    with pytest.raises(ConfigError) as info:
        check_resumable(folder, tmp_path / "models")
    message = str(info.value)
    assert message.startswith("--resume: ") and names in message and why in message, message
    assert "without --resume under another --name" in message
    assert str(tmp_path / "models") in message
    assert not (tmp_path / "x").exists(), "an embedded pickle was loaded"
