"""``tuner.train --models-root s3://...`` against a real S3 server on loopback: every
checkpoint ends on the bucket (verified), never a zip without its companions there, the
staging folder bounded by retention, no secret written anywhere, a server that stays away at
the end, and a preflight that refuses before training. (A server that goes away mid-run and
comes back, and errors and throttling on the way: tests/reliability/test_s3_training.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from checkpointing.config import load_config
from checkpointing.plan import plan
from checkpointing.policies import build_policy
from checkpointing.shards import decode_shard
from checkpointing.store import list_checkpoints
from tests.s3 import S3Server, closed_port, lone_zips
from tests.tiny_config import PROJECT_ROOT, tiny_config_dir
from tuner.train import main

pytestmark = pytest.mark.slow

URI = "s3://acc/models"
FOLDER = "phase1/NQ/checkpoints"
PREFIX = f"models/{FOLDER}/"
RUN = ["--market", "NQ", "--seed", "42", "--base-interval", "200"]


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Retention that deletes: the last periodic, the best by each metric, the ends."""
    keep = {"keep_last_n": 1, "keep_top_k_by_sharpe": 1, "keep_top_k_by_reward": 1}
    return tiny_config_dir(
        tmp_path_factory.mktemp("cfg"), checkpoint={"retention": {**keep, "prune_frequency": 1}}
    )


class Train:
    """A ``python -m tuner.train`` process; stdout and stderr go to files under ``logs``."""

    def __init__(self, args: list[str], env: dict[str, str], logs: Path, cwd: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        self.out, self.err = logs / "stdout.txt", logs / "stderr.txt"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tuner.train", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def until(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None and not condition():
                pytest.fail(f"tuner.train exited before {what}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f}s\n{self.diagnostics()}")
            time.sleep(0.02)

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"tuner.train did not exit in {timeout:.0f}s\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr[-4000:]}"


@pytest.fixture
def train(tmp_path: Path, s3: S3Server, config_dir: Path) -> Iterator[Callable[..., Train]]:
    """Start ``tuner.train`` on the tiny configs with this server's endpoint and keys; HOME,
    TMPDIR, the working folder and SB3's logs are under ``tmp_path``."""
    started: list[Train] = []

    def start(*args: str, **env: str) -> Train:
        home = tmp_path / "home"
        environ = s3.env(
            HOME=str(home),
            TMPDIR=str(tmp_path / "tmp"),
            SB3_LOGDIR=str(tmp_path / "sb3"),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])
            ),
            **env,
        )
        environ.pop("XDG_CACHE_HOME", None)
        (tmp_path / "tmp").mkdir(exist_ok=True)
        run = Train(
            [*RUN, "--config-dir", str(config_dir), *args],
            environ,
            tmp_path / "logs" / str(len(started)),
            tmp_path / "cwd",
        )
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def zips_on(s3: S3Server) -> set[str]:
    return {k[len(PREFIX) :] for k in s3.keys("acc", PREFIX) if k.endswith(".zip")}


def zips_read_back(s3: S3Server) -> set[str]:
    """The zips the uploader has read back from the bucket (a GET answered)."""
    return {
        r.key
        for r in s3.requests
        if r.method == "GET" and r.status < 300 and r.key.endswith(".zip")
    }


def staged_timesteps(staging: Path) -> int:
    """The timesteps of the newest checkpoint committed in staging (0: none)."""
    return max((i.timesteps for i in list_checkpoints(staging / FOLDER)), default=0)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_on_the_bucket(s3: S3Server, staging: Path) -> set[str]:
    """Every checkpoint of the staging folder is on the bucket, byte for byte, and verifies
    against its metadata there. Returns the staged zip names."""
    staged = {info.filename for info in list_checkpoints(staging / FOLDER)}
    assert staged and staged <= zips_on(s3)
    for name in staged:
        base = name[: -len(".zip")]
        objects = {
            s: s3.read("acc", PREFIX + base + s)
            for s in (".zip", "_vecnormalize.pkl", "_metadata.json")
        }
        for suffix, data in objects.items():
            assert data == (staging / FOLDER / (base + suffix)).read_bytes(), (name, suffix)
        files = json.loads(objects["_metadata.json"])["files"]
        assert files["zip"]["sha256"] == sha(objects[".zip"])
        assert files["vecnormalize"]["sha256"] == sha(objects["_vecnormalize.pkl"])
    return staged


