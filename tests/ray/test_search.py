"""Hyperparameter search end to end with a real Ray on loopback and tiny real PPO:
random search with ASHA and its confirmation on every seed, PBT on our checkpoints across
two markets, an interrupted search resumed, and bad searches refused before Ray starts."""

from __future__ import annotations

import json
import math
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from checkpointing.metadata import read_checkpoint_metadata
from checkpointing.naming import CheckpointName
from checkpointing.store import list_checkpoints
from tests.ray.conftest import Driver, common, results_so_far, wait_for
from tuner.browse import main as browse
from tuner.driver.experiments import load_experiment
from tuner.run import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SPACE = {
    "search": {
        "phase1": {
            "ppo": {
                "learning_rate": {"loguniform": [1.0e-4, 3.0e-3]},
                "ent_coef": {"loguniform": [1.0e-4, 0.05]},
                "clip_range": {"uniform": [0.1, 0.3]},
                "net_arch": {"choice": [[16], [32]]},
            }
        }
    },
    "asha": {"grace_period": 1000, "reduction_factor": 2},
    "pbt": {
        "perturbation_interval": 1000,
        "quantile": 0.5,
        "mutate": ["phase1.ppo.learning_rate", "phase1.ppo.ent_coef", "phase1.ppo.clip_range"],
    },
}


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "search.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def args(configs: Path, root: Path, space: Path, *extra: str) -> list[str]:
    return common(
        configs, root, "--search", str(space), "--base-interval", "500", "--num-cpus", "2",
        "--no-test-eval", *extra,
    )  # fmt: skip


def checkpoints(models: Path, market: str) -> list[CheckpointName]:
    folder = models / "phase1" / market / "checkpoints"
    return [i.name for i in list_checkpoints(folder) if isinstance(i.name, CheckpointName)]


