"""A driver Ctrl+C, then ``--resume``, with both URIs on S3: ``tuner.run --models-root
s3://... --storage-path s3://...`` against the moto server on loopback and a real Ray. Trials
stage and upload on their node; Tune's storage is the bucket; the interrupt checkpoint is
uploaded before the trial says it saved; the resumed trial, whose staging folder is gone,
continues from the bucket; the driver's end steps (retention, test split, report) and the
readers (``tuner.browse``, ``tuner.evaluate``, ``tuner.report``) read the bucket; no byte
written anywhere holds the secret key."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpointing.locations import StoreURI
from checkpointing.naming import CheckpointName, parse_name
from tests.ray import conftest as ray_conftest
from tests.ray.conftest import Driver, wait_for
from tests.reliability.conftest import FaultLog
from tests.s3 import S3Server

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]

MODELS = "s3://acc/models"
TUNE = "s3://acc/tune"
FOLDER = "models/phase1/NQ/checkpoints/"

# The drivers and configs of tests/ray (fixtures, used by name).
drivers = ray_conftest.drivers
tiny_configs = ray_conftest.tiny_configs


def _names(s3: S3Server, prefix: str) -> list[CheckpointName]:
    names = [parse_name(k.rsplit("/", 1)[-1]) for k in s3.keys("acc", prefix)]
    return [n for n in names if isinstance(n, CheckpointName)]


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short, private Ray temp folder (its sockets' paths must stay short), searched for
    the canary and removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="rs3", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_ctrl_c_then_resume_with_both_on_s3_finishes_and_no_secret_is_written(
    s3: S3Server,
    tiny_configs: Path,
    tmp_path: Path,
    drivers: list[Driver],
    monkeypatch: pytest.MonkeyPatch,
    ray_tmp: Path,
    fault_log: FaultLog,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3.create_bucket("acc")
    canary = f"canary-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # each node's default staging folder
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    args = ["--markets", "NQ", "--seeds", "5", "--timesteps", "12000", "--name", "stop"]
    args += ["--config-dir", str(tiny_configs), "--models-root", MODELS, "--storage-path", TUNE]
    with fault_log.tries("driver Ctrl+C, then --resume, both URIs on S3") as t:
        with t.attempt("Ctrl+C: the interrupt checkpoint is on the bucket"):
            d = Driver(args, tmp_path)
            drivers.append(d)
            wait_for(lambda: len(_names(s3, FOLDER)) >= 2, 300, "checkpoints on the bucket", d)
            d.signal(signal.SIGINT)
            assert d.wait(300) == 130, d.output[-3000:]
            assert f"--storage-path {TUNE}" in d.output and f"--models-root {MODELS}" in d.output
            interrupts = [n for n in _names(s3, FOLDER) if n.event == "interrupt"]
            assert len(interrupts) == 1, d.output[-3000:]  # uploaded before the trial said so
            assert "tune/stop/tuner.pkl" in s3.keys("acc", "tune/stop/")

        with t.attempt("--resume finishes the trial from the bucket"):
            # The resumed trial may run on a node whose staging folder is empty: this one's is
            # gone.
            staging = tmp_path / "home/.cache/futures-rl-tuner/staging/acc/models"
            assert (staging / "phase1/NQ/checkpoints").is_dir()
            shutil.rmtree(staging)
            mark = len(s3.requests)
            r = Driver([*args, "--resume"], tmp_path, "resume.log")
            drivers.append(r)
            assert r.wait() == 0, r.output[-3000:]
            summary = json.loads(s3.read("acc", "models/summaries/stop.json"))
            assert {x["status"] for x in summary["trials"]} == {"finished"}
            assert summary["models_roots"] == [MODELS]
            # Continued from the interrupt checkpoint, fetched from the bucket: nothing goes
            # back.
            put = [
                parse_name(r.key.rsplit("/", 1)[-1])
                for r in s3.requests[mark:]
                if r.completes_object and r.key.startswith(FOLDER) and r.key.endswith(".zip")
            ]
            assert put and all(isinstance(n, CheckpointName) for n in put)
            assert min(n.timesteps for n in put) > interrupts[0].timesteps  # type: ignore[union-attr]
            after = [n for n in _names(s3, FOLDER) if n.timesteps > interrupts[0].timesteps]
            assert any(n.event == "phase_end" and n.timesteps >= 12000 for n in after)
            assert {n.run_id for n in _names(s3, FOLDER)} == {interrupts[0].run_id}  # one run

        with t.attempt("the end steps and the readers read the bucket"):
            _check_the_end_steps_read_the_bucket(
                s3, r.output, summary, tmp_path, tiny_configs, capsys
            )

        with t.attempt("no byte written holds the secret"):
            # tuner.pkl and everything else on the bucket, the staging folders, the driver's
            # copies and logs, Ray's own folder.
            assert s3.read("acc", "tune/stop/tuner.pkl")
            written = [p for p in [*tmp_path.rglob("*"), *ray_tmp.rglob("*")] if p.is_file()]
            leaks = [p for p in written if not p.is_symlink() and canary.encode() in p.read_bytes()]
            leaks += [k for k in s3.keys("acc") if canary.encode() in s3.read("acc", k)]
            assert leaks == []


def _check_the_end_steps_read_the_bucket(
    s3: S3Server,
    output: str,
    summary: dict[str, Any],
    tmp_path: Path,
    config_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The driver's retention pass, test split and report read the bucket, and so do the
    browser, the evaluation and the report as commands with ``--storage-path s3://...``."""
    from tuner.browse import main as browse
    from tuner.evaluate import main as evaluate
    from tuner.reporting import gather

    on_bucket = {n.filename for n in _names(s3, FOLDER)}
    assert f"checkpoints deleted on {MODELS}" in output
    (row,) = summary["trials"]
    best = row["best"]["sharpe_ratio"]["path"]
    assert best.startswith(f"{MODELS}/phase1/NQ/checkpoints/") and best.rsplit("/")[-1] in on_bucket
    measured = row["test"]["best"]
    assert measured and measured["checkpoint"].endswith(best.rsplit("/")[-1])
    keys = s3.keys("acc", "models/summaries/")
    for name in ("stop.json", "stop.csv", "stop_test.json", "stop_report.html"):
        assert f"models/summaries/{name}" in keys, keys
    # The report counts the run's checkpoints as the bucket lists them.
    data = gather(TUNE, "stop")
    (disk,) = data.disk
    assert disk.folder == StoreURI("s3", "acc", FOLDER.rstrip("/"))
    assert disk.kept == len(on_bucket)
    assert disk.kept_bytes == sum(len(s3.read("acc", k)) for k in s3.keys("acc", FOLDER))
    assert {e.name for h in data.histories for e in h.events if e.kept} == on_bucket
    # The browser and the evaluation as a user runs them on the bucket.
    assert browse(["--storage-path", TUNE, "--experiment", "stop", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [t["status"] for t in view["trial_rows"]] == ["finished"]
    assert view["trial_rows"][0]["checkpoint_exists"] is True
    assert view["best"]["NQ"][0]["path"] == best
    assert measured["checkpoint"] in [t["checkpoint"] for t in view["test"]]
    fresh = tmp_path / "fresh-staging"  # another machine: nothing staged
    argv = ["--storage-path", TUNE, "--experiment", "stop", "--json", "--boot", "100"]
    assert evaluate([*argv, "--staging-dir", str(fresh), "--config-dir", str(config_dir)]) == 0
    doc = json.loads(capsys.readouterr().out)
    again = next(x for x in doc["results"] if x["checkpoint"].endswith(best.rsplit("/")[-1]))
    assert again["policy"]["total_return"] == measured["policy"]["total_return"]
    assert (fresh / FOLDER.removeprefix("models/") / best.rsplit("/")[-1]).is_file()
    # A URI for the staging folder is refused by name, as tuner.train refuses it: never a
    # local folder named "s3:".
    assert evaluate([*argv, "--staging-dir", f"{MODELS}/x", "--config-dir", str(config_dir)]) == 2
    assert "--staging-dir must be a local folder" in capsys.readouterr().err
    assert not Path("s3:").exists()
