"""Malicious pickles under valid-looking checkpoint names are never executed by the tools.

A models root holding the real checkpoints of one tiny SB3 run (``sb3_models``) is infested
with checkpoints whose files carry ``__reduce__`` payloads that create a canary file when
unpickled: the VecNormalize ``.pkl``; the model zip's ``data`` entry (cloudpickled objects SB3
unpickles on load); the zip's ``.pth`` entries. Some come with metadata whose sizes and sha256
digests match the malicious files (an attacker who can write the folder can write that too),
some without metadata, one under a legacy v1 name, and ``best_model.zip`` is replaced.

Afterwards no canary exists, i.e. nothing was unpickled, after each of: listing
(``list_checkpoints``), ``CheckpointRetentionManager.get_checkpoint_summary``, resume selection
(``find_resume_checkpoint`` latest / best:sharpe_ratio, and its registry variant), and the real
CLIs ``checkpointing.summary``, ``checkpointing.retention --dry-run`` and live,
``checkpointing.registry rebuild`` and ``tuner.browse``; each CLI exits 0.

Resume selection trusts metadata that only the folder vouches for, so it can pick an injected
checkpoint whose forged metadata matches; ``load_checkpoint`` then refuses its payload by name,
because it unpickles with an allow-list of the globals a checkpoint needs
(``checkpointing.safe_pickle``).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from checkpointing import (
    CheckpointRetentionManager,
    list_checkpoints,
    load_checkpoint,
    parse_checkpoint_filename,
)
from checkpointing.errors import CheckpointCorruptError
from checkpointing.registry import find_best
from checkpointing.selection import find_resume_checkpoint
from tests.reliability.conftest import FaultLog
from tests.reliability.helpers import (
    CHECKPOINTS,
    PROJECT_ROOT,
    arm_checkpoint,
    companions,
    copy_models,
    fired,
    payload_pickle,
    payload_zip,
    run_clis,
)

pytestmark = pytest.mark.reliability

DATA_CARRIER = "NQ_ts-0009000_evt-periodic_val-+99.000_sharpe-+9.99_seed-42.zip"
PTH_CARRIER = "NQ_ts-0009600_evt-phase_end_val-+99.000_sharpe-+5.00_seed-42.zip"
# Its pkl is a genuine VecNormalize: only the zip's data entry carries a payload.
ZIP_ONLY_CARRIER = "NQ_ts-0008000_evt-best_val-+99.000_sharpe-+9.50_seed-42.zip"
FORGED = {"val_reward": 99.0, "sharpe_ratio": 9.99, "win_rate": 0.99}
# name -> (metadata, payload in .pth instead of data); all but ZIP_ONLY_CARRIER carry a .pkl
# payload too.
INJECTED = {
    DATA_CARRIER: ("match", False),
    ZIP_ONLY_CARRIER: ("match", False),
    "NQ_ts-0009500_evt-interrupt_val-+99.000_sharpe-+9.99_seed-42.zip": ("none", False),
    PTH_CARRIER: ("match", True),
    "NQ_ts-0000050_evt-periodic_val-+99.000_sharpe-+9.99_seed-7.zip": ("match", False),
    "phase1_9999_steps.zip": ("none", False),
}


def _infest(sb3_models: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the real models root with the malicious checkpoints; returns (root, canaries).

    Each malicious file creates a canary named after it in the canaries folder when unpickled.
    """
    root = copy_models(sb3_models, tmp_path / "models")
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    folder = root / CHECKPOINTS
    template = list_checkpoints(folder)[-1].path
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    for name, (metadata, in_pth) in INJECTED.items():
        overrides: dict[str, Any] = {**FORGED, "timestamp": stamp}
        parsed = parse_checkpoint_filename(name)
        assert parsed is not None
        if not parsed.get("legacy"):
            keys = ("timesteps", "seed", "event_tag", "sharpe_ratio")
            overrides |= {k: parsed[k] for k in keys}
        arm_checkpoint(
            folder / name,
            canaries,
            template=template,
            metadata=metadata,
            overrides=overrides,
            in_pth=in_pth,
            pkl_payload=name != ZIP_ONLY_CARRIER,
        )
    # best_model.zip at the phase root: replaced by a payload carrier (its metadata kept).
    best = root / "phase1" / "best_model.zip"
    payload_zip(template, best, canaries / best.name)
    companions(best)[0].write_bytes(payload_pickle(canaries / companions(best)[0].name))
    return root, canaries


def _experiment(storage: Path, root: Path) -> None:
    """A Tune experiment folder, as tuner.run leaves it, whose trial wrote to ``root``."""
    trial = storage / "exp" / "train_trial_NQ_42"
    trial.mkdir(parents=True)
    config = {"market": "NQ", "seed": 42, "phases": [1], "models_root": os.fspath(root)}
    (trial / "params.json").write_text(json.dumps(config))
    now = time.time()
    row = {
        "timestamp": now,
        "time_total_s": 3600.0,
        "phase": 1,
        "timesteps": 9600,
        "checkpoint": next(iter(INJECTED)),
        "trial_id": "t0001",
        "finished": True,
        "config": config,
        **FORGED,
    }
    (trial / "result.json").write_text(json.dumps(row) + "\n")


