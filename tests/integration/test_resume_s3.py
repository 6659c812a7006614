"""Resuming from the bucket: ``tuner.train --models-root s3://...`` whose staging folder is
empty (deleted, or another node's) continues from the checkpoints on the bucket, each fetched
and verified before anything of it is unpickled; a damaged object is refused, named. (A damaged
object skipped by ``--resume-from latest``: tests/reliability/.)"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from checkpointing.naming import CheckpointName, parse_name
from tests.integration import test_train_s3 as base
from tests.integration.test_train_s3 import FOLDER, PREFIX, URI, Train, zips_on
from tests.s3 import S3Server

pytestmark = pytest.mark.slow

# tuner.train processes on the tiny configs, as test_train_s3's (fixtures, used by name).
config_dir = base.config_dir
train = base.train


def name_of(filename: str) -> CheckpointName:
    name = parse_name(filename)
    assert isinstance(name, CheckpointName), filename
    return name


def newest_first(names: set[str]) -> list[str]:
    """As ``--resume-from latest`` orders them: timesteps, then run ends first."""
    return sorted(
        names,
        key=lambda n: (name_of(n).timesteps, name_of(n).event in ("interrupt", "phase_end")),
        reverse=True,
    )


def first_run(train: Callable[..., Train], s3: S3Server, staging: Path) -> set[str]:
    """A run to the bucket, then its staging folder deleted; returns the zips on the bucket."""
    s3.create_bucket("acc")
    run = train("--timesteps", "1000", "--models-root", URI, "--staging-dir", str(staging))
    assert run.wait() == 0, run.diagnostics()
    shutil.rmtree(staging)
    on_bucket = zips_on(s3)
    assert len(on_bucket) >= 2
    return on_bucket


def zips_put_since(s3: S3Server, mark: int) -> list[str]:
    return [
        r.key[len(PREFIX) :]
        for r in s3.requests[mark:]
        if r.completes_object and r.key.startswith(PREFIX) and r.key.endswith(".zip")
    ]


def test_resume_latest_with_the_staging_folder_gone_continues_from_the_bucket(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    on_bucket = first_run(train, s3, staging)
    newest = newest_first(on_bucket)[0]
    mark = len(s3.requests)

    again = train(
        "--timesteps", "2000", "--resume-from", "latest", "--models-root", URI,
        "--staging-dir", str(staging),
    )  # fmt: skip
    assert again.wait() == 0, again.diagnostics()
    assert f"continued from {newest} (latest)" in again.stdout
    # Fetched whole: the staged copy is the bucket's, byte for byte.
    base = newest[: -len(".zip")]
    for suffix in (".zip", "_vecnormalize.pkl", "_metadata.json"):
        assert (staging / FOLDER / (base + suffix)).read_bytes() == s3.read(
            "acc", PREFIX + base + suffix
        )
    # The same run goes on, and nothing it saves goes back in time.
    put = zips_put_since(s3, mark)
    assert put, "the resumed run uploaded nothing"
    assert {name_of(n).run_id for n in put} == {name_of(newest).run_id}
    assert min(name_of(n).timesteps for n in put) > name_of(newest).timesteps
    ends = [name_of(n).timesteps for n in put if name_of(n).event == "phase_end"]
    assert len(ends) == 1 and ends[0] >= 2000  # the phase ran to its end


def test_continue_from_a_model_path_on_the_bucket(
    s3: S3Server, train: Callable[..., Train], tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    on_bucket = first_run(train, s3, staging)
    newest = newest_first(on_bucket)[0]
    mark = len(s3.requests)

    again = train(
        "--continue", "--model-path", f"{URI}/{FOLDER}/{newest}", "--timesteps", "1500",
        "--models-root", URI, "--staging-dir", str(staging),
    )  # fmt: skip
    assert again.wait() == 0, again.diagnostics()
    assert f"continued from {newest} (--model-path)" in again.stdout
    put = zips_put_since(s3, mark)
    assert put and min(name_of(n).timesteps for n in put) > name_of(newest).timesteps

    # A damaged one is refused before training, named by its URI.
    data = bytearray(s3.read("acc", PREFIX + newest))
    data[-100] ^= 0x01
    s3.client().put_object(Bucket="acc", Key=PREFIX + newest, Body=bytes(data))
    shutil.rmtree(staging)
    bad = train(
        "--continue", "--model-path", f"{URI}/{FOLDER}/{newest}", "--models-root", URI,
        "--staging-dir", str(staging),
    )  # fmt: skip
    assert bad.wait() == 2, bad.diagnostics()
    assert f"--model-path {URI}/{FOLDER}/{newest}: fails verification" in bad.stderr
    assert not (staging / FOLDER / newest).exists()
