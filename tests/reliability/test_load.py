"""Load: 24 trials, every market of ``config/markets.yaml`` x 3 seeds, through one real
``python -m tuner.run`` on 2 CPUs (one trial per CPU, tiny budgets: 256 steps, a save every
128). Each trial is a try: it finished, in its own market's folder, with checkpoints of its
seed (a ``phase_end`` that verifies), and the summary's JSON and CSV list it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpointing import list_checkpoints, verify_checkpoint
from checkpointing.naming import CheckpointName
from tests.ray.conftest import Driver
from tests.reliability.conftest import FaultLog
from tests.tiny_config import CONFIG_DIR, tiny_config_dir

pytestmark = [pytest.mark.reliability, pytest.mark.ray, pytest.mark.slow]

MARKETS = tuple(yaml.safe_load((CONFIG_DIR / "markets.yaml").read_text())["markets"])
SEEDS = (1, 2, 3)
TIMESTEPS = 256
NAME = "load"


@dataclass
class Load:
    rc: int
    output: str
    models: Path
    summary: dict[str, Any]
    csv_rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    work = tmp_path_factory.mktemp("load")
    models = work / "models"
    driver = Driver(
        [
            "--markets",
            ",".join(MARKETS),
            "--seeds",
            ",".join(map(str, SEEDS)),
            "--timesteps",
            str(TIMESTEPS),
            "--base-interval",
            "128",
            "--cpus-per-trial",
            "1",
            "--num-cpus",
            "2",
            "--no-test-eval",  # the end steps are tested elsewhere; 48 evaluations here
            "--name",
            NAME,
            "--config-dir",
            str(tiny_config_dir(work / "configs")),
            "--models-root",
            str(models),
            "--storage-path",
            str(work / "ray_results"),
        ],
        work,
    )
    try:
        rc = driver.wait(600)
    finally:
        driver.kill()
    summary_json = models / "summaries" / f"{NAME}.json"
    summary_csv = models / "summaries" / f"{NAME}.csv"
    summary = json.loads(summary_json.read_text()) if summary_json.exists() else {}
    rows: list[dict[str, str]] = []
    if summary_csv.exists():
        with open(summary_csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
    yield Load(rc, driver.output, models, summary, rows)


def test_24_trials_all_finish_each_in_its_own_folder(load: Load, fault_log: FaultLog) -> None:
    assert len(MARKETS) == 8, MARKETS
    trials = {(r["market"], r["seed"]): r for r in load.summary.get("trials", [])}
    listed = {(r["market"], int(r["seed"])) for r in load.csv_rows}
    with fault_log.tries("load: 24 trials on 2 CPUs") as t:
        for market in MARKETS:
            folder = load.models / "phase1" / market / "checkpoints"
            ours = [
                (i, i.name) for i in list_checkpoints(folder) if isinstance(i.name, CheckpointName)
            ]
            for seed in SEEDS:
                with t.attempt(f"{market} seed {seed}"):
                    assert load.rc == 0, load.output[-3000:]
                    assert f"[done]   {market} seed {seed} " in load.output
                    row = trials.get((market, seed))
                    assert row is not None and row["status"] == "finished", row
                    assert row["timesteps"] >= TIMESTEPS, row
                    assert (market, seed) in listed, sorted(listed)
                    # Its market's folder holds that market's checkpoints alone.
                    assert {n.market for _, n in ours} == {market}, folder
                    mine = {n.event: i for i, n in ours if n.seed == seed}
                    assert set(mine) >= {"periodic", "phase_end"}, sorted(mine)
                    assert mine["phase_end"].timesteps >= TIMESTEPS, mine["phase_end"].filename
                    verify_checkpoint(mine["phase_end"].path)
        # And no more than those 24 (a failure here counts as one more failed try).
        assert len(trials) == len(load.summary["trials"]) == 24, sorted(trials)
        assert len(load.csv_rows) == 24 and len(listed) == 24, sorted(listed)
        assert not load.summary["failed"] and not load.summary["unfinished"], load.summary
