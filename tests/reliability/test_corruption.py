"""Corrupted checkpoints are detected before anything is unpickled, and resume skips them.

Real checkpoints of one tiny SB3 run (``sb3_models``, made once). For each kind of damage the
newest checkpoint is first *armed*: its zip and pkl are replaced by payload carriers that each
create a canary file when unpickled, with metadata whose digests match them and whose
val_reward is the highest of the folder, so that a loader that did not verify first, or a
ranking that skipped verification, would both pick it and fire a canary. Then it is damaged.
Afterwards:

- ``verify_checkpoint`` and ``load_checkpoint`` raise ``CheckpointCorruptError`` whose message
  names the damaged file;
- no canary exists: nothing was unpickled;
- ``find_resume_checkpoint(folder, "latest")`` returns the newest checkpoint that verifies and
  ``"best:val_reward"`` the best one that verifies; neither returns the damaged one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpointing import list_checkpoints, load_checkpoint, verify_checkpoint
from checkpointing.errors import CheckpointCorruptError
from checkpointing.selection import find_resume_checkpoint
from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import (
    CHECKPOINTS,
    arm_checkpoint,
    companions,
    copy_models,
    fired,
    flip_byte,
)

pytestmark = pytest.mark.reliability

TOP_REWARD = 1.0e6


def _truncated_zip(zip_path: Path) -> Path:
    zip_path.write_bytes(zip_path.read_bytes()[: zip_path.stat().st_size // 2])
    return zip_path


def _flipped_byte_in_zip(zip_path: Path) -> Path:
    flip_byte(zip_path, -10)  # in the zip comment: the zip still opens, the payload is intact
    return zip_path


def _flipped_byte_in_pkl(zip_path: Path) -> Path:
    pkl, _ = companions(zip_path)
    flip_byte(pkl, -1)  # after the pickle's STOP: pickle.load would still run the payload
    return pkl


def _metadata_deleted(zip_path: Path) -> Path:
    _, meta = companions(zip_path)
    meta.unlink()
    return meta


def _metadata_garbled(zip_path: Path) -> Path:
    _, meta = companions(zip_path)
    meta.write_bytes(meta.read_bytes()[:40] + b"\x00\xff garbage")
    return meta


def _metadata_not_an_object(zip_path: Path) -> Path:
    _, meta = companions(zip_path)
    meta.write_text(json.dumps([json.loads(meta.read_text())]))
    return meta


def _metadata_empty(zip_path: Path) -> Path:
    _, meta = companions(zip_path)
    meta.write_bytes(b"")
    return meta


def _unknown_schema_version(zip_path: Path) -> Path:
    _, meta = companions(zip_path)
    doc = json.loads(meta.read_text())
    doc["schema_version"] = "99.0"
    meta.write_text(json.dumps(doc))
    return meta


def _metadata_of_another_checkpoint(zip_path: Path) -> Path:
    """The metadata (digests included) of the previous checkpoint, copied over this one's."""
    _, meta = companions(zip_path)
    older = [i.path for i in list_checkpoints(zip_path.parent) if i.path != zip_path][-1]
    meta.write_bytes(companions(older)[1].read_bytes())
    return meta


DAMAGE: dict[str, Callable[[Path], Path]] = {
    "truncated zip": _truncated_zip,
    "flipped byte in zip": _flipped_byte_in_zip,
    "flipped byte in .pkl": _flipped_byte_in_pkl,
    "metadata deleted": _metadata_deleted,
    "metadata garbled": _metadata_garbled,
    "metadata not a JSON object": _metadata_not_an_object,
    "metadata empty": _metadata_empty,
    "unknown schema_version": _unknown_schema_version,
    "metadata of another checkpoint": _metadata_of_another_checkpoint,
}


