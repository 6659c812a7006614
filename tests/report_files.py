"""Hand-made experiments for the report's tests: the files ``tuner.run`` leaves, small.

A trial folder holds ``params.json`` (Tune's config of the trial) and ``result.json`` (one
report per line, as our trainable reports them, with the fields of Tune's that the readers
use); a checkpoint is a zip, its VecNormalize pkl (a few bytes each) and real metadata
(:func:`checkpointing.metadata.build_metadata`), a ``best`` a hard link of its ``periodic``
twin, as the manager commits them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from checkpointing.metadata import build_metadata, encode_metadata
from checkpointing.naming import METADATA_SUFFIX, VECNORM_SUFFIX, CheckpointName
from tests.tiny_config import CONFIG_DIR


def checkpoint_dir(models: Path, market: str, phase: int = 1) -> Path:
    """The shipped layout's checkpoint folder."""
    folder = models / f"phase{phase}" / market / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_checkpoint(
    folder: Path,
    name: CheckpointName,
    *,
    phase: int = 1,
    twin_of: CheckpointName | None = None,
    size: int = 1000,
) -> Path:
    """A committed checkpoint of ``size`` zip bytes (a hard link of ``twin_of``'s files)."""
    metrics = {
        "val_reward": name.val_reward,
        "sharpe_ratio": name.sharpe_ratio,
        "win_rate": 0.5,
        "max_drawdown": -0.05,
        "total_return": 1.0,
    }
    meta = build_metadata(name=name, phase=phase, metrics=metrics, metrics_timesteps=name.timesteps)
    (folder / (name.base + METADATA_SUFFIX)).write_bytes(encode_metadata(meta))
    zip_path, pkl_path = folder / name.filename, folder / (name.base + VECNORM_SUFFIX)
    if twin_of is None:
        pkl_path.write_bytes(b"\x80\x04" + b"v" * 98)
        zip_path.write_bytes(b"PK\x03\x04" + b"z" * (size - 4))
    else:
        os.link(folder / (twin_of.base + VECNORM_SUFFIX), pkl_path)
        os.link(folder / twin_of.filename, zip_path)
    return zip_path


def write_trial(
    experiment_dir: Path,
    trial_id: str,
    *,
    market: str,
    seed: int,
    models: Path,
    rows: Sequence[Mapping[str, Any]],
    phases: Sequence[int] = (1,),
    stage: str = "grid",
    training: Mapping[str, Any] | None = None,
) -> Path:
    """A trial folder with its config and its reports (``rows``, each completed with the
    fields every report has)."""
    folder = experiment_dir / f"train_trial_{trial_id}_market={market},seed={seed}"
    folder.mkdir(parents=True)
    config = {
        "market": market,
        "seed": seed,
        "phases": list(phases),
        "experiment": experiment_dir.name,
        "config_dir": os.fspath(CONFIG_DIR),
        "models_root": os.fspath(models),
        "stage": stage,
        "training": dict(training or {}),
    }
    (folder / "params.json").write_text(json.dumps(config))
    with open(folder / "result.json", "w") as fh:
        for k, row in enumerate(rows, start=1):
            full = {"market": market, "seed": seed, "stage": stage, **row}
            full.update(trial_id=trial_id, training_iteration=k, config=config)
            fh.write(json.dumps(full) + "\n")
    return folder


def report_row(
    name: CheckpointName | None,
    *,
    saved: Sequence[CheckpointName] | None = None,
    completed: int = 0,
    phase: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """An evaluation's report: the metrics its checkpoint's name carries, its timesteps, the
    checkpoint and (``saved``, default: that one) every checkpoint the evaluation saved."""
    row: dict[str, Any] = {"phase": phase, "pruned": 0, "pruned_bytes": 0}
    if name is not None:
        row.update(
            val_reward=name.val_reward,
            sharpe_ratio=name.sharpe_ratio,
            win_rate=0.5,
            max_drawdown=-0.05,
            total_return=1.0,
            run_id=name.run_id,
            phase_timesteps=name.timesteps,
            timesteps=completed + name.timesteps,
            checkpoint=name.filename,
            saved=[n.filename for n in (saved if saved is not None else [name])],
        )
    row.update(extra)
    return row


class Elements(HTMLParser):
    """Every element of a page, with its attributes and the trial block it is in."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], str | None]] = []
        self._trial: list[str | None] = [None]
        self._depth: list[int] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "div" and values.get("id", "").startswith("trial-"):
            self._trial.append(values["id"].removeprefix("trial-"))
            self._depth.append(0)
        elif tag == "div" and self._depth:
            self._depth[-1] += 1
        self.found.append((tag, values, self._trial[-1]))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}, self._trial[-1]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._depth:
            if self._depth[-1] == 0:
                self._depth.pop()
                self._trial.pop()
            else:
                self._depth[-1] -= 1

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, tag: str, cls: str = "", trial: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a, where in self.found
            if t == tag
            and set(cls.split()) <= set(a.get("class", "").split())
            and (trial is None or where == trial)
        ]
