"""The driver's summary (:mod:`tuner.driver.summary`): statistics over seeds, each trial's best
from its own run, the experiment's bests as the browser ranks them, and the files it writes.

The models root holds committed (fake) checkpoints of the experiment's runs and of one run
outside it that shares a market, a seed and a folder and has better metrics; the experiment is
built by hand, as :mod:`tuner.driver.experiments` would read it from Tune's files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path

import pytest

from checkpointing.config import CheckpointConfig
from checkpointing.metadata import build_metadata
from checkpointing.naming import CheckpointName
from checkpointing.registry import Registry
from checkpointing.store import commit_files
from tuner.driver.bests import experiment_bests
from tuner.driver.experiments import Experiment, TrialInfo
from tuner.driver.summary import BEST_BY, build_summary, format_table, write_summary

CONFIG = CheckpointConfig()
NAN = math.nan
OUTSIDER = "rerun"  # a run of NQ seed 1 in the same folder, not in the experiment

# (market, seed, run_id, timesteps, val_reward, sharpe_ratio)
CHECKPOINTS = [
    ("NQ", 1, "exp-nq-1", 1000, 0.10, 1.00),
    ("NQ", 1, "exp-nq-1", 2000, 0.30, 0.50),
    ("NQ", 2, "exp-nq-2", 1000, 0.20, 2.00),
    ("NQ", 2, "exp-nq-2", 2000, 0.25, 1.50),
    ("NQ", 1, OUTSIDER, 1500, 9.00, 9.00),
    ("ES", 1, "exp-es-1", 1000, 0.40, 0.70),
    ("ES", 1, "exp-es-1", 2000, 0.35, 0.80),
]

# The trials' final metrics (Tune's last result), not the checkpoints': ES has one seed and
# never reported total_return.
FINAL = {
    ("NQ", 1): {"val_reward": 0.30, "sharpe_ratio": 0.50, "win_rate": 0.52, "total_return": 0.01},
    ("NQ", 2): {"val_reward": 0.25, "sharpe_ratio": 1.50, "win_rate": 0.48, "total_return": 0.03},
    ("ES", 1): {"val_reward": 0.35, "sharpe_ratio": 0.80, "win_rate": 0.55},
}
RUNS = {("NQ", 1): "exp-nq-1", ("NQ", 2): "exp-nq-2", ("ES", 1): "exp-es-1"}


def commit(
    root: Path, registry: Registry, checkpoint: tuple[str, int, str, int, float, float]
) -> Path:
    """Commit a small fake checkpoint (a periodic save), telling the registry."""
    market, seed, run_id, ts, val, sharpe = checkpoint
    name = CheckpointName(market, ts, "periodic", val, sharpe, seed, run_id)

    def write_zip(tmp: Path) -> None:
        tmp.write_bytes(b"PK" + name.filename.encode())

    zip_path, _ = commit_files(
        CONFIG.checkpoint_dir(1, market, root),
        name.filename,
        write_zip,
        b"vecnormalize",
        build_metadata(
            name=name,
            phase=1,
            metrics={"val_reward": val, "sharpe_ratio": sharpe},
            metrics_timesteps=ts,
        ),
        on_commit=registry.record,
    )
    return zip_path


@pytest.fixture
def experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Experiment:
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not under test here
    monkeypatch.chdir(tmp_path)  # no config/ here: the default checkpoint layout
    root = tmp_path / "models"
    registry = Registry(root)
    for checkpoint in CHECKPOINTS:
        commit(root, registry, checkpoint)
    trials = tuple(
        TrialInfo(
            trial_id=f"t{i}",
            folder=tmp_path / "exp" / f"t{i}",
            market=market,
            seed=seed,
            run_id=RUNS[(market, seed)],
            phases=(1,),
            models_root=root,
            config_dir=None,
            status="finished",
            phase=1,
            timesteps=2000,
            metrics=metrics,
        )
        for i, ((market, seed), metrics) in enumerate(FINAL.items())
    )
    return Experiment("exp", tmp_path / "exp", trials)


def path_of(root: Path, market: str, seed: int, run_id: str, ts: int) -> str:
    (val, sharpe) = next((c[4], c[5]) for c in CHECKPOINTS if c[:4] == (market, seed, run_id, ts))
    name = CheckpointName(market, ts, "periodic", val, sharpe, seed, run_id)
    return os.fspath(CONFIG.checkpoint_dir(1, market, root) / name.filename)


def test_per_market_mean_and_std_over_seeds(experiment: Experiment) -> None:
    markets = build_summary(experiment, phases=[1])["markets"]
    assert markets["NQ"]["seeds"] == [1, 2] and markets["ES"]["seeds"] == [1]
    for metric in ("val_reward", "sharpe_ratio", "win_rate", "total_return"):
        values = [FINAL[("NQ", 1)][metric], FINAL[("NQ", 2)][metric]]
        assert markets["NQ"][metric] == {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values),
            "n": 2,
        }
    assert markets["ES"]["val_reward"] == {"mean": 0.35, "std": 0.0, "n": 1}  # one seed
    for metric in ("total_return", "max_drawdown"):  # never reported
        agg = markets["ES"][metric]
        assert math.isnan(agg["mean"]) and math.isnan(agg["std"]) and agg["n"] == 0


def test_each_trials_best_is_from_its_own_run(experiment: Experiment) -> None:
    root = experiment.trials[0].models_root
    assert root is not None
    rows = {(r["market"], r["seed"]): r for r in build_summary(experiment, phases=[1])["trials"]}
    expected = {  # (trial) -> (best by sharpe, best by val_reward): timesteps in its run
        ("NQ", 1): (1000, 2000),  # not the outsider of the same seed, better at both
        ("NQ", 2): (1000, 2000),
        ("ES", 1): (2000, 1000),
    }
    for (market, seed), (by_sharpe, by_val) in expected.items():
        row, run_id = rows[(market, seed)], RUNS[(market, seed)]
        assert row["run_id"] == run_id and row["status"] == "finished"
        for metric, ts in (("sharpe_ratio", by_sharpe), ("val_reward", by_val)):
            best = row["best"][metric]
            assert (best["run_id"], best["timesteps"], best["seed"]) == (run_id, ts, seed)
            assert best["path"] == path_of(root, market, seed, run_id, ts)


def test_market_bests_are_the_browsers_and_only_the_experiments(experiment: Experiment) -> None:
    summary = build_summary(experiment, phases=[1])
    for market in ("NQ", "ES"):
        bests = summary["markets"][market]["best"]
        assert [b["metric"] for b in bests] == list(BEST_BY)
        for listed, metric in zip(bests, BEST_BY, strict=True):
            ranked = experiment_bests(experiment, metric).first(market, 1)
            assert ranked is not None
            assert listed["path"] == os.fspath(ranked.path)
            assert (listed["run_id"], listed["value"]) == (ranked.entry.run_id, ranked.value)
            assert listed["run_id"] != OUTSIDER
    # The outsider is the best of the folder: leaving it out is what the rule does.
    for metric in BEST_BY:
        every_run = experiment_bests(experiment, metric, all_runs=True).first("NQ", 1)
        assert every_run is not None and every_run.entry.run_id == OUTSIDER
    nq = {b["metric"]: (b["run_id"], b["timesteps"]) for b in summary["markets"]["NQ"]["best"]}
    assert nq == {"sharpe_ratio": ("exp-nq-2", 1000), "val_reward": ("exp-nq-1", 2000)}


def test_write_summary_writes_strict_json_and_a_csv_with_run_ids(
    experiment: Experiment, tmp_path: Path
) -> None:
    summary = build_summary(experiment, phases=[1])
    json_path, csv_path = write_summary(summary, tmp_path / "out")
    assert (json_path.name, csv_path.name) == ("exp.json", "exp.csv")

    def no_nan(token: str) -> float:
        raise AssertionError(f"{token} in {json_path.name}")

    doc = json.loads(json_path.read_text(), parse_constant=no_nan)
    es = doc["markets"]["ES"]["total_return"]
    assert es == {"mean": None, "std": None, "n": 0}  # NaN is written as null
    assert doc["markets"]["NQ"]["sharpe_ratio"]["mean"] == pytest.approx(1.0)
    assert [r["run_id"] for r in doc["trials"]] == [r["run_id"] for r in summary["trials"]]

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["market"], r["seed"], r["run_id"]) for r in rows} == {
        (m, str(s), run_id) for (m, s), run_id in RUNS.items()
    }
    by_run = {r["run_id"]: r for r in rows}
    assert by_run["exp-es-1"]["total_return"] == ""  # not reported: empty, never "nan"
    assert float(by_run["exp-nq-1"]["best_sharpe"]) == 1.0
    assert by_run["exp-nq-1"]["best_sharpe_path"].endswith("_seed-1_run-exp-nq-1.zip")


def test_table_lists_each_trials_run_and_the_best_checkpoints(experiment: Experiment) -> None:
    summary = build_summary(experiment, phases=[1])
    lines = format_table(summary).splitlines()
    for (market, seed), run_id in RUNS.items():
        (line,) = [x for x in lines if x.split()[:3] == [market, str(seed), "finished"]]
        assert line.split()[-1] == run_id
    listed = [x for x in lines if " phase 1 " in x]
    for market in ("NQ", "ES"):
        for best in summary["markets"][market]["best"]:
            (line,) = [x for x in listed if x.endswith(best["path"]) and best["metric"] in x]
            assert line.startswith(market)
    assert OUTSIDER not in "\n".join(lines)
