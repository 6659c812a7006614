"""One entry of the data cache: a dataclass's arrays and fields in one file, read back mapped.

:mod:`tuner.trading.data_cache` decides when an entry is used; this module writes one and
reads it back, memory-mapped. An entry holds one record: the parsed
:class:`~tuner.trading.bars.Bars` of a file (with the
:class:`~tuner.trading.ohlcv.LoadReport` and the warnings the parse logged, as
:class:`Entry`), or the :class:`~tuner.trading.features.FeatureSet` computed from them. The
layout, little-endian::

    bytes 0-7     magic b"TUNERDC\\n"
    bytes 8-15    header length H (uint64)
    bytes 16-19   crc32 of the header
    bytes 20-23   zero
    bytes 24-     header: UTF-8 JSON (below), then zeros up to a multiple of 64
    data          every array's bytes, each starting at a multiple of 64

The header holds what the cache checks (``key``), the record's type, every array of the
record (name, dtype, shape, offset in the data, length, crc32), its other fields, what the
caller adds (``extra``: a bars entry's report and log lines) and the data's total size. The
arrays are found generically: every field of the record that holds a numpy array is stored,
so an array added to ``Bars`` or ``FeatureSet`` is cached without a change here. Other
fields are stored as JSON: ``None``, ``bool``, ``int``, ``float``, ``str`` (numpy's scalars
too), ``timedelta``, ``datetime``, ``numpy.datetime64``, dataclasses of
:mod:`tuner.trading` (a report's rolls) and tuples of them; any other type is refused
(:class:`UnstorableError`) and the record is then used uncached.

Reading checks the magic, the header's crc32, the record's type, the key (the caller's
test), the file's size, and every array's crc32 (about 0.1 s per 500 MB on an idle core, and
it reads every page) unless the caller's :class:`Verifier` trusts the file (the cache
remembers which entry files passed every check, by their ``stat``; see
:mod:`~tuner.trading.data_cache`). A truncated or altered entry raises
:class:`CorruptEntryError`. The arrays returned are read-only views of one ``numpy.memmap``
of the file, so processes that map one entry share its pages.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from tuner.trading.bars import Bars
from tuner.trading.ohlcv import LoadReport

__all__ = [
    "CorruptEntryError",
    "Entry",
    "Record",
    "StaleEntryError",
    "UnstorableError",
    "Verifier",
    "read_entry",
    "read_record",
    "write_entry",
    "write_record",
]

MAGIC = b"TUNERDC\n"
_REPORT = fields(LoadReport)
_OWN_TYPES = "tuner.trading."  # the only dataclasses an entry may hold (e.g. a report's rolls)
_PREFIX = struct.Struct("<8sQI4x")
_ALIGN = 64

T = TypeVar("T")


class CorruptEntryError(ValueError):
    """An entry file that is truncated, altered or not an entry at all."""


class StaleEntryError(ValueError):
    """A whole entry made from something else than what is loaded (``read_entry``'s stale)."""


class UnstorableError(TypeError):
    """A field of the record that the entry format cannot hold."""


class Verifier(Protocol):
    """What the cache knows of the entry files it has checked whole (see the module)."""

    def trusted(self, signature: list[int], header_crc: int) -> bool:
        """Whether the file with this ``stat`` signature and header crc32 was checked whole."""

    def checked(self, signature: list[int], header_crc: int) -> None:
        """The file with this signature and header crc32 has just passed every check."""


@dataclass(frozen=True, eq=False)
class Record(Generic[T]):
    """An entry file as read back.

    Attributes:
        key: What the cache checks before using the entry.
        value: The record; its arrays are read-only views of the mapped file.
        extra: What the writer added to the header (JSON).
    """

    key: Mapping[str, Any]
    value: T
    extra: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class Entry:
    """What a bars entry holds.

    Attributes:
        key: What the cache checks before using the entry (format, code, settings, digest).
        bars: The bars; read back, their arrays are read-only views of the mapped file.
        report: What the loader detected and dropped.
        logs: ``(logger name, level, message)`` of each line the parse logged.
    """

    key: Mapping[str, Any]
    bars: Bars
    report: LoadReport
    logs: tuple[tuple[str, int, str], ...] = ()


def signature(st: os.stat_result) -> list[int]:
    """What a file's ``stat`` says of its identity and contents: size, mtime and ctime in ns,
    inode, device."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def write_entry(fh: Any, entry: Entry) -> None:
    """Write the bars entry ``entry`` to the binary file object ``fh`` (see
    :func:`write_record`)."""
    extra = {
        "report": {f.name: _encode(getattr(entry.report, f.name), f.name) for f in _REPORT},
        "logs": [list(line) for line in entry.logs],
    }
    write_record(fh, entry.key, entry.bars, extra)


def read_entry(
    path: Path,
    stale: Callable[[Mapping[str, Any]], str | None] | None = None,
    verifier: Verifier | None = None,
) -> Entry:
    """Map the bars entry at ``path`` and check it (see :func:`read_record`)."""
    record = read_record(path, Bars, stale, verifier)
    try:
        report = LoadReport(**{k: _decode(v) for k, v in record.extra["report"].items()})
        logs = tuple((str(n), int(level), str(m)) for n, level, m in record.extra["logs"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptEntryError(f"its header does not describe a load ({exc!r})") from None
    return Entry(key=record.key, bars=record.value, report=report, logs=logs)


def write_record(fh: Any, key: Mapping[str, Any], value: Any, extra: Mapping[str, Any]) -> None:
    """Write the dataclass ``value`` to the binary file object ``fh`` (at its start).

    Args:
        fh: Where to write.
        key: What the cache will check before using the entry (JSON).
        value: A dataclass of :mod:`tuner.trading`: its array fields are stored as arrays,
            the others as JSON.
        extra: More JSON for the header, given back by :func:`read_record`.

    Raises:
        UnstorableError: a field that JSON cannot hold (see module), or an array of objects.
    """
    arrays, others = _split(value)
    raws = [_raw(array) for array in arrays.values()]
    table: list[dict[str, Any]] = []
    offset = 0
    for (name, array), raw in zip(arrays.items(), raws, strict=True):
        offset = _aligned(offset)
        table.append(
            {
                "name": name,
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "offset": offset,
                "nbytes": raw.nbytes,
                "crc32": _checksum(raw),
            }
        )
        offset += raw.nbytes
    header = {
        "key": dict(key),
        "type": _type_name(type(value)),
        "arrays": table,
        "fields": {name: _encode(v, name) for name, v in others.items()},
        "extra": dict(extra),
        "data_bytes": offset,
    }
    text = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    start = _aligned(_PREFIX.size + len(text))
    fh.write(_PREFIX.pack(MAGIC, len(text), zlib.crc32(text)))
    fh.write(text)
    fh.write(b"\0" * (start - _PREFIX.size - len(text)))
    written = 0
    for row, raw in zip(table, raws, strict=True):
        fh.write(b"\0" * (row["offset"] - written))
        fh.write(raw)
        written = row["offset"] + row["nbytes"]


def read_record(
    path: Path,
    kind: type[T],
    stale: Callable[[Mapping[str, Any]], str | None] | None = None,
    verifier: Verifier | None = None,
) -> Record[T]:
    """Map the entry file at ``path``, holding a ``kind``, and check it (module docstring).

    Args:
        path: The entry file.
        kind: The record's type (a dataclass).
        stale: Given the entry's key, why the entry may not be used (None: it may); asked
            before the arrays are checked, so a stale entry costs no more than its header.
        verifier: Skips the arrays' checksums of a file it trusts (by its ``stat``
            signature and header crc32), and hears of a file that passed them all; None:
            every array is checked.

    Raises:
        FileNotFoundError: no entry there.
        CorruptEntryError: truncated, altered, not an entry file, or not a ``kind``.
        StaleEntryError: ``stale`` refused its key.
    """
    with open(path, "rb") as fh:  # the stat and the map of one file, even if it is replaced
        seen = signature(os.fstat(fh.fileno()))
        try:
            mapped = np.memmap(fh, dtype=np.uint8, mode="r")
        except ValueError:  # an empty file cannot be mapped
            raise CorruptEntryError("empty file") from None
    header, crc, start = _header(mapped)
    try:
        if header["type"] != _type_name(kind):
            raise CorruptEntryError(f"it holds a {header['type']}, not a {_type_name(kind)}")
        key = header["key"]
        if not isinstance(key, dict):
            raise CorruptEntryError(f"its key is not a mapping: {key!r}")
        why = stale(key) if stale is not None else None
        if why is not None:
            raise StaleEntryError(why)
        size = start + int(header["data_bytes"])
        if len(mapped) != size:
            raise CorruptEntryError(f"{len(mapped):,} bytes where it should have {size:,}")
        check = verifier is None or not verifier.trusted(seen, crc)
        values: dict[str, Any] = {
            row["name"]: _array(mapped, start, row, check) for row in header["arrays"]
        }
        values.update({name: _decode(value) for name, value in header["fields"].items()})
        value = kind(**values)
        extra = header["extra"]
        if not isinstance(extra, dict):
            raise CorruptEntryError(f"its extra is not a mapping: {extra!r}")
        if check and verifier is not None:
            verifier.checked(seen, crc)
        return Record(key, value, extra)
    except (CorruptEntryError, StaleEntryError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # not an entry's header
        raise CorruptEntryError(
            f"its header does not describe a {kind.__name__} ({exc!r})"
        ) from None


def _header(mapped: np.memmap) -> tuple[dict[str, Any], int, int]:
    """The header (checked against its crc32), the crc32, and where the data starts."""
    if len(mapped) < _PREFIX.size:
        raise CorruptEntryError(f"{len(mapped)} bytes, shorter than an entry's first line")
    magic, length, crc = _PREFIX.unpack(mapped[: _PREFIX.size].tobytes())
    if magic != MAGIC:
        raise CorruptEntryError("not a data cache entry (wrong magic bytes)")
    text = mapped[_PREFIX.size : _PREFIX.size + length].tobytes()
    if len(text) != length or zlib.crc32(text) != crc:
        raise CorruptEntryError("its header fails its checksum")
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise CorruptEntryError(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptEntryError("its header is not a mapping")
    return header, int(crc), _aligned(_PREFIX.size + length)


def _split(value: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    others: dict[str, Any] = {}
    for f in fields(value):
        field_value = getattr(value, f.name)
        if isinstance(field_value, np.ndarray):
            if field_value.dtype.hasobject:
                where = f"{type(value).__name__}.{f.name}"
                raise UnstorableError(f"{where} holds Python objects ({field_value.dtype})")
            arrays[f.name] = field_value
        else:
            others[f.name] = field_value
    return arrays, others


def _raw(array: np.ndarray) -> memoryview:
    """The array's bytes, flat (a copy only if it is not contiguous)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data


