"""The cross-trial summary the driver writes after all trials: screen table, JSON and CSV.

Built from the experiment's files (:mod:`tuner.driver.experiments`, the browser's reader) and
ranked by :func:`tuner.driver.bests.experiment_bests` (the browser's ranking), so the summary
and ``python -m tuner.browse`` always name the same best checkpoints. Per trial: its run,
status, final metrics and its run's best checkpoints (by Sharpe and by validation reward) in its
last phase. Per market: mean and spread over the seeds, and the best checkpoints of the
experiment per phase.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from checkpointing.locations import shown
from tuner.driver.bests import BestCheckpoint, Bests, bests_by_metric
from tuner.driver.experiments import Experiment, TrialInfo, json_ready
from tuner.driver.tune_files import checkpoint_file_name

__all__ = [
    "BEST_BY",
    "SUMMARY_METRICS",
    "attach_test",
    "build_summary",
    "format_table",
    "format_test_table",
    "write_summary",
]

SUMMARY_METRICS = ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown", "total_return")
BEST_BY = ("sharpe_ratio", "val_reward")


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _checkpoint(best: BestCheckpoint | None) -> dict[str, Any] | None:
    if best is None:
        return None
    entry = best.entry
    return {
        "metric": best.metric,
        "value": best.value,
        "phase": entry.phase,
        "seed": entry.seed,
        "run_id": entry.run_id,
        "timesteps": entry.timesteps,
        "events": list(best.events),
        "path": shown(best.path),
    }


def _trial_row(
    trial: TrialInfo, phases: Sequence[int], ranked: Mapping[str, Bests]
) -> dict[str, Any]:
    phase = trial.phase or phases[-1]
    row: dict[str, Any] = {
        "market": trial.market,
        "seed": trial.seed,
        "run_id": trial.run_id,
        "trial_id": trial.trial_id,
        "trainer": trial.trainer,
        "status": trial.status,
        "phase": phase,
        "timesteps": trial.timesteps or 0,
        "metrics": {m: _num(trial.metrics.get(m)) for m in SUMMARY_METRICS},
        "best": {m: _checkpoint(ranked[m].of_run(trial.trial_id, phase)) for m in BEST_BY},
    }
    if trial.error_file is not None:
        row["error"] = os.fspath(trial.error_file)
    return row


def _market_rows(
    rows: Sequence[Mapping[str, Any]], by_metric: Mapping[str, Bests]
) -> dict[str, dict[str, Any]]:
    markets: dict[str, dict[str, Any]] = {}
    for market in sorted({r["market"] for r in rows if r["market"]}):
        mine = [r for r in rows if r["market"] == market]
        agg: dict[str, Any] = {"seeds": sorted(r["seed"] for r in mine if r["seed"] is not None)}
        for m in SUMMARY_METRICS:
            values = [r["metrics"][m] for r in mine if math.isfinite(r["metrics"][m])]
            agg[m] = {
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values)
                if len(values) > 1
                else (0.0 if values else math.nan),
                "n": len(values),
            }
        agg["best"] = [
            _checkpoint(b) for metric in BEST_BY for b in by_metric[metric].best.get(market, [])
        ]
        markets[market] = agg
    return markets


def build_summary(experiment: Experiment, *, phases: Sequence[int]) -> dict[str, Any]:
    """The summary document of an experiment (JSON-ready; NaN becomes null when written).

    Trials are those of Tune's files; a trial that never started is ``pending``.
    """
    ranked = bests_by_metric(experiment, BEST_BY, top=1)
    rows = [_trial_row(t, phases, ranked) for t in experiment.trials if t.market]
    roots = sorted({shown(t.models_root) for t in experiment.trials if t.models_root})
    return {
        "experiment": experiment.name,
        "phases": list(phases),
        "models_roots": roots,
        "trials": rows,
        "markets": _market_rows(rows, ranked),
        "failed": [f"{r['market']}/{r['seed']}" for r in rows if r["status"] == "errored"],
        "unfinished": [
            f"{r['market']}/{r['seed']}"
            for r in rows
            if r["status"] not in ("finished", "stopped", "errored")
        ],
    }


def write_summary(summary: Mapping[str, Any], folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``{folder}/{experiment}.json`` and ``.csv``; returns both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = str(summary["experiment"])
    json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(
        json.dumps(json_ready(dict(summary)), indent=2, allow_nan=False), encoding="utf-8"
    )
    os.replace(tmp, json_path)
    columns = [
        "market",
        "seed",
        "run_id",
        "trainer",
        "status",
        "phase",
        "timesteps",
        *SUMMARY_METRICS,
        "best_sharpe_path",
        "best_sharpe",
        "best_reward_path",
        "best_reward",
        "test_return",
        "test_sharpe",
        "test_sharpe_low",
        "test_sharpe_high",
        "test_hold_return",
    ]
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in summary["trials"]:
            bs, br = r["best"].get("sharpe_ratio") or {}, r["best"].get("val_reward") or {}
            writer.writerow(
                [
                    r["market"],
                    r["seed"],
                    r["run_id"] or "",
                    r.get("trainer", "sb3"),
                    r["status"],
                    r["phase"],
                    r["timesteps"],
                    *(_csv_num(r["metrics"][m]) for m in SUMMARY_METRICS),
                    bs.get("path", ""),
                    _csv_num(bs.get("value")),
                    br.get("path", ""),
                    _csv_num(br.get("value")),
                    *_test_cells(r),
                ]
            )
    os.replace(tmp, csv_path)
    return json_path, csv_path


def _test_cells(row: Mapping[str, Any]) -> list[str]:
    """The CSV's test columns of a row (empty when the test split was not measured)."""
    test = (row.get("test") or {}).get("best")
    if not test:
        return [""] * 5
    p, hold = test["policy"], test.get("buy_and_hold") or {}
    low, high = p.get("sharpe_ci") or (None, None)
    values = (p["total_return"], p["sharpe_ratio"], low, high, hold.get("total_return"))
    return [_csv_num(v) for v in values]