def test_the_payloads_fire_when_unpickled_without_the_product(
    sb3_models: Path, tmp_path: Path
) -> None:
    """Control: each carrier creates its canary when loaded the ordinary way (``pickle.load``,
    SB3's ``load_from_zip_file``), so an absent canary below means nothing was unpickled. The
    ``.pth`` carrier does not fire through SB3: it reads ``.pth`` entries with
    ``torch.load(weights_only=True)``, which refuses the payload."""
    import torch
    from stable_baselines3.common.save_util import load_from_zip_file

    root, canaries = _infest(sb3_models, tmp_path)
    folder = root / CHECKPOINTS
    name, pth_name = DATA_CARRIER, PTH_CARRIER
    pkl = companions(folder / name)[0]
    with open(pkl, "rb") as fh:
        pickle.load(fh)
    assert fired(canaries) == [pkl.name]
    load_from_zip_file(folder / name, device="cpu")
    assert fired(canaries) == sorted([pkl.name, name])
    for canary in fired(canaries):
        os.unlink(canaries / canary)
    with pytest.raises(pickle.UnpicklingError):
        load_from_zip_file(folder / pth_name, device="cpu")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(_pth_entry(folder / pth_name)), weights_only=True)
    assert fired(canaries) == []


def _pth_entry(zip_path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        return z.read("pytorch_variables.pth")


def test_no_tool_ever_unpickles_an_injected_checkpoint(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """Listing, summaries, resume selection, registry rebuild, browse and retention (dry run,
    then live) over the infested root: each completes (CLIs exit 0) and no canary appears."""
    root, canaries = _infest(sb3_models, tmp_path)
    folder = root / CHECKPOINTS
    work = tmp_path / "work"
    work.mkdir()
    storage = tmp_path / "ray_results"
    _experiment(storage, root)

    with fault_log.tries("malicious pickles under checkpoint names") as t:
        with t.attempt("list_checkpoints"):
            listed = {i.filename for i in list_checkpoints(folder)}
            assert set(INJECTED) <= listed, "the injected names are ours by name"
            assert fired(canaries) == []

        with t.attempt("CheckpointRetentionManager.get_checkpoint_summary"):
            summary = CheckpointRetentionManager(None).get_checkpoint_summary(folder)
            assert summary["total_count"] == len(listed)
            assert fired(canaries) == []

        for spec in ("latest", "best:sharpe_ratio"):
            with t.attempt(f"find_resume_checkpoint {spec}"):
                find_resume_checkpoint(folder, spec)
                find_resume_checkpoint(folder, spec, seed=42, market="NQ")
                assert fired(canaries) == []

        with t.attempt("registry find_best sharpe_ratio"):
            find_best(root, 1, "NQ", "sharpe_ratio")
            assert fired(canaries) == []

        commands = [
            ["checkpointing.summary", "--root", os.fspath(root)],
            ["checkpointing.retention", "--phase", "1", "--root", os.fspath(root), "--dry-run"],
            ["checkpointing.registry", "rebuild", "--root", os.fspath(root)],
        ]
        if (PROJECT_ROOT / "tuner" / "browse.py").is_file():
            commands.append(
                ["tuner.browse", "--storage-path", os.fspath(storage), "--experiment", "exp"]
            )
        for result in run_clis(commands, work):
            with t.attempt(result.label):
                assert result.returncode == 0, result.describe()
                assert fired(canaries) == []

        # Last, as it deletes: a live retention pass over the infested root.
        (result,) = run_clis(
            [["checkpointing.retention", "--phase", "1", "--root", os.fspath(root)]], work
        )
        with t.attempt("checkpointing.retention (live)"):
            assert result.returncode == 0, result.describe()
            assert fired(canaries) == []


def test_resume_never_runs_a_payload_and_refuses_it_by_name(
    sb3_models: Path, tmp_path: Path, fault_log: FaultLog
) -> None:
    """What tuner.train does on ``--resume-from latest | best:sharpe_ratio`` (and phase 2 does
    on phase 1's ``phase_end``): pick with ``find_resume_checkpoint``, then ``load_checkpoint``.

    Forged metadata gets a carrier picked (its digests match), but loading it resolves only the
    globals a checkpoint needs: the payload is refused with a CheckpointCorruptError naming the
    file, and no canary appears. A genuine checkpoint of the same folder still loads."""
    from tests.integration.train_script import make_raw_env

    root, canaries = _infest(sb3_models, tmp_path)
    folder = root / CHECKPOINTS

    def refused(path: Path) -> str:
        env = make_raw_env()
        try:
            with pytest.raises(CheckpointCorruptError) as info:
                load_checkpoint(path, env)
        finally:
            env.close()
        return str(info.value)

    with fault_log.tries("forged metadata + payload: resume refuses to unpickle it") as t:
        for spec in ("latest", "phase_end", "best:sharpe_ratio"):
            with t.attempt(spec):
                path = find_resume_checkpoint(folder, spec, seed=42, market="NQ")
                assert path is not None and path.name in INJECTED, path
                message = refused(path)
                assert path.name in message or path.name[: -len(".zip")] in message, message
                assert fired(canaries) == [], f"{spec}: payloads ran: {fired(canaries)}"
        with t.attempt("load_checkpoint of a zip whose only payload is in its data entry"):
            message = refused(folder / ZIP_ONLY_CARRIER)
            assert ZIP_ONLY_CARRIER in message and "refusing to unpickle" in message, message
            assert fired(canaries) == [], f"payloads ran: {fired(canaries)}"
        with t.attempt("a genuine checkpoint beside the carriers still loads"):
            genuine = [i.path for i in list_checkpoints(folder) if i.path.name not in INJECTED]
            assert genuine
            env = make_raw_env()
            try:
                loaded = load_checkpoint(genuine[-1], env)
            finally:
                env.close()
            assert loaded.verified and loaded.vec_normalize is not None
            assert fired(canaries) == []
