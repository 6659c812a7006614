"""Parsed data files and their features, cached beside the models root and memory-mapped.

Parsing a big export costs seconds and hundreds of MB in every process that does it, and
every trial of an experiment loads its market's file and computes its features. The cache
(:class:`DataCache`) keeps what the loader made of a file (every array of the
:class:`~tuner.trading.bars.Bars`, its other fields, the
:class:`~tuner.trading.ohlcv.LoadReport` and the warnings the parse logged) in one file,
``<models root>/.data-cache/<file name>.<hash>.bars``, and the features computed from those
bars (:class:`~tuner.trading.features.FeatureSet`) in another beside it, ``.features``
instead of ``.bars`` (:mod:`~tuner.trading.data_cache_entry` has their layout). A later load
maps those files instead of parsing and computing, so the trials on one node share their
pages, and replays the warnings, so a cached load says what a parse would have said. ::

    cache = DataCache.beside(models_root)
    cached = cache.read("data/NQ_1min.csv", settings, market="NQ")
    bars, report, features = cached.bars, cached.report, cache.features(cached)

**When an entry is used.** Each (data file, ``data:`` settings) pair has one bars entry,
named by a hash of the file's absolute path and of every field of the normalised
:class:`~tuner.trading.data_settings.DataSettings` (a field added later joins the key on its
own). Its header records what it was made from, and the entry is used only when all of it
matches this load: :data:`CACHE_FORMAT`, a digest of the loader's source code (so a fix to
the loader re-parses every file once), the settings, and the SHA-256 of the data file's
bytes; and when the entry passes its own checks (size, checksums of the header and of each
array, but see the fast path below). Anything else (the data file changed, an older loader,
a truncated or altered entry) is never used: the file is parsed again, the entry rewritten,
and a warning names the entry and why. Because a changed file replaces its entry instead of
adding one, the folder holds one entry per (file, settings) pair; deleting it is always safe.

**Features.** A features entry's key is a hash of its bars entry's key (so every ``data:``
setting and the data file's digest) with the number of bars, and a digest of the features'
source code and of the numpy and pandas versions that run it (:func:`features_code`): a
change to the features recomputes them once, from the bars entry, without a parse.
:func:`~tuner.trading.features.compute_features` reads nothing but the bars (no setting of
the market, the split or the environment), so nothing else belongs in the key. Features
are computed by one process while the others wait, as a parse is. Bars that could not be
cached, and synthetic markets, get their features computed in the process, uncached.

**The digest, fast.** Hashing a 600 MB CSV costs about 0.35 s (SHA-256 at 1.8 GB/s on a CPU
with SHA instructions; about 1 s without). So the digest of each file is remembered beside
the entries with the file's ``stat`` (size, mtime, ctime, inode, device) and reused while
they are unchanged; any change to the file changes its mtime and ctime, so the bytes are
hashed again (and a file touched or copied without a change in content keeps its entry).
A digest is only remembered for a file untouched for :data:`SETTLE_SECONDS` when hashed: a
write within the same clock tick as the hash would leave the times as they were.

**A checked entry, fast.** Checking every array's checksum reads the whole entry (about
0.1 s per 500 MB on an idle core, a second with three trials on a busy one): most of a
cached load. So once an entry passes every check, its ``stat`` (the same five numbers) and
its header's checksum are remembered in ``<entry>.verified``, and while both are unchanged
a load checks the header's checksum, the key and the entry's size, and skips the arrays'
checksums. Any write to the entry (rewritten, truncated, touched, replaced by a rename)
changes its ctime, which no call can set back (``os.utime`` sets mtime, not ctime), so the
next load checks it whole again; the settle rule of the digest applies here too. What is
trusted is the file system: a byte changed on disk without a write through it (a bad
sector, a bit flipped in the page cache, a raw write to the device, the clock set back
before an edit) leaves the stat as it was, and the entry is then used, the bad value and
all: a wrong price or feature at one bar, or for a flip in a timestamp, bars out of order.
A damaged header is still refused. The data file's rule is unchanged: its SHA-256 is taken
whenever its own stat changes. Deleting a ``.verified`` file makes the next load check its
entry whole.

Beside each entry the folder holds its ``.lock`` and ``.verified`` files, and one
``.digest`` file per data file.

**Writes** go to a hidden temporary beside the entry, are fsynced, and replace the entry in
one rename, so a reader sees the old entry or the new one, never half of one (a process
that maps the old one keeps it until it lets go). A lock file per entry makes concurrent
loads of one missing entry parse once: the others wait, then map what the first wrote. A
cache that cannot be written (read-only, disk full) is reported and the load goes on with
the parsed bars and computed features.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tuner.trading.bars import Bars, DataError
from tuner.trading.data_cache_entry import (
    CorruptEntryError,
    Entry,
    StaleEntryError,
    UnstorableError,
    read_entry,
    read_record,
    signature,
    write_entry,
    write_record,
)
from tuner.trading.data_cache_files import locked, replace_durably, sweep_temporaries
from tuner.trading.data_settings import DataSettings
from tuner.trading.features import FeatureSet, compute_features
from tuner.trading.ohlcv import LoadReport, load_ohlcv_report

__all__ = [
    "CACHE_FOLDER",
    "CACHE_FORMAT",
    "SETTLE_SECONDS",
    "CachedBars",
    "DataCache",
    "features_code",
    "loader_code",
    "settings_key",
]

log = logging.getLogger(__name__)

#: Version of the entry layout; entries of another version are parsed again.
CACHE_FORMAT = 1
#: The cache's folder under a models root.
CACHE_FOLDER = ".data-cache"
#: A file's digest is remembered only if the file was not touched for this long.
SETTLE_SECONDS = 2.0
# Modules whose code decides what a parse returns: their digest is part of every key.
_LOADER_CODE = ("bars.py", "data_settings.py", "data_cache_entry.py", "ohlcv*.py")
# Modules whose code decides what the features of given bars are (with numpy's and pandas').
_FEATURES_CODE = ("features.py", "data_cache_entry.py")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, eq=False)
class CachedBars:
    """A file's bars as :meth:`DataCache.read` gives them.

    Attributes:
        bars: The bars (memory-mapped and read-only when they come from an entry).
        report: What the loader detected and dropped.
        entry: The entry file they are in; None when they could not be cached.
        key: That entry's key (what it was made from); None with no entry.
    """

    bars: Bars
    report: LoadReport
    entry: Path | None = None
    key: Mapping[str, Any] | None = None


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
        cached = self.read(path, settings, market=market)
        return cached.bars, cached.report

    def read(
        self, path: str | os.PathLike[str], settings: DataSettings, *, market: str = ""
    ) -> CachedBars:
        """:meth:`load`, with the entry the bars are in (for :meth:`features`).

        Raises:
            DataError: as the loader does, for a missing or malformed file.
        """
        file = Path(path)
        if not file.is_file():
            return CachedBars(*load_ohlcv_report(file, settings, market=market))  # its message
        try:
            return self._read(file, settings, market)
        except OSError as exc:  # the cache's folder, not the data file: parse without it
            log.warning("data cache %s cannot be used (%s); reading %s", self.folder, exc, file)
            return CachedBars(*load_ohlcv_report(file, settings, market=market))

    def features(self, cached: CachedBars) -> FeatureSet:
        """:func:`~tuner.trading.features.compute_features` of ``cached.bars``, through the
        cache: mapped from the features entry beside their bars entry, computed and written
        there when it is missing or stale; computed alone for bars that have no entry."""
        if cached.entry is None or cached.key is None:
            return compute_features(cached.bars)
        slot = cached.entry.with_suffix(".features")
        key = {
            "format": CACHE_FORMAT,
            "bars": _hash(json.dumps(dict(cached.key), sort_keys=True) + f"\0{len(cached.bars)}"),
            "features_code": features_code(),
        }
        try:
            return self._features(slot, key, cached.bars)
        except OSError as exc:
            log.warning("data cache %s cannot be used (%s); computing features", self.folder, exc)
            return compute_features(cached.bars)

    def entry_path(self, path: str | os.PathLike[str], settings: DataSettings) -> Path:
        """The entry file of ``path`` read with ``settings`` (whether it exists or not); its
        features' entry has the suffix ``.features`` instead of ``.bars``."""
        source = Path(path).resolve()
        digest = _hash(f"{source}\0{settings_key(settings)}")
        return self.folder / f"{_stem(source)}.{digest[:16]}.bars"

    def _read(self, file: Path, settings: DataSettings, market: str) -> CachedBars:
        slot = self.entry_path(file, settings)
        self.folder.mkdir(parents=True, exist_ok=True)
        before = _signature(file)
        key = {
            "format": CACHE_FORMAT,
            "code": loader_code(),
            "settings": json.loads(settings_key(settings)),
            "digest": self._digest(file.resolve()),
        }
        entry, problem = _lookup(slot, key, _read_bars)
        if entry is None:
            with locked(_lock_of(slot)):
                entry, again = _lookup(slot, key, _read_bars)  # written by another load meanwhile?
                if entry is None:
                    _say_why(slot, problem or again, f"parsing {file} again")
                    return self._parse(file, settings, market, slot, key, before)
        for name, level, message in entry.logs:  # what the parse said, said again
            logging.getLogger(name).log(level, "%s", message)
        log.info("%s: %d bars from the data cache (%s)", file, len(entry.bars), slot)
        return _with_caller(entry, file, market, slot)

    def _parse(
        self,
        file: Path,
        settings: DataSettings,
        market: str,
        slot: Path,
        key: dict[str, Any],
        before: list[int],
    ) -> CachedBars:
        started = time.perf_counter()
        with _captured_logs() as logs:
            bars, report = load_ohlcv_report(file, settings, market=market)
        seconds = time.perf_counter() - started
        if _signature(file) != before:
            log.warning("%s changed while it was read; not cached", file)
            return CachedBars(bars, report)
        try:
            _write(slot, lambda fh: write_entry(fh, Entry(key, bars, report, tuple(logs))))
            entry = _read_bars(slot)
        except (OSError, UnstorableError, CorruptEntryError) as exc:
            log.warning("%s: not cached in %s (%s)", file, self.folder, exc)
            return CachedBars(bars, report)
        log.info("%s: parsed in %.1f s, cached as %s", file, seconds, slot)
        return _with_caller(entry, file, market, slot)

    def _features(self, slot: Path, key: dict[str, Any], bars: Bars) -> FeatureSet:
        features, problem = _lookup(slot, key, _read_features)
        if features is None:
            with locked(_lock_of(slot)):
                features, again = _lookup(slot, key, _read_features)
                if features is None:
                    _say_why(slot, problem or again, f"computing the features of {bars.source}")
                    started = time.perf_counter()
                    computed = compute_features(bars)
                    seconds = time.perf_counter() - started
                    return self._store_features(slot, key, computed, seconds)
        log.info("%s: features from the data cache (%s)", bars.source, slot)
        return features

    def _store_features(
        self, slot: Path, key: dict[str, Any], features: FeatureSet, seconds: float
    ) -> FeatureSet:
        """Write ``features`` to ``slot``; the entry's mapped copy (``features`` if that fails)."""
        try:
            _write(slot, lambda fh: write_record(fh, key, features, {}))
            mapped = _read_features(slot)
        except (OSError, UnstorableError, CorruptEntryError) as exc:
            log.warning("features not cached in %s (%s)", self.folder, exc)
            return features
        log.info("features computed in %.1f s, cached as %s", seconds, slot)
        return mapped

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
                replace_durably(index, lambda fh: fh.write(json.dumps(doc).encode()))
        return digest


