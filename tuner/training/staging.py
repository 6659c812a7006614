"""A run whose models root is in object storage: where it commits, and its uploader.

``python -m tuner.train --models-root s3://bucket/prefix`` trains as with a local models root,
committing to a local **staging folder** (``--staging-dir``, default
:func:`checkpointing.locations.default_staging_dir`:
``~/.cache/futures-rl-tuner/staging/<bucket>/<prefix>``); an uploader copies each committed
checkpoint to the bucket in the background (:mod:`checkpointing.uploads`). Before anything
trains, the bucket is checked (:meth:`checkpointing.object_store.ObjectStore.preflight`) and
the staged checkpoints (and registry shards) of earlier runs that never reached it are queued;
a staged checkpoint that reached it once and was deleted there since is not.

Imports nothing heavy: pyarrow loads when the uploader opens the bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from checkpointing.errors import ConfigError
from checkpointing.locations import StoreURI, parse_location

if TYPE_CHECKING:
    from checkpointing.config import CheckpointConfig
    from checkpointing.uploads import Uploader

__all__ = ["RemoteRoot", "fetch_model", "open_uploads", "resolve_models_root"]


@dataclass(frozen=True)
class RemoteRoot:
    """An object-store models root and the local folder its checkpoints are staged in."""

    uri: StoreURI
    staging: Path


def resolve_models_root(
    models_root: str | None, staging_dir: str | None
) -> tuple[Path | None, RemoteRoot | None]:
    """``--models-root`` and ``--staging-dir``: the local folder the run commits to (None:
    the config's ``paths.root``) and, for a URI, the remote root.

    Raises:
        ConfigError: a bad path or URI; ``--staging-dir`` without a URI; a staging folder
            that is a file.
    """
    where = None if models_root is None else parse_location(models_root, "--models-root")
    if not isinstance(where, StoreURI):
        if staging_dir is not None:
            raise ConfigError(
                "--staging-dir goes with an object-store --models-root (s3://bucket/prefix); "
                "a local --models-root is written directly"
            )
        if where is not None and where.exists() and not where.is_dir():
            raise ConfigError(f"--models-root must be a folder, but {models_root!r} is a file")
        return where, None
    from checkpointing.locations import default_staging_dir

    if staging_dir is None:
        staging = default_staging_dir(where)
    else:
        local = parse_location(staging_dir, "--staging-dir")
        if isinstance(local, StoreURI):
            raise ConfigError(f"--staging-dir must be a local folder, got {staging_dir!r}")
        staging = local
    if staging.exists() and not staging.is_dir():
        raise ConfigError(f"--staging-dir must be a folder, but {os.fspath(staging)!r} is a file")
    staging = Path(os.path.abspath(staging))
    return staging, RemoteRoot(where, staging)


def open_uploads(
    remote: RemoteRoot, config: CheckpointConfig, say: Callable[[str], None]
) -> Uploader:
    """Check the bucket, start the uploader, queue what earlier runs left only in staging.

    Raises:
        ObjectStoreError: the bucket does not exist, the endpoint refuses, the credentials
            are denied (nothing is written, in staging or on the bucket).
    """
    from checkpointing.object_store import ObjectStore
    from checkpointing.uploads import Uploader

    store = ObjectStore(remote.uri)
    store.preflight()
    uploader = Uploader(store, remote.staging)
    left = 0
    for folder in config.layout(remote.staging).folders():
        try:
            left += uploader.catch_up(folder.path)
        except OSError as exc:
            say(f"uploads: cannot compare {folder.path} with the bucket ({exc}); skipped")
    try:
        uploader.catch_up_registry()
    except OSError as exc:
        say(f"uploads: cannot compare the registry shards with the bucket ({exc}); skipped")
    say(f"checkpoints go to {remote.uri}, committed first to the staging folder {remote.staging}")
    if left:
        say(f"uploads: {left} checkpoint(s) of earlier runs were only in staging; uploading them")
    if uploader.deleted_on_bucket:
        say(
            f"uploads: {len(uploader.deleted_on_bucket)} staged checkpoint(s) were deleted on "
            f"{remote.uri} after their upload (retention there); not uploading them again"
        )
    return uploader


def fetch_model(text: str, remote: RemoteRoot | None) -> Path:
    """``--model-path s3://bucket/.../<name>.zip``: the checkpoint fetched (zip and
    companions) into a staging folder and verified, before anything of it is unpickled.

    Under an object-store ``--models-root``, it goes where that root's staging folder keeps
    it (so continuing it continues its run); elsewhere into the default staging folder of its
    own location. A staged copy that verifies is not fetched again.

    Raises:
        ConfigError: not a ``.zip`` URI, no such checkpoint on the bucket, or one that fails
            verification (named by its URI).
        ObjectStoreError: the bucket cannot be read (named).
    """
    from checkpointing.errors import CheckpointCorruptError, ObjectStoreError
    from checkpointing.fetch import BucketMirror
    from checkpointing.locations import default_staging_dir
    from checkpointing.object_store import ObjectStore

    uri = parse_location(text, "--model-path")
    assert isinstance(uri, StoreURI)
    folder, _, name = uri.key.rpartition("/")
    if not name.endswith(".zip"):
        raise ConfigError(f"--model-path {str(uri)!r} must name a checkpoint zip (<name>.zip)")
    parent = StoreURI(uri.scheme, uri.bucket, folder)
    root, staging = parent, default_staging_dir(parent)
    if remote is not None and remote.uri.bucket == uri.bucket:
        top = remote.uri.key
        if not top or folder == top or folder.startswith(top + "/"):
            root, staging = remote.uri, remote.staging
    mirror = BucketMirror(ObjectStore(root), staging)
    try:
        return mirror.verified(mirror.path_of(uri))
    except CheckpointCorruptError as exc:
        raise ConfigError(f"--model-path {uri}: fails verification ({exc})") from None
    except FileNotFoundError:
        raise ConfigError(f"--model-path: no such checkpoint {str(uri)!r} on the bucket") from None
    except OSError as exc:
        raise ObjectStoreError(f"{uri}: cannot fetch it ({exc})") from None
