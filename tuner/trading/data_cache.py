"""Parsed data files, cached beside the models root and memory-mapped: :class:`DataCache`.

Parsing a big export costs seconds and hundreds of MB in every process that does it, and
every trial of an experiment loads its market's file. The cache keeps what the loader made
of a file (every array of the :class:`~tuner.trading.bars.Bars`, its other fields, the
:class:`~tuner.trading.ohlcv.LoadReport` and the warnings the parse logged) in one file,
``<models root>/.data-cache/<file name>.<hash>.bars``
(:mod:`~tuner.trading.data_cache_entry` has its layout). A later load maps that file instead
of parsing, so the trials on one node share its pages, and replays the warnings, so a cached
load says what a parse would have said. ::

    cache = DataCache.beside(models_root)
    bars, report = cache.load("data/NQ_1min.csv", settings, market="NQ")

**When an entry is used.** Each (data file, ``data:`` settings) pair has one entry file,
named by a hash of the file's absolute path and of every field of the normalised
:class:`~tuner.trading.data_settings.DataSettings` (a field added later joins the key on its
own). Its header records what it was made from, and the entry is used only when all of it
matches this load: :data:`CACHE_FORMAT`, a digest of the loader's source code (so a fix to
the loader re-parses every file once), the settings, and the SHA-256 of the data file's
bytes; and when the entry passes its own checks (size, checksums of the header and of each
array). Anything else (the data file changed, an older loader, a truncated or altered
entry) is never used: the file is parsed again, the entry rewritten, and a warning names
the entry and why. Because a changed file replaces its entry instead of adding one, the
folder holds one entry per (file, settings) pair; deleting it is always safe.

**The digest, fast.** Hashing a 600 MB CSV costs about 0.35 s (SHA-256 at 1.8 GB/s on a CPU
with SHA instructions; about 1 s without). So the digest of each file is remembered beside
the entries with the file's ``stat`` (size, mtime, ctime, inode, device) and reused while
they are unchanged; any change to the file changes its mtime and ctime, so the bytes are
hashed again (and a file touched or copied without a change in content keeps its entry).
A digest is only remembered for a file untouched for :data:`SETTLE_SECONDS` when hashed: a
write within the same clock tick as the hash would leave the times as they were. Beside each
``.bars`` entry the folder holds its ``.lock`` file, and one ``.digest`` file per data file.

**Writes** go to a hidden temporary beside the entry, are fsynced, and replace the entry in
one rename, so a reader sees the old entry or the new one, never half of one. A lock file
per entry makes concurrent loads of one missing entry parse once: the others wait, then map
what the first wrote. A cache that cannot be written (read-only, disk full) is reported
and the load goes on with the parsed bars.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tuner.trading.bars import Bars, DataError
from tuner.trading.data_cache_entry import (
    CorruptEntryError,
    Entry,
    StaleEntryError,
    UnstorableError,
    read_entry,
    write_entry,
)
from tuner.trading.data_settings import DataSettings
from tuner.trading.ohlcv import LoadReport, load_ohlcv_report

__all__ = ["CACHE_FOLDER", "CACHE_FORMAT", "SETTLE_SECONDS", "DataCache", "settings_key"]

log = logging.getLogger(__name__)

#: Version of the entry layout; entries of another version are parsed again.
CACHE_FORMAT = 1
#: The cache's folder under a models root.
CACHE_FOLDER = ".data-cache"
#: A file's digest is remembered only if the file was not touched for this long.
SETTLE_SECONDS = 2.0
# Modules whose code decides what a parse returns: their digest is part of every key.
_LOADER_CODE = ("bars.py", "data_settings.py", "data_cache_entry.py", "ohlcv*.py")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DataCache:
    """The parsed-file cache in ``folder`` (module docstring)."""

    folder: Path

    @classmethod
    def beside(cls, models_root: str | os.PathLike[str]) -> DataCache:
        """The cache of a models root: ``<models_root>/.data-cache``."""
        return cls(Path(models_root) / CACHE_FOLDER)

    def load(
        self, path: str | os.PathLike[str], settings: DataSettings, *, market: str = ""
    ) -> tuple[Bars, LoadReport]:
        """:func:`~tuner.trading.ohlcv.load_ohlcv_report`, through the cache.

        Returns the bars (memory-mapped, read-only) and the report, as a parse would.

        Raises:
            DataError: as the loader does, for a missing or malformed file.
        """
        file = Path(path)
        if not file.is_file():
            return load_ohlcv_report(file, settings, market=market)  # its message
        try:
            return self._load(file, settings, market)
        except OSError as exc:  # the cache's folder, not the data file: parse without it
            log.warning("data cache %s cannot be used (%s); reading %s", self.folder, exc, file)
            return load_ohlcv_report(file, settings, market=market)

    def entry_path(self, path: str | os.PathLike[str], settings: DataSettings) -> Path:
        """The entry file of ``path`` read with ``settings`` (whether it exists or not)."""
        source = Path(path).resolve()
        digest = _hash(f"{source}\0{settings_key(settings)}")
        return self.folder / f"{_stem(source)}.{digest[:16]}.bars"

    def _load(self, file: Path, settings: DataSettings, market: str) -> tuple[Bars, LoadReport]:
        slot = self.entry_path(file, settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        before = _signature(file)
        key = {
            "format": CACHE_FORMAT,
            "code": loader_code(),
            "settings": json.loads(settings_key(settings)),
            "digest": self._digest(file.resolve()),
        }
        entry, problem = _lookup(slot, key)
        if entry is None:
            with _locked(slot.with_name(slot.name + ".lock")):
                entry, again = _lookup(slot, key)  # another load may have written it meanwhile
                if entry is None:
                    if problem or again:
                        log.warning(
                            "data cache entry %s not used: %s; parsing %s again",
                            slot,
                            problem or again,
                            file,
                        )
                    return self._parse(file, settings, market, slot, key, before)
        return _hit(entry, file, market, slot)

    def _parse(
        self,
        file: Path,
        settings: DataSettings,
        market: str,
        slot: Path,
        key: dict[str, Any],
        before: list[int],
    ) -> tuple[Bars, LoadReport]:
        started = time.perf_counter()
        with _captured_logs() as logs:
            bars, report = load_ohlcv_report(file, settings, market=market)
        seconds = time.perf_counter() - started
        if _signature(file) != before:
            log.warning("%s changed while it was read; not cached", file)
            return bars, report
        try:
            _write(slot, Entry(key=key, bars=bars, report=report, logs=tuple(logs)))
            entry = read_entry(slot)
        except (OSError, UnstorableError, CorruptEntryError) as exc:
            log.warning("%s: not cached in %s (%s)", file, self.folder, exc)
            return bars, report
        log.info("%s: parsed in %.1f s, cached as %s", file, seconds, slot)
        return _with_caller(entry, file, market)

    def _digest(self, source: Path) -> str:
        """SHA-256 of the file's bytes, remembered while its ``stat`` stays the same."""
        signature = _signature(source)
        index = self.folder / f"{_stem(source)}.{_hash(str(source))[:16]}.digest"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            known = json.loads(index.read_text(encoding="utf-8"))
            if known["path"] == str(source) and known["stat"] == signature:
                return str(known["digest"])
        hashed_at = time.time_ns()
        try:
            digest = file_sha256(source)
        except OSError as exc:  # the data file's fault, not the cache's
            raise DataError(f"{source}: cannot read the file: {exc}") from exc
        settled = hashed_at - max(signature[1], signature[2]) > SETTLE_SECONDS * 1e9
        if settled and _signature(source) == signature:
            doc = {"path": str(source), "stat": signature, "digest": digest}
            with contextlib.suppress(OSError):
                _replace_durably(index, lambda fh: fh.write(json.dumps(doc).encode()))
        return digest


