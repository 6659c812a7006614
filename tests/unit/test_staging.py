"""Where a run with an object-store models root commits: the staging folder, and the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from checkpointing.errors import ConfigError
from checkpointing.locations import StoreURI
from tuner.training.staging import RemoteRoot, resolve_models_root


def test_a_local_models_root_is_written_directly(tmp_path: Path) -> None:
    assert resolve_models_root(str(tmp_path / "m"), None) == (tmp_path / "m", None)
    assert resolve_models_root(None, None) == (None, None)


def test_a_uri_stages_in_the_given_folder_or_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = StoreURI("s3", "acc", "models/a")
    staged = tmp_path / "stage"
    assert resolve_models_root("s3://acc/models/a", str(staged)) == (
        staged,
        RemoteRoot(uri, staged),
    )
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = tmp_path / ".cache/futures-rl-tuner/staging/acc/models/a"
    assert resolve_models_root("s3://acc/models/a", None) == (default, RemoteRoot(uri, default))


@pytest.mark.parametrize(
    ("models_root", "staging", "message"),
    [
        ("models", "stage", "--staging-dir goes with an object-store --models-root"),
        (None, "stage", "--staging-dir goes with an object-store --models-root"),
        ("s3://acc/models", "s3://acc/stage", "--staging-dir must be a local folder"),
        ("s3://acc/models", "{file}", "--staging-dir must be a folder"),
        ("{file}", None, "--models-root must be a folder"),
    ],
)
def test_bad_combinations_are_refused_by_flag(
    models_root: str | None, staging: str | None, message: str, tmp_path: Path
) -> None:
    file = tmp_path / "a-file"
    file.write_text("x")

    def fill(text: str | None) -> str | None:
        return None if text is None else text.replace("{file}", str(file))

    with pytest.raises(ConfigError, match=message):
        resolve_models_root(fill(models_root), fill(staging))


def test_a_model_path_on_a_bucket_must_name_a_checkpoint_zip() -> None:
    from tuner.training.staging import fetch_model

    with pytest.raises(ConfigError, match=r"--model-path 's3://acc/models/x' must name a"):
        fetch_model("s3://acc/models/x", None)
