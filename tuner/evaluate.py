"""Out-of-sample evaluation: ``python -m tuner.evaluate``.

    python -m tuner.evaluate --checkpoint models/phase1/NQ/checkpoints/<name>.zip
    python -m tuner.evaluate --experiment NQ-ES_s42-7_p1 [--metric sharpe_ratio]

One checkpoint, or for every trial of an experiment the checkpoint chosen on validation (its
run's best by ``--metric``, the ranking ``tuner.browse`` uses) and its ``phase_end``, each
measured once on the held-out test split (:mod:`tuner.training.held_out`), next to buy and
hold and flat. With ``--experiment`` the figures also go to
``<models_root>/summaries/<experiment>_test.json``. Nothing else is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checkpointing.errors import CheckpointNameError, ConfigError, usage_error
from checkpointing.locations import local_folder
from checkpointing.ranking import METRICS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tuner.evaluate",
        description="Measure checkpoints chosen on validation on the held-out test split.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="PATH", help="one checkpoint zip")
    what.add_argument("--experiment", help="every trial of this tuner.run experiment")
    p.add_argument("--storage-path", default="ray_results", help="Tune results folder")
    p.add_argument("--metric", default="sharpe_ratio", help=f"selection metric: {METRICS}")
    p.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap samples (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _chosen(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], Any]:
    """(label, checkpoint) pairs of an experiment: per trial its best and its phase_end."""
    from checkpointing.naming import CheckpointName
    from checkpointing.store import list_checkpoints
    from tuner.driver.bests import experiment_bests
    from tuner.driver.experiments import BrowseError, load_experiment

    try:
        experiment = load_experiment(args.storage_path, args.experiment)
        bests = experiment_bests(experiment, args.metric, top=1)
    except BrowseError as exc:
        raise ConfigError(str(exc)) from None
    chosen: list[tuple[str, Path]] = []
    for t in bests.trials:
        phase = t.phase or (t.phases[-1] if t.phases else 1)
        best = bests.of_run(t.trial_id, phase)
        if best is None:
            continue
        path = best.path
        if not isinstance(path, Path):
            raise ConfigError(
                f"the checkpoints of experiment {args.experiment!r} are in a bucket ({path}): "
                "python -m tuner.evaluate does not fetch checkpoints from a bucket yet"
            )
        chosen.append((f"{t.market} seed {t.seed} best", path))
        ends = [
            i.path
            for i in list_checkpoints(path.parent)
            if isinstance(i.name, CheckpointName)
            and i.name.event == "phase_end"
            and i.name.run_id == t.run_id
        ]
        if ends and ends[-1] != path:
            chosen.append((f"{t.market} seed {t.seed} phase_end", ends[-1]))
    return chosen, experiment


def _fmt(value: Any, spec: str) -> str:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    return format(value, spec) if ok else "nan"


def _table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    head = f"{'checkpoint':<22} {'bars':>6} {'return %':>9} {'sharpe':>7} {'95% CI':>17}"
    lines = [f"{head} {'max_dd':>7} {'trades':>6} {'hold %':>8} {'hold sharpe':>11}"]
    for label, r in rows:
        p, hold = r["policy"], r["buy_and_hold"] or {}
        low, high = p["sharpe_ci"]
        lines.append(
            f"{label:<22} {r['bars']:>6} {_fmt(p['total_return'], '+9.2f')} "
            f"{_fmt(p['sharpe_ratio'], '+7.2f')} "
            f"{'[' + _fmt(low, '+.2f') + ', ' + _fmt(high, '+.2f') + ']':>17} "
            f"{_fmt(p['max_drawdown'], '7.3f')} {_fmt(p['n_trades'], '6.0f')} "
            f"{_fmt(hold.get('total_return'), '+8.2f')} {_fmt(hold.get('sharpe_ratio'), '+11.2f')}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from checkpointing.errors import CheckpointCorruptError
    from tuner.driver.experiments import json_ready
    from tuner.training.held_out import evaluate_on_test
    from tuner.training.settings import load_settings

    try:
        if args.metric not in METRICS:
            raise ConfigError(f"--metric must be one of {list(METRICS)}, got {args.metric!r}")
        if args.boot < 100:
            raise ConfigError(f"--boot must be >= 100, got {args.boot!r}")
        settings = load_settings(args.config_dir)
        if args.checkpoint is not None:
            path = local_folder(args.checkpoint, "--checkpoint", "python -m tuner.evaluate")
            if not path.is_file():
                raise ConfigError(f"--checkpoint: no such file {os.fspath(path)!r}")
            chosen, experiment = [(path.name[:22], path)], None
        else:
            chosen, experiment = _chosen(args)
            if not chosen:
                raise ConfigError(f"experiment {args.experiment!r}: no checkpoint to evaluate")
        root = experiment.models_roots[0] if experiment and experiment.models_roots else None
        rows = [
            (label, evaluate_on_test(p, settings, boot=args.boot, models_root=root))
            for label, p in chosen
        ]
    except (ConfigError, CheckpointNameError, CheckpointCorruptError, ValueError) as exc:
        return usage_error(exc)
    doc = {"split": "test", "metric": args.metric, "results": [r for _, r in rows]}
    if args.json:
        print(json.dumps(json_ready(doc), indent=2, allow_nan=False))
    else:
        print(_table(rows))
        print("\nheld-out test split, deterministic policy, one pass; validation chose them")
    if experiment is not None and experiment.models_roots:
        out = experiment.models_roots[0] / "summaries" / f"{args.experiment}_test.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_ready(doc), indent=2, allow_nan=False), encoding="utf-8")
        if not args.json:
            print(f"test figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