class BucketWatch:
    """Lists the bucket over and over while a run goes on; records every listing that shows
    a zip without both of its companions."""

    def __init__(self, s3: S3Server) -> None:
        self.s3, self.listings, self.bad = s3, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            keys = set(self.s3.keys("acc", PREFIX))
            self.listings += 1
            self.bad += lone_zips(keys)
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def test_a_run_to_s3_ends_with_every_checkpoint_verified_on_the_bucket_and_no_secret_anywhere(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path, config_dir: Path
) -> None:
    s3.create_bucket("acc")
    canary = f"canary-secret-{uuid.uuid4().hex}"
    watch = BucketWatch(s3)
    run = train("--timesteps", "1500", "--models-root", URI, AWS_SECRET_ACCESS_KEY=canary)
    code = run.wait()
    watch.stop()
    assert code == 0, run.diagnostics()

    # The documented default staging folder, under the user's cache.
    staging = tmp_path / "home/.cache/futures-rl-tuner/staging/acc/models"
    out = run.stdout
    assert f"checkpoints: {URI}/{FOLDER}/ (run " in out
    assert f"staged in:   {staging}/{FOLDER}/" in out
    assert f"none left only in the staging folder {staging}" in out
    staged = assert_on_the_bucket(s3, staging)
    assert staged == zips_on(s3)  # what retention deleted in staging is gone from the bucket

    # The run's registry shard is on the bucket and names exactly what is there, with the
    # metrics of each checkpoint's metadata.
    shards = [k for k in s3.keys("acc", "models/registry/") if not k.endswith("/")]
    assert len(shards) == 1 and shards[0].startswith("models/registry/NQ/seed-")
    entries = decode_shard(s3.read("acc", shards[0]), shards[0])
    assert {rel.rsplit("/", 1)[-1] for rel in entries} == staged
    for rel, entry in entries.items():
        meta = json.loads(s3.read("acc", f"models/{rel[: -len('.zip')]}_metadata.json"))
        assert entry.metric("val_reward") == pytest.approx(meta["val_reward"], nan_ok=True)

    # Staging stays bounded: it holds what retention keeps, nothing more; and retention did
    # delete (on the bucket too, the zip before its companions).
    retention = load_config(config_dir / "checkpoint_config.yaml").retention
    assert list(plan(staging / FOLDER, build_policy(retention)).to_delete) == []
    deleted = [r.key for r in s3.requests if r.method == "DELETE" and r.key.startswith(PREFIX)]
    zips_deleted = [k for k in deleted if k.endswith(".zip")]
    assert zips_deleted, "retention deleted nothing: the run is too short to show it"
    for key in zips_deleted:
        base = key[: -len(".zip")]
        assert deleted.index(key) < deleted.index(base + "_metadata.json")

    # Zip last: observed by the server (each zip completed after its companions) and in every
    # listing taken while the run went on.
    done = [r.key for r in s3.requests if r.completes_object and r.key.startswith(PREFIX)]
    for key in (k for k in done if k.endswith(".zip")):
        base = key[: -len(".zip")]
        first = done.index(key)
        assert (
            base + "_vecnormalize.pkl" in done[:first] and base + "_metadata.json" in done[:first]
        )
    assert watch.listings >= 3 and watch.bad == []

    # The secret is in no byte the run wrote: on disk (staging, HOME, TMPDIR, logs, working
    # folder) and on the bucket.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.is_relative_to(staging) for p in written)
    leaks = [p for p in written if canary.encode() in p.read_bytes()]
    leaks += [k for k in s3.keys("acc") if canary.encode() in s3.read("acc", k)]
    assert leaks == []


def test_a_bucket_down_at_the_end_is_reported_in_time_and_the_next_run_uploads_the_rest(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path
) -> None:
    s3.create_bucket("acc")
    staging = tmp_path / "staging"
    where = ["--models-root", URI, "--staging-dir", str(staging), "--timesteps", "1500"]
    run = train(*where, "--upload-timeout", "2")
    # Stopped once a first zip has been read back (its upload checked): an upload the server
    # took but could not confirm is rightly counted as not on the bucket yet.
    run.until(lambda: bool(zips_read_back(s3)), "a first checkpoint checked on the bucket")
    s3.stop()
    run.until(lambda: "uploads: waiting for" in run.stdout, "the wait for the uploads")
    t0 = time.monotonic()
    code = run.wait()
    assert time.monotonic() - t0 < 8.0  # the bound is 2s; the rest is the process ending
    assert code == 1, run.diagnostics()
    out = run.stdout
    assert f"checkpoint(s) are only in the local staging folder {staging}, not on {URI}" in out
    only_local = [
        Path(line.strip()) for line in out.splitlines() if line.startswith(f"  {staging}")
    ]
    assert only_local and all(p.is_file() for p in only_local)
    assert f"the next python -m tuner.train --models-root {URI} with this staging" in out
    s3.start()
    assert {p.name for p in only_local}.isdisjoint(zips_on(s3))

    again = train(*where, "--resume-from", "latest")
    assert again.wait() == 0, again.diagnostics()
    assert "of earlier runs were only in staging; uploading them" in again.stdout
    assert_on_the_bucket(s3, staging)
    # Each was uploaded; what this run's retention pass then deleted is gone from both.
    uploaded = {r.key.rsplit("/", 1)[-1] for r in s3.requests if r.completes_object}
    assert {p.name for p in only_local} <= uploaded
    assert all((p.name in zips_on(s3)) == p.exists() for p in only_local)


@pytest.mark.parametrize("problem", ["missing bucket", "refused endpoint", "denied credentials"])
def test_a_bucket_that_cannot_be_used_stops_the_run_before_training(
    problem: str,
    s3: S3Server,
    config_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expected = {
        "missing bucket": "s3://acc/models: bucket 'acc' does not exist",
        "refused endpoint": "s3://acc/models: cannot reach endpoint http://127.0.0.1:",
        "denied credentials": "s3://acc/models: the credentials are denied",
    }[problem]
    if problem != "missing bucket":
        s3.create_bucket("acc")
    if problem == "refused endpoint":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    staging = tmp_path / "staging"
    argv = [*RUN, "--config-dir", str(config_dir), "--models-root", URI]
    argv += ["--staging-dir", str(staging), "--timesteps", "256"]
    if problem == "denied credentials":
        with s3.denying_credentials():
            code = main(argv)
    else:
        code = main(argv)
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: {expected}")
    assert not staging.exists()  # nothing trained, nothing written
    if problem != "missing bucket":
        assert s3.keys("acc") == []
