"""Checkpoint configuration: YAML loaded into frozen, validated objects.

Everything is checked before training starts. An error names the key path, the value and
what is allowed::

    checkpointing.retention.keep_last_n must be >= 1, got 0

``config/llm_config.yaml`` is an overlay: with ``use_default_config: true`` it inherits
``checkpoint_config.yaml`` from its own folder and overrides phase 3.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from checkpointing.naming import BASE_EVENTS, CheckpointNameError, validate_boundary_name

if TYPE_CHECKING:
    from checkpointing.policies import RetentionPolicy

__all__ = [
    "COMPRESSION_MODES",
    "DEFAULT_CONFIG_PATH",
    "KNOWN_METRICS",
    "Boundary",
    "CheckpointConfig",
    "ConfigError",
    "EventsConfig",
    "PathsConfig",
    "PerformanceConfig",
    "PhaseSchedule",
    "RetentionConfig",
    "load_config",
    "read_yaml",
]

DEFAULT_CONFIG_PATH = Path("config/checkpoint_config.yaml")
PHASES = (1, 2, 3)
# Metrics a checkpoint can carry; all are "higher is better" (max_drawdown is <= 0).
KNOWN_METRICS = ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown", "total_return")
KNOWN_LLM_FIELDS = (
    "reasoning_usage_rate",
    "llm_confidence_avg",
    "rl_llm_agreement_rate",
    "llm_error_count",
    "fusion_override_count",
    "risk_veto_count",
)
EVENT_KINDS = (*BASE_EVENTS, "phase_boundary")
# Top-level sections that belong to other parts of the product; tolerated, validated there.
FOREIGN_SECTIONS = ("advisor",)
# How the model zip is written: ZIP_STORED, ZIP_DEFLATED at ``compression_level``, or stored
# while free disk space is plentiful and deflated when it runs short.
COMPRESSION_MODES = ("stored", "deflate", "adaptive")


# Exit code of every CLI for bad input (arguments, configs, paths).
EXIT_USAGE = 2


def usage_error(message: object) -> int:
    """Print ``error: <message>`` on stderr, as every CLI does for bad input; returns 2."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the culprit."""


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
    monitored_metrics: tuple[str, ...] = ("val_reward", "sharpe_ratio", "win_rate")
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
class PathsConfig:
    root: str = "./models"
    phase1: str = "./models/phase1/{market}/checkpoints/"
    phase2: str = "./models/phase2/{market}/checkpoints/"
    phase3: str = "./models/phase3_hybrid/{market}/checkpoints/"

    def template(self, phase: int) -> str:
        if phase not in PHASES:
            raise ConfigError(f"phase must be one of {list(PHASES)}, got {phase!r}")
        return str(getattr(self, f"phase{phase}"))


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

    def models_root(self, root: str | os.PathLike[str] | None = None) -> Path:
        if root is None:
            return Path(self.paths.root)
        text = os.fspath(root)
        if not text or "\x00" in text:
            raise ConfigError(f"the models root must be a non-empty path without NUL, got {text!r}")
        return Path(text)

    def checkpoint_dir(
        self, phase: int, market: str, root: str | os.PathLike[str] | None = None
    ) -> Path:
        """``paths.phase{N}`` with the market filled in, rebased onto ``root`` if given.

        The market name must already be validated (see ``naming.validate_market``).
        """
        folder = Path(self.paths.template(phase).format(market=market))
        if root is None:
            return folder
        default_root = Path(os.path.normpath(self.paths.root))
        try:
            relative = Path(os.path.normpath(folder)).relative_to(default_root)
        except ValueError:
            raise ConfigError(
                f"checkpointing.paths.phase{phase} ({self.paths.template(phase)!r}) is not under "
                f"checkpointing.paths.root ({self.paths.root!r}), so it cannot be moved to "
                f"the models root {os.fspath(root)!r}"
            ) from None
        return Path(root) / relative

    def phase_root(
        self, phase: int, market: str, root: str | os.PathLike[str] | None = None
    ) -> Path:
        """The folder above ``{market}/checkpoints``: home of best_model.zip and final models."""
        folder = self.checkpoint_dir(phase, market, root)
        template_parts = Path(self.paths.template(phase)).parts
        depth = len(template_parts) - next(
            i for i, part in enumerate(template_parts) if "{market}" in part
        )
        return folder.parents[depth - 1]

    def with_phase(self, phase: int, schedule: PhaseSchedule) -> CheckpointConfig:
        """A copy with the schedule of ``phase`` replaced."""
        self.phase(phase)  # validates the number
        if phase == 1:
            return replace(self, phase1=schedule)
        if phase == 2:
            return replace(self, phase2=schedule)
        return replace(self, phase3=schedule)


# --------------------------------------------------------------------------- reading


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