def settings_key(settings: DataSettings) -> str:
    """Every field of the settings, as canonical JSON (part of an entry's name and key)."""
    return json.dumps(asdict(settings), sort_keys=True, default=repr)


@functools.cache
def loader_code() -> str:
    """A digest of the loader's source code (:data:`_LOADER_CODE`)."""
    here = Path(__file__).resolve().parent
    files = sorted({p for pattern in _LOADER_CODE for p in here.glob(pattern)})
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _lookup(slot: Path, key: dict[str, Any]) -> tuple[Entry | None, str | None]:
    """The entry at ``slot`` if it may be used; else None and why (None: there is none)."""

    def stale(found: Mapping[str, Any]) -> str | None:
        for name, why in (
            ("format", "written in cache format {found}, this loader reads {wanted}"),
            ("code", "written by another version of the loader"),
            ("settings", "written for other data: settings"),
            ("digest", "the data file changed since it was cached"),
        ):
            if found.get(name) != key[name]:
                return why.format(found=found.get(name), wanted=key[name])
        return None

    try:
        return read_entry(slot, stale), None
    except FileNotFoundError:
        return None, None
    except StaleEntryError as exc:
        return None, str(exc)
    except CorruptEntryError as exc:
        return None, f"corrupt ({exc})"


def _hit(entry: Entry, file: Path, market: str, slot: Path) -> tuple[Bars, LoadReport]:
    for name, level, message in entry.logs:  # what the parse said, said again
        logging.getLogger(name).log(level, "%s", message)
    log.info("%s: %d bars from the data cache (%s)", file, len(entry.bars), slot)
    return _with_caller(entry, file, market)


def _with_caller(entry: Entry, file: Path, market: str) -> tuple[Bars, LoadReport]:
    """The entry's bars and report, named as this load names them (one file may serve two
    markets, or be reached by two spellings of its path)."""
    bars = replace(entry.bars, market=market, source=str(file))
    return bars, replace(entry.report, file=str(file))


def _write(slot: Path, entry: Entry) -> None:
    _sweep_temporaries(slot)
    _replace_durably(slot, lambda fh: write_entry(fh, entry))


def _replace_durably(path: Path, write: Any) -> None:
    """Write a hidden temporary beside ``path`` with ``write(fh)``, fsync it, rename it."""
    from checkpointing.files import fsync_dir, temp_path, unlink_quietly

    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _sweep_temporaries(slot: Path) -> None:
    """Remove the temporaries of ``slot`` left by writers on this host that are gone."""
    from checkpointing.cleanup import pid_alive
    from checkpointing.files import HOST, parse_temp_name, unlink_quietly

    with contextlib.suppress(OSError):
        for entry in os.scandir(slot.parent):
            owner = parse_temp_name(entry.name)
            if owner and owner[0] == slot.name and owner[1] == HOST and not pid_alive(owner[2]):
                unlink_quietly(Path(entry.path))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing); without flock, no lock: the
    atomic rename alone keeps entries whole."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class _Capture(logging.Handler):
    """Collects what this thread logs under ``tuner.trading`` (but this module's lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, int, str]] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.name != __name__:
            self.lines.append((record.name, record.levelno, record.getMessage()))


@contextlib.contextmanager
def _captured_logs() -> Iterator[list[tuple[str, int, str]]]:
    capture = _Capture()
    logger = logging.getLogger("tuner.trading")
    logger.addHandler(capture)
    try:
        yield capture.lines
    finally:
        logger.removeHandler(capture)


def _signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _stem(source: Path) -> str:
    return _UNSAFE.sub("_", source.name)[:60] or "data"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
