"""Checkpoint configuration: YAML loaded into frozen, validated objects.

Everything is checked before training starts. An error names the key path, the value and
what is allowed::

    checkpointing.retention.keep_last_n must be >= 1, got 0

``config/llm_config.yaml`` is an overlay: with ``use_default_config: true`` it inherits
``checkpoint_config.yaml`` from its own folder and overrides phase 3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.layout import PHASES, Layout, PathsConfig
from checkpointing.locations import StoreURI, parse_location
from checkpointing.naming import EVENT_KINDS, validate_boundary_name
from checkpointing.policies import RetentionPolicy, parse_rules
from checkpointing.ranking import METRICS
from checkpointing.validation import Section, read_yaml, suggest

__all__ = [
    "COMPRESSION_MODES",
    "DEFAULT_CONFIG_PATH",
    "Boundary",
    "CheckpointConfig",
    "EventsConfig",
    "PerformanceConfig",
    "PhaseSchedule",
    "RetentionConfig",
    "load_config",
    "resolve_config",
]

DEFAULT_CONFIG_PATH = Path("config/checkpoint_config.yaml")
KNOWN_LLM_FIELDS = (
    "reasoning_usage_rate",
    "llm_confidence_avg",
    "rl_llm_agreement_rate",
    "llm_error_count",
    "fusion_override_count",
    "risk_veto_count",
)
# Top-level sections that belong to other parts of the product; tolerated, validated there.
FOREIGN_SECTIONS = ("advisor",)
# How the model zip is written: ZIP_STORED, ZIP_DEFLATED at ``compression_level``, or stored
# while free disk space is plentiful and deflated when it runs short.
COMPRESSION_MODES = ("stored", "deflate", "adaptive")


@dataclass(frozen=True)
class Boundary:
    """A named curriculum stage inside a phase; crossing it saves ``phase_boundary_{name}``."""

    name: str
    at_progress: float | None = None
    at_timesteps: int | None = None

    def step(self, target_timesteps: int) -> int:
        """The timestep at which this boundary is crossed."""
        if self.at_timesteps is not None:
            return self.at_timesteps
        assert self.at_progress is not None  # guaranteed by the loader
        return math.ceil(self.at_progress * target_timesteps)


@dataclass(frozen=True)
class PhaseSchedule:
    base_interval: int
    max_interval_multiplier: float
    target_timesteps: int
    boundaries: tuple[Boundary, ...] = ()


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = True
    metric_improvement_threshold: float = 0.02
    improvement_floor: float = 0.01
    monitored_metrics: tuple[str, ...] = METRICS[:3]
    triggers: tuple[str, ...] = EVENT_KINDS

    def fires(self, event_kind: str) -> bool:
        """Whether saves of this kind (``periodic``, ``best``, ``phase_boundary`` ...) are on."""
        return event_kind == "periodic" or (self.enabled and event_kind in self.triggers)


@dataclass(frozen=True)
class RetentionConfig:
    enabled: bool = True
    keep_last_n: int = 8
    keep_top_k_by_sharpe: int = 3
    keep_top_k_by_reward: int = 2
    preserve_events: tuple[str, ...] = ("phase_end", "phase_boundary", "interrupt")
    prune_frequency: int = 10
    orphan_grace_seconds: float = 3600.0
    # Extra keep rules (`rules:`), built by checkpointing.policies.parse_rules.
    rules: tuple[RetentionPolicy, ...] = ()


@dataclass(frozen=True)
class PerformanceConfig:
    """``checkpointing.performance``: commit, background writes, disk guard, zip compression.

    ``compression`` is ``stored`` (no compression), ``deflate`` (at ``compression_level``,
    1 fastest .. 9 smallest) or ``adaptive``: stored while the checkpoint folder's file system
    has at least ``compress_below_free_gb`` free, deflated at ``compression_level`` below that.
    """

    atomic_saves: bool = True
    async_saves: bool = True
    min_disk_space_gb: float = 5.0
    compression: str = "adaptive"
    compression_level: int = 1
    compress_below_free_gb: float = 20.0

    def __post_init__(self) -> None:
        where = "checkpointing.performance"
        if self.compression not in COMPRESSION_MODES:
            raise ConfigError(
                f"{where}.compression must be one of {list(COMPRESSION_MODES)} (or true/false "
                f"for deflate/stored), got {self.compression!r}"
            )
        level = self.compression_level
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ConfigError(
                f"{where}.compression_level must be an integer from 1 (fastest) to 9 "
                f"(smallest), got {level!r}"
            )

    def zip_compression(self, free_bytes: int | None) -> tuple[str, int]:
        """``("stored", 0)`` or ``("deflate", level)`` for a save with ``free_bytes`` free.

        ``free_bytes=None`` (unknown) counts as plentiful in adaptive mode.
        """
        if self.compression == "stored":
            return "stored", 0
        if self.compression == "adaptive" and (
            free_bytes is None or free_bytes >= self.compress_below_free_gb * 1e9
        ):
            return "stored", 0
        return "deflate", self.compression_level


@dataclass(frozen=True)
class CheckpointConfig:
    """The whole ``checkpointing:`` section. Build it with :func:`load_config`."""

    phase1: PhaseSchedule = PhaseSchedule(25_000, 5.0, 2_000_000)
    phase2: PhaseSchedule = PhaseSchedule(50_000, 5.0, 5_000_000)
    phase3: PhaseSchedule = PhaseSchedule(10_000, 5.0, 5_000_000)
    events: EventsConfig = field(default_factory=EventsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    llm_metadata: tuple[str, ...] = ()
    source: str = "<defaults>"

    def phase(self, phase: int) -> PhaseSchedule:
        if phase not in PHASES:
            raise ConfigError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        schedule: PhaseSchedule = getattr(self, f"phase{phase}")
        return schedule

    def layout(self, root: str | os.PathLike[str] | None = None) -> Layout:
        """The folder layout of ``paths``, moved to ``root`` when given."""
        return Layout(self.paths, root)

    def models_root(self, root: str | os.PathLike[str] | None = None) -> Path:
        """``root`` as a path, or ``paths.root``; raises ConfigError for an empty or NUL root."""
        return self.layout(root).root

    def checkpoint_dir(
        self, phase: int, market: str, root: str | os.PathLike[str] | None = None
    ) -> Path:
        """The checkpoint folder of (phase, market) under ``root`` (see :class:`Layout`)."""
        return self.layout(root).checkpoint_dir(phase, market)

    def with_phase(self, phase: int, schedule: PhaseSchedule) -> CheckpointConfig:
        """A copy with the schedule of ``phase`` replaced."""
        self.phase(phase)  # validates the number
        if phase == 1:
            return replace(self, phase1=schedule)
        if phase == 2:
            return replace(self, phase2=schedule)
        return replace(self, phase3=schedule)


# --------------------------------------------------------------------------- parsing


def _parse_boundaries(sec: Section, target: int) -> tuple[Boundary, ...]:
    raw = sec.raw("boundaries", [])
    where = sec.where("boundaries")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list, got {raw!r}")
    out: list[Boundary] = []
    for i, item in enumerate(raw):
        b = Section(item, f"{where}[{i}]")
        try:
            name = validate_boundary_name(b.raw("name", None))
        except CheckpointNameError as exc:
            raise ConfigError(f"{b.where('name')}: {exc}") from None
        has_progress, has_steps = b.has("at_progress"), b.has("at_timesteps")
        if has_progress == has_steps:
            raise ConfigError(f"{where}[{i}] needs exactly one of at_progress or at_timesteps")
        if has_progress:
            progress = b.get_float("at_progress", 0.0, gt=0.0, le=1.0)
            boundary = Boundary(name, at_progress=progress)
        else:
            boundary = Boundary(name, at_timesteps=b.get_int("at_timesteps", 0, ge=1))
        b.done()
        if any(o.name == name for o in out):
            raise ConfigError(f"{where} names {name!r} twice")
        out.append(boundary)
    return tuple(sorted(out, key=lambda b: b.step(target)))


def _parse_phase(sec: Section, default: PhaseSchedule) -> PhaseSchedule:
    base = sec.get_int("base_interval", default.base_interval, ge=1)
    mult = sec.get_float("max_interval_multiplier", default.max_interval_multiplier, ge=1.0)
    target = sec.get_int("target_timesteps", default.target_timesteps, ge=1)
    boundaries = _parse_boundaries(sec, target) if sec.has("boundaries") else default.boundaries
    sec.done()
    return PhaseSchedule(base, mult, target, boundaries)


def _parse_events(sec: Section) -> EventsConfig:
    d = EventsConfig()
    out = EventsConfig(
        enabled=sec.get_bool("enabled", d.enabled),
        metric_improvement_threshold=sec.get_float(
            "metric_improvement_threshold", d.metric_improvement_threshold, ge=0.0
        ),
        improvement_floor=sec.get_float("improvement_floor", d.improvement_floor, gt=0.0),
        monitored_metrics=sec.choices("monitored_metrics", d.monitored_metrics, METRICS),
        triggers=sec.choices("triggers", d.triggers, EVENT_KINDS),
    )
    sec.done()
    return out


def _parse_retention(sec: Section) -> RetentionConfig:
    d = RetentionConfig()
    out = RetentionConfig(
        enabled=sec.get_bool("enabled", d.enabled),
        keep_last_n=sec.get_int("keep_last_n", d.keep_last_n, ge=1),
        keep_top_k_by_sharpe=sec.get_int("keep_top_k_by_sharpe", d.keep_top_k_by_sharpe, ge=0),
        keep_top_k_by_reward=sec.get_int("keep_top_k_by_reward", d.keep_top_k_by_reward, ge=0),
        preserve_events=sec.choices("preserve_events", d.preserve_events, EVENT_KINDS),
        prune_frequency=sec.get_int("prune_frequency", d.prune_frequency, ge=1),
        orphan_grace_seconds=sec.get_float("orphan_grace_seconds", d.orphan_grace_seconds, ge=0.0),
        rules=_parse_rules(sec),
    )
    sec.done()
    return out


def _parse_rules(sec: Section) -> tuple[RetentionPolicy, ...]:
    return parse_rules(sec.raw("rules", []), sec.where("rules"))


def _parse_paths(sec: Section) -> PathsConfig:
    d = PathsConfig()
    values = {"root": _local(sec, "root", sec.get_str("root", d.root))}
    for phase in PHASES:
        key = f"phase{phase}"
        template = _local(sec, key, sec.get_str(key, getattr(d, key)))
        if template.count("{market}") != 1 or any(
            tok not in ("{market}",) for tok in _placeholders(template)
        ):
            raise ConfigError(
                f"{sec.where(key)} must contain '{{market}}' exactly once and no other "
                f"placeholder, got {template!r}"
            )
        values[key] = template
    sec.done()
    return PathsConfig(**values)


def _local(sec: Section, key: str, value: str) -> str:
    """A folder of ``paths``: never an object-store URI (nor a URI missing its ``//``)."""
    if isinstance(parse_location(value, sec.where(key)), StoreURI):
        raise ConfigError(
            f"{sec.where(key)} {value!r} is an object-store URI: the config takes local "
            "folders only; pass the URI as --models-root to python -m tuner.train instead"
        )
    return value


def _placeholders(template: str) -> list[str]:
    import string

    return [
        "{" + name + "}" for _, name, _, _ in string.Formatter().parse(template) if name is not None
    ]


def _parse_performance(sec: Section) -> PerformanceConfig:
    d = PerformanceConfig()
    atomic = sec.get_bool("atomic_saves", d.atomic_saves)
    if not atomic:
        raise ConfigError(
            f"{sec.where('atomic_saves')} must be true (checkpoints are always committed "
            "atomically), got False"
        )
    out = PerformanceConfig(
        atomic_saves=atomic,
        async_saves=sec.get_bool("async_saves", d.async_saves),
        min_disk_space_gb=sec.get_float("min_disk_space_gb", d.min_disk_space_gb, ge=0.0),
        compression=_parse_compression(sec, d.compression),
        compression_level=sec.get_int("compression_level", d.compression_level),
        compress_below_free_gb=sec.get_float(
            "compress_below_free_gb", d.compress_below_free_gb, ge=0.0
        ),
    )
    sec.done()
    return out


def _parse_compression(sec: Section, default: str) -> str:
    """``stored | deflate | adaptive``; the v2.0 note's ``true`` / ``false``: deflate / stored."""
    value = sec.raw("compression", default)
    if value is True:
        return "deflate"
    if value is False:
        return "stored"
    if value not in COMPRESSION_MODES:
        raise ConfigError(
            f"{sec.where('compression')} must be one of {list(COMPRESSION_MODES)} (or true/false "
            f"for deflate/stored), got {value!r}" + suggest(value, COMPRESSION_MODES)
        )
    return str(value)


def config_from_dict(data: object, source: str = "<dict>") -> CheckpointConfig:
    """Validate a parsed ``checkpointing:`` mapping (the section itself, not the file)."""
    sec = Section(data, "checkpointing")
    defaults = CheckpointConfig()
    phases = {
        f"phase{n}": _parse_phase(sec.section(f"phase{n}", {}), defaults.phase(n)) for n in PHASES
    }
    cfg = CheckpointConfig(
        **phases,
        events=_parse_events(sec.section("events", {})),
        retention=_parse_retention(sec.section("retention", {})),
        paths=_parse_paths(sec.section("paths", {})),
        performance=_parse_performance(sec.section("performance", {})),
        llm_metadata=sec.choices("llm_metadata", (), KNOWN_LLM_FIELDS),
        source=source,
    )
    sec.done()
    return cfg


def _apply_overlay(base: CheckpointConfig, sec: Section, source: str) -> CheckpointConfig:
    p3 = base.phase3
    phase3 = PhaseSchedule(
        base_interval=sec.get_int("base_interval", p3.base_interval, ge=1),
        max_interval_multiplier=sec.get_float(
            "max_interval_multiplier", p3.max_interval_multiplier, ge=1.0
        ),
        target_timesteps=sec.get_int("target_timesteps", p3.target_timesteps, ge=1),
        boundaries=p3.boundaries,
    )
    if sec.has("boundaries"):
        phase3 = replace(phase3, boundaries=_parse_boundaries(sec, phase3.target_timesteps))
    llm = sec.choices("llm_metadata", base.llm_metadata, KNOWN_LLM_FIELDS)
    sec.done()
    return replace(base, phase3=phase3, llm_metadata=llm, source=source)


def resolve_config(path: str | os.PathLike[str] | None = None) -> CheckpointConfig:
    """Load ``path``; with ``None``, ``config/checkpoint_config.yaml`` if it exists, else defaults.

    Raises:
        ConfigError: an explicit ``path`` that is missing or invalid, or an invalid default file.
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.is_file():
            return CheckpointConfig()
        path = DEFAULT_CONFIG_PATH
    return load_config(path)


def load_config(path: str | os.PathLike[str] | None = None) -> CheckpointConfig:
    """Load and validate a checkpoint config file (default ``config/checkpoint_config.yaml``).

    Raises:
        ConfigError: the file is missing, not YAML, or a key is unknown, of the wrong type,
            out of range or NaN; or ``default_config`` files inherit each other in a cycle.
            The message names the file, the key path and the value.
    """
    return _load_config(Path(path) if path is not None else DEFAULT_CONFIG_PATH, ())


def _load_config(p: Path, chain: tuple[Path, ...]) -> CheckpointConfig:
    doc = read_yaml(p)
    where = os.fspath(p)
    if doc is None:
        raise ConfigError(f"{where}: the file is empty; expected a 'checkpointing:' section")
    try:
        top = Section(doc, "<top level>")
        if not top.has("checkpointing"):
            raise ConfigError("missing the 'checkpointing:' section")
        body = top.data["checkpointing"]
        top.seen.add("checkpointing")
        if isinstance(body, Mapping) and "use_default_config" in body:
            sec = Section(body, "checkpointing")
            inherit = sec.get_bool("use_default_config", True)
            base_file = sec.get_str("default_config", "checkpoint_config.yaml")
            top.seen.update(FOREIGN_SECTIONS)
            top.done()
            if not inherit:
                rest = {k: v for k, v in body.items() if k != "use_default_config"}
                return config_from_dict(rest, source=where)
            base_path = p.parent / base_file
            if base_path.resolve() == p.resolve():
                raise ConfigError(f"{sec.where('default_config')} points at the file itself")
            chain = (*chain, p.resolve())
            if base_path.resolve() in chain:
                cycle = " -> ".join(os.fspath(c) for c in (*chain, base_path.resolve()))
                raise ConfigError(f"{sec.where('default_config')} makes a cycle: {cycle}")
            base = _load_config(base_path, chain)
            return _apply_overlay(base, sec, source=f"{where} (over {os.fspath(base_path)})")
        top.done()
        return config_from_dict(body, source=where)
    except ConfigError as exc:
        if isinstance(exc, _FileError) or str(exc).startswith(where):
            raise  # already names its file: a mistake in an inherited file names that file
        raise _FileError(f"{where}: {exc}") from None


class _FileError(ConfigError):
    """A :class:`ConfigError` whose message starts with the file it is about."""
