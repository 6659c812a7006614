"""The cross-trial summary the driver writes after all trials: screen table, JSON and CSV.

Per (market, seed): status, final metrics, and the best checkpoints (by Sharpe and by
validation reward) with their paths. Per market: mean and spread over the seeds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkpointing.config import CheckpointConfig

__all__ = ["SUMMARY_METRICS", "TrialOutcome", "build_summary", "format_table", "write_summary"]

SUMMARY_METRICS = ("val_reward", "sharpe_ratio", "win_rate", "max_drawdown", "total_return")
BEST_BY = ("sharpe_ratio", "val_reward")


@dataclass
class TrialOutcome:
    """What the driver knows of one trial at the end."""

    market: str
    seed: int
    status: str  # TERMINATED, ERROR, RUNNING/PAUSED/PENDING (interrupted)
    last_result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    trial_id: str | None = None


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _best(
    root: Path, config: CheckpointConfig, phase: int, market: str, seed: int, metric: str
) -> dict[str, Any] | None:
    from checkpointing.registry import find_best

    entry = find_best(root, phase, market, metric, seed, config=config)
    if entry is None:
        return None
    return {
        "metric": metric,
        "value": entry.metric(metric),
        "timesteps": entry.timesteps,
        "event": entry.event,
        "path": os.fspath(entry.absolute(root)),
    }


def build_summary(
    experiment: str,
    trials: Sequence[TrialOutcome],
    *,
    config: CheckpointConfig,
    models_root: str | os.PathLike[str],
    phases: Sequence[int],
) -> dict[str, Any]:
    """The summary document (JSON-ready; NaN becomes null when written)."""
    root = Path(models_root)
    rows: list[dict[str, Any]] = []
    for t in sorted(trials, key=lambda t: (t.market, t.seed)):
        r = t.last_result
        phase = int(r.get("phase") or phases[-1])
        row: dict[str, Any] = {
            "market": t.market,
            "seed": t.seed,
            "status": t.status,
            "phase": phase,
            "timesteps": int(r.get("timesteps") or 0),
            "phase_timesteps": int(r.get("phase_timesteps") or 0),
            "metrics": {m: _num(r.get(m)) for m in SUMMARY_METRICS},
            "checkpoint_dir": os.fspath(config.checkpoint_dir(phase, t.market, root)),
            "best": {m: _best(root, config, phase, t.market, t.seed, m) for m in BEST_BY},
        }
        if t.error:
            row["error"] = t.error
        rows.append(row)

    markets: dict[str, dict[str, Any]] = {}
    for market in sorted({r["market"] for r in rows}):
        mine = [r for r in rows if r["market"] == market]
        agg: dict[str, Any] = {"seeds": [r["seed"] for r in mine]}
        for m in SUMMARY_METRICS:
            values = [r["metrics"][m] for r in mine if math.isfinite(r["metrics"][m])]
            agg[m] = {
                "mean": statistics.fmean(values) if values else math.nan,
                "std": statistics.stdev(values)
                if len(values) > 1
                else (0.0 if values else math.nan),
                "n": len(values),
            }
        best = [r["best"]["sharpe_ratio"] for r in mine if r["best"]["sharpe_ratio"]]
        best.sort(key=lambda b: -_num(b.get("value")))
        agg["best_sharpe_checkpoint"] = best[0] if best else None
        markets[market] = agg

    return {
        "experiment": experiment,
        "phases": list(phases),
        "models_root": os.fspath(root),
        "trials": rows,
        "markets": markets,
        "failed": [f"{r['market']}/{r['seed']}" for r in rows if r["status"] == "ERROR"],
        "unfinished": [
            f"{r['market']}/{r['seed']}" for r in rows if r["status"] not in ("TERMINATED", "ERROR")
        ],
    }


def write_summary(summary: Mapping[str, Any], folder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``{folder}/{experiment}.json`` and ``.csv``; returns both paths."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = str(summary["experiment"])
    json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(_clean(dict(summary)), indent=2, allow_nan=False), encoding="utf-8")
    os.replace(tmp, json_path)
    columns = [
        "market",
        "seed",
        "status",
        "phase",
        "timesteps",
        *SUMMARY_METRICS,
        "best_sharpe_path",
        "best_sharpe",
        "best_reward_path",
        "best_reward",
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
                    r["status"],
                    r["phase"],
                    r["timesteps"],
                    *(_csv_num(r["metrics"][m]) for m in SUMMARY_METRICS),
                    bs.get("path", ""),
                    _csv_num(bs.get("value")),
                    br.get("path", ""),
                    _csv_num(br.get("value")),
                ]
            )
    os.replace(tmp, csv_path)
    return json_path, csv_path


def _csv_num(value: Any) -> str:
    v = _num(value)
    return "" if not math.isfinite(v) else f"{v:.6g}"


def _fmt(value: Any, spec: str = "+.3f") -> str:
    v = _num(value)
    return "nan" if not math.isfinite(v) else format(v, spec)


def format_table(summary: Mapping[str, Any]) -> str:
    """The on-screen table: one line per trial, then one per market (mean ± std)."""
    lines = [
        f"{'market':<7} {'seed':>6} {'status':<10} {'phase':>5} {'steps':>10} "
        f"{'val_reward':>10} {'sharpe':>8} {'win_rate':>8} {'max_dd':>7}  best checkpoint (sharpe)"
    ]
    for r in summary["trials"]:
        m = r["metrics"]
        best = r["best"].get("sharpe_ratio")
        lines.append(
            f"{r['market']:<7} {r['seed']:>6} {r['status']:<10} {r['phase']:>5} "
            f"{r['timesteps']:>10,} {_fmt(m['val_reward']):>10} "
            f"{_fmt(m['sharpe_ratio'], '+.2f'):>8} "
            f"{_fmt(m['win_rate'], '.3f'):>8} {_fmt(m['max_drawdown'], '.3f'):>7}  "
            f"{best['path'] if best else '-'}"
        )
    lines.append("")
    lines.append(
        f"{'market':<7} {'seeds':>5}  {'val_reward (mean ± std)':>24}  {'sharpe (mean ± std)':>20}"
    )
    for market, agg in summary["markets"].items():
        vr, sr = agg["val_reward"], agg["sharpe_ratio"]
        lines.append(
            f"{market:<7} {len(agg['seeds']):>5}  "
            f"{_fmt(vr['mean']) + ' ± ' + _fmt(vr['std'], '.3f'):>24}  "
            f"{_fmt(sr['mean'], '+.2f') + ' ± ' + _fmt(sr['std'], '.2f'):>20}"
        )
    return "\n".join(lines)


def outcomes_from(rows: Iterable[Mapping[str, Any]]) -> list[TrialOutcome]:
    """Rebuild outcomes from summary rows (used by the browser)."""
    return [
        TrialOutcome(str(r["market"]), int(r["seed"]), str(r["status"]), dict(r.get("metrics", {})))
        for r in rows
    ]
