"""The best checkpoints of an experiment per market, and the browser's tables."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig, load_config, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.naming import validate_market
from checkpointing.ranking import METRICS
from checkpointing.registry import Registry, RegistryEntry
from tuner.driver.experiments import (
    BrowseError,
    Experiment,
    TrialInfo,
    _clean,
    _epoch_of,
    _local,
    _mtime,
)

__all__ = ["BestCheckpoint", "ExperimentView", "best_checkpoints", "format_listing", "format_view"]

_SHORT = {"val_reward": "val_reward", "sharpe_ratio": "sharpe", "win_rate": "win_rate"}
_SHORT.update({"max_drawdown": "max_dd", "total_return": "total_ret"})

# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class BestCheckpoint:
    """A ranked checkpoint: the registry entry, where it is, and which trial wrote it."""

    rank: int
    entry: RegistryEntry
    path: Path
    trial_id: str
    metric: str

    @property
    def value(self) -> float:
        return self.entry.metric(self.metric)

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "rank": self.rank,
            "market": e.market,
            "seed": e.seed,
            "phase": e.phase,
            "timesteps": e.timesteps,
            "event": e.event,
            "metric": self.metric,
            "value": self.value,
            "metrics": dict(e.metrics),
            "metrics_timesteps": e.metrics_timesteps,
            "timestamp": e.timestamp,
            "trial_id": self.trial_id,
            "name": e.name,
            "path": os.fspath(self.path),
        }


@dataclass
class ExperimentView:
    """An experiment with its best checkpoints per market (what the CLI prints)."""

    experiment: Experiment
    metric: str
    top: int
    markets: list[str]
    trials: list[TrialInfo]
    best: dict[str, list[BestCheckpoint]]
    checkpoint_paths: dict[str, Path | None]
    models_roots: dict[str, Path | None]
    other_runs: dict[str, int]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        exp = self.experiment
        summaries = [
            root / "summaries" / f"{exp.name}.json"
            for root in set(self.models_roots.values())
            if root is not None
        ]
        return _clean(
            {
                **exp.overview(),
                # Where the checkpoints were read (--models-root, else what the trials say).
                "models_roots": sorted(
                    {os.fspath(r) for r in self.models_roots.values() if r is not None}
                ),
                "metric": self.metric,
                "top": self.top,
                "selected_markets": self.markets,
                "trial_rows": [self._trial_json(t) for t in self.trials],
                "best": {m: [b.to_json() for b in rows] for m, rows in self.best.items()},
                "other_runs_skipped": self.other_runs,
                "summaries": sorted(os.fspath(p) for p in summaries if p.is_file()),
                "notes": self.notes,
            }
        )

    def _trial_json(self, trial: TrialInfo) -> dict[str, Any]:
        path = self.checkpoint_paths.get(trial.trial_id)
        return {
            **trial.to_json(),
            "checkpoint_path": path,
            "checkpoint_exists": path is not None and path.is_file(),
        }


def _root_of(trial: TrialInfo, override: Path | None) -> Path | None:
    """Where the trial's checkpoints are: ``override``, else the root it recorded."""
    if override is not None:
        return override
    if trial.models_root is None:
        return None
    return trial.models_root if trial.models_root.is_absolute() else trial.models_root.resolve()


def _default_root() -> Path:
    """``paths.root`` of ``config/checkpoint_config.yaml`` (cwd), else ``./models``."""
    try:
        config = resolve_config(None)
    except ConfigError:
        config = CheckpointConfig()
    return config.models_root().resolve()


