"""What ``python -m tuner.browse`` shows: an experiment's trials and its best checkpoints."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.locations import StoreURI, shown
from checkpointing.ranking import METRICS
from tuner.driver.bests import BestCheckpoint, Bests, experiment_bests
from tuner.driver.experiments import Experiment, TrialInfo, _local, json_ready

__all__ = ["ExperimentView", "best_checkpoints", "format_listing", "format_view"]

_SHORT = {"val_reward": "val_reward", "sharpe_ratio": "sharpe", "win_rate": "win_rate"}
_SHORT.update({"max_drawdown": "max_dd", "total_return": "total_ret"})


@dataclass
class ExperimentView:
    """An experiment with its best checkpoints per market (what the CLI prints)."""

    experiment: Experiment
    bests: Bests
    all_runs: bool = False
    # A search's configurations per market, ranked across seeds (with its confirmation).
    configurations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def test_results(self) -> list[dict[str, Any]]:
        """The held-out test figures ``tuner.evaluate`` (or the end of ``tuner.run``) wrote
        for this experiment, if any: never computed here (the browser writes nothing)."""
        import json

        roots = sorted({r for r in self.bests.models_roots.values() if r is not None}, key=shown)
        for root in roots:
            name = f"{self.experiment.name}_test.json"
            try:
                doc = json.loads(_read(_summary(root, name)))
            except (OSError, ValueError):
                continue
            results = doc.get("results") if isinstance(doc, dict) else None
            if isinstance(results, list):
                markets = set(self.bests.markets)  # --market: that market's only
                return [
                    {k: v for k, v in r.items() if k != "curve"}  # the report draws curves
                    for r in results
                    if isinstance(r, dict) and r.get("market") in markets
                ]
        return []

    @property
    def best(self) -> dict[str, list[BestCheckpoint]]:
        return self.bests.best

    def to_json(self) -> dict[str, Any]:
        exp, bests = self.experiment, self.bests
        roots = {r for r in bests.models_roots.values() if r is not None}
        summaries = [_summary(root, f"{exp.name}.json") for root in roots]
        return json_ready(
            {
                **exp.overview(),
                # Where the checkpoints were read (--models-root, else what the trials say).
                "models_roots": sorted(shown(r) for r in roots),
                "metric": bests.metric,
                "top": bests.top,
                "all_runs": self.all_runs,
                "selected_markets": bests.markets,
                "trial_rows": [self._trial_json(t) for t in bests.trials],
                "best": {m: [b.to_json() for b in rows] for m, rows in bests.best.items()},
                "other_runs_skipped": {} if self.all_runs else bests.other_runs,
                "configurations": self.configurations,
                "test": self.test_results(),
                "summaries": sorted(shown(p) for p in summaries if _is_file(p)),
                "notes": bests.notes,
            }
        )

    def _trial_json(self, trial: TrialInfo) -> dict[str, Any]:
        path = self.bests.checkpoint_paths.get(trial.trial_id)
        return {
            **trial.to_json(),
            "checkpoint_path": None if path is None else shown(path),
            "checkpoint_exists": self.bests.checkpoint_exists(trial.trial_id),
        }


_SMALL = 64 * 1024 * 1024


def _summary(root: Path | StoreURI, name: str) -> Path | StoreURI:
    """``<models root>/summaries/<name>``, on disk or in the bucket."""
    if isinstance(root, StoreURI):
        return root.child(f"summaries/{name}")
    return root / "summaries" / name


def _read(where: Path | StoreURI) -> str:
    if isinstance(where, StoreURI):
        from checkpointing.object_store import read_object

        return read_object(where, _SMALL).decode("utf-8")
    return where.read_text(encoding="utf-8")


def _is_file(where: Path | StoreURI) -> bool:
    if isinstance(where, StoreURI):
        from checkpointing.object_store import object_exists

        return object_exists(where)
    return where.is_file()


def best_checkpoints(
    experiment: Experiment,
    metric: str = "sharpe_ratio",
    *,
    top: int = 5,
    markets: Iterable[str] | None = None,
    models_root: str | os.PathLike[str] | None = None,
    all_runs: bool = False,
) -> ExperimentView:
    """The view of :func:`tuner.driver.bests.experiment_bests` (same arguments and errors)."""
    bests = experiment_bests(
        experiment, metric, top=top, markets=markets, models_root=models_root, all_runs=all_runs
    )
    return ExperimentView(experiment, bests, all_runs, _configurations(experiment, bests))


def _configurations(experiment: Experiment, bests: Bests) -> dict[str, list[dict[str, Any]]]:
    """A search's configurations per market, ranked across seeds by the browser's metric,
    its confirmation stage included (``<name>-confirm`` beside ``<name>``, or the other way
    round); nothing for an experiment without a search."""
    from tuner.driver.experiments import load_experiment
    from tuner.driver.search import rank_configurations

    if not any(t.stage in ("search", "confirm") for t in experiment.trials):
        return {}
    name = experiment.name
    other = name.removesuffix("-confirm") if name.endswith("-confirm") else f"{name}-confirm"
    trials = list(experiment.trials)
    if (experiment.path.parent / other).is_dir():
        with contextlib.suppress(ValueError, OSError):
            trials += load_experiment(experiment.path.parent, other).trials
    best_of = {
        trial_id: {"value": b.value, "path": shown(b.path)}
        for (trial_id, _), b in bests.of_trial.items()
    }
    seeds = sorted({t.seed for t in trials if t.seed is not None})
    return {m: rank_configurations(trials, m, bests.metric, seeds, best_of) for m in bests.markets}


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


def format_listing(
    storage: str | os.PathLike[str],
    experiments: Sequence[Experiment],
    storage_arg: str | None = None,
) -> str:
    """The experiments table (``python -m tuner.browse`` without ``--experiment``), and the
    command that shows one; ``storage_arg``: the ``--storage-path`` it repeats (None: the
    default one)."""
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
    where = "" if storage_arg is None else f" --storage-path {shlex.quote(storage_arg)}"
    lines += [
        "",
        f"details: python -m tuner.browse{where} --experiment NAME [--metric M] [--market X]",
    ]
    return "\n".join(lines)


_BEST_HEADERS = [
    "market",
    "phase",
    "#",
    *(_SHORT[m] for m in METRICS),
    *("seed", "run", "trial", "steps", "events", "path"),
]


def format_view(view: ExperimentView) -> str:
    """The trials table and the best-checkpoints table of one experiment."""
    exp, bests = view.experiment, view.bests
    roots = sorted({shown(r) for r in bests.models_roots.values() if r is not None})
    lines = [
        f"experiment {exp.name}  ({os.fspath(exp.path)})",
        f"status: {_status_text(exp.status_counts)}   last update: {_local(exp.last_update)}",
        f"models root: {', '.join(roots) or '-'}",
        "",
        "trials (latest reported result)",
    ]
    trial_rows = []
    for t in bests.trials:
        path = bests.checkpoint_paths.get(t.trial_id)
        last = t.checkpoint or "-"
        if path is not None and not bests.checkpoint_exists(t.trial_id):
            last += "  (not on the bucket)" if isinstance(path, StoreURI) else "  (not on disk)"
        trial_rows.append(
            [
                t.market or "?",
                "?" if t.seed is None else str(t.seed),
                t.status,
                "-" if t.phase is None else str(t.phase),
                "-" if t.timesteps is None else f"{t.timesteps:,}",
                *(_num(t.metrics.get(m), _SPECS[m]) if t.metrics else "-" for m in METRICS),
                t.run_id or "(legacy)",
                t.trial_id,
                *([t.config_id or "-"] if view.configurations else []),
                last,
            ]
        )
    headers = ["market", "seed", "status", "phase", "steps"]
    headers += [_SHORT[m] for m in METRICS] + ["run", "trial"]
    headers += [*(["config"] if view.configurations else []), "last checkpoint"]
    lines += _table(headers, trial_rows, right=set(range(1, 10)) - {2})
    lines += _test_lines(view)
    lines += _configuration_lines(view)
    scope = "every run in its folders" if view.all_runs else "its runs"
    lines += [
        "",
        f"best checkpoints by {bests.metric} (higher is better) of {scope}, top {bests.top} per "
        "market and phase",
    ]
    lines += _table(_BEST_HEADERS, _best_rows(bests), right={1, 2, 3, 4, 5, 6, 7, 8, 9, 12})
    skipped = sum(bests.other_runs.values())
    if skipped and not view.all_runs:
        lines += [
            "",
            f"{skipped} checkpoint(s) of other runs (reruns, other experiments, tuner.train) "
            "share these folders and are not ranked; --all-runs ranks them too",
        ]
    lines += [f"note: {n}" for n in bests.notes]
    return "\n".join(lines)


def _best_rows(bests: Bests) -> list[list[str]]:
    rows = []
    for market in bests.markets:
        ranked = bests.best.get(market, [])
        if not ranked:
            cells = [market, "-", "-", *([""] * (len(_BEST_HEADERS) - 4))]
            rows.append([*cells, f"no checkpoint with a measured {bests.metric}"])
        for b in ranked:
            e = b.entry
            rows.append(
                [
                    market,
                    "?" if e.phase is None else str(e.phase),
                    str(b.rank),
                    *(_num(e.metric(m), _SPECS[m]) for m in METRICS),
                    "?" if e.seed is None else str(e.seed),
                    e.run_id or "(legacy)",
                    b.trial_id or "-",
                    f"{e.timesteps:,}",
                    "+".join(b.events),
                    shown(b.path),
                ]
            )
    return rows


def _configuration_lines(view: ExperimentView) -> list[str]:
    """A search's configurations per market, ranked across seeds."""
    lines: list[str] = []
    metric = view.bests.metric
    for market, configs in view.configurations.items():
        lines += ["", f"{market}: configurations ranked across seeds by {metric} (last result)"]
        rows = [
            [
                c["config_id"],
                str(len(c["seeds"])),
                _num(c["mean"], _SPECS[metric]),
                _num(c["std"], ".3f"),
                f"{c['timesteps']:,}",
                "yes" if c["stopped_early"] else "no",
                ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in c["values"].items()),
            ]
            for c in configs
        ]
        headers = ["config", "seeds", "mean", "std", "steps", "stopped", "values"]
        lines += _table(headers, rows, right={1, 2, 3, 4})
    return lines


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _test_lines(view: ExperimentView) -> list[str]:
    """The held-out test figures, apart from everything measured on validation."""
    results = view.test_results()
    if not results:
        return []
    rows = []
    for r in results:
        p, hold = r.get("policy") or {}, r.get("buy_and_hold") or {}
        low, high = p.get("sharpe_ci") or (None, None)
        rows.append(
            [
                str(r.get("market")),
                str(r.get("seed")),
                str(r.get("event")),
                _num(p.get("total_return"), "+.2f"),
                _num(p.get("sharpe_ratio"), "+.2f"),
                f"[{_num(low, '+.2f')}, {_num(high, '+.2f')}]",
                _num(p.get("max_drawdown"), ".3f"),
                _num(hold.get("total_return"), "+.2f"),
                Path(str(r.get("checkpoint"))).name,
            ]
        )
    headers = ["market", "seed", "event", "return %", "sharpe", "95% CI", "max_dd", "hold %"]
    lines = ["", "held-out test split (checkpoints chosen on validation, measured once)"]
    return lines + _table([*headers, "checkpoint"], rows, right={1, 3, 4, 5, 6, 7})
