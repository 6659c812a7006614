"""``tuner.run --models-root s3://... --storage-path s3://...`` against a real S3 server on
loopback: preflight before Ray starts. (Trials that stage and upload on their node, Tune's
storage on the bucket without a secret in any byte written, and a driver Ctrl+C then
``--resume`` that finishes the experiment: tests/reliability/test_ray_s3.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.s3 import S3Server

pytestmark = pytest.mark.slow

MODELS = "s3://acc/models"
TUNE = "s3://acc/tune"


def test_a_bucket_that_cannot_be_used_stops_the_driver_before_ray_starts(
    s3: S3Server, tiny_configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.run import main

    base = ["--markets", "NQ", "--config-dir", str(tiny_configs), "--name", "x"]
    base += ["--staging-dir", str(tmp_path / "staging")]
    assert main([*base, "--models-root", MODELS, "--storage-path", TUNE]) == 2
    assert capsys.readouterr().err.startswith(f"error: {MODELS}: bucket 'acc' does not exist")
    s3.create_bucket("acc")
    assert main([*base, "--models-root", MODELS, "--storage-path", "s3://nope/tune"]) == 2
    assert capsys.readouterr().err.startswith("error: s3://nope/tune: bucket 'nope' does not")
    # Nothing written but the folder marker pyarrow leaves after the preflight's probe.
    assert s3.keys("acc") == ["models/"] and not (tmp_path / "staging").exists()
