"""``tuner.run`` with object storage: ``--models-root s3://...`` and ``--storage-path s3://...``.

- **Before Ray starts**, each URI is preflighted (:meth:`ObjectStore.preflight`): a bucket
  that does not exist, an endpoint that refuses, credentials that are denied exit 2 naming
  the URI.
- **Checkpoints.** Each trial commits to a staging folder on its own node (``--staging-dir``,
  else the node's default, :func:`checkpointing.locations.default_staging_dir`, which follows
  the node's ``XDG_CACHE_HOME`` / ``HOME``) and uploads with its own uploader, awaited at the
  trial's end (:mod:`tuner.driver.trainable`). A trial retried on another node continues from
  the bucket (:mod:`checkpointing.fetch`).
- **Tune's storage** is the bucket, through a pyarrow ``S3FileSystem`` built without
  credentials (:meth:`S3Settings.filesystem`), handed to Tune as ``storage_filesystem``: Tune
  pickles it into ``tuner.pkl``, and it holds the endpoint only. Every node's AWS SDK finds
  the credentials in its own environment.
- **The driver's end steps** (:mod:`tuner.driver.finish`) read a local copy of the
  experiment folder, downloaded from the bucket (:func:`download_experiment`); its retention
  pass lists and prunes the bucket's checkpoint folders; the test split and the report read
  the checkpoints on the bucket (listings; the chosen checkpoints fetched and verified); the
  files written beside the summary are uploaded to ``<models root>/summaries/``. Readers
  (``tuner.browse``, ``tuner.evaluate``, ``tuner.report``) take ``--storage-path s3://...``
  through the same copy (:func:`bucket_copy`).

**Credentials stay on their nodes.** Ray Tune copies ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_SECURITY_TOKEN`` from the driver's
environment into every trial actor's runtime environment, which Ray's runtime-env agent
writes in clear into its log (``logs/runtime_env_agent.log`` of the session folder).
:func:`keep_credentials_on_their_nodes` stops that copy: a trial's AWS SDK finds the
credentials of its own node (a worker started by a local Ray inherits the driver's
environment; a cluster node has its instance role, profile or environment).

Nothing here imports pyarrow or Ray at module import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpointing.errors import ConfigError, ObjectStoreError
from checkpointing.locations import StoreURI, parse_location

__all__ = [
    "CREDENTIAL_VARIABLES",
    "Locations",
    "bucket_copy",
    "bucket_summaries",
    "download_experiment",
    "experiment_on_bucket",
    "keep_credentials_on_their_nodes",
    "resolve_locations",
    "tune_storage",
    "upload_files",
]


CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)


@dataclass(frozen=True)
class Locations:
    """Where an experiment's files go: local folders, and the URIs they mirror (None: local).

    With ``models_uri``, ``models_root`` is the staging folder of the driver's node; with
    ``storage_uri``, ``storage_path`` is the driver's local copy of Tune's storage.
    """

    models_root: Path
    storage_path: Path
    models_uri: StoreURI | None = None
    storage_uri: StoreURI | None = None
    staging_dir: Path | None = None


def resolve_locations(
    models_root: str | None, storage_path: str, staging_dir: str | None, default_root: Path
) -> Locations:
    """``--models-root``, ``--storage-path`` and ``--staging-dir`` told apart and checked;
    each URI preflighted (nothing of the experiment is written).

    Raises:
        ConfigError: a bad path or URI, ``--staging-dir`` without an ``s3://`` models root.
        ObjectStoreError: a bucket that cannot be used, naming the URI.
    """
    from checkpointing.locations import default_staging_dir
    from tuner.training.staging import resolve_models_root

    local, remote = resolve_models_root(models_root, staging_dir)
    storage = parse_location(storage_path, "--storage-path")
    storage_uri = storage if isinstance(storage, StoreURI) else None
    storage_local = default_staging_dir(storage) if isinstance(storage, StoreURI) else storage
    if not isinstance(storage_local, Path):  # pragma: no cover - narrowing for mypy
        raise ConfigError(f"--storage-path {storage_path!r} is not a folder")
    if storage_uri is None and storage_local.exists() and not storage_local.is_dir():
        raise ConfigError(f"--storage-path must be a folder, but {storage_path!r} is a file")
    uris = [u for u in (remote.uri if remote else None, storage_uri) if u is not None]
    preflight(uris)
    return Locations(
        models_root=(local or default_root).resolve(),
        storage_path=storage_local.resolve(),
        models_uri=remote.uri if remote else None,
        storage_uri=storage_uri,
        staging_dir=None if staging_dir is None or remote is None else remote.staging,
    )


def preflight(uris: Sequence[StoreURI]) -> None:
    """Check each bucket location, in order (:class:`ObjectStoreError` naming the first bad
    one)."""
    from checkpointing.object_store import ObjectStore

    for uri in uris:
        ObjectStore(uri).preflight()


def tune_storage(storage_uri: StoreURI) -> dict[str, Any]:
    """``RunConfig`` arguments for Tune's storage on a bucket: the ``bucket/prefix`` path and
    a credential-free pyarrow S3 file system (safe to pickle into ``tuner.pkl``)."""
    from checkpointing.object_store import S3Settings

    fs = S3Settings.from_environment().filesystem()
    return {"storage_path": storage_uri.path, "storage_filesystem": fs}


def _store(uri: StoreURI) -> Any:
    from checkpointing.object_store import ObjectStore

    return ObjectStore(uri)


def experiment_on_bucket(storage_uri: StoreURI, name: str) -> bool:
    """Whether the experiment ``name`` has any file directly in its folder on the bucket."""
    try:
        return bool(_store(storage_uri).files(name))
    except OSError as exc:
        raise ObjectStoreError(f"{storage_uri.child(name)}: cannot list it ({exc})") from None


def download_experiment(storage_uri: StoreURI, name: str, local: Path) -> bool:
    """Replace ``local`` (the driver's copy, in its cache) with the experiment folder
    ``name`` as the bucket has it; False (and no copy) when the bucket has none. A copy
    left by an earlier experiment of the same name never mixes with this one's files.

    Raises:
        ObjectStoreError: the bucket cannot be read (named).
    """
    from pyarrow import fs as pafs

    store = _store(storage_uri)
    source = storage_uri.child(name)
    local.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{name}.download-", dir=local.parent))
    try:
        if store.fs.get_file_info(source.path).type == pafs.FileType.NotFound:
            shutil.rmtree(local, ignore_errors=True)
            return False
        pafs.copy_files(
            source.path,
            os.fspath(fresh),
            source_filesystem=store.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        shutil.rmtree(local, ignore_errors=True)
        os.replace(fresh, local)
    except OSError as exc:
        raise ObjectStoreError(f"{source}: cannot download it ({exc})") from None
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return True


def bucket_copy(storage_uri: StoreURI, name: str | None = None) -> Path:
    """The local folder that stands for Tune's storage on a bucket, for readers (browser,
    evaluation, report): the driver's cache copy (``~/.cache/futures-rl-tuner/staging/
    <bucket>/<prefix>``), with experiment ``name`` (else every experiment the bucket has)
    downloaded afresh. An experiment the bucket does not have is not in the copy.

    Raises:
        ObjectStoreError: the bucket cannot be read (named).
    """
    from pyarrow import fs as pafs

    from checkpointing.locations import default_staging_dir

    local = default_staging_dir(storage_uri)
    store = _store(storage_uri)
    if name is None:
        try:
            selector = pafs.FileSelector(storage_uri.path, allow_not_found=True)
            infos = store.fs.get_file_info(selector)
        except OSError as exc:
            raise ObjectStoreError(f"{storage_uri}: cannot list it ({exc})") from None
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)
    else:
        names = [name]
    for each in names:
        download_experiment(storage_uri, each, local / each)
    return local


def bucket_summaries(models_uri: StoreURI, files: Sequence[str], folder: Path) -> list[Path]:
    """Copy the files ``files`` of ``<models_uri>/summaries/`` that the bucket has into
    ``folder`` (replacing older copies); the paths written.

    Raises:
        ObjectStoreError: the bucket cannot be read (named).
    """
    store = _store(models_uri)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in files:
        key = f"summaries/{name}"
        try:
            data = store.get_bytes(key, limit=256 << 20)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise ObjectStoreError(f"{store.uri_of(key)}: cannot read it ({exc})") from None
        path = folder / name
        tmp = path.with_name(f".{name}.download")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(path)
    return written


def upload_files(models_uri: StoreURI, folder: str, paths: Sequence[Path]) -> list[StoreURI]:
    """Upload ``paths`` into ``folder`` under ``models_uri``; their URIs.

    Raises:
        ObjectStoreError: an upload failed (named).
    """
    store = _store(models_uri)
    done = []
    for path in paths:
        key = f"{folder}/{path.name}"
        try:
            store.put(path, key)
        except OSError as exc:
            raise ObjectStoreError(f"{store.uri_of(key)}: cannot upload {path} ({exc})") from None
        done.append(store.uri_of(key))
    return done


def keep_credentials_on_their_nodes() -> None:
    """Stop Ray Tune copying the driver's AWS credentials into each trial's runtime
    environment (and so into Ray's runtime-env log); see the module. Call before the Tuner
    starts its trials.

    Raises:
        RuntimeError: this Ray no longer has the list it copies from (its version changed
            how it propagates variables; check where the credentials go before using it).
    """
    from ray.tune.execution import class_cache

    names = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(names, (set, frozenset)):
        raise RuntimeError(
            "ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE is gone: this Ray version "
            "propagates environment variables differently; refusing to run with object "
            "storage until tuner.driver.remote knows where the credentials go"
        )
    class_cache.ENV_VARS_TO_PROPAGATE = set(names) - set(CREDENTIAL_VARIABLES)