def _armed_folder(sb3_models: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A copy of the real checkpoints with the newest armed; returns (folder, newest zip, the
    folder where its payloads would create their canaries)."""
    folder = copy_models(sb3_models, tmp_path / "models") / CHECKPOINTS
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    newest = list_checkpoints(folder)[-1].path
    arm_checkpoint(
        newest,
        canaries,
        template=newest,
        overrides={"val_reward": TOP_REWARD, "sharpe_ratio": 9.0},
    )
    return folder, newest, canaries


def _timesteps(folder: Path, zip_path: Path) -> int:
    return next(i.timesteps for i in list_checkpoints(folder) if i.path == zip_path)


def _val_reward(zip_path: Path) -> float:
    return float(verify_checkpoint(zip_path).get("val_reward", math.nan))


def test_an_armed_checkpoint_fires_when_loaded_without_verification(
    sb3_models: Path, tmp_path: Path
) -> None:
    """Control: the armed files are live. Unpickling the pkl, or SB3 reading the zip, creates
    the canary, and the armed checkpoint verifies (its metadata matches), so the tests below
    prove something when the canary stays absent."""
    from stable_baselines3.common.save_util import load_from_zip_file

    _, newest, canaries = _armed_folder(sb3_models, tmp_path)
    verify_checkpoint(newest)
    pkl, _ = companions(newest)
    with open(pkl, "rb") as fh:
        pickle.load(fh)
    assert fired(canaries) == [pkl.name], "the pkl payload did not fire"
    load_from_zip_file(newest, device="cpu")
    assert fired(canaries) == sorted([pkl.name, newest.name]), "the zip payload did not fire"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_before_unpickling(
    damage: str,
    sb3_models: Path,
    tmp_path: Path,
    fault_log: FaultLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Verification and loading refuse the damaged newest checkpoint naming the damaged file,
    nothing is unpickled, and resume falls back to the newest / best checkpoint that verifies."""
    folder, newest, canaries = _armed_folder(sb3_models, tmp_path)
    culprit = DAMAGE[damage](newest)
    others = [i.path for i in list_checkpoints(folder) if i.path != newest]

    with fault_log.tries(f"corrupt checkpoint: {damage}") as t:
        for what, call in (
            ("verify_checkpoint", lambda: verify_checkpoint(newest)),
            ("load_checkpoint", lambda: load_checkpoint(newest)),
        ):
            with t.attempt(what):
                with pytest.raises(CheckpointCorruptError) as info:
                    call()
                assert info.value.path == culprit, f"names {info.value.path}, not {culprit}"
                assert os.fspath(culprit) in str(info.value), f"message {info.value}"
                assert fired(canaries) == [], "something was unpickled"

        with t.attempt("find_resume_checkpoint latest"), caplog.at_level(logging.WARNING):
            chosen = find_resume_checkpoint(folder, "latest")
            assert chosen in others, f"chose {chosen}"
            verify_checkpoint(chosen)
            newest_good = max(_timesteps(folder, p) for p in others)
            assert _timesteps(folder, chosen) == newest_good, (
                f"{chosen.name} is not the newest checkpoint that verifies"
            )
            assert any(os.fspath(culprit) in r.getMessage() for r in caplog.records), (
                "no warning names the damaged file"
            )
            assert fired(canaries) == [], "something was unpickled"

        with t.attempt("find_resume_checkpoint best:val_reward"):
            chosen = find_resume_checkpoint(folder, "best:val_reward")
            best = max(_val_reward(p) for p in others)
            assert chosen in others, f"chose {chosen}"
            assert _val_reward(chosen) == best, f"{chosen.name} is not the best that verifies"
            assert fired(canaries) == [], "something was unpickled"


def test_deeply_nested_metadata_is_refused_like_any_garbled_metadata(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """Metadata garbled into 100,000 nested JSON arrays (well under the 4 MB read limit) must
    be reported as corrupt, naming the file, and skipped by resume like any garbled metadata."""
    folder, newest, canaries = _armed_folder(sb3_models, tmp_path)
    _, meta = companions(newest)
    meta.write_text("[" * 100_000 + "]" * 100_000)

    with fault_log.tries("corrupt checkpoint: deeply nested metadata") as t:
        with t.attempt("verify_checkpoint"):
            with pytest.raises(CheckpointCorruptError) as info:
                verify_checkpoint(newest)
            assert info.value.path == meta
        with t.attempt("load_checkpoint"):
            with pytest.raises(CheckpointCorruptError):
                load_checkpoint(newest)
            assert fired(canaries) == []
        with t.attempt("find_resume_checkpoint latest"):
            chosen = find_resume_checkpoint(folder, "latest")
            assert chosen is not None and chosen != newest
        with t.attempt("find_resume_checkpoint best:val_reward"):
            chosen = find_resume_checkpoint(folder, "best:val_reward")
            assert chosen is not None and chosen != newest
        assert fired(canaries) == []
