"""Where a command points: a local folder or an object-store URI, told apart in one place.

Every flag that takes a folder (``--models-root``, ``--storage-path``, ``--root`` ...) goes
through :func:`parse_location`, so a URI is never taken for a path: ``s3://acc/models`` as a
``Path`` is the local folder ``s3:/acc/models``, and a run would write there without a word.
What a command does with a URI is its own business: :func:`local_folder` refuses one for a
command that takes a local folder only, naming the URI and the command::

    parse_location("s3://acc/models", "--models-root")  # -> StoreURI("s3", "acc", "models")
    parse_location("models", "--models-root")           # -> Path("models")
    local_folder("s3://acc/tb", "--tensorboard", "python -m tuner.train")
    # ConfigError: --tensorboard 's3://acc/tb' is an object-store URI, and python -m
    # tuner.train does not take one for --tensorboard (it takes a local path ...)

A URI is ``scheme://...``. Only ``s3://bucket[/prefix]`` is understood so far; other schemes
are refused by name. Credentials never go in a URI (``s3://KEY:SECRET@bucket`` is refused
without echoing them) and neither do settings (``?endpoint_override=...``): they come from the
standard AWS environment (see :mod:`checkpointing.object_store`). A URI's local counterpart,
where a run stages its checkpoints and a reader copies its results, is
:func:`default_staging_dir`. Nothing here imports anything heavy or touches the disk or the
network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from checkpointing.errors import ConfigError

__all__ = [
    "STAGING_HOME",
    "SUPPORTED_SCHEMES",
    "StoreURI",
    "default_staging_dir",
    "is_uri",
    "local_folder",
    "parse_location",
    "shown",
]

SUPPORTED_SCHEMES = ("s3",)
# Below the user's cache folder: where runs stage what goes to a bucket, and readers copy it.
STAGING_HOME = "futures-rl-tuner/staging"
_URI_RE = re.compile(r"\A(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)\Z", re.DOTALL)
# Schemes people write for storage; "s3:/x" or "s3:x" is a URI that lost a slash, not a folder.
_KNOWN_SCHEMES = ("s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss", "hdfs", "file", "http")
_TYPO_RE = re.compile(rf"\A(?P<scheme>{'|'.join(_KNOWN_SCHEMES)}|https):(?!//)", re.IGNORECASE)
# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, a letter or digit at
# each end.
_BUCKET_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


@dataclass(frozen=True)
class StoreURI:
    """An object-store location: ``{scheme}://{bucket}/{key}``.

    ``key`` is a ``/``-separated prefix without a leading or trailing ``/`` (empty: the
    bucket's top). ``str()`` gives the URI back in its canonical form.
    """

    scheme: str
    bucket: str
    key: str = ""

    def __str__(self) -> str:
        top = f"{self.scheme}://{self.bucket}"
        return f"{top}/{self.key}" if self.key else top

    def child(self, relative: str) -> StoreURI:
        """The location ``relative`` (``/``-separated, no ``..``) below this one."""
        parts = [p for p in relative.replace(os.sep, "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ValueError(f"{relative!r} leaves {self}")
        return StoreURI(self.scheme, self.bucket, "/".join([*filter(None, [self.key]), *parts]))

    @property
    def name(self) -> str:
        """The last part of the key (``x.zip`` of ``s3://acc/models/x.zip``), as ``Path.name``."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def path(self) -> str:
        """``bucket/key``: the path a pyarrow file system takes."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket


def shown(where: str | os.PathLike[str] | StoreURI) -> str:
    """A path or a URI as text, for messages and JSON (a :class:`StoreURI` is never a path,
    so ``os.fspath`` refuses it on purpose)."""
    return str(where) if isinstance(where, StoreURI) else os.fspath(where)


def is_uri(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` has the shape ``scheme://...`` (supported or not)."""
    return isinstance(text, str) and _URI_RE.match(text) is not None


def _redacted(text: str) -> str:
    """``text`` with any ``user:password@`` of its authority replaced by ``***@``."""
    return re.sub(r"\A([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", text)


def _parse_uri(text: str, what: str) -> StoreURI:
    m = _URI_RE.match(text)
    assert m is not None
    scheme, rest = m["scheme"].lower(), m["rest"]
    shown = _redacted(text)
    if scheme not in SUPPORTED_SCHEMES:
        raise ConfigError(
            f"{what} {shown!r}: the {scheme}:// scheme is not supported; object storage is "
            f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)} only"
        )
    authority, _, key = rest.partition("/")
    if "@" in authority:
        raise ConfigError(
            f"{what} {shown!r}: credentials never go in the URI; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment instead"
        )
    if "?" in rest or "#" in rest:
        raise ConfigError(
            f"{what} {shown!r}: settings do not go in the URI; set the endpoint with "
            "AWS_ENDPOINT_URL_S3 and the region with AWS_DEFAULT_REGION instead"
        )
    if not _BUCKET_RE.match(authority) or ".." in authority:
        raise ConfigError(
            f"{what} {shown!r}: {authority!r} is not a bucket name (3-63 lowercase letters, "
            "digits, '.' and '-', a letter or digit at each end)"
        )
    parts = key.rstrip("/").split("/") if key.rstrip("/") else []
    if any(p in ("", ".", "..") for p in parts) or "\x00" in key:
        raise ConfigError(
            f"{what} {shown!r}: the prefix must be '/'-separated names without empty, '.' or "
            "'..' parts"
        )
    return StoreURI(scheme, authority, "/".join(parts))


