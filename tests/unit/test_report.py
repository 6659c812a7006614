"""The experiment report (``python -m tuner.report``; ``tuner/reporting/``) on hand-made
experiments: what it gathers, what each chart holds, and the parts that say what is missing.
The same page in a real browser: ``tests/ray/test_browse.py``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from checkpointing.naming import CheckpointName, run_id_for_trial
from tests.report_files import (
    Elements,
    checkpoint_dir,
    report_row,
    write_checkpoint,
    write_trial,
)
from tuner.driver.bests import experiment_bests
from tuner.driver.experiments import load_experiment
from tuner.report import main
from tuner.reporting import gather, render

TRIALS = (("NQ", 1, "a1b2c_00000"), ("NQ", 2, "a1b2c_00001"), ("ES", 1, "a1b2c_00002"))


def _name(market: str, seed: int, steps: int, event: str, val: float) -> CheckpointName:
    run = run_id_for_trial("hand", TRIALS[[t[:2] for t in TRIALS].index((market, seed))][2])
    return CheckpointName(market, steps, event, val, val * 10, seed, run)


def _experiment(tmp_path: Path, *, stage: str = "grid", training: Any = None) -> Path:
    """Three trials (NQ seeds 1 and 2, ES seed 1): a periodic and its best twin at 500 steps
    (the best by Sharpe), a periodic at 1000 that retention deleted, a phase_end at 1500."""
    models, storage = tmp_path / "models", tmp_path / "ray_results"
    for k, (market, seed, trial_id) in enumerate(TRIALS):
        folder = checkpoint_dir(models, market)
        p1, b1 = (
            _name(market, seed, 500, "periodic", 0.5 + k),
            _name(market, seed, 500, "best", 0.5 + k),
        )
        p2, end = (
            _name(market, seed, 1000, "periodic", -0.1),
            _name(market, seed, 1500, "phase_end", 0.2),
        )
        write_checkpoint(folder, p1, size=2000)
        write_checkpoint(folder, b1, twin_of=p1)
        write_checkpoint(folder, end, size=2000)
        rows = [
            report_row(p1, saved=[p1, b1]),
            report_row(p2, pruned=1, pruned_bytes=2100),
            report_row(end, finished=True),
        ]
        config = (training or {}).get((market, seed))
        write_trial(
            storage / "hand", trial_id, market=market, seed=seed, models=models, rows=rows,
            stage=stage, training=config,
        )  # fmt: skip
    return storage


def _curve(n: int, slope: float) -> dict[str, list[float]]:
    return {
        "bar": list(range(0, 2 * n, 2)),
        "policy": [100_000 + slope * i for i in range(n)],
        "buy_and_hold": [100_000 - 3 * i for i in range(n)],
    }


def _write_test(storage: Path, markets: tuple[str, ...] = ("NQ",)) -> dict[str, Any]:
    """A tuner.evaluate document for the selected checkpoint of each trial of ``markets``."""
    bests = experiment_bests(load_experiment(storage, "hand"), "sharpe_ratio", top=1)
    results = []
    for k, t in enumerate(bests.trials):
        best = bests.of_run(t.trial_id, 1)
        if t.market in markets and best is not None:
            results.append(
                {
                    "checkpoint": os.fspath(best.path),
                    "market": t.market,
                    "seed": t.seed,
                    "run_id": t.run_id,
                    "event": best.entry.event,
                    "start": "2024-01-11 00:00:00+00:00",
                    "end": "2024-01-15 00:00:00+00:00",
                    "policy": {"total_return": 1.5 + k, "sharpe_ratio": 0.7 + k,
                               "sharpe_ci": [-1.0, 2.0], "max_drawdown": -0.04,
                               "n_trades": 12, "exposure": 0.5, "win_rate": 0.5},
                    "buy_and_hold": {"total_return": -2.25, "sharpe_ratio": -0.5},
                    "curve": _curve(40 + 10 * k, 5.0 + k),
                }
            )  # fmt: skip
    summaries = storage.parent / "models" / "summaries"
    summaries.mkdir(parents=True, exist_ok=True)
    doc = {"split": "test", "metric": "sharpe_ratio", "results": results}
    (summaries / "hand_test.json").write_text(json.dumps(doc))
    return doc


def test_each_trial_chart_holds_its_evaluations_and_every_checkpoint_event(
    tmp_path: Path,
) -> None:
    storage = _experiment(tmp_path)
    data = gather(storage, "hand")
    page = Elements(render(data))
    assert len(data.histories) == 3
    for history in data.histories:
        trial = history.trial.trial_id
        markers = page.having("circle", "marker", trial)
        assert [(m["data-event"], "kept" in m["class"]) for m in markers] == [
            ("periodic", True),
            ("best", True),
            ("periodic", False),  # deleted by retention: still shown, hollow
            ("phase_end", True),
        ]
        lines = {a["data-metric"]: a for a in page.having("polyline", "series", trial)}
        assert set(lines) == {"sharpe_ratio", "val_reward"}
        for line in lines.values():
            assert len(line["points"].split()) == int(line["data-points"]) == 3


def test_selected_checkpoints_show_test_figures_apart_with_the_equity_curves(
    tmp_path: Path,
) -> None:
    storage = _experiment(tmp_path)
    test = _write_test(storage)
    data = gather(storage, "hand")
    page = Elements(render(data))
    # The checkpoint each trial's validation chose: the 500-step model (its best twin's name).
    assert {s.best.path.name for s in data.selected if s.best} == {
        _name(m, s, 500, "best", 0.5 + k).filename for k, (m, s, _) in enumerate(TRIALS)
    }
    tested = {Path(r["checkpoint"]).name for r in test["results"]}
    assert {s.best.path.name for s in data.selected if s.test and s.best} == tested
    text = "".join(page.text)
    assert "+1.50" in text and "+2.50" in text  # the test returns, in the test columns
    assert "not measured" in text  # ES: no test figures
    assert len(page.having("td", "test")) >= 10 and len(page.having("td", "val")) >= 12
    # NQ's equity chart: the selected seed (NQ seed 2 ranks first on validation Sharpe), the
    # other seed, buy and hold, each with every point of its curve.
    points = {r["seed"]: len(r["curve"]["bar"]) for r in test["results"] if r["market"] == "NQ"}
    lines = {a["data-label"]: a for a in page.having("polyline") if "data-label" in a}
    assert int(lines["seed 2 (selected)"]["data-points"]) == points[2]
    assert int(lines["other seeds"]["data-points"]) == points[1]
    assert int(lines["buy and hold"]["data-points"]) == points[2]
    assert len(page.having("svg", "equity-chart")) == 1
    assert "No test-period equity curve for ES" in text


def test_markets_side_by_side_have_a_dot_per_seed(tmp_path: Path) -> None:
    storage = _experiment(tmp_path)
    _write_test(storage)
    page = Elements(render(gather(storage, "hand")))
    charts = page.having("svg", "market-chart")
    assert len(charts) == 3  # validation Sharpe, test Sharpe, test return
    dots = Counter(a["data-market"] for a in page.having("circle", "dot seed"))
    assert dots == {"NQ": 2 + 2 + 2, "ES": 1}  # ES has no test figures
    assert len(page.having("path", "hold")) == 1  # NQ's buy and hold


def test_disk_counts_shared_files_once_and_adds_up_what_retention_freed(
    tmp_path: Path,
) -> None:
    storage = _experiment(tmp_path)
    summaries = tmp_path / "models" / "summaries"
    summaries.mkdir(parents=True)
    passes = [{"phase": 1, "market": "NQ", "deleted": 4, "bytes_freed": 8192}]
    (summaries / "hand.json").write_text(json.dumps({"retention": passes}))
    data = gather(storage, "hand")
    rows = {r.market: r for r in data.disk}
    nq = rows["NQ"]
    files = [
        p for p in checkpoint_dir(tmp_path / "models", "NQ").iterdir() if not p.name.startswith(".")
    ]
    inodes = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in files}
    assert nq.kept == 6 and nq.saved == 8  # 2 trials x (periodic, best, phase_end) kept
    assert nq.kept_bytes == sum(inodes.values())  # a best's hard links counted once
    assert (nq.pruned, nq.pruned_bytes) == (2, 4200)
    assert data.driver_retention == passes
    text = "".join(Elements(render(data)).text)
    assert "8.0 KB" in text and "4.1 KB (2 checkpoints)" in text


def test_missing_pieces_are_said_not_failed(tmp_path: Path) -> None:
    storage = _experiment(tmp_path)
    page = render(gather(storage, "hand"))
    assert "No held-out test evaluation found" in page
    assert "Not recorded (the summary has no retention section)" in page
    assert "Not a search: no hand_search.json" in page
    assert "<script" not in page and "src=" not in page and "url(" not in page
    assert 'href="http' not in page  # nothing fetched: links are the page's own anchors


def test_a_search_plots_the_metric_against_each_hyperparameter(tmp_path: Path) -> None:
    configs = {
        ("NQ", 1): {"phase1": {"ppo": {"learning_rate": 1e-4, "net_arch": [16]}}},
        ("NQ", 2): {"phase1": {"ppo": {"learning_rate": 1e-3, "net_arch": [32]}}},
        ("ES", 1): {"phase1": {"ppo": {"learning_rate": 3e-3, "net_arch": [16]}}},
    }
    storage = _experiment(tmp_path, stage="search", training=configs)
    trials = load_experiment(storage, "hand").trials
    chosen_id = next(t.config_id for t in trials if (t.market, t.seed) == ("NQ", 2))
    verdict = {
        "experiment": "hand",
        "search": {"searcher": "random", "scheduler": "asha", "metric": "val_reward"},
        "markets": {
            "NQ": {"chosen": {"config_id": chosen_id, "mean": 0.2, "std": 0.0, "seeds": {"2": 0.2},
                              "values": {"phase1.ppo.learning_rate": 1e-3}}},
            "ES": {"chosen": None},
        },
    }  # fmt: skip
    summaries = tmp_path / "models" / "summaries"
    summaries.mkdir(parents=True)
    (summaries / "hand_search.json").write_text(json.dumps(verdict))
    data = gather(storage, "hand")
    page = Elements(render(data))
    scatters = page.having("svg", "scatter-chart")
    assert [a["aria-label"] for a in scatters] == [
        "metric against phase1.ppo.learning_rate",
        "metric against phase1.ppo.net_arch",
    ]
    dots = [a for a in page.having("circle", "dot") if "seed" not in a["class"]]
    assert len(dots) == 2 * 3  # every trial in every parameter's chart
    assert len([a for a in dots if "chosen" in a["class"]]) == 2
    text = "".join(page.text)
    assert "learning_rate=0.001" in text and "none (no configuration finished" in text
    # The markets compare the chosen configuration's seeds only.
    assert [s.trial.seed for s in data.markets["NQ"].selected] == [2]


def test_the_command_writes_beside_the_summary_and_refuses_what_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = _experiment(tmp_path)
    assert main(["--storage-path", str(storage), "--experiment", "hand"]) == 0
    out = tmp_path / "models" / "summaries" / "hand_report.html"
    assert capsys.readouterr().out.strip() == f"report: {out}"
    assert out.read_text().startswith("<!doctype html>")
    assert main(["--storage-path", str(storage), "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "elsewhere")
    argv = ["--storage-path", str(storage), "--experiment", "hand", "--models-root", missing]
    assert main(argv) == 2
    assert "--models-root: no such folder" in capsys.readouterr().err
