"""Where a Ray job keeps its files: never in Ray's temporary copy of its working directory.

``ray job submit --working-dir . -- python -m tuner.run ...`` runs the command in Ray's copy of
the uploaded folder on the node that runs it (the head node),
``<ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``: Ray's
temporary files on one node, which Ray deletes once the job no longer needs them and its cache
of working directories is full, and which go with the node. A models root or storage path
that resolves there (the relative defaults ``models`` and ``ray_results`` do), or elsewhere in
that session's folder, would lose every checkpoint without a word. :func:`check_job_paths`
refuses such a path before anything is written, unless ``--allow-ephemeral``;
:func:`job_notes` are the lines that say where the files are when the command runs as a job::

    job = current_job()          # None outside a Ray job
    check_job_paths({"--models-root": root}, allow_ephemeral=False)  # ConfigError if in the copy
    for line in job_notes({"checkpoints": root}):
        print(line)

How a command knows it runs as a Ray job: Ray's job supervisor starts every entrypoint with
``RAY_JOB_CONFIG_JSON_ENV_VAR`` set (the job's runtime env and submission id, which
``ray.init`` reads to join the job), in its node's copy of the working directory. That copy is
recognised by where it lies: a folder directly under ``runtime_resources/working_dir_files/``.
A command started inside such a folder counts as a job even without the variable. A working
directory Ray uses in place (one already on the node) is the user's own folder and is not
refused.

Imports nothing heavy: the check runs before Ray, torch or SB3 load.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from checkpointing.errors import ConfigError

__all__ = ["JOB_CONFIG_ENV", "RayJob", "check_job_paths", "current_job", "job_notes"]

JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint

# What to pass instead, per flag: a folder every node mounts at the same path.
_SHARED_EXAMPLES = {
    "--models-root": "/mnt/shared/models",
    "--storage-path": "/mnt/shared/ray_results",
}


@dataclass(frozen=True)
class RayJob:
    """The Ray job this process is the entrypoint of.

    ``working_dir`` is Ray's temporary copy of the job's working directory (``None`` for a job
    submitted without one, or started outside it).
    """

    working_dir: Path | None = None

    @property
    def session_dir(self) -> Path | None:
        """The Ray session's temporary folder (``session_*``) that holds the copy."""
        return self.working_dir.parents[2] if self.working_dir is not None else None

    def ephemeral_home(self, path: str | os.PathLike[str]) -> str | None:
        """Which of Ray's temporary folders ``path`` (resolved) lies in, for a message; None if
        neither."""
        resolved = Path(path).resolve()
        if self.working_dir is not None and resolved.is_relative_to(self.working_dir):
            return "this Ray job's temporary copy of its working directory"
        if self.session_dir is not None and resolved.is_relative_to(self.session_dir):
            return f"the Ray session's temporary folder ({self.session_dir})"
        return None


def current_job(
    environ: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> RayJob | None:
    """The Ray job this process runs as, or None (``environ`` and ``cwd``: this process's)."""
    environ = os.environ if environ is None else environ
    here = Path.cwd() if cwd is None else Path(cwd)
    working_dir = _unpacked_working_dir(here.resolve())
    if working_dir is None and JOB_CONFIG_ENV not in environ:
        return None
    return RayJob(working_dir)


def _unpacked_working_dir(cwd: Path) -> Path | None:
    """The folder directly under ``runtime_resources/working_dir_files/`` that holds ``cwd``."""
    for folder in (cwd, *cwd.parents):
        parent = folder.parent
        if parent.name == "working_dir_files" and parent.parent.name == "runtime_resources":
            return folder
    return None


def check_job_paths(
    paths: Mapping[str, str | os.PathLike[str]],
    *,
    allow_ephemeral: bool,
    job: RayJob | None = None,
) -> None:
    """Refuse, inside a Ray job, a path (by its flag) that resolves into Ray's temporary files.

    Args:
        paths: the folders the command writes to, by flag, e.g. ``{"--models-root": root}``.
        allow_ephemeral: ``--allow-ephemeral``: write there anyway.
        job: the job (default :func:`current_job`); nothing is refused outside a job.

    Raises:
        ConfigError: naming each such flag, the path it resolves to, and what to pass instead.
    """
    job = current_job() if job is None else job
    if job is None or allow_ephemeral:
        return
    homes = {flag: job.ephemeral_home(path) for flag, path in paths.items()}
    bad = {flag: path for flag, path in paths.items() if homes[flag] is not None}
    if not bad:
        return
    resolved = " and ".join(
        f"{flag} resolves to {os.fspath(Path(path).resolve())!r}" for flag, path in bad.items()
    )
    where = " and ".join(dict.fromkeys(str(homes[flag]) for flag in bad))
    instead = " ".join(f"{flag} {_SHARED_EXAMPLES.get(flag, '/mnt/shared/...')}" for flag in bad)
    raise ConfigError(
        f"this command runs as a Ray job: {resolved}, in {where} on the head node. Ray may "
        "delete it after the job, and it goes with the node. Pass a folder every node of the "
        f"cluster mounts at the same path, e.g. {instead}, or --allow-ephemeral to write "
        "there anyway"
    )


def job_notes(paths: Mapping[str, str | os.PathLike[str]], job: RayJob | None = None) -> list[str]:
    """Lines that say where ``paths`` (by what they hold) are when this command is a Ray job.

    Empty outside a job. Inside one: that the paths are on the cluster, not on the machine that
    submitted the job, and how to reach them; for a path in Ray's temporary files (allowed by
    ``--allow-ephemeral``), a warning that it is temporary.
    """
    job = current_job() if job is None else job
    if job is None:
        return []
    kept = {what: path for what, path in paths.items() if job.ephemeral_home(path) is None}
    lines = []
    if kept:
        listed = ", ".join(f"{what} under {os.fspath(path)}" for what, path in kept.items())
        lines.append(
            f"on the cluster: {listed} are on the cluster's storage, not on the machine that "
            "submitted this Ray job; browse them on a node (ray exec) or copy them from one "
            "(ray rsync-down)"
        )
    for what, path in paths.items():
        if what not in kept:
            lines.append(
                f"WARNING: {what} under {os.fspath(path)} are in {job.ephemeral_home(path)} "
                "on the head node (--allow-ephemeral): Ray may delete them after the job, and "
                "they go with the node; copy them off the head node before then"
            )
    return lines
