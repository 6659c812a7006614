"""What differs between two checkpoints: ``python -m checkpointing.diff A.zip B.zip``.

Works for our checkpoints (metadata, ``_vecnormalize.pkl`` companion) and for any plain SB3
zip. Both are loaded with :func:`checkpointing.loading.load_checkpoint`, so a checkpoint that
fails verification is refused before anything in it is unpickled; nothing is written. It shows:

- the metadata and metric deltas (B - A), when there is metadata;
- the hyperparameters that differ, read from the models themselves (and the metadata);
- per layer of the policy, ``|B - A| / |A|``, largest first; layers only one has, or with
  other shapes (a different network), listed as such;
- the drift of the VecNormalize statistics, when both have one;
- given observations, the share on which both choose the same deterministic action.

From code::

    diff = diff_checkpoints("a.zip", "b.zip", observations=gym_observations("CartPole-v1"))
    diff.layers[0].name, diff.layers[0].relative_change, diff.agreement.share
    print(format_diff(diff)); json.dumps(diff.to_json())

CLI::

    python -m checkpointing.diff A.zip B.zip [--json] [--env CartPole-v1 [--steps 500]]

The observations are pluggable (:class:`checkpointing.observations.ObservationSource`): this
package knows gymnasium environments; ``python -m tuner.diff ... --market NQ`` brings a
market's validation data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from checkpointing.comparison import (
    ActionAgreement,
    HyperparameterChange,
    LayerChange,
    NormalizationDrift,
    action_agreement,
    hyperparameter_changes,
    layer_changes,
    normalization_drift,
    same_value,
)
from checkpointing.errors import CheckpointCorruptError, usage_error
from checkpointing.loading import LoadedCheckpoint, load_checkpoint
from checkpointing.metadata import json_safe
from checkpointing.observations import DEFAULT_STEPS, ObservationSource, gym_observations
from checkpointing.ranking import METRICS

__all__ = [
    "METADATA_FIELDS",
    "CheckpointDiff",
    "FieldChange",
    "Side",
    "build_parser",
    "compare_loaded",
    "diff_checkpoints",
    "env_observations",
    "format_diff",
    "main",
    "run",
]

# Metadata compared side by side: the metrics we report and the timesteps (with deltas), then
# what the checkpoint is.
NUMERIC_FIELDS = (*METRICS, "timesteps")
METADATA_FIELDS = (*NUMERIC_FIELDS, "phase", "market", "seed", "run_id", "event_tag")


@dataclass(frozen=True)
class Side:
    """One of the two checkpoints."""

    path: Path
    verified: bool
    algorithm: str
    timesteps: int
    has_metadata: bool
    has_vec_normalize: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": os.fspath(self.path),
            "verified": self.verified,
            "algorithm": self.algorithm,
            "timesteps": self.timesteps,
            "metadata": self.has_metadata,
            "vec_normalize": self.has_vec_normalize,
        }


@dataclass(frozen=True)
class FieldChange:
    """One metadata field of both checkpoints (None where one lacks it); ``numeric`` fields
    (metrics, timesteps) have a delta, the others (phase, market, seed, run ...) only differ."""

    name: str
    a: Any
    b: Any
    numeric: bool = False

    @property
    def delta(self) -> float | int | None:
        """``b - a`` of a numeric field (NaN when one is not measured), else None."""
        if self.numeric and _number(self.a) and _number(self.b):
            result: float | int = self.b - self.a
            return result
        return None

    @property
    def same(self) -> bool:
        return same_value(self.a, self.b)

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.name,
            "a": self.a,
            "b": self.b,
            "delta": self.delta,
            "same": self.same,
        }


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CheckpointDiff:
    """Everything :func:`diff_checkpoints` found; ``to_json()`` gives it as plain data."""

    a: Side
    b: Side
    metadata: tuple[FieldChange, ...]
    hyperparameters: tuple[HyperparameterChange, ...]
    layers: tuple[LayerChange, ...]
    normalization: NormalizationDrift | None
    agreement: ActionAgreement | None
    notes: tuple[str, ...] = ()

    @property
    def changed_hyperparameters(self) -> tuple[HyperparameterChange, ...]:
        return tuple(h for h in self.hyperparameters if not h.same)

    @property
    def same_network(self) -> bool:
        """Both policies have the same layers with the same shapes."""
        return all(layer.comparable for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        """The diff as a JSON-ready document (NaN and infinities become None)."""
        doc = {
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            "notes": list(self.notes),
            "metadata": [f.to_json() for f in self.metadata],
            "hyperparameters": [h.to_json() for h in self.hyperparameters],
            "same_network": self.same_network,
            "layers": [layer.to_json() for layer in self.layers],
            "vec_normalize": None if self.normalization is None else self.normalization.to_json(),
            "agreement": None if self.agreement is None else self.agreement.to_json(),
        }
        cleaned: dict[str, Any] = json_safe(doc)
        return cleaned


# --------------------------------------------------------------------------- the diff


def diff_checkpoints(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    observations: ObservationSource | np.ndarray | None = None,
    device: str = "cpu",
) -> CheckpointDiff:
    """Compare checkpoint ``b`` with checkpoint ``a`` (deltas are B - A).

    Args:
        a, b: checkpoint zips (ours or plain SB3), each with its ``_vecnormalize.pkl`` if any.
        observations: where to compare actions: an :class:`ObservationSource` (e.g.
            :func:`gym_observations`) or an array of raw observations; None skips it.
        device: where the models are loaded.

    Raises:
        FileNotFoundError: a checkpoint does not exist.
        CheckpointCorruptError: a checkpoint fails verification or holds a pickle no
            checkpoint needs (nothing of it has been unpickled).
        ValueError: the observations do not fit policy A.
    """
    loaded_a = load_checkpoint(a, device=device)
    loaded_b = load_checkpoint(b, device=device)
    return compare_loaded(loaded_a, loaded_b, observations=observations)


def compare_loaded(
    a: LoadedCheckpoint,
    b: LoadedCheckpoint,
    *,
    observations: ObservationSource | np.ndarray | None = None,
) -> CheckpointDiff:
    """:func:`diff_checkpoints` for checkpoints already loaded."""
    notes: list[str] = []
    names = observations.feature_names if isinstance(observations, ObservationSource) else None
    drift = None
    if a.vec_normalize is not None and b.vec_normalize is not None:
        drift = normalization_drift(a.vec_normalize, b.vec_normalize, names)
        if drift is None:
            notes.append("the VecNormalize statistics are of different observation shapes")
    elif a.vec_normalize is not None or b.vec_normalize is not None:
        notes.append(f"only {'A' if a.vec_normalize is not None else 'B'} has a VecNormalize")
    layers = layer_changes(a.model, b.model)
    if not all(layer.comparable for layer in layers):
        notes.append("the policies are different networks (layers or shapes differ)")
    return CheckpointDiff(
        _side(a),
        _side(b),
        _metadata_changes(a.metadata, b.metadata),
        hyperparameter_changes(a.model, b.model, a.metadata, b.metadata),
        layers,
        drift,
        _agreement(a, b, observations, notes),
        tuple(notes),
    )


def _side(c: LoadedCheckpoint) -> Side:
    return Side(
        c.path,
        c.verified,
        type(c.model).__name__,
        int(c.model.num_timesteps),
        bool(c.metadata),
        c.vec_normalize is not None,
    )


def _metadata_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    return tuple(
        FieldChange(name, a.get(name), b.get(name), numeric=name in NUMERIC_FIELDS)
        for name in METADATA_FIELDS
        if name in a or name in b
    )


def _agreement(
    a: LoadedCheckpoint,
    b: LoadedCheckpoint,
    observations: ObservationSource | np.ndarray | None,
    notes: list[str],
) -> ActionAgreement | None:
    if observations is None:
        return None
    if a.model.observation_space.shape != b.model.observation_space.shape:
        notes.append("the policies observe different spaces: actions not compared")
        return None
    if a.model.action_space != b.model.action_space:
        notes.append("the policies act in different spaces: actions not compared")
        return None
    if isinstance(observations, ObservationSource):
        raw, label = observations.collect(a), observations.label
    else:
        raw, label = np.asarray(observations), "given observations"
    return action_agreement(a.model, a.vec_normalize, b.model, b.vec_normalize, raw, label)


# --------------------------------------------------------------------------- text


def _num(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    if math.isnan(value):
        return "nan"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def _side_line(tag: str, side: Side) -> str:
    return "  ".join(
        [
            f"{tag}  {os.fspath(side.path)}",
            "verified" if side.verified else "unverified",
            side.algorithm,
            f"{side.timesteps:,} steps",
            "VecNormalize" if side.has_vec_normalize else "no VecNormalize",
        ]
    )


def _metadata_lines(diff: CheckpointDiff) -> list[str]:
    if not diff.metadata:
        return ["metadata: none (plain SB3 zips)"]
    rows = []
    for f in diff.metadata:
        delta = f.delta
        change = (
            _num(delta, signed=True) if delta is not None else ("same" if f.same else "differs")
        )
        rows.append((f.name, _num(f.a), _num(f.b), change))
    return _table(("metadata", "A", "B", "B - A"), rows)


def _hyperparameter_lines(diff: CheckpointDiff) -> list[str]:
    changed = diff.changed_hyperparameters
    equal = len(diff.hyperparameters) - len(changed)
    if not changed:
        return [f"hyperparameters: all {equal} equal"]
    rows = [(h.name, h.source, _num(h.a), _num(h.b)) for h in changed]
    return [
        f"hyperparameters that differ ({equal} others equal):",
        *_table(("hyperparameter", "source", "A", "B"), rows),
    ]


def _layer_lines(diff: CheckpointDiff) -> list[str]:
    compared = [layer for layer in diff.layers if layer.comparable]
    changed = sum(layer.status == "changed" for layer in compared)
    lines = [
        f"layers: {len(compared)} in both, {changed} changed (|B - A| / |A|, largest first)"
        + ("" if diff.same_network else "; a different network")
    ]
    rows = [
        (
            layer.name,
            _shape(layer),
            layer.status,
            _num(layer.relative_change),
            _num(layer.diff_norm),
            _num(layer.norm_a),
        )
        for layer in diff.layers
    ]
    return lines + _table(("layer", "shape", "status", "relative", "|B - A|", "|A|"), rows)


def _shape(layer: LayerChange) -> str:
    def one(shape: tuple[int, ...] | None) -> str:
        return "-" if shape is None else "x".join(map(str, shape)) or "scalar"

    if layer.shape_a == layer.shape_b:
        return one(layer.shape_a)
    return f"{one(layer.shape_a)} -> {one(layer.shape_b)}"


def _drift_lines(drift: NormalizationDrift, top: int) -> list[str]:
    shift, var = drift.largest_mean_shift, drift.largest_var_change
    lines = [
        f"VecNormalize drift ({len(drift.features)} observation features; "
        f"counts A {drift.count_a:,.0f}, B {drift.count_b:,.0f}):"
    ]
    if shift is not None and var is not None:
        lines.append(
            f"  max |mean shift| {abs(shift.delta_mean_std):.4g} std of A ({shift.name}); "
            f"max |log var ratio| {abs(var.log_var_ratio):.4g} ({var.name})"
        )
        rows = [
            (f.name, _num(f.delta_mean_std, signed=True), _num(f.log_var_ratio, signed=True))
            for f in drift.top(top)
        ]
        lines += ["  " + line for line in _table(("feature", "mean shift/std A", "log var"), rows)]
    ma, mb = drift.return_mean
    va, vb = drift.return_var
    lines.append(
        f"  returns: mean {ma:.4g} -> {mb:.4g}, var {va:.4g} -> {vb:.4g} "
        f"(log var ratio {drift.return_log_var_ratio:+.4g})"
    )
    return lines


def format_diff(diff: CheckpointDiff, *, top_features: int = 5) -> str:
    """The diff as text: a header per checkpoint, then one block per kind of change."""
    blocks = [[_side_line("A", diff.a), _side_line("B", diff.b)]]
    if diff.notes:
        blocks.append([f"note: {note}" for note in diff.notes])
    blocks += [_metadata_lines(diff), _hyperparameter_lines(diff), _layer_lines(diff)]
    if diff.normalization is not None:
        blocks.append(_drift_lines(diff.normalization, top_features))
    if diff.agreement is not None:
        g = diff.agreement
        blocks.append(
            [f"same action on {g.share:.1%} of {g.observations:,} observations ({g.source})"]
        )
    return "\n\n".join("\n".join(block) for block in blocks)


# --------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m checkpointing.diff") -> argparse.ArgumentParser:
    """The command line: two checkpoints, ``--json``, and where to compare actions."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show what differs between two SB3 checkpoints (ours or plain zips): "
        "metadata and metrics, hyperparameters, per-layer parameter change, VecNormalize "
        "drift, and the share of observations on which both choose the same action. "
        "Nothing is written.",
    )
    parser.add_argument("a", help="checkpoint A (.zip); deltas are B - A")
    parser.add_argument("b", help="checkpoint B (.zip)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--env",
        metavar="ID",
        help="compare actions on observations of this gymnasium environment, e.g. CartPole-v1",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=f"steps of policy A to collect observations for (default with --env: {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the environment's episodes (default 0)"
    )
    parser.add_argument("--device", default="cpu", help="where to load the models (default cpu)")
    return parser


