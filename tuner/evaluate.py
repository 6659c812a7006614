"""Out-of-sample evaluation: ``python -m tuner.evaluate``.

    python -m tuner.evaluate --checkpoint models/phase1/NQ/checkpoints/<name>.zip
    python -m tuner.evaluate --experiment NQ-ES_s42-7_p1 [--metric sharpe_ratio]

One checkpoint, or for every trial of an experiment the checkpoint chosen on validation (its
run's best by ``--metric``, the ranking ``tuner.browse`` uses) and its ``phase_end``, each
measured once on the held-out test split (:mod:`tuner.training.held_out`), next to buy and
hold and flat. With ``--experiment`` the figures also go to
``<models_root>/summaries/<experiment>_test.json``. Nothing else is written.

Both may be in a bucket (``--storage-path s3://...``, trials that recorded an ``s3://``
models root): Tune's results are read from the cache copy of the bucket's, each chosen
checkpoint is fetched into the staging folder (``--staging-dir``) and verified before anything
is unpickled, and the figures go to the staging folder's ``summaries/`` and the bucket's.
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
    p.add_argument(
        "--storage-path",
        default="ray_results",
        help="Tune results folder, or s3://bucket/prefix (default ray_results)",
    )
    p.add_argument(
        "--staging-dir",
        help="for checkpoints in a bucket: the local folder they are fetched into (default: "
        "~/.cache/futures-rl-tuner/staging/<bucket>/<prefix>, as tuner.train stages them)",
    )
    p.add_argument("--metric", default="sharpe_ratio", help=f"selection metric: {METRICS}")
    p.add_argument("--config-dir", default="config", help="folder of the YAML configs")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap samples (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _chosen(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], Any]:
    """(label, checkpoint) pairs of an experiment: per trial its best and its phase_end. A
    checkpoint in a bucket is fetched into the staging folder and verified first."""
    from checkpointing.locations import StoreURI
    from checkpointing.store import list_checkpoints
    from tuner.driver.bests import experiment_bests
    from tuner.driver.experiments import BrowseError, load_experiment

    try:
        experiment = load_experiment(args.storage_path, args.experiment)
        bests = experiment_bests(experiment, args.metric, top=1)
    except BrowseError as exc:
        raise ConfigError(str(exc)) from None
    chosen: list[tuple[str, Path]] = []
    buckets: dict[Any, _BucketCheckpoints] = {}  # one per models root in a bucket
    for t in bests.trials:
        phase = t.phase or (t.phases[-1] if t.phases else 1)
        best = bests.of_run(t.trial_id, phase)
        if best is None:
            continue
        if isinstance(best.path, StoreURI):
            root = bests.models_roots.get(t.trial_id)
            if root not in buckets:
                buckets[root] = _BucketCheckpoints(root, args.staging_dir)
            bucket = buckets[root]
            path = bucket.fetch(best.path)
            ends = _phase_ends(bucket.listing(path.parent, best.path), t.run_id)
            end = bucket.fetch(ends[-1]) if ends and ends[-1].name != path.name else None
        else:
            path = best.path
            ends = _phase_ends(list_checkpoints(path.parent), t.run_id)
            end = ends[-1] if ends and ends[-1].name != path.name else None
        chosen.append((f"{t.market} seed {t.seed} best", path))
        if end is not None:
            chosen.append((f"{t.market} seed {t.seed} phase_end", end))
    return chosen, experiment


def _phase_ends(infos: Sequence[Any], run_id: str | None) -> list[Path]:
    """The phase_end checkpoints of run ``run_id`` among ``infos``, oldest first."""
    from checkpointing.naming import CheckpointName

    return [
        i.path
        for i in infos
        if isinstance(i.name, CheckpointName)
        and i.name.event == "phase_end"
        and i.name.run_id == run_id
    ]


class _BucketCheckpoints:
    """Checkpoints of a models root in a bucket, read through its staging folder on this
    machine (``--staging-dir``, else the default one of the URI): listed on the bucket,
    fetched and verified before anything is unpickled (:class:`checkpointing.fetch.
    BucketMirror`). A staged copy that verifies is used as it is."""

    def __init__(self, root: Any, staging_dir: str | None) -> None:
        from checkpointing.fetch import BucketMirror
        from checkpointing.locations import StoreURI
        from checkpointing.object_store import ObjectStore

        if not isinstance(root, StoreURI):  # pragma: no cover - bests put both together
            raise ConfigError(f"no models root in a bucket recorded for {root}")
        self.mirror = BucketMirror(ObjectStore(root), _staging_of(root, staging_dir))

    def fetch(self, where: Any) -> Path:
        """The checkpoint ``where`` (its URI, or its path in staging) on this machine,
        verified.

        Raises:
            CheckpointCorruptError: the bucket's copy fails verification (named).
            ConfigError: the bucket does not have it, or cannot be read.
        """
        try:
            path = where if isinstance(where, Path) else self.mirror.path_of(where)
            return self.mirror.verified(path)
        except FileNotFoundError:
            raise ConfigError(f"{where}: not on the bucket (deleted since the run?)") from None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot fetch it ({exc})") from None

    def listing(self, folder: Path, about: Any) -> list[Any]:
        """The checkpoints of the staging folder ``folder`` that are on the bucket (one
        listing; ``about``: the checkpoint that led there, for messages)."""
        try:
            return self.mirror.checkpoints(folder)
        except OSError as exc:
            raise ConfigError(f"{about}: cannot list its folder ({exc})") from None


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
        local_root = _local_root(root, args.staging_dir)
        rows = [
            (label, evaluate_on_test(p, settings, boot=args.boot, models_root=local_root))
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
    if local_root is not None:
        out = local_root / "summaries" / f"{args.experiment}_test.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(json_ready(doc), indent=2, allow_nan=False), encoding="utf-8")
        if not args.json:
            print(f"test figures: {out}")
        if root is not None and root != local_root:
            return _upload_figures(root, out, quiet=args.json)
    return 0


def _local_root(root: Any, staging_dir: str | None) -> Path | None:
    """The models root on this machine: ``root`` itself, or for one in a bucket its staging
    folder (where the chosen checkpoints were fetched and the data cache is)."""
    from checkpointing.locations import StoreURI

    if isinstance(root, StoreURI):
        return _staging_of(root, staging_dir)
    return root if isinstance(root, Path) else None


def _staging_of(root: Any, staging_dir: str | None) -> Path:
    """The staging folder of the bucket models root ``root``: ``--staging-dir``, checked as
    ``tuner.train`` checks it (a local folder, never a URI), else the URI's default one.

    Raises:
        ConfigError: a ``--staging-dir`` that is a URI or a file.
    """
    from tuner.training.staging import resolve_models_root

    staging, _ = resolve_models_root(str(root), staging_dir)
    assert staging is not None  # a URI always gets one
    return staging


def _upload_figures(root: Any, path: Path, *, quiet: bool) -> int:
    """Put the test figures beside the bucket's summaries; 1 when that fails (the figures
    are printed and kept locally)."""
    from checkpointing.errors import ObjectStoreError
    from tuner.driver.remote import upload_files

    try:
        (uri,) = upload_files(root, "summaries", [path])
    except ObjectStoreError as exc:
        print(f"test figures: not uploaded ({exc})", file=sys.stderr)
        return 1
    if not quiet:
        print(f"              {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