def _csv_num(value: Any) -> str:
    v = _num(value)
    return "" if not math.isfinite(v) else f"{v:.6g}"


def _fmt(value: Any, spec: str = "+.3f") -> str:
    v = _num(value)
    return "nan" if not math.isfinite(v) else format(v, spec)


def _trainer_suffix(row: Mapping[str, Any]) -> str:
    """`` (rllib)`` after the run of a trial another trainer than sb3 trained."""
    trainer = row.get("trainer", "sb3")
    return "" if trainer == "sb3" else f" ({trainer})"


def format_table(summary: Mapping[str, Any]) -> str:
    """The on-screen table: one line per trial, one per market (mean ± std), then the best
    checkpoints per market and phase."""
    lines = [
        f"{'market':<7} {'seed':>6} {'status':<11} {'phase':>5} {'steps':>10} "
        f"{'val_reward':>10} {'sharpe':>8} {'win_rate':>8} {'max_dd':>7}  run"
    ]
    for r in summary["trials"]:
        m = r["metrics"]
        lines.append(
            f"{r['market'] or '?':<7} {r['seed'] if r['seed'] is not None else '?':>6} "
            f"{r['status']:<11} {r['phase']:>5} {r['timesteps']:>10,} "
            f"{_fmt(m['val_reward']):>10} {_fmt(m['sharpe_ratio'], '+.2f'):>8} "
            f"{_fmt(m['win_rate'], '.3f'):>8} {_fmt(m['max_drawdown'], '.3f'):>7}  "
            f"{r['run_id'] or '(legacy)'}{_trainer_suffix(r)}"
        )
    lines += [
        "",
        f"{'market':<7} {'seeds':>5}  {'val_reward (mean ± std)':>24}  {'sharpe (mean ± std)':>20}",
    ]
    for market, agg in summary["markets"].items():
        vr, sr = agg["val_reward"], agg["sharpe_ratio"]
        lines.append(
            f"{market:<7} {len(agg['seeds']):>5}  "
            f"{_fmt(vr['mean']) + ' ± ' + _fmt(vr['std'], '.3f'):>24}  "
            f"{_fmt(sr['mean'], '+.2f') + ' ± ' + _fmt(sr['std'], '.2f'):>20}"
        )
    lines += ["", "best checkpoints of the experiment (python -m tuner.browse names the same)"]
    for market, agg in summary["markets"].items():
        for best in agg["best"]:
            lines.append(
                f"{market:<7} phase {best['phase']}  {best['metric']:<12} "
                f"{_fmt(best['value']):>9}  seed {best['seed']}  {best['path']}"
            )
    return "\n".join(lines)


def attach_test(summary: dict[str, Any], test: Mapping[str, Any]) -> None:
    """Add each trial's held-out test figures (``python -m tuner.evaluate``'s document) to
    its row, apart from the validation ones: ``row["test"]["best"]`` for the checkpoint the
    row's ``best`` by Sharpe names, ``row["test"]["phase_end"]`` for its run's phase_end."""
    results = [r for r in test.get("results", []) if isinstance(r, Mapping)]
    # By file name: a checkpoint in a bucket was measured from its fetched copy.
    by_name = {checkpoint_file_name(r.get("checkpoint")): r for r in results}
    for row in summary["trials"]:
        best = (row.get("best") or {}).get("sharpe_ratio") or {}
        end = next(
            (
                r
                for r in results
                if r.get("run_id") == row.get("run_id") and r.get("event") == "phase_end"
            ),
            None,
        )
        chosen = by_name.get(checkpoint_file_name(best.get("path")))
        row["test"] = {"best": _figures(chosen), "phase_end": _figures(end)}


def _figures(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A test result without its equity curve (the report draws it from the test file)."""
    return None if result is None else {k: v for k, v in result.items() if k != "curve"}


def format_test_table(summary: Mapping[str, Any]) -> str:
    """The held-out test figures of each trial's checkpoint chosen on validation."""
    lines = [
        "held-out test split (the checkpoint each trial's validation chose; measured once)",
        f"{'market':<7} {'seed':>6} {'return %':>9} {'sharpe':>8} {'95% CI':>17} "
        f"{'max_dd':>7} {'hold %':>8}  checkpoint",
    ]
    for r in summary["trials"]:
        test = (r.get("test") or {}).get("best")
        if not test:
            continue
        p, hold = test["policy"], test.get("buy_and_hold") or {}
        low, high = p.get("sharpe_ci") or (math.nan, math.nan)
        ci = f"[{_fmt(low, '+.2f')}, {_fmt(high, '+.2f')}]"
        lines.append(
            f"{r['market'] or '?':<7} {r['seed'] if r['seed'] is not None else '?':>6} "
            f"{_fmt(p['total_return'], '+.2f'):>9} {_fmt(p['sharpe_ratio'], '+.2f'):>8} "
            f"{ci:>17} {_fmt(p['max_drawdown'], '.3f'):>7} "
            f"{_fmt(hold.get('total_return'), '+.2f'):>8}  {Path(test['checkpoint']).name}"
        )
    return "\n".join(lines)
