"""Checkpoint metadata: the JSON companion ``{base}_metadata.json``.

The document is flat, as in the seed note (standard, metrics, runtime and phase-3 advisor
fields side by side), plus ``run_id`` (the run that wrote it; with ``experiment`` and
``trial_id`` for a Tune trial, ``started_from`` and ``started_from_run`` for a run started from
another's checkpoint), ``schema_version``, ``metrics_timesteps``, the size and sha256 of
the zip and the ``.pkl`` (``files``), the metrics that triggered a ``best`` save
(``improved_metrics``) and the callback's own state (``callback_state``).

NaN metrics are written as JSON ``null`` and read back as NaN, so the files stay strict JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpointing.errors import MetadataError
from checkpointing.files import read_regular_file, temp_path
from checkpointing.naming import METADATA_SUFFIX, CheckpointName, LegacyName, parse_name
from checkpointing.ranking import METRICS

__all__ = [
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "build_metadata",
    "decode_metadata",
    "encode_metadata",
    "json_safe",
    "metadata_or_name",
    "metadata_path_for",
    "read_checkpoint_metadata",
    "utc_timestamp",
    "write_checkpoint_metadata",
]

SCHEMA_VERSION = "2.0"
SUPPORTED_SCHEMA_VERSIONS = ("1.0", "2.0")
MAX_METADATA_BYTES = 4 * 1024 * 1024


def utc_timestamp() -> str:
    """``2025-11-15T12:34:56.789Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def json_safe(value: Any) -> Any:
    """NaN/inf floats become None (strict JSON); containers are walked, numpy scalars unwrapped."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value


def build_metadata(
    *,
    name: CheckpointName,
    phase: int,
    metrics: Mapping[str, float] | None = None,
    metrics_timesteps: int | None = None,
    runtime: Mapping[str, Any] | None = None,
    llm: Mapping[str, Any] | None = None,
    improved_metrics: tuple[str, ...] | list[str] = (),
    callback_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of one checkpoint, without the ``files`` entry (added at commit time)."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "checkpoint": name.filename,
        "phase": phase,
        "market": name.market,
        "timesteps": name.timesteps,
        "seed": name.seed,
        "run_id": name.run_id,
        "event_tag": name.event,
        "timestamp": utc_timestamp(),
    }
    metrics = dict(metrics or {})
    for key in METRICS:
        doc[key] = float(metrics.pop(key, math.nan))
    doc["metrics_timesteps"] = metrics_timesteps
    doc["extra_metrics"] = metrics
    doc.update(runtime or {})
    if llm:
        doc.update(llm)
    doc["improved_metrics"] = list(improved_metrics)
    if callback_state is not None:
        doc["callback_state"] = dict(callback_state)
    if extra:
        doc.update(extra)
    return doc


def encode_metadata(doc: Mapping[str, Any]) -> bytes:
    """Serialize metadata as strict JSON (NaN -> null)."""
    return json.dumps(json_safe(doc), indent=2, sort_keys=False, allow_nan=False).encode("utf-8")


def decode_metadata(raw: bytes, source: str) -> dict[str, Any]:
    """Parse metadata bytes; ``null`` metrics become NaN.

    Raises:
        MetadataError: not JSON, not an object, or a schema version this code does not know.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MetadataError(f"{source}: metadata is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"{source}: metadata must be a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if version is not None and str(version) not in SUPPORTED_SCHEMA_VERSIONS:
        raise MetadataError(
            f"{source}: unknown metadata schema_version {version!r} "
            f"(this version reads {', '.join(SUPPORTED_SCHEMA_VERSIONS)})"
        )
    for key in METRICS:
        if key in doc and doc[key] is None:
            doc[key] = math.nan
    return doc


def metadata_path_for(checkpoint: str | os.PathLike[str]) -> Path:
    """``.../X.zip`` -> ``.../X_metadata.json``."""
    p = Path(checkpoint)
    stem = p.name[:-4] if p.name.endswith(".zip") else p.name
    return p.with_name(stem + METADATA_SUFFIX)


def _read_limited(path: Path) -> bytes:
    raw = read_regular_file(path, MAX_METADATA_BYTES + 1)
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(f"{path}: metadata larger than {MAX_METADATA_BYTES} bytes")
    return raw


def write_checkpoint_metadata(
    checkpoint: str | os.PathLike[str], metadata: Mapping[str, Any]
) -> Path:
    """Seed-note API: write ``metadata`` beside ``checkpoint`` (atomically); return its path.

    Used to add metadata to old checkpoints; new checkpoints get theirs from the commit.
    """
    target = metadata_path_for(checkpoint)
    tmp = temp_path(target)
    data = encode_metadata(metadata)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def read_checkpoint_metadata(
    checkpoint: str | os.PathLike[str], *, strict: bool = False
) -> dict[str, Any] | None:
    """Seed-note API: the metadata of a checkpoint.

    Looks for ``{base}_metadata.json`` beside the zip (the legacy ``{model}_metadata.json``
    of v1 final models has the same shape), then falls back to the fields of the file name.
    Returns ``None`` when neither exists nor parses. With ``strict=True`` a metadata file
    that exists but cannot be read raises :class:`MetadataError` instead of falling back.
    """
    p = Path(checkpoint)
    meta_path = metadata_path_for(p)
    try:
        doc = decode_metadata(_read_limited(meta_path), os.fspath(meta_path))
    except FileNotFoundError:
        doc = None
    except (OSError, MetadataError) as exc:
        if strict:
            raise MetadataError(str(exc)) from None
        doc = None
    return metadata_or_name(doc, p.name)


def metadata_or_name(doc: dict[str, Any] | None, zip_name: str) -> dict[str, Any] | None:
    """What :func:`read_checkpoint_metadata` returns, given the decoded metadata document of
    the checkpoint ``zip_name`` (None: missing or unreadable): the document, completed from
    the name for a legacy one, else the fields of the name, else None. Shared by every place
    metadata is read from (a folder here, an object in a bucket)."""
    name = parse_name(zip_name)
    if doc is not None:
        if "schema_version" not in doc and name is not None:
            # A legacy metadata file: fill what it lacks from the name.
            for key, value in name.as_dict().items():
                doc.setdefault(key, value)
        doc.setdefault("source", "metadata")
        return doc
    if name is None:
        return None
    fallback = name.as_dict()
    if isinstance(name, LegacyName):
        fallback["phase"] = name.phase
    fallback["source"] = "filename"
    return fallback