class _Section:
    """Reads one mapping, checking each key once; :meth:`done` refuses the keys left over."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path} must be a mapping, got {data!r}")
        for key in data:
            if not isinstance(key, str):
                raise ConfigError(f"{path} has a non-string key {key!r}")
        self.data = dict(data)
        self.path = path
        self.seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)} must be true or false, got {value!r}")
        return value

    def get_int(self, key: str, default: int, minimum: int | None = None) -> int:
        value = self.raw(key, default)
        if isinstance(value, float) and value.is_integer() and math.isfinite(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.where(key)} must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{self.where(key)} must be >= {minimum}, got {value!r}")
        return value

    def get_float(
        self,
        key: str,
        default: float,
        minimum: float | None = None,
        maximum: float | None = None,
        strict_minimum: bool = False,
    ) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{self.where(key)} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{self.where(key)} must be a finite number, got {value!r}")
        if minimum is not None:
            if strict_minimum and value <= minimum:
                raise ConfigError(f"{self.where(key)} must be > {minimum}, got {value!r}")
            if value < minimum:
                raise ConfigError(f"{self.where(key)} must be >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{self.where(key)} must be <= {maximum}, got {value!r}")
        return value

    def get_str(self, key: str, default: str) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.where(key)} must be a non-empty string, got {value!r}")
        if "\x00" in value:
            raise ConfigError(f"{self.where(key)} must not contain NUL, got {value!r}")
        return value

    def choices(self, key: str, default: Iterable[str], allowed: Iterable[str]) -> tuple[str, ...]:
        value = self.raw(key, list(default))
        allowed = tuple(allowed)
        if not isinstance(value, list):
            raise ConfigError(f"{self.where(key)} must be a list, got {value!r}")
        out: list[str] = []
        for i, item in enumerate(value):
            if item not in allowed:
                raise ConfigError(
                    f"{self.where(key)}[{i}] must be one of {list(allowed)}, got {item!r}"
                    + _suggest(item, allowed)
                )
            if item in out:
                raise ConfigError(f"{self.where(key)} lists {item!r} twice")
            out.append(item)
        return tuple(out)

    def section(self, key: str) -> _Section:
        return _Section(self.raw(key, {}), self.where(key))

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self.seen]
        if unknown:
            key = unknown[0]
            raise ConfigError(
                f"unknown key {self.where(key)}" + _suggest(key, self.seen) + f" in {self.path}"
            )


def _suggest(word: object, options: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- parsing


def _parse_boundaries(sec: _Section, target: int) -> tuple[Boundary, ...]:
    raw = sec.raw("boundaries", [])
    where = sec.where("boundaries")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list, got {raw!r}")
    out: list[Boundary] = []
    for i, item in enumerate(raw):
        b = _Section(item, f"{where}[{i}]")
        try:
            name = validate_boundary_name(b.raw("name", None))
        except CheckpointNameError as exc:
            raise ConfigError(f"{b.where('name')}: {exc}") from None
        has_progress, has_steps = b.has("at_progress"), b.has("at_timesteps")
        if has_progress == has_steps:
            raise ConfigError(f"{where}[{i}] needs exactly one of at_progress or at_timesteps")
        if has_progress:
            progress = b.get_float(
                "at_progress", 0.0, minimum=0.0, maximum=1.0, strict_minimum=True
            )
            boundary = Boundary(name, at_progress=progress)
        else:
            boundary = Boundary(name, at_timesteps=b.get_int("at_timesteps", 0, minimum=1))
        b.done()
        if any(o.name == name for o in out):
            raise ConfigError(f"{where} names {name!r} twice")
        out.append(boundary)
    return tuple(sorted(out, key=lambda b: b.step(target)))


def _parse_phase(sec: _Section, default: PhaseSchedule) -> PhaseSchedule:
    base = sec.get_int("base_interval", default.base_interval, minimum=1)
    mult = sec.get_float("max_interval_multiplier", default.max_interval_multiplier, minimum=1.0)
    target = sec.get_int("target_timesteps", default.target_timesteps, minimum=1)
    boundaries = _parse_boundaries(sec, target) if sec.has("boundaries") else default.boundaries
    sec.done()
    return PhaseSchedule(base, mult, target, boundaries)


def _parse_events(sec: _Section) -> EventsConfig:
    d = EventsConfig()
    out = EventsConfig(
        enabled=sec.get_bool("enabled", d.enabled),
        metric_improvement_threshold=sec.get_float(
            "metric_improvement_threshold", d.metric_improvement_threshold, minimum=0.0
        ),
        improvement_floor=sec.get_float(
            "improvement_floor", d.improvement_floor, minimum=0.0, strict_minimum=True
        ),
        monitored_metrics=sec.choices("monitored_metrics", d.monitored_metrics, KNOWN_METRICS),
        triggers=sec.choices("triggers", d.triggers, EVENT_KINDS),
    )
    sec.done()
    return out


def _parse_retention(sec: _Section) -> RetentionConfig:
    d = RetentionConfig()
    out = RetentionConfig(
        enabled=sec.get_bool("enabled", d.enabled),
        keep_last_n=sec.get_int("keep_last_n", d.keep_last_n, minimum=1),
        keep_top_k_by_sharpe=sec.get_int("keep_top_k_by_sharpe", d.keep_top_k_by_sharpe, minimum=0),
        keep_top_k_by_reward=sec.get_int("keep_top_k_by_reward", d.keep_top_k_by_reward, minimum=0),
        preserve_events=sec.choices("preserve_events", d.preserve_events, EVENT_KINDS),
        prune_frequency=sec.get_int("prune_frequency", d.prune_frequency, minimum=1),
        orphan_grace_seconds=sec.get_float(
            "orphan_grace_seconds", d.orphan_grace_seconds, minimum=0.0
        ),
        rules=_parse_rules(sec),
    )
    sec.done()
    return out


def _parse_rules(sec: _Section) -> tuple[RetentionPolicy, ...]:
    from checkpointing.policies import parse_rules  # late: policies imports this module

    return parse_rules(sec.raw("rules", []), sec.where("rules"))


def _parse_paths(sec: _Section) -> PathsConfig:
    d = PathsConfig()
    values = {"root": sec.get_str("root", d.root)}
    for phase in PHASES:
        key = f"phase{phase}"
        template = sec.get_str(key, getattr(d, key))
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


def _placeholders(template: str) -> list[str]:
    import string

    return [
        "{" + name + "}" for _, name, _, _ in string.Formatter().parse(template) if name is not None
    ]


def _parse_performance(sec: _Section) -> PerformanceConfig:
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
        min_disk_space_gb=sec.get_float("min_disk_space_gb", d.min_disk_space_gb, minimum=0.0),
        compression=_parse_compression(sec, d.compression),
        compression_level=sec.get_int("compression_level", d.compression_level),
        compress_below_free_gb=sec.get_float(
            "compress_below_free_gb", d.compress_below_free_gb, minimum=0.0
        ),
    )
    sec.done()
    return out


def _parse_compression(sec: _Section, default: str) -> str:
    """``stored | deflate | adaptive``; the v2.0 note's ``true`` / ``false``: deflate / stored."""
    value = sec.raw("compression", default)
    if value is True:
        return "deflate"
    if value is False:
        return "stored"
    if value not in COMPRESSION_MODES:
        raise ConfigError(
            f"{sec.where('compression')} must be one of {list(COMPRESSION_MODES)} (or true/false "
            f"for deflate/stored), got {value!r}" + _suggest(value, COMPRESSION_MODES)
        )
    return str(value)