def settings_key(settings: DataSettings) -> str:
    """Every field of the settings, as canonical JSON (part of an entry's name and key)."""
    return json.dumps(asdict(settings), sort_keys=True, default=repr)


@functools.cache
def loader_code() -> str:
    """A digest of the loader's source code (:data:`_LOADER_CODE`)."""
    return _code_digest(_LOADER_CODE)


@functools.cache
def features_code() -> str:
    """A digest of the features' source code (:data:`_FEATURES_CODE`) and of the numpy and
    pandas versions that run it."""
    import pandas as pd

    return _code_digest(_FEATURES_CODE, f"numpy {np.__version__} pandas {pd.__version__}")


def _code_digest(patterns: tuple[str, ...], *more: str) -> str:
    here = Path(__file__).resolve().parent
    files = sorted({p for pattern in patterns for p in here.glob(pattern)})
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    for text in more:
        h.update(b"\0" + text.encode())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# Why an entry whose key differs in that field is not used.
_STALE = {
    "format": "written in cache format {found}, this loader reads {wanted}",
    "code": "written by another version of the loader",
    "settings": "written for other data: settings",
    "digest": "the data file changed since it was cached",
    "bars": "computed from other bars",
    "features_code": "computed by another version of the features code",
}

R = TypeVar("R")


