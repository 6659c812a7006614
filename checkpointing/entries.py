"""One indexed checkpoint of the registry, and ranking them by the product's one rule."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from checkpointing.errors import RegistryError
from checkpointing.layout import PHASES
from checkpointing.naming import CheckpointName, LegacyName, parse_name, validate_market
from checkpointing.ranking import METRICS, Ranked, rank

__all__ = [
    "EntryReader",
    "RegistryEntry",
    "build_entry",
    "check_metric",
    "check_phase",
    "rank_entries",
    "with_parsed_name",
]

_new = object.__new__


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class RegistryEntry:
    """One indexed checkpoint. ``path`` is relative to the registry root, ``/``-separated.

    ``run_id`` is the run that wrote it (None: the legacy run of its market and seed).
    ``metrics`` maps each of ``val_reward``, ``sharpe_ratio``, ``win_rate``, ``max_drawdown``,
    ``total_return`` to a float, or ``None`` when not measured. ``files`` has ``zip`` and
    (when present) ``vecnormalize``, each with ``size`` and ``sha256`` (``None`` if unknown).
    """

    path: str
    phase: int | None
    market: str | None
    seed: int | None
    timesteps: int
    event: str
    legacy: bool = False
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    metrics_timesteps: int | None = None
    timestamp: str | None = None
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @cached_property
    def _parsed(self) -> CheckpointName | LegacyName | None:
        return parse_name(self.name)

    @cached_property
    def run_id(self) -> str | None:
        """The run that wrote it, from its name (None: a legacy run)."""
        parsed = self._parsed
        return parsed.run_id if isinstance(parsed, CheckpointName) else None

    @cached_property
    def model(self) -> str:
        """Equal for the entries of one model saved under several events (see
        :attr:`checkpointing.naming.CheckpointName.model`), in its folder."""
        parsed = self._parsed
        name = parsed.model if isinstance(parsed, CheckpointName) else self.name
        return f"{self.folder}/{name}"

    @property
    def folder(self) -> str:
        """The checkpoint folder, relative to the root."""
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def metric(self, name: str) -> float:
        """The metric's value, NaN when not measured."""
        value = self.metrics.get(name)
        return math.nan if value is None else value

    def absolute(self, root: str | os.PathLike[str]) -> Path:
        """The zip's path under ``root``."""
        return Path(root, *self.path.split("/"))

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "market": self.market,
            "seed": self.seed,
            "run_id": self.run_id,
            "timesteps": self.timesteps,
            "event": self.event,
            "legacy": self.legacy,
            "metrics": dict(self.metrics),
            "metrics_timesteps": self.metrics_timesteps,
            "timestamp": self.timestamp,
            "files": {k: dict(v) for k, v in self.files.items()},
        }

    @classmethod
    def from_json(cls, path: str, doc: Mapping[str, Any]) -> RegistryEntry:
        metrics = doc.get("metrics") or {}
        files = doc.get("files") or {}
        if not isinstance(metrics, Mapping) or not isinstance(files, Mapping):
            raise TypeError(f"bad registry entry for {path!r}")
        # A registry of 10,000 entries is read whole: fill the frozen instance's fields directly
        # (every one, in field order) instead of one object.__setattr__ each.
        entry = _new(cls)
        entry.__dict__.update(
            path=path,
            phase=_int_or_none(doc.get("phase")),
            market=doc.get("market"),
            seed=_int_or_none(doc.get("seed")),
            timesteps=int(doc["timesteps"]),
            event=str(doc["event"]),
            legacy=bool(doc.get("legacy", False)),
            metrics={k: _finite(metrics.get(k)) for k in METRICS},
            metrics_timesteps=_int_or_none(doc.get("metrics_timesteps")),
            timestamp=doc.get("timestamp"),
            files={k: dict(v) for k, v in files.items() if isinstance(v, Mapping)},
        )
        return entry


def with_parsed_name(
    entry: RegistryEntry, parsed: CheckpointName | LegacyName | None
) -> RegistryEntry:
    """``entry``, told what :func:`parse_name` gives for its file name (a listing of its folder
    has parsed it already), so its run and model need no second parse."""
    entry.__dict__.setdefault("_parsed", parsed)
    return entry


