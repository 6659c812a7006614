"""Everything the report shows, read from disk: Tune's files, the checkpoint folders and the
documents the driver wrote beside the summary. Nothing is computed that another module owns:
the trials are :func:`tuner.driver.experiments.load_experiment`'s, each trial's checkpoint
chosen on validation is the summary's (its run's best by Sharpe, :mod:`tuner.driver.bests`),
the test figures are ``python -m tuner.evaluate``'s, the search's verdict is the driver's.

A missing piece (no test evaluation, no search, a models root moved away) leaves its part
empty with a note; it never fails the report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from checkpointing.locations import StoreURI, is_uri
from checkpointing.registry import rank_entries
from tuner.driver.bests import BestCheckpoint, Bests, checkpoint_folders, experiment_bests
from tuner.driver.experiments import BrowseError, Experiment, TrialInfo, load_experiment
from tuner.driver.tune_files import read_json
from tuner.reporting.history import Folders, TrialHistory, trial_history

__all__ = ["SELECTED_BY", "DiskRow", "MarketView", "ReportData", "Selected", "gather"]

SELECTED_BY = "sharpe_ratio"  # the summary's and tuner.evaluate's choice on validation


@dataclass(frozen=True)
class Selected:
    """One trial's checkpoint chosen on validation and its held-out test figures (None when
    not measured)."""

    trial: TrialInfo
    best: BestCheckpoint | None
    test: Mapping[str, Any] | None


@dataclass
class MarketView:
    """A market's selected checkpoints over its seeds (for a search: the chosen
    configuration's), and the one of them validation ranks first (its equity curve)."""

    market: str
    selected: list[Selected]
    first: Selected | None
    config_id: str | None = None  # a search's chosen configuration


@dataclass(frozen=True)
class DiskRow:
    """One checkpoint folder (market, phase) as the experiment's runs left it."""

    market: str
    phase: int
    folder: Path | StoreURI
    kept: int  # checkpoints of the experiment's runs on disk (or on the bucket)
    kept_bytes: int  # their zip, pkl and metadata (hard links once)
    saved: int  # checkpoints the runs saved (from the history)
    other_runs: int  # checkpoints of other runs in the folder
    pruned: int | None  # what the runs' in-run retention deleted (None: not recorded)
    pruned_bytes: int | None


@dataclass
class ReportData:
    """The report's content (see :func:`gather`)."""

    name: str
    storage_path: Path | str
    models_root: Path | StoreURI
    summaries_dir: Path
    experiments: list[Experiment]
    histories: list[TrialHistory]
    selected: list[Selected]
    markets: dict[str, MarketView]
    disk: list[DiskRow]
    driver_retention: list[Mapping[str, Any]] | None
    test_files: list[Path]
    search: Mapping[str, Any] | None
    generated: str
    notes: list[str] = field(default_factory=list)

    @property
    def trials(self) -> list[TrialInfo]:
        return [h.trial for h in self.histories]


def _models_root(
    bests: Bests, override: str | os.PathLike[str] | StoreURI | None
) -> Path | StoreURI:
    """Where the summaries are: ``override``, else the models root of the trials (the one
    :mod:`tuner.driver.bests` reads their checkpoints from; a folder, else a bucket)."""
    if isinstance(override, StoreURI):
        return override
    if override is not None:
        return Path(override).resolve()
    roots = [r for r in bests.models_roots.values() if r is not None]
    local = sorted(r for r in roots if isinstance(r, Path))
    buckets = sorted((r for r in roots if isinstance(r, StoreURI)), key=str)
    return local[0] if local else buckets[0] if buckets else Path("models").resolve()


def _summaries(root: Path | StoreURI, names: Sequence[str], notes: list[str]) -> Path:
    """The local folder of the summaries: ``<root>/summaries``; for a models root in a bucket,
    its staging folder's, with the experiments' summary files copied from the bucket."""
    if isinstance(root, Path):
        return root / "summaries"
    from checkpointing.errors import ObjectStoreError
    from checkpointing.locations import default_staging_dir
    from tuner.driver.remote import bucket_summaries

    folder = default_staging_dir(root) / "summaries"
    files = [f"{n}{suffix}" for n in names for suffix in (".json", "_search.json", "_test.json")]
    try:
        bucket_summaries(root, files, folder)
    except ObjectStoreError as exc:
        notes.append(f"{exc}: the summaries staged on this machine are used")
    return folder


def _test_results(summaries: Path, names: Sequence[str]) -> tuple[dict[str, Any], list[Path]]:
    """Test results by checkpoint file name, from each experiment's ``<name>_test.json``."""
    by_name: dict[str, Any] = {}
    found = []
    for name in names:
        path = summaries / f"{name}_test.json"
        doc = read_json(path)
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list):
            continue
        found.append(path)
        for r in results:
            if isinstance(r, dict) and isinstance(r.get("checkpoint"), str):
                by_name.setdefault(Path(r["checkpoint"]).name, r)
    return by_name, found


def _selected(experiment: Experiment, bests: Bests, tests: Mapping[str, Any]) -> list[Selected]:
    out = []
    for t in experiment.trials:
        if not t.market:
            continue
        phase = t.phase or (t.phases[-1] if t.phases else 1)
        best = bests.of_run(t.trial_id, phase)
        out.append(Selected(t, best, tests.get(best.path.name) if best else None))
    return out