def _lookup(
    slot: Path, key: Mapping[str, Any], read: Callable[..., R]
) -> tuple[R | None, str | None]:
    """What ``read`` makes of the entry at ``slot`` if it may be used; else None and why
    (None: there is none)."""

    def stale(found: Mapping[str, Any]) -> str | None:
        for name, wanted in key.items():
            if found.get(name) != wanted:
                why = _STALE.get(name, f"written for another {name}")
                return why.format(found=found.get(name), wanted=wanted)
        return None

    try:
        return read(slot, stale), None
    except FileNotFoundError:
        return None, None
    except StaleEntryError as exc:
        return None, str(exc)
    except CorruptEntryError as exc:
        return None, f"corrupt ({exc})"


def _read_bars(slot: Path, stale: Any = None) -> Entry:
    return read_entry(slot, stale, _Checks.of(slot))


def _read_features(slot: Path, stale: Any = None) -> FeatureSet:
    return read_record(slot, FeatureSet, stale, _Checks.of(slot)).value


@dataclass(frozen=True)
class _Checks:
    """Which entry file passed every check, by its ``stat``: ``<entry>.verified`` (the
    module docstring says what this trusts). ``started_ns``: when the read began."""

    entry: Path
    started_ns: int

    @classmethod
    def of(cls, entry: Path) -> _Checks:
        return cls(entry, time.time_ns())

    @property
    def record(self) -> Path:
        return self.entry.with_name(self.entry.name + ".verified")

    def trusted(self, signature: list[int], header_crc: int) -> bool:
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(self.record.read_text(encoding="utf-8"))
            return bool(known == {"stat": signature, "header_crc": header_crc})
        return False

    def checked(self, signature: list[int], header_crc: int) -> None:
        settled = self.started_ns - max(signature[1], signature[2]) > SETTLE_SECONDS * 1e9
        if not settled or _signature(self.entry) != signature:
            return  # a write in the clock tick of the read would not have changed the stat
        doc = json.dumps({"stat": signature, "header_crc": header_crc}).encode()
        with contextlib.suppress(OSError):
            replace_durably(self.record, lambda fh: fh.write(doc))


def _say_why(slot: Path, problem: str | None, then: str) -> None:
    if problem:
        log.warning("data cache entry %s not used: %s; %s", slot, problem, then)


def _with_caller(entry: Entry, file: Path, market: str, slot: Path) -> CachedBars:
    """The entry's bars and report, named as this load names them (one file may serve two
    markets, or be reached by two spellings of its path)."""
    bars = replace(entry.bars, market=market, source=str(file))
    return CachedBars(bars, replace(entry.report, file=str(file)), slot, entry.key)


def _lock_of(slot: Path) -> Path:
    return slot.with_name(slot.name + ".lock")


def _write(slot: Path, write: Callable[[Any], None]) -> None:
    sweep_temporaries(slot)
    replace_durably(slot, write)


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
    return signature(os.stat(path))


def _stem(source: Path) -> str:
    return _UNSAFE.sub("_", source.name)[:60] or "data"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
