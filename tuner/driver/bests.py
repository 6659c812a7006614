r"""The best checkpoints of an experiment: one function for the driver's summary and the browser.

An experiment's checkpoints are those of its trials' runs (a name's ``_run-<id>``; a trial of
an experiment from before run ids owns the legacy run of its market and seed), in the
checkpoint folders of its phases under the models root each trial recorded. Other runs that
share the folders (reruns, other experiments, ``tuner.train``) are counted, not ranked, unless
``all_runs``. Ranking is :func:`checkpointing.registry.rank_entries`, the product's one rule
(NaN never ranks; ties to more timesteps, then the smaller file name; a model saved under two
events is one place, its events listed together), per market and phase: validation figures of
different phases (different costs) are not compared.

A models root may be a bucket (``--models-root s3://bucket/prefix``, or the ``s3://`` root a
trial recorded): its folders are listed and its registry is the union of its runs' shards
(:class:`checkpointing.shards.BucketRegistry`), reading only the shards (and, for a checkpoint
no shard names, the metadata object) of the experiment's runs unless ``all_runs``; a zip is
never downloaded. Paths are then :class:`~checkpointing.locations.StoreURI`\ s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig, load_config, resolve_config
from checkpointing.errors import CheckpointNameError, ConfigError
from checkpointing.locations import StoreURI, parse_location, shown
from checkpointing.naming import validate_market
from checkpointing.ranking import METRICS, Ranked
from checkpointing.registry import Registry, RegistryEntry, open_registry, rank_entries
from checkpointing.shards import BucketRegistry
from tuner.driver.experiments import BrowseError, Experiment, TrialInfo, _gc_paused

__all__ = ["BestCheckpoint", "Bests", "bests_by_metric", "checkpoint_folders", "experiment_bests"]

RunKey = tuple[str, int, str | None]  # (market, seed, run id)
Root = Path | StoreURI  # a models root: a folder, or a bucket prefix


@dataclass(frozen=True)
class BestCheckpoint:
    """A ranked model: its place per (market, phase), the checkpoint that stands for it (the
    registry entry and its path), every event it was saved under, and the trial that wrote it
    (None: a run outside the experiment, with ``all_runs``)."""

    rank: int
    metric: str
    entry: RegistryEntry
    path: Path | StoreURI
    events: tuple[str, ...]
    trial_id: str | None

    @property
    def value(self) -> float:
        return self.entry.metric(self.metric)

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "rank": self.rank,
            "market": e.market,
            "seed": e.seed,
            "run_id": e.run_id,
            "phase": e.phase,
            "timesteps": e.timesteps,
            "event": e.event,
            "events": list(self.events),
            "metric": self.metric,
            "value": self.value,
            "metrics": dict(e.metrics),
            "metrics_timesteps": e.metrics_timesteps,
            "timestamp": e.timestamp,
            "trial_id": self.trial_id,
            "name": e.name,
            "path": shown(self.path),
        }


@dataclass
class Bests:
    """The best checkpoints per market (phase by phase, each ranked from 1), and what was
    learnt on the way: each trial's models root and latest checkpoint path, how many
    checkpoints of other runs were left out per market, and notes."""

    metric: str
    top: int
    markets: list[str]
    trials: list[TrialInfo]
    best: dict[str, list[BestCheckpoint]]
    models_roots: dict[str, Root | None]
    checkpoint_paths: dict[str, Root | None]
    other_runs: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Per trial and phase: the best of the trial's own run (the same rule, one run at a time).
    of_trial: dict[tuple[str, int], BestCheckpoint] = field(default_factory=dict)
    # Per trial whose latest checkpoint is in a bucket: whether the listing shows it.
    on_bucket: dict[str, bool] = field(default_factory=dict)

    def checkpoint_exists(self, trial_id: str) -> bool:
        """Whether the trial's latest checkpoint is still there (on disk, or on the bucket
        as its folder's listing shows)."""
        path = self.checkpoint_paths.get(trial_id)
        if isinstance(path, StoreURI):
            return self.on_bucket.get(trial_id, False)
        return path is not None and path.is_file()

    def first(self, market: str, phase: int) -> BestCheckpoint | None:
        """The best of ``market`` in ``phase``, or None."""
        return next((b for b in self.best.get(market, []) if b.entry.phase == phase), None)

    def of_run(self, trial_id: str, phase: int) -> BestCheckpoint | None:
        """The best checkpoint of one trial's run in ``phase``, or None."""
        return self.of_trial.get((trial_id, phase))


def _root_of(trial: TrialInfo, override: Root | None) -> Root | None:
    """Where the trial's checkpoints are: ``override``, else the root it recorded."""
    root = override if override is not None else trial.models_root
    if root is None or isinstance(root, StoreURI):
        return root
    return root if root.is_absolute() else root.resolve()


def _checkpoint_dir(config: CheckpointConfig, phase: int, market: str, root: Root) -> Root:
    """The checkpoint folder of (phase, market) under a folder or a bucket prefix."""
    if isinstance(root, StoreURI):
        return root.child(config.layout(".").checkpoint_dir(phase, market).as_posix())
    return config.checkpoint_dir(phase, market, root)