def build_entry(
    rel: str,
    name: CheckpointName | LegacyName,
    phase: int | None,
    market: str | None,
    metadata: Mapping[str, Any] | None,
    zip_size: int | None,
) -> RegistryEntry:
    """An entry from the name (identity) and the metadata (metrics, digests)."""
    meta = metadata or {}
    if isinstance(name, CheckpointName):
        seed: int | None = name.seed
        market = name.market
        event = name.event
        from_name = {"val_reward": name.val_reward, "sharpe_ratio": name.sharpe_ratio}
    else:
        seed, event, from_name = None, "periodic", {}
        phase = phase if phase is not None else name.phase
    if phase is None:
        phase = _int_or_none(meta.get("phase"))
    metrics = {k: _finite(meta.get(k, from_name.get(k))) for k in METRICS}
    files: dict[str, dict[str, Any]] = {}
    raw_files = meta.get("files")
    if isinstance(raw_files, Mapping):
        for key in ("zip", "vecnormalize"):
            item = raw_files.get(key)
            if isinstance(item, Mapping):
                files[key] = {"size": item.get("size"), "sha256": item.get("sha256")}
    if "zip" not in files:
        files["zip"] = {"size": zip_size, "sha256": None}
    return RegistryEntry(
        path=rel,
        phase=phase,
        market=market,
        seed=seed,
        timesteps=name.timesteps,
        event=event,
        legacy=isinstance(name, LegacyName),
        metrics=metrics,
        metrics_timesteps=_int_or_none(meta.get("metrics_timesteps")),
        timestamp=meta.get("timestamp") if isinstance(meta.get("timestamp"), str) else None,
        files=files,
    )


def rank_entries(
    entries: Iterable[RegistryEntry],
    metric: str,
    *,
    seed: int | None = None,
    runs: Collection[str | None] | None = None,
    k: int | None = None,
) -> list[Ranked[RegistryEntry]]:
    """The models of ``entries`` best first by ``metric`` (:func:`checkpointing.ranking.rank`),
    only those of ``seed`` and of the run ids in ``runs`` (None: every seed, every run; the
    legacy run is ``None`` in ``runs``); at most ``k``."""
    return rank(
        (
            (e.metric(metric), e.timesteps, e.name, e.model, e)
            for e in entries
            if (seed is None or e.seed == seed) and (runs is None or e.run_id in runs)
        ),
        k,
    )


def check_phase(phase: object) -> int:
    """``phase`` if it is one of :data:`~checkpointing.layout.PHASES`.

    Raises:
        RegistryError: it is not.
    """
    if isinstance(phase, bool) or phase not in PHASES:
        raise RegistryError(f"phase must be one of {list(PHASES)}, got {phase!r}")
    assert isinstance(phase, int)
    return phase


def check_metric(metric: object) -> str:
    """``metric`` if it is one of :data:`~checkpointing.ranking.METRICS`.

    Raises:
        RegistryError: it is not.
    """
    if metric not in METRICS:
        raise RegistryError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    assert isinstance(metric, str)
    return metric


class EntryReader:
    """What a registry answers from its :meth:`entries` (on disk or on a bucket): the models
    of one folder ranked, and the best of them."""

    def entries(
        self,
        phase: int | None = None,
        market: str | None = None,
        *,
        runs: Collection[str | None] | None = None,
    ) -> list[RegistryEntry]:
        raise NotImplementedError

    def rank(
        self,
        phase: int,
        market: str,
        metric: str,
        seed: int | None = None,
        *,
        runs: Collection[str | None] | None = None,
    ) -> list[Ranked[RegistryEntry]]:
        """The models of one folder best first by ``metric`` (the rule of
        :mod:`checkpointing.ranking`), of ``seed`` and ``runs`` (None: all)."""
        check_phase(phase)
        validate_market(market)
        metric = check_metric(metric)
        return rank_entries(self.entries(phase, market, runs=runs), metric, seed=seed, runs=runs)

    def find_best(
        self,
        phase: int,
        market: str,
        metric: str,
        seed: int | None = None,
        *,
        runs: Collection[str | None] | None = None,
    ) -> RegistryEntry | None:
        """The best checkpoint of one folder by ``metric``, or ``None``."""
        ranked = self.rank(phase, market, metric, seed, runs=runs)
        return ranked[0].item if ranked else None
