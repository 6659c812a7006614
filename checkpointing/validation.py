"""Reading YAML configs into validated values, with one voice for every mistake.

Every config file of the product (checkpoint, LLM overlay, markets, training) is read with
:func:`read_yaml` and walked with :class:`Section`, so every error has the same shape: the
key path, what is allowed, and the value::

    checkpointing.retention.keep_last_n must be >= 1, got 0
    unknown key checkpointing.retention.keep_lastn (did you mean 'keep_last_n'?); known keys: ...
    missing key markets.NQ.tick_size

The file name is put in front by whoever loads the file (``config/x.yaml: ...``).
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from checkpointing.errors import ConfigError

__all__ = ["REQUIRED", "Section", "read_yaml", "suggest"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# The default of a key that must be present.
REQUIRED: Any = _Required()


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file, turning every failure into a :class:`ConfigError` naming the file."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {os.fspath(p)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: {os.fspath(p)!r}") from None
    except (OSError, ValueError) as exc:  # ValueError: undecodable, or NUL in the path
        raise ConfigError(f"cannot read config file {os.fspath(p)!r}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{os.fspath(p)}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{os.fspath(p)}: not valid YAML: nested too deeply") from None


def suggest(word: object, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or an empty string."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le)):
        if bound is not None:
            parts.append(f"{op} {bound:g}")
    return " and ".join(parts)


class Section:
    """One mapping of a config file, read key by key.

    Each ``get_*`` reads one key (``REQUIRED`` as default: the key must be there), checks its
    type and bounds and remembers it; :meth:`done` then refuses any key that was never read,
    suggesting the closest known one.

    Args:
        data: the parsed YAML value; anything but a mapping with string keys is refused.
        path: its key path (``checkpointing.retention``; ``<top level>`` for the document).
    """

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {data!r}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"{path} has a non-string key {key!r} (quote it in YAML)")
        self.data: dict[str, Any] = dict(data)
        self.path = path
        self.seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def raw(self, key: str, default: Any = REQUIRED) -> Any:
        """The value as parsed (``default`` when absent); marks the key as known."""
        self.seen.add(key)
        if key in self.data:
            return self.data[key]
        if default is REQUIRED:
            raise ConfigError(f"missing key {self.where(key)}")
        return default

    def known(self, *keys: str) -> None:
        """Declare keys read elsewhere (or not at all) as known to :meth:`done`."""
        self.seen.update(keys)

    def only(self, *keys: str) -> None:
        """Declare every key of the section and refuse the others now, before any is read.

        For sections with required keys: a typo of one (``tick_sise``) is then named as an
        unknown key with its suggestion, not reported as the required key missing.
        """
        self.known(*keys)
        self.done()

    def names(self) -> list[str]:
        """The keys present, in file order, all marked known (a section whose keys are names,
        such as the markets of ``markets.yaml``)."""
        self.seen.update(self.data)
        return list(self.data)

    def get_bool(self, key: str, default: Any = REQUIRED) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)} must be true or false, got {value!r}")
        return value

    def get_int(
        self, key: str, default: Any = REQUIRED, *, ge: int | None = None, le: int | None = None
    ) -> int:
        return self._int(key, self.raw(key, default), ge, le, "an integer")

    def get_int_or_none(
        self, key: str, default: Any = REQUIRED, *, ge: int | None = None, le: int | None = None
    ) -> int | None:
        """An integer, or ``None`` for YAML ``null``."""
        value = self.raw(key, default)
        return None if value is None else self._int(key, value, ge, le, "an integer or null")

    def _int(self, key: str, value: Any, ge: int | None, le: int | None, kind: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.where(key)} must be {kind}, got {value!r}")
        self._check_bounds(key, value, None, ge, None, le)
        return value

    def get_float(
        self,
        key: str,
        default: Any = REQUIRED,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
    ) -> float:
        return self._float(key, self.raw(key, default), gt, ge, lt, le, "a number")

    def get_float_or_none(
        self,
        key: str,
        default: Any = REQUIRED,
        *,
        gt: float | None = None,
        ge: float | None = None,
        lt: float | None = None,
        le: float | None = None,
    ) -> float | None:
        """A number, or ``None`` for YAML ``null``."""
        value = self.raw(key, default)
        if value is None:
            return None
        return self._float(key, value, gt, ge, lt, le, "a number or null")

    def _float(
        self,
        key: str,
        value: Any,
        gt: float | None,
        ge: float | None,
        lt: float | None,
        le: float | None,
        kind: str,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where(key)} must be {kind}, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{self.where(key)} must be a finite number, got {value!r}")
        self._check_bounds(key, value, gt, ge, lt, le)
        return value

    def get_str(self, key: str, default: Any = REQUIRED, *, allow_empty: bool = False) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            kind = "a string" if allow_empty else "a non-empty string"
            raise ConfigError(f"{self.where(key)} must be {kind}, got {value!r}")
        if "\x00" in value:
            raise ConfigError(f"{self.where(key)} must not contain NUL, got {value!r}")
        return value

    def choices(self, key: str, default: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
        """A list of distinct values, each one of ``allowed``."""
        value = self.raw(key, list(default))
        allowed = tuple(allowed)
        if not isinstance(value, list):
            raise ConfigError(f"{self.where(key)} must be a list, got {value!r}")
        out: list[str] = []
        for i, item in enumerate(value):
            if item not in allowed:
                raise ConfigError(
                    f"{self.where(key)}[{i}] must be one of {list(allowed)}, got {item!r}"
                    + suggest(item, allowed)
                )
            if item in out:
                raise ConfigError(f"{self.where(key)} lists {item!r} twice")
            out.append(item)
        return tuple(out)

    def one_of(self, key: str, allowed: Iterable[str], default: Any = REQUIRED) -> str:
        """One value of ``allowed``."""
        value = self.raw(key, default)
        allowed = tuple(allowed)
        if value not in allowed:
            raise ConfigError(
                f"{self.where(key)} must be one of {list(allowed)}, got {value!r}"
                + suggest(value, allowed)
            )
        return str(value)

    def section(self, key: str, default: Any = REQUIRED) -> Section:
        """The mapping under ``key`` as a Section (``{}`` when absent and ``default`` is)."""
        return Section(self.raw(key, default), self.where(key))

    def refuse(self, key: str, why: str) -> None:
        """Refuse ``key`` when present: ``{path}.{key} ...: {why}`` (a setting that lives
        elsewhere, or that no longer exists)."""
        self.seen.add(key)
        if key in self.data:
            raise ConfigError(f"{self.where(key)} is not a setting here: {why}")

    def done(self) -> None:
        """Refuse the keys no ``get_*`` read, naming the closest known key."""
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            key = unknown[0]
            known = ", ".join(sorted(self.seen)) or "none"
            raise ConfigError(
                f"unknown key {self.where(key)}{suggest(key, self.seen)}; known keys: {known}"
            )

    def _check_bounds(
        self,
        key: str,
        value: float,
        gt: float | None,
        ge: float | None,
        lt: float | None,
        le: float | None,
    ) -> None:
        ok = (
            (gt is None or value > gt)
            and (ge is None or value >= ge)
            and (lt is None or value < lt)
            and (le is None or value <= le)
        )
        if not ok:
            raise ConfigError(f"{self.where(key)} must be {_bounds(gt, ge, lt, le)}, got {value!r}")