def _latest_path(config: CheckpointConfig, trial: TrialInfo, root: Root) -> Root | None:
    """Where the trial's latest reported checkpoint is (None: it reported none)."""
    if trial.checkpoint is None or trial.phase is None or trial.market is None:
        return None
    try:
        folder = _checkpoint_dir(config, trial.phase, trial.market, root)
    except (ConfigError, ValueError):
        return None
    if isinstance(folder, StoreURI):
        return folder.child(trial.checkpoint)
    return folder / trial.checkpoint


def _override(models_root: str | os.PathLike[str] | StoreURI | None) -> Root | None:
    """``--models-root``: an existing folder, or a bucket prefix that can be listed.

    Raises:
        BrowseError: neither (the message names it, and for a bucket what failed).
    """
    if models_root is None:
        return None
    try:
        where = (
            models_root
            if isinstance(models_root, StoreURI)
            else parse_location(models_root, "--models-root")
        )
        if isinstance(where, StoreURI):
            BucketRegistry(where).check()  # ObjectStoreError: no bucket, denied, unreachable
            return where
    except ConfigError as exc:
        raise BrowseError(str(exc)) from None
    if not where.is_dir():
        raise BrowseError(f"models root {shown(models_root)!r} does not exist")
    return where.resolve()


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


def _check(
    experiment: Experiment, metric: str, top: int, markets: Iterable[str] | None
) -> list[str]:
    if metric not in METRICS:
        raise BrowseError(f"--metric must be one of {list(METRICS)}, got {metric!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise BrowseError(f"--top must be an integer >= 1, got {top!r}")
    if markets is None:
        return experiment.markets
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
    return selected


def checkpoint_folders(
    experiment: Experiment, models_root: str | os.PathLike[str] | StoreURI | None = None
) -> dict[tuple[str, int], Root]:
    """Where each trial's checkpoints of each of its phases are: ``(trial id, phase)`` ->
    its checkpoint folder (a path, or a URI in a bucket), in the layout of the trial's config
    folder, under ``models_root`` (default: the root the trial recorded, else ``paths.root``
    of ``config/checkpoint_config.yaml``). Trials without a market or seed are left out."""
    override = _override(models_root)
    configs = _Configs([])
    fallback = _default_root() if any(t.models_root is None for t in experiment.trials) else None
    folders: dict[tuple[str, int], Root] = {}
    for t in experiment.trials:
        root = _root_of(t, override) or fallback
        if root is None or t.market is None or t.seed is None:
            continue
        config = configs.get(t.config_dir)
        for phase in t.phases:
            with contextlib.suppress(ConfigError, ValueError):
                folders[(t.trial_id, phase)] = _checkpoint_dir(config, phase, t.market, root)
    return folders


def experiment_bests(
    experiment: Experiment,
    metric: str = "sharpe_ratio",
    *,
    top: int = 5,
    markets: Iterable[str] | None = None,
    models_root: str | os.PathLike[str] | StoreURI | None = None,
    all_runs: bool = False,
) -> Bests:
    """Rank the models of the experiment's runs by ``metric``, per market and phase.

    Args:
        experiment: from :func:`tuner.driver.experiments.load_experiment`.
        metric: any of ``val_reward``, ``sharpe_ratio``, ``win_rate``, ``max_drawdown``,
            ``total_return`` (higher is better for all of them).
        top: how many per market and phase.
        markets: only these markets (default: all of the experiment).
        models_root: read checkpoints here instead of the root the trials recorded (a root
            that has been moved or copied; ``s3://bucket/prefix`` for a bucket). Trials that
            recorded none use ``paths.root`` of ``config/checkpoint_config.yaml``.
        all_runs: rank every run in the experiment's folders, not only the experiment's.

    Raises:
        BrowseError: an unknown metric, ``top`` below 1, a bad market name or a market the
            experiment does not have, a ``models_root`` that does not exist (or a bucket that
            cannot be listed).
    """
    return bests_by_metric(
        experiment, (metric,), top=top, markets=markets, models_root=models_root, all_runs=all_runs
    )[metric]


def bests_by_metric(
    experiment: Experiment,
    metrics: Sequence[str],
    *,
    top: int = 5,
    markets: Iterable[str] | None = None,
    models_root: str | os.PathLike[str] | StoreURI | None = None,
    all_runs: bool = False,
) -> dict[str, Bests]:
    """:func:`experiment_bests` by each of ``metrics`` (same arguments and errors), from one
    read of each checkpoint folder and registry: the driver's summary ranks by two metrics."""
    selected: list[str] = []
    for metric in metrics:
        selected = _check(experiment, metric, top, markets)
    override = _override(models_root)
    trials = [t for t in experiment.trials if t.market in selected]
    fallback = _default_root() if any(t.models_root is None for t in trials) else None
    roots = {t.trial_id: _root_of(t, override) or fallback for t in trials}
    paths: dict[str, Root | None] = {t.trial_id: None for t in trials}
    notes: list[str] = []
    configs = _Configs(notes)
    # Per (root, layout, phase, market): the experiment's runs there, and their trials.
    folders: dict[tuple[Root, str, int, str], tuple[CheckpointConfig, dict[RunKey, str]]] = {}
    missing: set[Path] = set()
    for t in trials:
        root = roots[t.trial_id]
        if root is None or t.market is None or t.seed is None:
            continue
        if isinstance(root, Path) and not root.is_dir():
            missing.add(root)
            continue
        config = configs.get(t.config_dir)
        paths[t.trial_id] = _latest_path(config, t, root)
        for phase in t.phases:
            _, runs = folders.setdefault((root, config.source, phase, t.market), (config, {}))
            runs[(t.market, t.seed, t.run_id)] = t.trial_id
    by_metric = {
        metric: Bests(
            metric,
            top,
            selected,
            trials,
            {m: [] for m in selected},
            dict(roots),
            dict(paths),
            {m: 0 for m in selected},
            list(notes),
        )
        for metric in metrics
    }
    with _gc_paused():
        registries = _rank_folders(list(by_metric.values()), folders, all_runs)
    on_bucket = _on_bucket(paths, roots, registries)
    for bests in by_metric.values():
        bests.on_bucket = dict(on_bucket)
    for root in sorted(missing):
        for bests in by_metric.values():
            bests.notes.append(
                f"models root {os.fspath(root)!r} does not exist (moved? use --models-root)"
            )
    return by_metric


def _on_bucket(
    paths: Mapping[str, Root | None],
    roots: Mapping[str, Root | None],
    registries: Mapping[tuple[Root, str], Registry | BucketRegistry],
) -> dict[str, bool]:
    """Per trial whose latest checkpoint is in a bucket: whether its folder's listing (made
    while ranking) shows it."""
    out: dict[str, bool] = {}
    for trial_id, path in paths.items():
        root = roots.get(trial_id)
        if not isinstance(path, StoreURI) or not isinstance(root, StoreURI):
            continue
        found = [r for (where, _), r in registries.items() if where == root]
        registry = found[0] if found else BucketRegistry(root)
        assert isinstance(registry, BucketRegistry)
        rel = path.key[len(root.key) :].lstrip("/")
        try:
            out[trial_id] = registry.exists(rel)
        except OSError:
            out[trial_id] = False
    return out


def _rank_folders(
    by_metric: list[Bests],
    folders: Mapping[tuple[Root, str, int, str], tuple[CheckpointConfig, dict[RunKey, str]]],
    all_runs: bool,
) -> dict[tuple[Root, str], Registry | BucketRegistry]:
    """Read each folder once (each registry once) and rank it by every metric. A registry in
    a bucket reads only the experiment's runs in full, unless ``all_runs``."""
    registries: dict[tuple[Root, str], Registry | BucketRegistry] = {}
    for (root, source, phase, market), (config, runs) in sorted(folders.items(), key=_folder_order):
        if (root, source) not in registries:
            registries[(root, source)] = open_registry(root, config)
        wanted = None if all_runs else {run_id for (_, _, run_id) in runs}
        try:
            entries = registries[(root, source)].entries(phase, market, runs=wanted)
        except (ConfigError, ValueError, OSError) as exc:
            for bests in by_metric:
                bests.notes.append(f"phase {phase} {market}: {exc}")
            continue
        for bests in by_metric:
            _rank_folder(bests, entries, root, phase, market, runs, all_runs)
    return registries


def _folder_order(item: tuple[tuple[Root, str, int, str], Any]) -> tuple[str, int, str]:
    (root, _, phase, market), _ = item
    return market, phase, shown(root)


def _rank_folder(
    bests: Bests,
    entries: list[RegistryEntry],
    root: Root,
    phase: int,
    market: str,
    runs: Mapping[RunKey, str],
    all_runs: bool,
) -> None:
    mine = [e for e in entries if (e.market, e.seed, e.run_id) in runs]
    bests.other_runs[market] += len(entries) - len(mine)
    ranked = rank_entries(mine, bests.metric)
    top = rank_entries(entries, bests.metric, k=bests.top) if all_runs else ranked[: bests.top]
    for place, model in enumerate(top, start=1):
        bests.best[market].append(_best(bests.metric, place, model, root, runs))
    for model in ranked:  # the first model of a run in the ranking is the run's best
        e = model.item
        of_trial = (runs[(e.market, e.seed, e.run_id)], phase)  # type: ignore[index]
        if of_trial not in bests.of_trial:
            bests.of_trial[of_trial] = _best(bests.metric, 1, model, root, runs)


def _best(
    metric: str, place: int, model: Ranked[RegistryEntry], root: Root, runs: Mapping[RunKey, str]
) -> BestCheckpoint:
    entry = model.item
    trial = runs.get((entry.market, entry.seed, entry.run_id))  # type: ignore[arg-type]
    events = tuple(e.event for e in model.items)
    where = root.child(entry.path) if isinstance(root, StoreURI) else entry.absolute(root)
    return BestCheckpoint(place, metric, entry, where, events, trial)