def every_result(experiment_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in experiment_dir.glob("*/result.json"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def test_random_search_with_asha_stops_early_and_confirms_on_every_seed(
    tiny_configs: Path,
    space: Path,
    tmp_path: Path,
    drivers: list[Driver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = Driver(
        [
            *args(tiny_configs, tmp_path, space),
            *("--markets", "NQ", "--seeds", "1,2", "--timesteps", "3000", "--name", "asha"),
            *("--num-samples", "4", "--searcher", "random", "--scheduler", "asha"),
            *("--confirm-top", "2", "--search-seed", "5"),
        ],
        tmp_path,
    )
    drivers.append(run)
    assert run.wait(600) == 0, run.output[-4000:]
    storage, models = tmp_path / "ray_results", tmp_path / "models"

    search = load_experiment(storage, "asha")
    assert len(search.trials) == 4 and {t.seed for t in search.trials} == {1}
    statuses = [t.status for t in search.trials]
    assert "stopped" in statuses, statuses
    assert set(statuses) <= {"finished", "stopped"}
    assert "stopped early" in run.output

    # A stopped trial ends as it stands: no interrupt checkpoint, and retention's rules apply.
    names = checkpoints(models, "NQ")
    stopped_runs = {t.run_id for t in search.trials if t.status == "stopped"}
    assert not [n for n in names if n.run_id in stopped_runs and n.event == "interrupt"]
    assert all(any(n.run_id == r for n in names) for r in stopped_runs)

    # The top 2 configurations trained on both seeds: a finished search trial is the first
    # seed's run of its configuration, the confirmation trains the rest.
    verdict = json.loads((models / "summaries" / "asha_search.json").read_text())
    configs = verdict["markets"]["NQ"]["configs"]
    assert len(configs) == 4
    confirmed = [c for c in configs if set(c["seeds"]) == {"1", "2"}]
    assert len(confirmed) == 2, configs
    confirm = load_experiment(storage, "asha-confirm")
    for c in confirmed:
        seeds = sorted(t.seed for t in confirm.trials if t.config_id == c["config_id"])
        reused = [
            t for t in search.trials if t.config_id == c["config_id"] and t.status == "finished"
        ]
        assert seeds == ([2] if reused else [1, 2]), (c["config_id"], seeds)
        assert c["mean"] == pytest.approx(sum(c["seeds"].values()) / 2)
    chosen = verdict["markets"]["NQ"]["chosen"]
    assert chosen["mean"] == max(c["mean"] for c in confirmed)
    stopped_ids = {t.config_id for t in search.trials if t.status == "stopped"}
    assert {c["config_id"] for c in configs if c["stopped_early"]} == stopped_ids

    # The search selected on validation only: no trial's process built a test-split env.
    rows = every_result(storage / "asha") + every_result(storage / "asha-confirm")
    assert rows and all(r["splits"] == "train,validation" for r in rows), {
        r["splits"] for r in rows
    }

    # The browser shows each trial's configuration and ranks the configurations across seeds
    # (the confirmation's trials included), as the search's verdict does.
    capsys.readouterr()
    assert (
        browse(
            [
                "--storage-path",
                str(storage),
                "--experiment",
                "asha",
                "--json",
                "--metric",
                "val_reward",
            ]
        )
        == 0
    )
    view = json.loads(capsys.readouterr().out)
    rows = {r["trial_id"]: r for r in view["trial_rows"]}
    assert {rows[t.trial_id]["status"] for t in search.trials if t.status == "stopped"} == {
        "stopped"
    }
    assert all(r["config_id"] and r["training"]["phase1"]["ppo"] for r in rows.values())
    ranked = view["configurations"]["NQ"]
    assert [c["config_id"] for c in ranked] == [c["config_id"] for c in configs]
    assert ranked[0]["config_id"] == chosen["config_id"]
    assert browse(["--storage-path", str(storage), "--experiment", "asha"]) == 0
    text = capsys.readouterr().out
    assert "NQ: configurations ranked across seeds by sharpe_ratio" in text
    assert "stopped" in text

    # The report plots the metric against each hyperparameter, a dot per trial that reported
    # it, and compares the markets over the chosen configuration's seeds.
    from tests.report_files import Elements

    page = Elements((models / "summaries" / "asha_report.html").read_text())
    scatters = page.having("svg", "scatter-chart")
    assert len(scatters) == len(SPACE["search"]["phase1"]["ppo"])
    measured = [
        t
        for t in [*search.trials, *confirm.trials]
        if isinstance(t.metrics.get("val_reward"), float) and math.isfinite(t.metrics["val_reward"])
    ]
    dots = [a for a in page.having("circle", "dot") if "seed" not in a["class"]]
    assert len(dots) == len(scatters) * len(measured)
    assert len([a for a in dots if "stopped" in a["class"]]) == len(scatters) * len(
        [t for t in measured if t.status == "stopped"]
    )

    # The chosen settings, as an overlay training.yaml takes.
    from tuner.training.settings import load_run_settings

    overlay = models / "summaries" / "asha_NQ_training.yaml"
    settings = load_run_settings(tiny_configs, str(overlay))
    ppo = settings.training.phase1.ppo
    assert ppo.learning_rate == pytest.approx(chosen["values"]["phase1.ppo.learning_rate"])
    assert list(settings.training.net_arch) == chosen["values"]["phase1.ppo.net_arch"]


def test_pbt_exploits_within_a_market_with_the_lineage_and_the_new_values(
    tiny_configs: Path, space: Path, tmp_path: Path, drivers: list[Driver]
) -> None:
    run = Driver(
        [
            *args(tiny_configs, tmp_path, space),
            *("--markets", "NQ,ES", "--seeds", "1", "--timesteps", "4000", "--name", "pbt"),
            *("--num-samples", "2", "--scheduler", "pbt", "--confirm-top", "1"),
        ],
        tmp_path,
    )
    drivers.append(run)
    assert run.wait(600) == 0, run.output[-4000:]
    models = tmp_path / "models"
    search = load_experiment(tmp_path / "ray_results", "pbt")
    market_of = {t.trial_id: t.market for t in search.trials}
    final = {t.trial_id: t for t in search.trials}

    exploits = []
    ends: Counter[str] = Counter()
    for market in ("NQ", "ES"):
        folder = models / "phase1" / market / "checkpoints"
        for info in list_checkpoints(folder):
            name = info.name
            if isinstance(name, CheckpointName) and "-x" in (name.run_id or ""):
                meta = read_checkpoint_metadata(info.path) or {}
                exploits.append((market, meta))
            if isinstance(name, CheckpointName) and name.event == "phase_end":
                ends[(read_checkpoint_metadata(info.path) or {})["trial_id"]] += 1
    assert exploits, run.output[-3000:]
    # A trial that reached its end is never sent back to train again from another's.
    assert set(ends.values()) == {1}, ends
    for market, meta in exploits:
        lineage = meta["exploited"]
        assert market_of[lineage["from_trial"]] == market  # never across markets
        assert meta["started_from_run"] == lineage["from_run"]
        assert meta["run_id"].startswith(f"{lineage['from_run'].rsplit('-', 2)[0]}-")
        assert lineage["changed"], lineage
        # The recorded new values are the trial's configuration, which it trains with.
        mine = final[meta["trial_id"]]
        for key, change in lineage["changed"].items():
            assert meta["hyperparameters"][key] == change["new"]
            assert change["old"] != change["new"]
        assert mine.market == market
        # Weights and statistics travelled: the continued model scores as its source did.
        source = read_checkpoint_metadata(
            models / "phase1" / market / "checkpoints" / lineage["from_checkpoint"]
        )
        assert source is not None
        assert math.isclose(
            meta["start_metrics"]["val_reward"], source["val_reward"], abs_tol=1e-6
        ), (meta["start_metrics"], source["val_reward"])


def test_an_interrupted_search_resumes_to_the_end(
    tiny_configs: Path, space: Path, tmp_path: Path, drivers: list[Driver]
) -> None:
    common = [
        *args(tiny_configs, tmp_path, space),
        *("--markets", "NQ", "--seeds", "1,2", "--timesteps", "3000", "--name", "stop"),
        *("--num-samples", "3", "--searcher", "optuna", "--confirm-top", "1"),
    ]
    first = Driver(common, tmp_path, "first.log")
    drivers.append(first)
    experiment = tmp_path / "ray_results" / "stop"
    wait_for(lambda: len(results_so_far(experiment)) >= 1, 300, "a first result", first)
    first.signal(signal.SIGINT)
    code = first.wait(300)
    assert code == 128 + signal.SIGINT, first.output[-3000:]
    assert "--resume" in first.output
    before = {t.trial_id for t in load_experiment(tmp_path / "ray_results", "stop").trials}

    resumed = Driver([*common, "--resume"], tmp_path, "resumed.log")
    drivers.append(resumed)
    assert resumed.wait(600) == 0, resumed.output[-4000:]
    search = load_experiment(tmp_path / "ray_results", "stop")
    # The searcher went on where it stopped: 3 configurations in all, none sampled again.
    assert len(search.trials) == 3, [t.trial_id for t in search.trials]
    assert before <= {t.trial_id for t in search.trials}
    assert {t.status for t in search.trials} <= {"finished", "stopped"}
    assert len({t.config_id for t in search.trials}) == 3
    confirm = load_experiment(tmp_path / "ray_results", "stop-confirm")
    assert confirm.trials and all(t.status == "finished" for t in confirm.trials)
    verdict = json.loads((tmp_path / "models" / "summaries" / "stop_search.json").read_text())
    assert verdict["markets"]["NQ"]["chosen"] is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-samples", "4"], "--num-samples goes with --search"),
        (["--search", "{space}", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["--search", "{space}", "--metric", "profit"], "--metric must be one of"),
        (
            ["--search", "{space}", "--scheduler", "pbt", "--searcher", "optuna"],
            "--searcher random",
        ),
        (["--search", "{space}", "--scheduler", "pbt", "--num-samples", "1"], "population"),
        (["--search", "{missing}"], "config file not found"),
        (["--search", "{space}", "--phases", "2"], "nothing to search for phases [2]"),
    ],
)
def test_bad_search_arguments_fail_before_ray_starts(
    extra: list[str],
    message: str,
    tiny_configs: Path,
    space: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    filled = [a.format(space=space, missing=tmp_path / "none.yaml") for a in extra]
    argv = ["--markets", "NQ", "--config-dir", str(tiny_configs), "--storage-path", str(tmp_path)]
    assert main([*argv, *filled]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not list(tmp_path.iterdir())  # nothing written, Ray never started
