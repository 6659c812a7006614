"""The bucket read side, against a real S3 server on loopback: the summary, retention and the
registry read a models root in a bucket from listings and small metadata objects (a zip is
never downloaded), come to what they come to on the same files on disk, and retention deletes
there zip first without touching what the rules keep or an upload in flight."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from checkpointing.config import CheckpointConfig, RetentionConfig
from checkpointing.folders import BucketRoot
from checkpointing.locations import StoreURI
from checkpointing.naming import CheckpointName
from checkpointing.object_store import ObjectStore
from checkpointing.retention import main as retention_main
from checkpointing.retention import prune_folder, prune_tree
from checkpointing.summary import main as summary_main
from checkpointing.summary import summarize_folder
from tests.report_files import checkpoint_dir, write_checkpoint
from tests.s3 import Request, S3Server

URI = StoreURI("s3", "acc", "models")
ROOT = "s3://acc/models"


def ckpt(
    market: str,
    ts: int,
    *,
    event: str = "periodic",
    val: float = 0.1,
    sharpe: float = 1.0,
    seed: int = 42,
    run: str = "r1",
) -> CheckpointName:
    return CheckpointName(market, ts, event, val, sharpe, seed, run)


def build(models: Path) -> list[Path]:
    """Two markets of phase 1 (two runs of NQ), one of phase 2: 19 checkpoints."""
    out = []
    nq, es, nq2 = (checkpoint_dir(models, m, p) for m, p in (("NQ", 1), ("ES", 1), ("NQ", 2)))
    for i, ts in enumerate(range(1000, 11000, 1000)):
        out.append(write_checkpoint(nq, ckpt("NQ", ts, val=0.1 * (i % 4), sharpe=0.3 * i)))
    out.append(write_checkpoint(nq, ckpt("NQ", 11000, event="phase_end", val=-1, sharpe=-1)))
    for ts in (500, 1500, 2500):
        out.append(write_checkpoint(nq, ckpt("NQ", ts, seed=7, run="r2", sharpe=ts / 1000)))
    for ts in (1000, 2000, 3000):
        out.append(write_checkpoint(es, ckpt("ES", ts, run="e1", val=ts / 1e4), size=2000))
    for ts in (4000, 5000):
        out.append(write_checkpoint(nq2, ckpt("NQ", ts, run="p2"), phase=2))
    return out


def mirror(models: Path, store: ObjectStore) -> None:
    """Every file below ``models`` to the bucket, companions before zips (as the uploader)."""
    files = sorted(p for p in models.rglob("*") if p.is_file())
    for path in sorted(files, key=lambda p: p.suffix == ".zip"):
        store.put(path, path.relative_to(models).as_posix())


def zips_read(requests: Iterable[Request]) -> list[str]:
    return [r.key for r in requests if r.method == "GET" and r.key.endswith(".zip")]


def objects(s3: S3Server) -> list[str]:
    return [k for k in s3.keys("acc", "models/") if not k.endswith("/")]


@pytest.fixture
def local_and_bucket(s3: S3Server, tmp_path: Path) -> Path:
    s3.create_bucket("acc")
    models = tmp_path / "models"
    build(models)
    mirror(models, ObjectStore(URI))
    s3.requests.clear()
    return models


def run(main: object, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)  # type: ignore[operator]
    out, err = capsys.readouterr()
    return code, out + err


# --------------------------------------------------------------------------- summary


def test_the_summary_of_a_bucket_is_the_summary_of_the_same_files_on_disk(
    s3: S3Server, local_and_bucket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = local_and_bucket
    code, text = run(summary_main, ["--root", str(models), "--json"], capsys)
    assert code == 0, text
    local = json.loads(text)
    code, text = run(summary_main, ["--models-root", ROOT, "--json"], capsys)
    assert code == 0, text
    remote = json.loads(text)
    assert len(remote) == len(local) == 3

    def bucketed(doc: object) -> object:
        return json.loads(json.dumps(doc).replace(os.fspath(models), ROOT))

    assert remote == bucketed(local)
    assert remote[0]["best_sharpe"]["path"].startswith(f"{ROOT}/phase1/ES/checkpoints/")
    assert zips_read(s3.requests) == []
    assert not [r for r in s3.requests if r.method == "GET" and r.key], "only listings"
    code, text = run(summary_main, ["--root", ROOT, "--phase", "1", "--market", "NQ"], capsys)
    assert code == 0 and "NQ" in text and "ES" not in text, text


def test_the_summary_names_a_missing_bucket_or_folder(
    s3: S3Server, local_and_bucket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(summary_main, ["--root", "s3://nobucket/models"], capsys)
    assert code == 2 and "bucket 'nobucket' does not exist" in text, text
    code, text = run(summary_main, ["--root", ROOT, "--phase", "3", "--market", "NQ"], capsys)
    assert code == 2
    assert f"checkpoint folder '{ROOT}/phase3_hybrid/NQ/checkpoints' does not exist" in text


# --------------------------------------------------------------------------- retention


def plan_rows(report: dict[str, object]) -> list[tuple[str, str, list[str]]]:
    return [(r["name"], r["action"], r["kept_by"]) for r in report["rows"]]  # type: ignore[attr-defined, index]


def test_a_dry_run_on_the_bucket_plans_what_it_plans_on_disk_and_deletes_nothing(
    s3: S3Server, local_and_bucket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = local_and_bucket
    before = objects(s3)
    code, text = run(
        retention_main, ["--phase", "1", "--root", ROOT, "--dry-run", "--json"], capsys
    )
    assert code == 0, text
    remote = json.loads(text)
    code, text = run(
        retention_main, ["--phase", "1", "--root", str(models), "--dry-run", "--json"], capsys
    )
    local = json.loads(text)
    assert [plan_rows(f) for f in remote["folders"]] == [plan_rows(f) for f in local["folders"]]
    assert remote["totals"] == local["totals"] and remote["totals"]["deleted"] > 0
    assert remote["folders"][1]["folder"] == f"{ROOT}/phase1/NQ/checkpoints"
    assert objects(s3) == before
    assert zips_read(s3.requests) == []
    assert not [r for r in s3.requests if r.method not in ("GET", "HEAD")], "read only"
    code, text = run(retention_main, ["--phase", "1", "--root", ROOT, "--dry-run"], capsys)
    assert f"{ROOT}/phase1/NQ/checkpoints  (dry run: nothing is deleted)" in text
    assert "would delete" in text


def test_retention_on_the_bucket_deletes_what_it_deletes_on_disk_zip_first(
    s3: S3Server, local_and_bucket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = local_and_bucket
    code, text = run(retention_main, ["--phase", "1", "--root", ROOT, "--json"], capsys)
    assert code == 0, text
    remote = json.loads(text)
    code, text = run(retention_main, ["--phase", "1", "--root", str(models), "--json"], capsys)
    assert code == 0, text
    assert remote["totals"] == json.loads(text)["totals"]
    on_disk = sorted(
        p.relative_to(models).as_posix()
        for p in models.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert objects(s3) == [f"models/{rel}" for rel in on_disk]  # phase 2 untouched on both
    deleted = [r.key for r in s3.requests if r.method == "DELETE" and r.status < 300]
    gone = [
        row["name"] for f in remote["folders"] for row in f["rows"] if row["action"] == "delete"
    ]
    assert gone and len(deleted) == 3 * len(gone)
    for name in gone:
        base = name[: -len(".zip")]
        keys = [k.rsplit("/", 1)[-1] for k in deleted]
        assert keys.index(name) < keys.index(base + "_vecnormalize.pkl")
        assert keys.index(name) < keys.index(base + "_metadata.json")
    assert zips_read(s3.requests) == []


def test_retention_on_the_bucket_leaves_an_upload_in_flight_and_sweeps_old_orphans(
    s3: S3Server, local_and_bucket: Path
) -> None:
    store = ObjectStore(URI)
    folder = "phase1/NQ/checkpoints"
    flight = ckpt("NQ", 20000, sharpe=-5)  # would be deleted, once its zip is there
    for suffix in ("_vecnormalize.pkl", "_metadata.json"):
        store.put_bytes(f"{folder}/{flight.base}{suffix}", b"{}")
    retention = RetentionConfig(keep_last_n=1, keep_top_k_by_sharpe=1, keep_top_k_by_reward=1)
    bucket = BucketRoot(URI, CheckpointConfig())
    report = prune_folder(bucket.folder(1, "NQ"), retention)
    assert report.errors == () and report.deleted > 0
    assert report.swept.count == 0
    assert all(row.name != flight.filename for row in report.plan.rows)  # type: ignore[union-attr]
    left = store.listing(folder)
    assert {flight.base + "_vecnormalize.pkl", flight.base + "_metadata.json"} <= set(left)
    # An hour later (the grace period) the same companions are leftovers of a cut deletion.
    retention = RetentionConfig(orphan_grace_seconds=0)
    time.sleep(1.1)
    report = prune_folder(bucket.folder(1, "NQ"), retention, dry_run=True)
    assert sorted(p.name for p in report.swept.orphans) == sorted(
        flight.base + s for s in ("_metadata.json", "_vecnormalize.pkl")
    )
    assert flight.base + "_metadata.json" in store.listing(folder)  # a dry run sweeps nothing
    report = prune_folder(bucket.folder(1, "NQ"), retention)
    assert report.swept.count == 2
    assert not [n for n in store.listing(folder) if n.startswith(flight.base)]


def test_the_drivers_pass_over_a_bucket_prunes_the_phases_and_markets_it_is_given(
    s3: S3Server, local_and_bucket: Path
) -> None:
    models = local_and_bucket
    config = CheckpointConfig()
    on_disk = prune_tree(models, config, [1], ["NQ"], dry_run=True)
    reports = prune_tree(URI, config, [1], ["NQ"])
    assert [(r.folder, r.phase, r.market) for r in reports] == [
        (URI.child("phase1/NQ/checkpoints"), 1, "NQ")
    ]
    assert reports[0].deleted > 0 and reports[0].errors == ()
    assert [r.name for r in reports[0].deleted_rows] == [r.name for r in on_disk[0].deleted_rows]
    left = {k.rsplit("/", 1)[-1] for k in objects(s3) if k.startswith("models/phase1/NQ/")}
    assert not left & {r.name for r in reports[0].deleted_rows}
    assert len([k for k in objects(s3) if k.startswith("models/phase1/ES/")]) == 9  # not given
    assert len([k for k in objects(s3) if k.startswith("models/phase2/")]) == 6
    assert zips_read(s3.requests) == []


def test_retention_names_a_missing_market_folder_on_the_bucket(
    s3: S3Server, local_and_bucket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(retention_main, ["--phase", "2", "--market", "ES", "--root", ROOT], capsys)
    assert code == 2
    assert f"'{ROOT}/phase2/ES/checkpoints' does not exist" in text


def test_a_local_summary_of_a_folder_is_unchanged(local_and_bucket: Path) -> None:
    folder = local_and_bucket / "phase1" / "ES" / "checkpoints"
    summary = summarize_folder(folder)
    assert summary["folder"] == os.fspath(folder) and summary["total_count"] == 3
    assert summary["best_reward"]["path"] == os.fspath(
        folder / ckpt("ES", 3000, run="e1", val=0.3).filename
    )


# --------------------------------------------------------------------------- Tune's files


def test_tunes_files_read_the_same_from_a_bucket_through_a_pyarrow_file_system(
    s3: S3Server, tmp_path: Path
) -> None:
    from checkpointing.object_store import S3Settings
    from tuner.driver.tune_files import (
        newest_state_file,
        read_experiment_state,
        read_json,
        read_pointer,
        read_result_rows,
        read_results,
        write_pointer,
    )

    s3.create_bucket("acc")
    exp = tmp_path / "ray" / "exp"
    trial = exp / "train_t1"
    (trial / "checkpoint_000001").mkdir(parents=True)
    name = ckpt("NQ", 2000, run="exp-t1")
    rows = [{"run_id": "exp-t1", "val_reward": 0.5, "timesteps": 2000, "checkpoint": name.filename}]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut')
    (trial / "params.json").write_text(json.dumps({"market": "NQ", "seed": 42}))
    write_pointer(trial / "checkpoint_000001", {"phase": 1, "run_id": "exp-t1"})
    state = {"trial_id": "t1", "relative_logdir": "train_t1", "status": "RUNNING", "config": {}}
    doc = {"trial_data": [[json.dumps(state), json.dumps({})]], "runner_data": {}}
    for stamp in ("2026-12-05_09-00-00", "2026-12-05_10-00-00"):
        (exp / f"experiment_state-{stamp}.json").write_text(json.dumps(doc))
    store = ObjectStore(StoreURI("s3", "acc", "ray"))
    for path in exp.rglob("*"):
        if path.is_file():
            store.put(path, path.relative_to(tmp_path / "ray").as_posix())
    fs = S3Settings.from_environment().filesystem()
    there = Path("acc/ray/exp")
    assert newest_state_file(there, fs=fs) == there / "experiment_state-2026-12-05_10-00-00.json"
    assert read_experiment_state(there, fs=fs) == read_experiment_state(exp)
    assert read_results(there / "train_t1/result.json", fs=fs) == read_results(
        trial / "result.json"
    )
    assert read_result_rows(there / "train_t1/result.json", fs=fs) == rows
    assert read_json(there / "train_t1/params.json", fs=fs) == {"market": "NQ", "seed": 42}
    assert read_json(there / "train_t1/missing.json", fs=fs) is None
    assert read_pointer(there / "train_t1/checkpoint_000001", fs=fs)["run_id"] == "exp-t1"
    assert newest_state_file(Path("acc/ray/none"), fs=fs) is None
