"""Benchmark: ``python -m tuner.report`` on a 16-trial experiment, and a 100-trial page in a
browser.

Builds the experiment with ``bench/browse_scale.py``'s builder (real Tune files from Tune's own
``Trial`` and our loggers, our checkpoint names, metadata, retention and registry; 2 markets x 8
seeds, ``--results`` evaluations each), adds a held-out test document for every trial's
selected checkpoint with a 2,000-point equity curve (what ``tuner.evaluate`` keeps), then
times, best of ``--repeat``:

- loading: :func:`tuner.reporting.gather` (Tune's files, the checkpoint folders, the summaries);
- drawing: :func:`tuner.reporting.render` (the page: SVG drawn in Python) and writing it;
- the whole command in a fresh process (``python -m tuner.report``), imports included.

With ``--browser`` (default when Chromium is installed) it also builds 100 trials and times
how long headless Chromium takes to load that page and lay it out, the target being "within
a few seconds" (taken as 3 s)::

    .venv/bin/python bench/report.py [--trials 16] [--results 20] [--repeat 5] [--quick]
        [--no-browser] [--keep] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402
from bench.browse_scale import EXPERIMENT, build_experiment  # noqa: E402

TARGET_BROWSER_S = 3.0  # "opens in a browser within a few seconds"


def add_test_results(storage: Path, models: Path, points: int = 2000) -> int:
    """A test document for each trial's selected checkpoint, as tuner.evaluate writes it."""
    import math

    from tuner.driver.bests import experiment_bests
    from tuner.driver.experiments import load_experiment

    bests = experiment_bests(load_experiment(storage, EXPERIMENT), "sharpe_ratio", top=1)
    results = []
    for k, t in enumerate(bests.trials):
        best = bests.of_run(t.trial_id, 1)
        if best is None:
            continue
        policy = [100_000 * (1 + 0.02 * math.sin(i / (40 + k)) + i * 1e-5) for i in range(points)]
        hold = [100_000 * (1 + 0.03 * math.cos(i / 90)) for i in range(points)]
        results.append(
            {
                "checkpoint": os.fspath(best.path),
                "market": t.market,
                "seed": t.seed,
                "run_id": t.run_id,
                "event": best.entry.event,
                "split": "test",
                "bars": points,
                "start": "2024-01-02 00:00:00+00:00",
                "end": "2024-03-29 00:00:00+00:00",
                "policy": {
                    "total_return": (policy[-1] / policy[0] - 1) * 100,
                    "sharpe_ratio": 0.5 + 0.1 * k,
                    "sharpe_ci": [-0.5, 1.5],
                    "max_drawdown": -0.03,
                    "n_trades": 40,
                    "exposure": 0.6,
                    "win_rate": 0.52,
                },
                "buy_and_hold": {"total_return": 3.0, "sharpe_ratio": 0.9},
                "curve": {"bar": list(range(points)), "policy": policy, "buy_and_hold": hold},
            }
        )
    folder = models / "summaries"
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"split": "test", "metric": "sharpe_ratio", "results": results}
    (folder / f"{EXPERIMENT}_test.json").write_text(json.dumps(doc))
    return len(results)


def _best(repeat: int, fn: Any) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def time_report(storage: Path, out: Path, repeat: int) -> dict[str, float]:
    """Seconds (best of ``repeat``): loading, drawing (render + write), the fresh command."""
    from tuner.reporting import gather, render

    load_s, data = _best(repeat, lambda: gather(storage, EXPERIMENT))
    draw_s, page = _best(repeat, lambda: render(data))
    write_s, _ = _best(repeat, lambda: out.write_text(page, encoding="utf-8"))
    command = [sys.executable, "-m", "tuner.report", "--storage-path", str(storage)]
    command += ["--experiment", EXPERIMENT, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def fresh() -> None:
        subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)

    fresh_s, _ = _best(repeat, fresh)
    return {
        "load": load_s,
        "draw": draw_s + write_s,
        "total": load_s + draw_s + write_s,
        "fresh": fresh_s,
        "bytes": len(page.encode()),
    }


def browser_load(page: Path, repeat: int) -> float | None:
    """Seconds until headless Chromium has loaded the page (its load event) and laid it all
    out (best of ``repeat``), or None when Chromium is not installed."""
    if shutil.which("chromium") is None:
        return None
    from tests.browser import open_page

    times = []
    for _ in range(repeat):
        with open_page(page) as loaded:
            assert not loaded.errors, loaded.errors
            t0 = time.perf_counter()
            loaded.evaluate("document.body.offsetHeight")  # the whole page laid out
            times.append(loaded.seconds + time.perf_counter() - t0)
    return min(times)


def _build(workdir: Path, trials: int, results: int) -> Path:
    storage, models = build_experiment(workdir, trials, 2, min(8, max(1, trials // 2)), results)
    add_test_results(storage, models)
    return storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--results", type=int, default=20, help="evaluations per trial")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--no-browser", action="store_true", help="skip the 100-trial page")
    parser.add_argument("--keep", action="store_true", help="keep the experiment folder")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else args.repeat
    workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    figures = []
    try:
        storage = _build(workdir / "small", args.trials, args.results)
        t = time_report(storage, workdir / "small.html", repeat)
        share = t["load"] / t["total"]
        print(
            f"report of {args.trials} trials x {args.results} evaluations: "
            f"{t['total']:.3f} s in-process (loading {t['load']:.3f} s = {share:.0%}, drawing "
            f"{t['draw']:.3f} s = {1 - share:.0%}); python -m tuner.report in a fresh process "
            f"{t['fresh']:.2f} s; page {t['bytes'] / 1024:.0f} KB"
        )
        figures.append(
            Figure(
                "report",
                f"tuner.report, {args.trials} trials: in-process (loading / drawing); fresh",
                "",
                f"{t['total']:.2f} s ({share:.0%} / {1 - share:.0%}); {t['fresh']:.2f} s",
            )
        )
        if not args.no_browser:
            big = _build(workdir / "big", 100, args.results)
            b = time_report(big, workdir / "big.html", 1)
            seconds = browser_load(workdir / "big.html", repeat)
            shown = "not measured (no chromium)" if seconds is None else f"{seconds:.2f} s"
            print(
                f"report of 100 trials: {b['total']:.2f} s to write, page "
                f"{b['bytes'] / 1024:.0f} KB, loaded by headless Chromium in {shown}"
            )
            figures.append(
                Figure(
                    "report",
                    "100-trial page: headless Chromium loads and lays it out (page size)",
                    f"<= {TARGET_BROWSER_S:.0f} s",
                    f"{shown} ({b['bytes'] / 1024:.0f} KB)",
                    None if seconds is None else seconds <= TARGET_BROWSER_S,
                )
            )
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