def _first(selected: Iterable[Selected]) -> Selected | None:
    """The selection validation ranks first, by the product's one ranking rule."""
    by_entry = {id(s.best.entry): s for s in selected if s.best is not None}
    entries = [s.best.entry for s in by_entry.values() if s.best is not None]
    ranked = rank_entries(entries, SELECTED_BY, k=1)
    return by_entry[id(ranked[0].item)] if ranked else None


def _markets(
    selected: Sequence[Selected], search: Mapping[str, Any] | None
) -> dict[str, MarketView]:
    verdicts = (search or {}).get("markets") or {}
    views = {}
    for market in sorted({s.trial.market for s in selected if s.trial.market}):
        mine = [s for s in selected if s.trial.market == market]
        chosen = (verdicts.get(market) or {}).get("chosen") if search else None
        config_id = chosen.get("config_id") if isinstance(chosen, dict) else None
        if search is not None:  # over the seeds of the chosen configuration only
            mine = [
                s for s in mine if s.trial.config_id == config_id and s.trial.status == "finished"
            ]
        views[market] = MarketView(market, mine, _first(mine), config_id)
    return views


def _disk(
    histories: Sequence[TrialHistory],
    folders: Mapping[tuple[str, int], Path | StoreURI],
    listing: Folders,
) -> list[DiskRow]:
    rows = []
    groups: dict[tuple[str, int], list[TrialHistory]] = {}
    for h in histories:
        for phase in h.trial.phases:
            if (h.trial.trial_id, phase) in folders and h.trial.market:
                groups.setdefault((h.trial.market, phase), []).append(h)
    for (market, phase), group in sorted(groups.items()):
        folder = folders[(group[0].trial.trial_id, phase)]
        infos = listing.infos(folder)
        ours = {e.name for h in group for e in h.events if e.phase == phase and e.kept}
        kept, kept_bytes = listing.usage(folder, ours)
        tallies = [h.pruned[phase] for h in group if phase in h.pruned]
        rows.append(
            DiskRow(
                market=market,
                phase=phase,
                folder=folder,
                kept=kept,
                kept_bytes=kept_bytes,
                saved=sum(1 for h in group for e in h.events if e.phase == phase),
                other_runs=len(set(infos) - ours),
                pruned=sum(n for n, _ in tallies) if tallies else None,
                pruned_bytes=sum(b for _, b in tallies) if tallies else None,
            )
        )
    return rows


def _driver_retention(summaries: Path, name: str) -> list[Mapping[str, Any]] | None:
    doc = read_json(summaries / f"{name}.json")
    passes = doc.get("retention") if isinstance(doc, dict) else None
    return [p for p in passes if isinstance(p, dict)] if isinstance(passes, list) else None


def gather(
    storage_path: str | os.PathLike[str],
    name: str,
    models_root: str | os.PathLike[str] | StoreURI | None = None,
    summaries: str | os.PathLike[str] | None = None,
) -> ReportData:
    """Read experiment ``name`` (and, for a search, its confirmation stage) for the report.

    Tune's results may be on a bucket (``storage_path`` ``s3://...``, read from the cache
    copy), and so may the checkpoints (trials that recorded an ``s3://`` models root: their
    folders are listed, nothing downloaded, and the summaries are read from the bucket unless
    ``summaries`` names the local folder that has them).

    Raises:
        BrowseError: the storage path or the experiment does not exist, or ``models_root``
            is given and does not exist.
    """
    experiment = load_experiment(storage_path, name)
    first = experiment_bests(experiment, SELECTED_BY, top=1, models_root=models_root)
    root = _models_root(first, models_root)
    confirm = f"{name}-confirm"
    notes: list[str] = []
    if summaries is None:
        summaries = _summaries(root, [name, confirm], notes)
    search = read_json(Path(summaries) / f"{name}_search.json")
    search = search if isinstance(search, dict) else None
    experiments = [experiment]
    if search is not None:
        with contextlib.suppress(BrowseError):  # a search stopped before its confirmation
            experiments.append(load_experiment(storage_path, confirm))
    summaries = Path(summaries)
    tests, test_files = _test_results(summaries, [e.name for e in reversed(experiments)])
    listing = Folders()
    histories, selected = [], []
    disk_folders: dict[tuple[str, int], Path | StoreURI] = {}
    for e in experiments:
        bests = (
            first
            if e is experiment
            else experiment_bests(e, SELECTED_BY, top=1, models_root=models_root)
        )
        notes += bests.notes
        selected += _selected(e, bests, tests)
        folders = checkpoint_folders(e, models_root)
        disk_folders.update(folders)
        by_trial: dict[str, dict[int, Path | StoreURI]] = {}
        for (trial_id, phase), folder in folders.items():
            by_trial.setdefault(trial_id, {})[phase] = folder
        for t in e.trials:
            if t.market:
                histories.append(trial_history(t, by_trial.get(t.trial_id, {}), listing))
    notes += listing.notes
    return ReportData(
        name=name,
        storage_path=os.fspath(storage_path) if is_uri(storage_path) else experiment.path.parent,
        models_root=root,
        summaries_dir=summaries,
        experiments=experiments,
        histories=histories,
        selected=selected,
        markets=_markets(selected, search),
        disk=_disk(histories, disk_folders, listing),
        driver_retention=_driver_retention(summaries, name),
        test_files=test_files,
        search=search,
        generated=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        notes=list(dict.fromkeys(notes)),
    )
