"""Object-store faults under real training: ``tuner.train --models-root s3://...`` processes on
the tiny configs, against the moto server on loopback (tests/s3.py), directly or through the
fault-injecting proxy (tests/s3_faults.py).

- The server stopped while the run uploads, then started again: the run goes on training,
  exits 0 and every checkpoint ends on the bucket.
- Every sixth request of a run's uploads answered with an error (503 SlowDown, 500
  InternalError, a reset, a lost or cut answer, a flipped bit, in turn), while a second run
  beside it, whose every upload request is throttled, outlasts its ``--upload-timeout``. The
  first exits 0 with every checkpoint on the bucket as staged and no listing ever showing a
  zip without its companions; the second trains exactly the same evaluations, then names the
  checkpoints that are only in staging (each intact) and exits 1.
- A bit-flipped zip on the bucket: ``--resume-from latest`` skips it, naming it, and starts
  from the newest checkpoint that verifies.
- Truncated, emptied, bit-flipped or garbled objects (zip, pkl, metadata) of the checkpoint a
  resume by ``latest`` or ``best:sharpe_ratio`` would take, with an empty staging folder:
  skipped before anything is unpickled, named by the object's URI, never staged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpointing.store import list_checkpoints, verify_checkpoint
from tests.integration import test_train_s3 as base
from tests.integration.test_resume_s3 import first_run, name_of, newest_first
from tests.integration.test_train_s3 import (
    FOLDER,
    PREFIX,
    URI,
    BucketWatch,
    Train,
    assert_on_the_bucket,
    staged_timesteps,
    zips_on,
)
from tests.reliability.conftest import FaultLog
from tests.s3 import S3Server
from tests.s3_faults import (
    CUT_BODY,
    FLIPPED_BODY,
    INTERNAL_ERROR,
    LOST_ANSWER,
    RESET,
    SLOW_DOWN,
    FaultProxy,
    Rule,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# tuner.train processes on the tiny configs, as test_train_s3's (fixtures, used by name).
config_dir = base.config_dir
train = base.train

THROTTLED = "s3://acc/throttled"
SUFFIXES = (".zip", "_vecnormalize.pkl", "_metadata.json")
# The progress line of an evaluation: "NQ seed 42 phase 1:       640/1,500 steps ..."
EVALUATION = re.compile(r"^\S.*:\s+([\d,]+)/[\d,]+ steps\s", re.MULTILINE)


def test_uploads_resume_when_the_server_comes_back_and_training_never_waits(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path, fault_log: FaultLog
) -> None:
    s3.create_bucket("acc")
    staging = tmp_path / "staging"
    with (
        fault_log.tries("S3 server stopped mid-upload, then started again") as t,
        t.attempt("during a training run"),
    ):
        run = train("--timesteps", "4000", "--models-root", URI, "--staging-dir", str(staging))
        run.until(lambda: bool(zips_on(s3)), "a first checkpoint on the bucket")
        s3.stop()
        run.until(lambda: "retrying in" in run.stderr, "a failed upload", timeout=30)
        newest = staged_timesteps(staging)
        run.until(lambda: staged_timesteps(staging) > newest, "saves while the server is down")
        assert run.process.poll() is None
        s3.start()
        assert run.wait() == 0, run.diagnostics()
        assert "Could not connect" in run.stderr
        assert_on_the_bucket(s3, staging)
        assert "none left only in the staging folder" in run.stdout


def settled(s3: S3Server, staging: Path, key: str) -> None:
    """What the request for ``key`` (under ``models/``) was about is on the bucket exactly as
    in staging: a checkpoint's three files (or none of them, deleted by retention on both
    sides), a registry shard, a whole folder for a listing."""
    rel = key[len("models/") :]
    if rel.startswith("registry/"):
        assert s3.read("acc", key) == (staging / rel).read_bytes(), key
        return
    folder, _, name = rel.rpartition("/")
    base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), None)
    if base is None:  # a listing or a folder marker: the whole folder
        assert {i.filename for i in list_checkpoints(staging / FOLDER)} == zips_on(s3)
        return
    on_bucket = set(s3.keys("acc", f"models/{folder}/{base}"))
    for suffix in SUFFIXES:
        local, remote = staging / folder / (base + suffix), f"models/{folder}/{base}{suffix}"
        assert local.exists() == (remote in on_bucket), f"{remote}: staged {local.exists()}"
        if local.exists():
            assert s3.read("acc", remote) == local.read_bytes(), f"{remote} differs"


def test_training_through_s3_errors_beside_a_bucket_throttled_past_the_end(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path, fault_log: FaultLog
) -> None:
    s3.create_bucket("acc")
    staging, held = tmp_path / "staging", tmp_path / "held"
    with FaultProxy(s3.port) as proxy:
        proxy.add(
            Rule(SLOW_DOWN, key=r"^throttled/(phase1|registry)/"),
            Rule(
                (SLOW_DOWN, INTERNAL_ERROR, RESET, LOST_ANSWER, CUT_BODY, FLIPPED_BODY),
                key=r"^models/(phase1|registry)/",
                every=6,
            ),
        )
        watch = BucketWatch(s3)
        where = ["--timesteps", "1000", "--models-root"]
        faulty = train(
            *where, URI, "--staging-dir", str(staging), AWS_ENDPOINT_URL_S3=proxy.endpoint
        )
        throttled = train(
            *where, THROTTLED, "--staging-dir", str(held), "--upload-timeout", "3",
            AWS_ENDPOINT_URL_S3=proxy.endpoint,
        )  # fmt: skip
        codes = faulty.wait(), throttled.wait()
        watch.stop()
    injected = [e for e in proxy.injected() if e.key.startswith("models/")]

    with (
        fault_log.tries("S3 errors and throttling from a proxy") as t,
        t.attempt("the run through the errors"),
    ):
        assert codes[0] == 0, faulty.diagnostics()
        assert "none left only in the staging folder" in faulty.stdout
        assert_on_the_bucket(s3, staging)
        assert watch.listings >= 3 and watch.bad == []
        assert {e.fault for e in injected} >= {SLOW_DOWN, INTERNAL_ERROR, CUT_BODY}
        for e in injected:
            with t.attempt(f"{e.fault} on {e.method} {e.key}"):
                settled(s3, staging, e.key)

    with fault_log.tries("S3 bucket throttling every request past --upload-timeout") as t:
        out = throttled.stdout
        with t.attempt("training is not held up by the bucket"):
            evaluations = EVALUATION.findall(out)
            assert evaluations and evaluations == EVALUATION.findall(faulty.stdout), out
            waiting = out.index("uploads: waiting for")
            assert all(m.start() < waiting for m in EVALUATION.finditer(out)), out
        with t.attempt("the run says what is only local and exits 1"):
            assert codes[1] == 1, throttled.diagnostics()
            assert f"only in the local staging folder {held}, not on {THROTTLED}" in out, out
            assert "reduce your request rate" in out, out
            assert [k for k in s3.keys("acc", "throttled/") if k.endswith(".zip")] == []
        only_local = {line.strip() for line in out.splitlines() if line.startswith(f"  {held}")}
        for info in list_checkpoints(held / FOLDER):
            with t.attempt(f"staged {info.filename}"):
                assert str(info.path) in only_local, f"not listed as only local: {info.path}"
                verify_checkpoint(info.path)


def test_a_bit_flipped_zip_on_the_bucket_is_skipped_named_and_the_previous_one_is_used(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path, fault_log: FaultLog
) -> None:
    staging = tmp_path / "staging"
    on_bucket = first_run(train, s3, staging)
    flipped, previous = newest_first(on_bucket)[:2]
    data = bytearray(s3.read("acc", PREFIX + flipped))
    data[len(data) // 2] ^= 0x01  # same size: only the sha256 can tell
    s3.client().put_object(Bucket="acc", Key=PREFIX + flipped, Body=bytes(data))

    with (
        fault_log.tries("bit-flipped zip on the bucket, then --resume-from latest") as t,
        t.attempt("bit-flipped zip, tuner.train --resume-from latest"),
    ):
        again = train(
            "--timesteps", "1500", "--resume-from", "latest", "--models-root", URI,
            "--staging-dir", str(staging),
        )  # fmt: skip
        assert again.wait() == 0, again.diagnostics()
        assert (
            f"fails verification: {URI}/{FOLDER}/{flipped}: the model zip fails its sha256 "
            "check" in again.stderr
        )
        # A new run from the newest that verifies (a best and its periodic twin are one
        # model).
        started = re.search(r"\(new\), from (\S+\.zip) of run", again.stdout)
        assert started, again.diagnostics()
        assert started[1] in on_bucket and started[1] != flipped
        assert name_of(started[1]).timesteps == name_of(previous).timesteps
        assert not (staging / FOLDER / flipped).exists()  # never entered staging
        assert not list((staging / FOLDER).glob(".fetch-*"))  # no temporaries left


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


# What is done to one object of the chosen checkpoint on the bucket.
DAMAGE: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "truncated zip": (".zip", lambda b: b[: len(b) // 2]),
    "empty zip": (".zip", lambda b: b""),
    "flipped byte in the pkl": ("_vecnormalize.pkl", _flip),
    "truncated pkl": ("_vecnormalize.pkl", lambda b: b[:-7]),
    "garbled metadata": ("_metadata.json", lambda b: b[: len(b) // 2]),
}


def test_damaged_objects_on_the_bucket_are_skipped_before_unpickling_latest_and_best(
    s3: S3Server,
    train: Callable[..., Train],
    tmp_path: Path,
    fault_log: FaultLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from checkpointing.fetch import BucketMirror
    from checkpointing.locations import StoreURI
    from checkpointing.object_store import ObjectStore
    from checkpointing.selection import find_resume_checkpoint

    on_bucket = first_run(train, s3, tmp_path / "first")
    store = ObjectStore(StoreURI("s3", "acc", "models"))
    fresh = iter(range(100))

    def resume(spec: str) -> tuple[Path, Path]:
        """A resume from a staging folder with nothing in it (another machine)."""
        staging = tmp_path / f"staging-{next(fresh)}"
        picked = find_resume_checkpoint(staging / FOLDER, spec, mirror=BucketMirror(store, staging))
        assert picked is not None and picked.is_file()
        return staging, picked

    with fault_log.tries("truncated or damaged objects on the bucket, then a resume") as t:
        for what, (suffix, damage) in DAMAGE.items():
            for spec in ("latest", "best:sharpe_ratio"):
                with t.attempt(f"{what}, --resume-from {spec}"):
                    _, chosen = resume(spec)  # what the resume takes while all is well
                    assert chosen.name in on_bucket
                    key = PREFIX + chosen.name.removesuffix(".zip") + suffix
                    original = s3.read("acc", key)
                    s3.client().put_object(Bucket="acc", Key=key, Body=damage(original))
                    caplog.clear()
                    try:
                        staging, picked = resume(spec)
                    finally:
                        s3.client().put_object(Bucket="acc", Key=key, Body=original)
                    assert picked.name != chosen.name
                    verify_checkpoint(picked)  # what was taken verifies, in staging
                    assert not (staging / FOLDER / chosen.name).exists()  # never staged
                    assert not list((staging / FOLDER).glob(".fetch-*"))
                    # Named by the URI of the object that is damaged.
                    damaged = f"{URI}/{FOLDER}/{chosen.name.removesuffix('.zip')}{suffix}"
                    skipped = [r.getMessage() for r in caplog.records if damaged in r.getMessage()]
                    assert skipped, caplog.text
                    later = name_of(picked.name)
                    if spec == "latest":
                        assert later.timesteps <= name_of(chosen.name).timesteps
                    else:
                        assert later.sharpe_ratio <= name_of(chosen.name).sharpe_ratio