class _Configs:
    """The checkpoint layout each trial used (its config folder), loaded once per folder."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self._cache: dict[Path | None, CheckpointConfig] = {}

    def get(self, config_dir: Path | None) -> CheckpointConfig:
        if config_dir not in self._cache:
            self._cache[config_dir] = self._load(config_dir)
        return self._cache[config_dir]

    def _load(self, config_dir: Path | None) -> CheckpointConfig:
        if config_dir is not None:
            # As load_settings: llm_config.yaml inherits checkpoint_config.yaml.
            for name in ("llm_config.yaml", "checkpoint_config.yaml"):
                if (config_dir / name).is_file():
                    try:
                        return load_config(config_dir / name)
                    except ConfigError as exc:
                        self.notes.append(f"{exc}; using the default checkpoint layout")
                        break
            else:
                self.notes.append(
                    f"config folder {os.fspath(config_dir)!r} not found; "
                    "using the default checkpoint layout"
                )
        try:
            return resolve_config(None)
        except ConfigError:
            return CheckpointConfig()


def _saved_at(entry: RegistryEntry, root: Path) -> float | None:
    saved = _epoch_of(entry.timestamp)
    return saved if saved is not None else _mtime(entry.absolute(root))


def best_checkpoints(
    experiment: Experiment,
    metric: str = "sharpe_ratio",
    *,
    top: int = 5,
    markets: Iterable[str] | None = None,
    models_root: str | os.PathLike[str] | None = None,
) -> ExperimentView:
    """Rank the checkpoints the experiment's trials wrote, per market, by ``metric``.

    Args:
        experiment: from :func:`load_experiment`.
        metric: any of ``val_reward``, ``sharpe_ratio``, ``win_rate``, ``max_drawdown``,
            ``total_return`` (higher is better for all of them).
        top: how many per market.
        markets: only these markets (default: all of the experiment).
        models_root: read checkpoints here instead of the root the trials recorded (a root
            that has been moved or copied). Trials that recorded none (not started by
            ``tuner.run``) use ``paths.root`` of ``config/checkpoint_config.yaml``.

    Raises:
        BrowseError: an unknown metric, ``top`` below 1, a bad market name or a market the
            experiment does not have, a ``models_root`` that does not exist.
    """
    if metric not in METRICS:
        raise BrowseError(f"--metric must be one of {list(METRICS)}, got {metric!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise BrowseError(f"--top must be an integer >= 1, got {top!r}")
    override = None
    if models_root is not None:
        override = Path(models_root)
        if not override.is_dir():
            raise BrowseError(f"models root {os.fspath(models_root)!r} does not exist")
        override = override.resolve()
    selected = experiment.markets
    if markets is not None:
        selected = []
        for market in markets:
            try:
                validate_market(market)
            except CheckpointNameError as exc:
                raise BrowseError(f"--market: {exc}") from None
            if market not in experiment.markets:
                have = ", ".join(experiment.markets) or "none"
                raise BrowseError(
                    f"market {market!r} is not in experiment {experiment.name!r} (markets: {have})"
                )
            selected.append(market)

    notes: list[str] = []
    configs = _Configs(notes)
    trials = [t for t in experiment.trials if t.market in selected]
    fallback = _default_root() if any(t.models_root is None for t in trials) else None
    roots = {t.trial_id: _root_of(t, override) or fallback for t in trials}
    by_key: dict[tuple[str, int], list[TrialInfo]] = {}
    for t in trials:
        if t.market is not None and t.seed is not None:
            by_key.setdefault((t.market, t.seed), []).append(t)

    # One registry read per (root, layout, phase, market); trials of a market share it.
    candidates: dict[str, list[tuple[RegistryEntry, Path, str]]] = {m: [] for m in selected}
    other_runs: dict[str, int] = {m: 0 for m in selected}
    checkpoint_paths: dict[str, Path | None] = {}
    seen: set[tuple[Path, str, int, str]] = set()
    missing_roots: set[Path] = set()
    for t in trials:
        root = roots[t.trial_id]
        checkpoint_paths[t.trial_id] = None
        if root is None or t.market is None:
            continue
        if not root.is_dir():
            missing_roots.add(root)
            continue
        config = configs.get(t.config_dir)
        registry = Registry(root, config)
        if t.checkpoint is not None and t.phase is not None:
            with contextlib.suppress(ConfigError, ValueError):
                checkpoint_paths[t.trial_id] = (
                    config.checkpoint_dir(t.phase, t.market, root) / t.checkpoint
                )
        for phase in t.phases:
            key = (root, config.source, phase, t.market)
            if key in seen:
                continue
            seen.add(key)
            try:
                entries = registry.entries(phase, t.market)
            except (ConfigError, ValueError) as exc:
                notes.append(f"phase {phase} {t.market}: {exc}")
                continue
            for entry in entries:
                owners = (
                    [o for o in by_key.get((t.market, entry.seed), []) if roots[o.trial_id] == root]
                    if entry.seed is not None
                    else []
                )
                saved = _saved_at(entry, root) if owners else None
                owner = next((o for o in owners if o.owns(saved)), None)
                if owner is None:
                    if owners:
                        other_runs[t.market] += 1
                    continue
                candidates[t.market].append((entry, entry.absolute(root), owner.trial_id))
    for root in sorted(missing_roots):
        notes.append(f"models root {os.fspath(root)!r} does not exist (moved? use --models-root)")

    best: dict[str, list[BestCheckpoint]] = {}
    for market in selected:
        ranked = [c for c in candidates[market] if not math.isnan(c[0].metric(metric))]
        ranked.sort(
            key=lambda c: (-c[0].metric(metric), -c[0].timesteps, c[0].name, os.fspath(c[1]))
        )
        best[market] = [
            BestCheckpoint(i + 1, entry, path, trial_id, metric)
            for i, (entry, path, trial_id) in enumerate(ranked[:top])
        ]
    return ExperimentView(
        experiment=experiment,
        metric=metric,
        top=top,
        markets=selected,
        trials=trials,
        best=best,
        checkpoint_paths=checkpoint_paths,
        models_roots=roots,
        other_runs=other_runs,
        notes=notes,
    )


# --------------------------------------------------------------------------- text output


def _num(value: float | None, spec: str) -> str:
    return "nan" if value is None or not math.isfinite(value) else format(value, spec)


_SPECS = {
    "val_reward": "+.3f",
    "sharpe_ratio": "+.2f",
    "win_rate": ".3f",
    "max_drawdown": ".3f",
    "total_return": "+.2f",
}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _status_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{s} {n}" for s, n in counts.items()) or "-"


def format_listing(storage: Path, experiments: Sequence[Experiment]) -> str:
    """The experiments table (``python -m tuner.browse`` without ``--experiment``)."""
    if not experiments:
        return f"no experiments in {os.fspath(storage)}"
    rows = [
        [
            e.name,
            str(len(e.trials)),
            ",".join(e.markets) or "-",
            ",".join(map(str, e.seeds)) or "-",
            ",".join(map(str, e.phases)) or "-",
            _status_text(e.status_counts),
            _local(e.last_update),
        ]
        for e in experiments
    ]
    headers = ["experiment", "trials", "markets", "seeds", "phases", "status", "last update"]
    lines = [f"experiments in {os.fspath(storage)}", ""]
    lines += _table(headers, rows, right={1})
    lines += ["", "details: python -m tuner.browse --experiment NAME [--metric M] [--market X]"]
    return "\n".join(lines)


_BEST_HEADERS = [
    "market",
    "#",
    *(_SHORT[m] for m in METRICS),
    *("seed", "trial", "phase", "steps", "event", "path"),
]


def format_view(view: ExperimentView) -> str:
    """The trials table and the best-checkpoints table of one experiment."""
    exp = view.experiment
    roots = sorted({r for r in view.models_roots.values() if r is not None})
    lines = [
        f"experiment {exp.name}  ({os.fspath(exp.path)})",
        f"status: {_status_text(exp.status_counts)}   last update: {_local(exp.last_update)}",
        f"models root: {', '.join(os.fspath(r) for r in roots) or '-'}",
        "",
        "trials (latest reported result)",
    ]
    trial_rows = []
    for t in view.trials:
        path = view.checkpoint_paths.get(t.trial_id)
        last = t.checkpoint or "-"
        if path is not None and not path.is_file():
            last += "  (not on disk)"
        trial_rows.append(
            [
                t.market or "?",
                "?" if t.seed is None else str(t.seed),
                t.status,
                "-" if t.phase is None else str(t.phase),
                "-" if t.timesteps is None else f"{t.timesteps:,}",
                *(_num(t.metrics.get(m), _SPECS[m]) if t.metrics else "-" for m in METRICS),
                t.trial_id,
                last,
            ]
        )
    headers = ["market", "seed", "status", "phase", "steps"]
    headers += [_SHORT[m] for m in METRICS] + ["trial", "last checkpoint"]
    lines += _table(headers, trial_rows, right=set(range(1, 10)) - {2})
    lines += [
        "",
        f"best checkpoints by {view.metric} (higher is better), top {view.top} per market",
    ]
    best_rows = []
    for market in view.markets:
        rows = view.best.get(market, [])
        if not rows:
            cells = [market, "-", *([""] * (len(_BEST_HEADERS) - 3))]
            best_rows.append([*cells, f"no checkpoint with a measured {view.metric}"])
        for b in rows:
            e = b.entry
            best_rows.append(
                [
                    market,
                    str(b.rank),
                    *(_num(e.metric(m), _SPECS[m]) for m in METRICS),
                    "?" if e.seed is None else str(e.seed),
                    b.trial_id,
                    "?" if e.phase is None else str(e.phase),
                    f"{e.timesteps:,}",
                    e.event,
                    os.fspath(b.path),
                ]
            )
    lines += _table(_BEST_HEADERS, best_rows, right={1, 2, 3, 4, 5, 6, 7, 9, 10})
    skipped = sum(view.other_runs.values())
    if skipped:
        lines += [
            "",
            f"{skipped} checkpoint(s) of these markets and seeds in the models root were written "
            "by other runs (outside this experiment's trials) and are not ranked",
        ]
    lines += [f"note: {n}" for n in view.notes]
    return "\n".join(lines)
