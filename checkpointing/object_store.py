"""The object-store seam: a pyarrow file system for an ``s3://`` location, set up from the
standard AWS environment, and the few operations the uploader needs.

Credentials are never handed to pyarrow. ``pyarrow.fs.S3FileSystem`` pickles whatever it was
built with (``access_key``, ``secret_key``, ``session_token`` included), and a file system
given to Ray Tune is pickled into ``tuner.pkl``. So the file system is built without any:
the AWS SDK inside pyarrow finds them itself, at request time, the standard way
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``
and ``~/.aws``, an instance role). What is passed is not secret: the endpoint, timeouts and
the SDK's retry count. The endpoint is passed because pyarrow (26) does not read
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` itself; :class:`S3Settings` reads them (the
service-specific one first), refusing one with a user or password in it.

::

    store = ObjectStore(parse_location("s3://acc/models", "--models-root"))
    store.preflight()                       # ObjectStoreError naming the URI, before training
    size, sha = store.put(Path("x.zip"), "phase1/NQ/checkpoints/x.zip")
    assert store.compare("phase1/NQ/checkpoints/x.zip", Path("x.zip")) == (size, None)  # read back
    store.listing("phase1/NQ/checkpoints")  # {"x.zip": ObjectInfo(size, mtime)}: one LIST
    store.get_bytes("phase1/NQ/checkpoints/x_metadata.json", limit=4 << 20)  # small ones only

pyarrow is imported on first use, never at module import (command lines answer ``--help``
without it). pyarrow keeps a folder visible after it deletes a file in it by writing an empty
``folder/`` marker object; listings of files ignore those.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from checkpointing.errors import ConfigError, ObjectStoreError
from checkpointing.files import HOST
from checkpointing.locations import StoreURI

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

__all__ = [
    "ENDPOINT_VARIABLES",
    "ObjectInfo",
    "ObjectStore",
    "S3Settings",
    "object_exists",
    "read_object",
]

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Bytes per write: each one is a part of the multipart upload, sent in the background.
_CHUNK = 8 * 1024 * 1024
# Bytes per read of an object. pyarrow's S3 input file makes one ranged GET per read, and a GET
# costs a request whatever its size (some servers, moto among them, even read the whole object
# for each range): an object up to this size is read back with one GET. In 8 MiB reads the
# read-back took three times as long (bench/object_store.py).
_READ = 64 * 1024 * 1024
# Bytes of the local file read at a time to compare with what was read back.
_COMPARE = 8 * 1024 * 1024
_DENIED = re.compile(
    r"ACCESS_DENIED|INVALID_ACCESS_KEY_ID|SIGNATURE_DOES_NOT_MATCH|EXPIRED_TOKEN|"
    r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden",
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(r"NETWORK_CONNECTION|curlCode|Could not (connect|resolve)", re.I)


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing says of one object: its size in bytes and when it was last written
    (seconds since the epoch; S3 keeps whole seconds). Nothing of its content is read."""

    size: int
    mtime: float


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: the endpoint (None: AWS's own) and the client's patience.

    Holds no credentials, by design (see the module docstring). ``attempts`` is the SDK's
    own tries per request; the uploader retries on top with its backoff.
    """

    endpoint: str | None = None
    endpoint_source: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 60.0
    attempts: int = 2

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """The endpoint of ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else AWS's.

        Raises:
            ConfigError: an endpoint that is not an ``http(s)://host[:port]`` URL, or one
                with a user or password in it (never echoed).
        """
        environ = os.environ if environ is None else environ
        for name in ENDPOINT_VARIABLES:
            value = environ.get(name, "").strip()
            if value:
                return cls(endpoint=_check_endpoint(value, name), endpoint_source=name)
        return cls()

    def describe(self) -> str:
        """Where requests go, for messages: ``endpoint http://127.0.0.1:9000 (from ...)``."""
        if self.endpoint is None:
            return "AWS's S3 endpoint (no AWS_ENDPOINT_URL_S3 set)"
        return f"endpoint {self.endpoint} (from {self.endpoint_source})"

    def filesystem(self) -> FileSystem:
        """A new ``pyarrow.fs.S3FileSystem`` for these settings; safe to pickle (no keys)."""
        from pyarrow import fs as pafs

        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.request_timeout,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.attempts),
        }
        if self.endpoint is not None:
            options["endpoint_override"] = self.endpoint
        return pafs.S3FileSystem(**options)


def _differs(file: Any, piece: memoryview, chunk: Any) -> int | None:
    """Compare the next ``chunk.size`` bytes of the open ``file`` (read into ``piece``, a
    piece at a time) with the pyarrow buffer ``chunk``: the offset in ``chunk`` of the first
    byte that differs or that the file lacks; None when they are the same."""
    import pyarrow as pa

    done = 0
    while done < chunk.size:
        n = file.readinto(piece[: min(len(piece), chunk.size - done)])
        if not n:
            return done
        ours, theirs = pa.py_buffer(piece[:n]), chunk.slice(done, n)
        if not ours.equals(theirs):
            return done + _first_difference(ours, theirs)
        done += n
    return None


