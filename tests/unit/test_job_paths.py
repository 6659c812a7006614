"""A command run as a Ray job refuses to write into Ray's temporary copy of its working
directory (``tuner/job_paths.py``), with the job faked: the variable Ray's job supervisor sets,
and a working directory laid out as Ray unpacks one. The real job: ``tests/ray/test_cluster.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from checkpointing.errors import EXIT_USAGE, ConfigError
from tests.tiny_config import CONFIG_DIR
from tuner.job_paths import JOB_CONFIG_ENV, RayJob, check_job_paths, current_job, job_notes


@pytest.fixture
def outside_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A plain folder as the working directory, no job variable: a command run by hand."""
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    here = tmp_path / "project"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


@pytest.fixture
def job_dir(outside_job: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Ray's copy of the job's working directory as the working directory, the job variable set
    as Ray's job supervisor sets it for the entrypoint."""
    session = tmp_path / "ray" / "session_2026-12-05_05-42-22_833871_16512"
    copy = session / "runtime_resources" / "working_dir_files" / "_ray_pkg_d910073431996ca8"
    copy.mkdir(parents=True)
    (tmp_path / "ray" / "session_latest").symlink_to(session)
    config = {
        "runtime_env": {"working_dir": "gcs://_ray_pkg_d910073431996ca8.zip", "env_vars": {}},
        "metadata": {"job_submission_id": "raysubmit_ZWv6yK71qyvsWYS8"},
    }
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps(config))
    monkeypatch.chdir(copy)
    return copy


def _refused(paths: dict[str, Path | str]) -> str:
    with pytest.raises(ConfigError) as caught:
        check_job_paths(paths, allow_ephemeral=False)
    return str(caught.value)


# --------------------------------------------------------------------------- detection


def test_a_job_is_found_by_the_variable_and_its_copy_by_the_working_directory(
    job_dir: Path,
) -> None:
    assert current_job() == RayJob(working_dir=job_dir)
    (job_dir / "sub").mkdir()
    assert current_job(cwd=job_dir / "sub") == RayJob(working_dir=job_dir)


def test_outside_a_job_there_is_no_job(outside_job: Path) -> None:
    assert current_job() is None


def test_a_job_without_a_working_directory_has_no_copy(
    outside_job: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"env_vars": {}}}))
    assert current_job() == RayJob(working_dir=None)
    check_job_paths({"--models-root": Path("models")}, allow_ephemeral=False)  # the user's own


def test_the_copy_alone_is_enough_to_know_a_job(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(JOB_CONFIG_ENV)
    assert current_job() == RayJob(working_dir=job_dir)
    assert "--models-root" in _refused({"--models-root": Path("models")})


# --------------------------------------------------------------------------- refusal


def test_the_relative_defaults_are_refused_naming_flag_path_and_what_to_pass(job_dir: Path) -> None:
    message = _refused({"--models-root": Path("models"), "--storage-path": Path("ray_results")})
    assert f"--models-root resolves to '{job_dir / 'models'}'" in message
    assert f"--storage-path resolves to '{job_dir / 'ray_results'}'" in message
    assert "--models-root /mnt/shared/models --storage-path /mnt/shared/ray_results" in message
    assert "--allow-ephemeral" in message


def test_only_the_flag_that_points_into_the_copy_is_named(job_dir: Path, tmp_path: Path) -> None:
    message = _refused(
        {"--models-root": tmp_path / "shared" / "models", "--storage-path": Path("ray_results")}
    )
    assert "--storage-path resolves to" in message
    assert "--models-root" not in message


@pytest.mark.parametrize(
    "inside",
    [
        "{copy}/models",  # absolute, inside the copy
        "{copy}",  # the copy itself
        "{ray}/session_latest/runtime_resources/working_dir_files/_ray_pkg_d910073431996ca8/m",
        "../../../logs/x",  # elsewhere in the session's temporary folder
    ],
)
def test_a_path_inside_rays_temporary_files_is_refused(
    job_dir: Path, tmp_path: Path, inside: str
) -> None:
    path = inside.format(copy=job_dir, ray=tmp_path / "ray")
    assert "--models-root resolves to" in _refused({"--models-root": path})


@pytest.mark.parametrize("outside", ["{tmp}/shared/models", "{tmp}/ray/models", "/mnt/shared/m"])
def test_a_path_outside_rays_temporary_files_is_accepted(
    job_dir: Path, tmp_path: Path, outside: str
) -> None:
    path = Path(outside.format(tmp=tmp_path))
    check_job_paths({"--models-root": path, "--storage-path": path}, allow_ephemeral=False)


def test_allow_ephemeral_accepts_the_copy(job_dir: Path) -> None:
    check_job_paths({"--models-root": Path("models")}, allow_ephemeral=True)


def test_outside_a_job_nothing_is_refused(outside_job: Path, tmp_path: Path) -> None:
    # Even a path laid out like Ray's copy: only a job writes there by accident.
    copy = tmp_path / "ray" / "s" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    check_job_paths(
        {"--models-root": Path("models"), "--storage-path": copy}, allow_ephemeral=False
    )


# --------------------------------------------------------------------------- the commands


def test_tuner_run_refuses_the_defaults_before_writing_anything(
    job_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.run import main

    code = main(["--markets", "NQ", "--seeds", "1", "--config-dir", str(CONFIG_DIR)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"--models-root resolves to '{job_dir / 'models'}'" in err
    assert f"--storage-path resolves to '{job_dir / 'ray_results'}'" in err
    assert list(job_dir.iterdir()) == []


def test_tuner_run_with_allow_ephemeral_keeps_the_copy(job_dir: Path) -> None:
    from tuner.run import parse_options

    opts, _ = parse_options(
        ["--markets", "NQ", "--config-dir", str(CONFIG_DIR), "--allow-ephemeral"]
    )
    assert opts.models_root == job_dir / "models"
    assert opts.storage_path == job_dir / "ray_results"


def test_tuner_train_refuses_the_default_models_root(
    job_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuner.train import main

    code = main(["--market", "NQ", "--config-dir", str(CONFIG_DIR), "--timesteps", "64"])
    assert code == EXIT_USAGE
    assert f"--models-root resolves to '{job_dir / 'models'}'" in capsys.readouterr().err
    assert list(job_dir.iterdir()) == []


# --------------------------------------------------------------------------- what is printed


def test_notes_say_the_files_are_on_the_cluster(job_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "models"
    (line,) = job_notes({"checkpoints": shared})
    assert f"checkpoints under {shared}" in line and "on the cluster" in line
    assert "WARNING" not in line


def test_notes_warn_about_files_in_the_copy(job_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "ray_results"
    lines = job_notes({"checkpoints": job_dir / "models", "Tune results": shared})
    assert len(lines) == 2
    assert f"Tune results under {shared}" in lines[0] and "checkpoints" not in lines[0]
    assert lines[1].startswith(f"WARNING: checkpoints under {job_dir / 'models'} are in ")
    assert "Ray may delete them" in lines[1]


def test_no_notes_outside_a_job(outside_job: Path) -> None:
    assert job_notes({"checkpoints": Path("models")}) == []