def parse_location(text: str | os.PathLike[str], what: str) -> Path | StoreURI:
    """A command line's folder argument: a local :class:`~pathlib.Path` or a :class:`StoreURI`.

    Args:
        text: the argument as given.
        what: the flag, for messages (``--models-root``).

    Raises:
        ConfigError: an empty path or one with NUL; a URI of an unsupported scheme, with
            credentials or settings in it, or with a bad bucket or prefix; a storage scheme
            missing its ``//`` (``s3:/acc``), which would otherwise be a local folder ``s3:``.
    """
    given = text
    text = os.fspath(text)
    if not text or "\x00" in text:
        raise ConfigError(f"{what} must be a non-empty path without NUL, got {text!r}")
    if _URI_RE.match(text):
        return _parse_uri(text, what)
    typo = _TYPO_RE.match(text)
    if typo:
        raise ConfigError(
            f"{what} {_redacted(text)!r} looks like a {typo['scheme']}:// URI missing its '//' "
            f"(a local folder named {typo['scheme'] + ':'!r} is almost never meant); write "
            f"{typo['scheme']}://..., or ./{text} for a local folder"
        )
    return given if isinstance(given, Path) else Path(text)


def local_folder(text: str | os.PathLike[str], what: str, command: str) -> Path:
    """:func:`parse_location` for a command that reads and writes local folders only.

    Raises:
        ConfigError: besides :func:`parse_location`'s, a URI: ``command`` takes a local
            path for ``what`` (the message names the URI and says so).
    """
    where = parse_location(text, what)
    if isinstance(where, StoreURI):
        raise ConfigError(
            f"{what} {str(where)!r} is an object-store URI, and {command} does not take one "
            f"for {what} (it takes a local path: pass one, or a shared mount; models roots "
            "and Tune's storage path may be s3:// URIs)"
        )
    return where


def default_staging_dir(uri: StoreURI, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME`` (else ``~/.cache``) ``/futures-rl-tuner/staging/<bucket>/<prefix>``:
    where a run commits the checkpoints of ``uri`` before they are uploaded."""
    environ = os.environ if environ is None else environ
    home = environ.get("HOME") or os.path.expanduser("~")
    cache = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(cache, *STAGING_HOME.split("/"), uri.bucket, *filter(None, uri.key.split("/")))