def config_from_dict(data: object, source: str = "<dict>") -> CheckpointConfig:
    """Validate a parsed ``checkpointing:`` mapping (the section itself, not the file)."""
    sec = _Section(data, "checkpointing")
    defaults = CheckpointConfig()
    phases = {
        f"phase{n}": _parse_phase(sec.section(f"phase{n}"), defaults.phase(n)) for n in PHASES
    }
    cfg = CheckpointConfig(
        **phases,
        events=_parse_events(sec.section("events")),
        retention=_parse_retention(sec.section("retention")),
        paths=_parse_paths(sec.section("paths")),
        performance=_parse_performance(sec.section("performance")),
        llm_metadata=sec.choices("llm_metadata", (), KNOWN_LLM_FIELDS),
        source=source,
    )
    sec.done()
    return cfg


def _apply_overlay(base: CheckpointConfig, sec: _Section, source: str) -> CheckpointConfig:
    p3 = base.phase3
    phase3 = PhaseSchedule(
        base_interval=sec.get_int("base_interval", p3.base_interval, minimum=1),
        max_interval_multiplier=sec.get_float(
            "max_interval_multiplier", p3.max_interval_multiplier, minimum=1.0
        ),
        target_timesteps=sec.get_int("target_timesteps", p3.target_timesteps, minimum=1),
        boundaries=p3.boundaries,
    )
    if sec.has("boundaries"):
        phase3 = replace(phase3, boundaries=_parse_boundaries(sec, phase3.target_timesteps))
    llm = sec.choices("llm_metadata", base.llm_metadata, KNOWN_LLM_FIELDS)
    sec.done()
    return replace(base, phase3=phase3, llm_metadata=llm, source=source)


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
        top = _Section(doc, "<top level>")
        if not top.has("checkpointing"):
            raise ConfigError("missing the 'checkpointing:' section")
        body = top.data["checkpointing"]
        top.seen.add("checkpointing")
        if isinstance(body, Mapping) and "use_default_config" in body:
            sec = _Section(body, "checkpointing")
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
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from None