def _first_difference(a: Any, b: Any) -> int:
    """The offset of the first byte where the buffers ``a`` and ``b`` differ (the shorter
    one's length when one is a prefix of the other)."""
    import numpy as np

    n = min(a.size, b.size)
    left = np.frombuffer(a, dtype=np.uint8, count=n)
    right = np.frombuffer(b, dtype=np.uint8, count=n)
    differ = np.flatnonzero(left != right)
    return int(differ[0]) if differ.size else n


def _check_endpoint(value: str, name: str) -> str:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        shown = value if "@" not in value else "(a URL with a user or password)"
        raise ConfigError(
            f"{name} must be an http:// or https:// URL such as http://127.0.0.1:9000, "
            f"got {shown!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{name} has a user or password in it: credentials go in AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), never in the endpoint"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class ObjectStore:
    """One ``s3://bucket/prefix`` location and the operations on keys below it.

    Keys are ``/``-separated and relative to the prefix. The pyarrow file system is made on
    first use. Errors are pyarrow's ``OSError`` (``FileNotFoundError`` for a missing key),
    except :meth:`preflight`'s.
    """

    def __init__(self, uri: StoreURI, settings: S3Settings | None = None) -> None:
        self.uri = uri
        self.settings = S3Settings.from_environment() if settings is None else settings
        self._fs: FileSystem | None = None

    def __repr__(self) -> str:
        return f"ObjectStore({str(self.uri)!r})"

    @property
    def fs(self) -> FileSystem:
        if self._fs is None:
            self._fs = self.settings.filesystem()
        return self._fs

    def _path(self, key: str) -> str:
        return self.uri.child(key).path

    def uri_of(self, key: str) -> StoreURI:
        return self.uri.child(key)

    # ----------------------------------------------------------------- objects

    def put(self, local: Path, key: str) -> tuple[int, str]:
        """Upload the file ``local`` to ``key``; (size, sha256) of the bytes sent. The object
        appears whole or not at all."""
        digest = hashlib.sha256()
        size = 0
        with open(local, "rb") as src, self.fs.open_output_stream(self._path(key)) as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        return size, digest.hexdigest()

    def compare(self, key: str, local: Path) -> tuple[int, int | None]:
        """Read the object ``key`` back in full and compare it with the file ``local``, byte
        for byte: (the object's size, the offset of the first byte that differs or that one
        side lacks; None when they are the same). A comparison in memory costs a fraction of
        hashing what was read (bench/object_store.py).

        Raises:
            FileNotFoundError: no object ``key``, or no file ``local``.
        """
        size = 0
        first: int | None = None
        with (
            open(local, "rb", buffering=0) as mine,
            self.fs.open_input_file(self._path(key)) as src,
        ):
            # No larger than the file: a companion of a few KB needs no 8 MiB buffer.
            piece = memoryview(bytearray(min(_COMPARE, os.fstat(mine.fileno()).st_size + 1)))
            while chunk := src.read_buffer(_READ):
                if first is None:
                    at = _differs(mine, piece, chunk)
                    first = None if at is None else size + at
                size += chunk.size
            if first is None and mine.read(1):  # the file goes on past the object
                first = size
        return size, first

    def read(self, key: str, limit: int) -> bytes:
        """The bytes of the object ``key``, at most ``limit`` of them.

        Raises:
            FileNotFoundError: no object ``key``.
            OSError: the object is larger than ``limit`` bytes.
        """
        with self.fs.open_input_stream(self._path(key)) as src:
            data: bytes = src.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"{self.uri_of(key)} is larger than {limit} bytes")
        return data

    def get(self, key: str, local: Path) -> tuple[int, str]:
        """Download ``key`` into the new file ``local``; (size, sha256) of the bytes read.

        Raises:
            FileNotFoundError: no object ``key``.
            FileExistsError: ``local`` exists (nothing is overwritten).
        """
        digest = hashlib.sha256()
        size = 0
        with self.fs.open_input_file(self._path(key)) as src, open(local, "xb") as out:
            while chunk := src.read_buffer(_READ):
                digest.update(chunk)
                size += chunk.size
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return size, digest.hexdigest()

    def delete(self, key: str) -> bool:
        """Delete the object ``key``; False when there was none."""
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def sizes(self, folder: str) -> dict[str, int]:
        """``{file name: size}`` of the objects directly in ``folder`` (empty if none)."""
        return {name: info.size for name, info in self.listing(folder).items()}

    def listing(self, folder: str) -> dict[str, ObjectInfo]:
        """``{file name: ObjectInfo}`` of the objects directly in ``folder`` (empty if none):
        a listing, never a read of an object. pyarrow's empty ``folder/`` markers and the
        sub-folders are left out."""
        return self._listed(folder, recursive=False)

    def tree(self, folder: str) -> dict[str, ObjectInfo]:
        """``{key relative to folder: ObjectInfo}`` of every object below ``folder`` (one
        paged listing, 1,000 keys a request)."""
        return self._listed(folder, recursive=True)

    def _listed(self, folder: str, *, recursive: bool) -> dict[str, ObjectInfo]:
        from pyarrow import fs as pafs

        top = self._path(folder).rstrip("/")
        selector = pafs.FileSelector(top, allow_not_found=True, recursive=recursive)
        out: dict[str, ObjectInfo] = {}
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File or not info.path.startswith(top + "/"):
                continue
            rel = info.path[len(top) + 1 :]
            if rel and not rel.endswith("/"):
                mtime = info.mtime_ns
                out[rel] = ObjectInfo(int(info.size or 0), 0.0 if mtime is None else mtime / 1e9)
        return out

    def get_bytes(self, key: str, limit: int) -> bytes:
        """The content of the object ``key``, for small objects (metadata, registry shards).

        Raises:
            FileNotFoundError: no such object.
            ValueError: it is larger than ``limit`` bytes (nothing past the limit is read).
        """
        with self.fs.open_input_stream(self._path(key)) as src:
            data = src.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"{self.uri_of(key)} is larger than {limit} bytes")
        return bytes(data)

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` as the object ``key``, replacing it whole (S3 never shows a half)."""
        with self.fs.open_output_stream(self._path(key)) as out:
            out.write(data)

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` exists (one HEAD request)."""
        from pyarrow import fs as pafs

        return bool(self.fs.get_file_info(self._path(key)).type == pafs.FileType.File)

    def files(self, folder: str) -> dict[str, tuple[int, float]]:
        """``{file name: (size, mtime)}`` of the objects directly in ``folder`` (mtime in
        seconds since the epoch, 0.0 when the store gives none)."""
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        return {
            info.base_name: (
                int(info.size or 0),
                info.mtime.timestamp() if info.mtime is not None else 0.0,
            )
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        }

    # ----------------------------------------------------------------- preflight

    def preflight(self) -> None:
        """Check, before any training, that the bucket exists and that these credentials
        may list, write and delete under the prefix (a probe object, removed at once).

        Raises:
            ObjectStoreError: naming the URI and what failed: no such bucket, an endpoint
                that cannot be reached, credentials that are denied.
        """
        self.check_readable(fix="create it first, or check the URI")
        step = "write under the prefix"
        try:
            probe = f".preflight-{HOST}-{os.getpid()}-{secrets.token_hex(4)}"
            with self.fs.open_output_stream(self._path(probe)) as out:
                out.write(b"")
            step = "delete under the prefix (retention needs it)"
            self.delete(probe)
        except OSError as exc:
            raise ObjectStoreError(self._explain(step, exc)) from None

    def check_readable(self, *, fix: str = "check the URI") -> None:
        """Check, before reading, that the bucket exists and the prefix can be listed; writes
        nothing (what the commands that only read, or delete, check first). ``fix``: what
        the message about a missing bucket suggests.

        Raises:
            ObjectStoreError: as :meth:`preflight`'s.
        """
        from pyarrow import fs as pafs

        step = "reach the bucket"
        try:
            if self.fs.get_file_info(self.uri.bucket).type == pafs.FileType.NotFound:
                raise ObjectStoreError(
                    f"{self.uri}: bucket {self.uri.bucket!r} does not exist at "
                    f"{self.settings.describe()}; {fix}"
                )
            step = "list the prefix"
            self.listing("")
        except OSError as exc:
            raise ObjectStoreError(self._explain(step, exc)) from None

    def _explain(self, step: str, exc: OSError) -> str:
        detail = str(exc).strip() or type(exc).__name__
        if _UNREACHABLE.search(detail):
            return (
                f"{self.uri}: cannot reach {self.settings.describe()} ({detail}); check "
                "AWS_ENDPOINT_URL_S3 and that the server runs"
            )
        if _DENIED.search(detail):
            return (
                f"{self.uri}: the credentials are denied when trying to {step} ({detail}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the "
                "bucket's policy"
            )
        return f"{self.uri}: cannot {step} at {self.settings.describe()} ({detail})"


def read_object(uri: StoreURI, limit: int) -> bytes:
    """The content of the small object at ``uri`` (a summary, a test report).

    Raises:
        FileNotFoundError: no such object; ValueError: larger than ``limit``; OSError.
    """
    return ObjectStore(StoreURI(uri.scheme, uri.bucket)).get_bytes(uri.key, limit)


def object_exists(uri: StoreURI) -> bool:
    """Whether an object is at ``uri`` (one HEAD request; False when it cannot be asked)."""
    try:
        return ObjectStore(StoreURI(uri.scheme, uri.bucket)).exists(uri.key)
    except OSError:
        return False