def _checksum(raw: Any) -> int:
    """crc32 of an array's bytes (one pass over them)."""
    return zlib.crc32(raw)


def _array(mapped: np.memmap, start: int, row: Mapping[str, Any], check: bool) -> np.ndarray:
    offset, nbytes = start + int(row["offset"]), int(row["nbytes"])
    raw = mapped[offset : offset + nbytes]
    if check and _checksum(raw.data) != int(row["crc32"]):
        raise CorruptEntryError(f"array {row['name']!r} fails its checksum")
    dtype = np.dtype(row["dtype"])
    shape = tuple(int(n) for n in row["shape"])
    if dtype.hasobject or int(np.prod(shape)) * dtype.itemsize != nbytes:
        raise CorruptEntryError(f"array {row['name']!r} has {nbytes} bytes for {shape} {dtype}")
    return raw.view(dtype).reshape(shape)


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _type_name(kind: type) -> str:
    return f"{kind.__module__}:{kind.__qualname__}"


def _encode(value: Any, name: str) -> Any:
    """``value`` as JSON; tuples become lists, the other types a one-key object."""
    if isinstance(value, np.generic) and not isinstance(value, np.datetime64):
        value = value.item()  # numpy's int64, float64, bool_ as Python's
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else {"float": repr(value)}
    if isinstance(value, timedelta):
        return {"timedelta_us": value // timedelta(microseconds=1)}
    if isinstance(value, datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, np.datetime64):
        return {"datetime64": str(value.astype("datetime64[ns]"))}
    if isinstance(value, (tuple, list)):
        return [_encode(v, name) for v in value]
    kind = type(value)
    if is_dataclass(value) and kind.__module__.startswith(_OWN_TYPES):
        values = {
            f.name: _encode(getattr(value, f.name), f"{name}.{f.name}") for f in fields(value)
        }
        return {"dataclass": [f"{kind.__module__}:{kind.__qualname__}", values]}
    raise UnstorableError(f"{name} holds a {type(value).__name__}, which a cache entry cannot hold")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict):
        (kind, raw), *rest = value.items()
        if rest:
            raise ValueError(f"unknown value {value!r}")
        return _DECODERS[kind](raw)
    return value


def _dataclass(raw: list[Any]) -> Any:
    """An instance of one of this package's dataclasses (never anything else's)."""
    path, values = raw
    module, _, name = str(path).partition(":")
    if not module.startswith(_OWN_TYPES):
        raise ValueError(f"{path!r} is not a type of {_OWN_TYPES}")
    kind = getattr(importlib.import_module(module), name)
    if not (isinstance(kind, type) and is_dataclass(kind)):
        raise ValueError(f"{path!r} is not a dataclass")
    return kind(**{k: _decode(v) for k, v in values.items()})


_DECODERS: dict[str, Any] = {
    "dataclass": _dataclass,
    "float": float,
    "timedelta_us": lambda us: timedelta(microseconds=int(us)),
    "datetime": datetime.fromisoformat,
    "datetime64": lambda text: np.datetime64(text, "ns"),
}