def env_observations(args: argparse.Namespace) -> ObservationSource | None:
    """The observations ``--env``, ``--steps`` and ``--seed`` ask for (None without ``--env``).

    Raises:
        ValueError: an unknown environment, or ``--steps`` < 1.
    """
    if args.env is None:
        return None
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    return gym_observations(args.env, steps=steps, seed=args.seed)


def _check_paths(args: argparse.Namespace) -> str | None:
    """The first problem with the checkpoint arguments, before anything is loaded."""
    for tag, text in (("A", args.a), ("B", args.b)):
        if not text or "\x00" in text:
            return f"checkpoint {tag} must be a non-empty path without NUL, got {text!r}"
        if not Path(text).is_file():
            return f"checkpoint {tag} not found (no such file): {text!r}"
    return None


def run(args: argparse.Namespace, observations: ObservationSource | None) -> int:
    """Load, compare and print; returns the exit code (0, or 2 for a refused checkpoint)."""
    problem = _check_paths(args)
    if problem is not None:
        return usage_error(problem)
    try:
        diff = diff_checkpoints(args.a, args.b, observations=observations, device=args.device)
    except CheckpointCorruptError as exc:
        return usage_error(f"refusing to load {exc}")
    except (FileNotFoundError, ValueError) as exc:
        return usage_error(exc)
    if args.json:
        print(json.dumps(diff.to_json(), indent=2, allow_nan=False))
    else:
        print(format_diff(diff))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m checkpointing.diff``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        observations = env_observations(args)
    except ValueError as exc:
        return usage_error(exc)
    return run(args, observations)


if __name__ == "__main__":
    sys.exit(main())
