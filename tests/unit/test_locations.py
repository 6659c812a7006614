"""A URI is never a path: one parser tells them apart, and every entry point that takes a
folder either supports object storage or refuses the URI by name, writing nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from checkpointing.errors import ConfigError
from checkpointing.layout import Layout, PathsConfig
from checkpointing.locations import StoreURI, local_folder, parse_location


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://acc/models", StoreURI("s3", "acc", "models")),
        ("s3://acc/models/", StoreURI("s3", "acc", "models")),
        ("S3://acc/a/b.c/d", StoreURI("s3", "acc", "a/b.c/d")),
        ("s3://my.bucket-1", StoreURI("s3", "my.bucket-1", "")),
        ("s3://acc/", StoreURI("s3", "acc", "")),
        ("models", Path("models")),
        ("./s3:/acc", Path("./s3:/acc")),
        ("/mnt/shared/models", Path("/mnt/shared/models")),
    ],
)
def test_uris_and_paths_are_told_apart(text: str, expected: object) -> None:
    assert parse_location(text, "--models-root") == expected


def test_a_uri_prints_back_canonically_and_joins_keys() -> None:
    uri = parse_location("s3://acc/models/", "--models-root")
    assert isinstance(uri, StoreURI)
    assert str(uri) == "s3://acc/models"
    assert (
        str(uri.child("phase1/NQ/checkpoints/x.zip"))
        == "s3://acc/models/phase1/NQ/checkpoints/x.zip"
    )
    assert uri.child("a/b").path == "acc/models/a/b"
    assert str(StoreURI("s3", "acc").child("x")) == "s3://acc/x"
    with pytest.raises(ValueError, match="leaves"):
        uri.child("../other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gs://acc/models", "the gs:// scheme is not supported"),
        ("file:///tmp/models", "the file:// scheme is not supported"),
        ("s3://Acc/models", "'Acc' is not a bucket name"),
        ("s3://ab/models", "'ab' is not a bucket name"),
        ("s3:///models", "'' is not a bucket name"),
        ("s3://acc//models", "without empty, '.' or '..' parts"),
        ("s3://acc/a/../b", "without empty, '.' or '..' parts"),
        ("s3://acc/models?endpoint_override=localhost:9000", "set the endpoint with AWS_ENDPOINT"),
        ("s3:/acc/models", "looks like a s3:// URI missing its '//'"),
        ("s3:acc", "looks like a s3:// URI missing its '//'"),
        ("", "must be a non-empty path"),
        ("a\x00b", "must be a non-empty path without NUL"),
    ],
)
def test_bad_locations_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="--models-root") as caught:
        parse_location(text, "--models-root")
    assert message in str(caught.value)


def test_credentials_in_a_uri_are_refused_without_being_repeated() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_location("s3://AKIAXX:hunter2-secret@acc/models", "--models-root")
    message = str(caught.value)
    assert "credentials never go in the URI" in message
    assert "hunter2" not in message and "AKIAXX" not in message
    assert "s3://***@acc/models" in message


def test_a_command_without_object_storage_refuses_the_uri_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        local_folder("s3://acc/tb", "--tensorboard", "python -m tuner.train")
    message = str(caught.value)
    assert "--tensorboard 's3://acc/tb' is an object-store URI" in message
    assert "python -m tuner.train does not take one for --tensorboard" in message


@pytest.mark.parametrize("root", ["s3://acc/models", "s3:/acc/models"])
def test_a_layout_never_turns_a_uri_into_a_folder(root: str) -> None:
    with pytest.raises(ConfigError, match="s3"):
        Layout(PathsConfig(), root)
    with pytest.raises(ConfigError, match=r"checkpointing\.paths\.root"):
        Layout(PathsConfig(root=root))


def test_a_uri_in_the_config_paths_is_refused_naming_the_key(tmp_path: Path) -> None:
    from checkpointing.config import load_config

    path = tmp_path / "checkpoint_config.yaml"
    path.write_text(
        "checkpointing:\n  paths:\n    root: s3://acc/models\n"
        "    phase1: s3://acc/models/phase1/{market}/checkpoints/\n"
    )
    with pytest.raises(ConfigError, match=r"paths\.root 's3://acc/models' is an object-store"):
        load_config(path)


# --------------------------------------------------------------------------- entry points


def _run(module: str, argv: list[str]) -> int:
    import importlib

    main = importlib.import_module(module).main
    try:
        return int(main(argv))
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("module", "argv", "flag", "command"),
    [
        (
            "tuner.run",
            ["--markets", "NQ", "--models-root", "gs://acc/models"],
            "--models-root",
            "gs:// scheme is not supported",
        ),
        (
            "tuner.run",
            ["--markets", "NQ", "--storage-path", "s3:/acc/ray"],
            "--storage-path",
            "missing its '//'",
        ),
        (
            "tuner.browse",
            ["--storage-path", "gs://acc/ray"],
            "--storage-path",
            "gs:// scheme is not supported",
        ),
        (
            "tuner.evaluate",
            ["--experiment", "x", "--storage-path", "s3:/acc/ray"],
            "--storage-path",
            "missing its '//'",
        ),
        (
            "tuner.evaluate",
            ["--checkpoint", "s3://acc/models/x.zip"],
            "--checkpoint",
            "tuner.evaluate",
        ),
        (
            "tuner.report",
            ["--experiment", "x", "--storage-path", "s3:acc/ray"],
            "--storage-path",
            "missing its '//'",
        ),
        (
            "tuner.report",
            ["--experiment", "x", "--models-root", "gs://acc/models"],
            "--models-root",
            "gs:// scheme is not supported",
        ),
        (
            "tuner.train",
            ["--market", "NQ", "--continue", "--model-path", "gs://acc/models/x.zip"],
            "--model-path",
            "gs:// scheme is not supported",
        ),
        (
            "tuner.train",
            ["--market", "NQ", "--models-root", "s3:/acc/models"],
            "--models-root",
            "missing its '//'",
        ),
        (
            "tuner.train",
            ["--market", "NQ", "--models-root", "gs://acc/models"],
            "--models-root",
            "gs:// scheme is not supported",
        ),
        # The readers of a bucket still refuse what is not one.
        ("checkpointing.summary", ["--root", "s3:/acc/models"], "--root", "missing its '//'"),
        (
            "checkpointing.retention",
            ["--phase", "1", "--root", "gs://acc/models"],
            "--root",
            "gs:// scheme is not supported",
        ),
        (
            "checkpointing.registry",
            ["rebuild", "--models-root", "s3://KEY:SECRET@acc/models"],
            "--root",
            "credentials never go in the URI",
        ),
        (
            "tuner.browse",
            ["--storage-path", "{tmp}", "--models-root", "s3:acc/models", "--experiment", "x"],
            "--models-root",
            "missing its '//'",
        ),
    ],
)
def test_every_entry_point_refuses_a_uri_it_cannot_use_and_writes_nothing(
    module: str,
    argv: list[str],
    flag: str,
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = Path(__file__).resolve().parents[2]
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if module in ("tuner.run", "tuner.train", "tuner.evaluate"):
        argv += ["--config-dir", str(project / "config")]
    assert _run(module, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err and command in err, err
    assert "s3:" in err or "gs:" in err
    assert os.listdir(work) == []  # no folder named "s3:" (nor anything else)
