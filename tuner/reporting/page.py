"""The report as one self-contained HTML page: inline CSS and SVG, no script, nothing fetched.

Sections: the markets side by side; the checkpoints chosen on validation with their held-out
test figures and the baselines (apart from the validation figures), and each market's
test-period equity against buy and hold; every trial's learning curves with its checkpoint
events; disk use and what retention freed; a search's metric against each hyperparameter and
the configuration it chose. A part with nothing to show says why.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuner.reporting.charts import (
    Dot,
    equity_chart,
    equity_curve_lines,
    market_chart,
    scatter_chart,
    trial_chart,
)
from tuner.reporting.gather import SELECTED_BY, MarketView, ReportData, Selected
from tuner.reporting.history import EVENT_KINDS, TrialHistory
from tuner.reporting.style import CSS, KIND_COLOURS
from tuner.reporting.svg import fmt_number
from tuner.search.space import flatten

__all__ = ["render", "write"]

_DASH = "\u2013"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, spec: str = "+.3f") -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return fmt_number(float(value), spec) if ok else _DASH


def _mean_std(values: Iterable[float | None]) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return _DASH
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):+.3f} \u00b1 {std:.3f}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "not recorded"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _missing(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _table(head: str, rows: Iterable[str], cls: str = "") -> str:
    return f'<table class="{cls}"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


# --------------------------------------------------------------------------- figures


def _test_policy(s: Selected, key: str) -> float | None:
    value = ((s.test or {}).get("policy") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _hold(s: Selected, key: str) -> float | None:
    value = ((s.test or {}).get("buy_and_hold") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _val(s: Selected, metric: str) -> float | None:
    if s.best is None:
        return None
    value = s.best.entry.metric(metric)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- sections


def _markets_section(data: ReportData) -> str:
    views = list(data.markets.values())
    if not views:
        return _missing("No trial has a market yet.")
    names = [v.market for v in views]
    dots: dict[str, list[Dot]] = {"val": [], "sharpe": [], "ret": []}
    holds = []
    for v in views:
        for s in v.selected:
            who = f"{v.market} seed {s.trial.seed}"
            dots["val"].append(Dot(v.market, _val(s, SELECTED_BY), f"{who}: validation Sharpe"))
            dots["sharpe"].append(
                Dot(v.market, _test_policy(s, "sharpe_ratio"), f"{who}: test Sharpe")
            )
            dots["ret"].append(
                Dot(v.market, _test_policy(s, "total_return"), f"{who}: test return %")
            )
        hold = next((_hold(s, "total_return") for s in v.selected if s.test), None)
        holds.append(Dot(v.market, hold, f"{v.market}: buy and hold, test return %", "hold"))
    charts = [market_chart("validation Sharpe of the selected checkpoints", names, dots["val"])]
    if any(d.value is not None for d in dots["sharpe"]):
        charts.append(market_chart("held-out test Sharpe", names, dots["sharpe"]))
        charts.append(
            market_chart("held-out test return % (\u25c7 buy and hold)", names, dots["ret"], holds)
        )
    head = (
        '<tr><th class="l">market</th><th>seeds</th><th class="val">val Sharpe</th>'
        '<th class="val">val reward</th><th class="test">test return %</th>'
        '<th class="test">test Sharpe</th><th class="base">buy &amp; hold %</th></tr>'
    )
    rows = [
        f'<tr><td class="l">{_e(v.market)}</td><td>{len(v.selected)}</td>'
        f'<td class="val">{_mean_std(_val(s, SELECTED_BY) for s in v.selected)}</td>'
        f'<td class="val">{_mean_std(_val(s, "val_reward") for s in v.selected)}</td>'
        f'<td class="test">{_mean_std(_test_policy(s, "total_return") for s in v.selected)}</td>'
        f'<td class="test">{_mean_std(_test_policy(s, "sharpe_ratio") for s in v.selected)}</td>'
        f'<td class="base">{_mean_std(_hold(s, "total_return") for s in v.selected)}</td></tr>'
        for v in views
    ]
    intro = (
        "<p>Per market, each seed's checkpoint chosen on validation (its run's best by "
        "Sharpe), mean \u00b1 standard deviation over the seeds"
        + (", for the configuration the search chose" if data.search else "")
        + ". Dots are seeds, the bar the mean, the whisker one standard deviation.</p>"
    )
    return intro + f'<div class="charts">{"".join(charts)}</div>' + _table(head, rows)


def _selected_row(s: Selected) -> str:
    t, best = s.trial, s.best
    name = best.path.name if best else "none"
    p = (s.test or {}).get("policy") or {}
    hold = (s.test or {}).get("buy_and_hold") or {}
    low, high = p.get("sharpe_ci") or (None, None)
    test_cells = (
        f'<td class="test">{_num(p.get("total_return"), "+.2f")}</td>'
        f'<td class="test">{_num(p.get("sharpe_ratio"), "+.2f")}</td>'
        f'<td class="test">[{_num(low, "+.2f")}, {_num(high, "+.2f")}]</td>'
        f'<td class="test">{_num(p.get("max_drawdown"), ".3f")}</td>'
        f'<td class="test">{_num(p.get("n_trades"), ".0f")}</td>'
        if s.test
        else '<td class="test l" colspan="5">not measured</td>'
    )
    return (
        f'<tr><td class="l">{_e(t.market)}</td><td>{_e(t.seed)}</td>'
        f'<td class="l">{_e(t.status)}</td>'
        f'<td class="l" title="{_e(name)}">{_e(best.entry.event if best else "-")} @ '
        f"{_e(f'{best.entry.timesteps:,}' if best else '-')}</td>"
        f'<td class="val">{_num(_val(s, "val_reward"))}</td>'
        f'<td class="val">{_num(_val(s, "sharpe_ratio"), "+.2f")}</td>'
        f'<td class="val">{_num(_val(s, "win_rate"), ".3f")}</td>'
        f'<td class="val">{_num(_val(s, "max_drawdown"), ".3f")}</td>'
        f"{test_cells}"
        f'<td class="base">{_num(hold.get("total_return") if s.test else None, "+.2f")}</td>'
        f'<td class="base">{_num(hold.get("sharpe_ratio") if s.test else None, "+.2f")}</td>'
        f'<td class="base">{"+0.00" if s.test else _DASH}</td></tr>'
    )


def _selected_section(data: ReportData) -> str:
    if not data.selected:
        return _missing("No trial reported yet.")
    head = (
        '<tr><th colspan="4"></th><th class="val" colspan="4">validation (chose it)</th>'
        '<th class="test" colspan="5">held-out test split (measured once, after the choice)</th>'
        '<th class="base" colspan="3">baselines on the test split</th></tr>'
        '<tr><th class="l">market</th><th>seed</th><th class="l">status</th>'
        '<th class="l">checkpoint</th><th class="val">reward</th><th class="val">Sharpe</th>'
        '<th class="val">win rate</th><th class="val">max dd</th><th class="test">return %</th>'
        '<th class="test">Sharpe</th><th class="test">95% CI</th><th class="test">max dd</th>'
        '<th class="test">trades</th><th class="base">hold %</th><th class="base">hold Sharpe</th>'
        '<th class="base">flat %</th></tr>'
    )
    parts = [_table(head, (_selected_row(s) for s in data.selected), "selected")]
    if not data.test_files:
        parts.append(
            _missing(
                "No held-out test evaluation found (no <experiment>_test.json in "
                f"{data.summaries_dir}): run python -m tuner.evaluate --experiment {data.name}."
            )
        )
    parts.append("<h3>Test-period equity of each market's selected checkpoint</h3>")
    parts.append(_equity_charts(data.markets.values()))
    return "".join(parts)


def _equity_charts(views: Iterable[MarketView]) -> str:
    charts, missing = [], []
    for v in views:
        first = v.first
        if first is None or not first.test or not equity_curve_lines(first.test, "", ""):
            missing.append(v.market)
            continue
        lines = []
        for s in v.selected:
            if s is not first and s.test:
                lines += equity_curve_lines(s.test, "other seeds", "other-line")[:1]
        lines += equity_curve_lines(
            first.test, f"seed {first.trial.seed} (selected)", "policy-line"
        )
        test = first.test
        title = f"{v.market}: equity % on the test split"
        charts.append(
            equity_chart(
                title, lines, str(test.get("start", "?"))[:10], str(test.get("end", "?"))[:10]
            )
        )
    out = f'<div class="charts">{"".join(charts)}</div>'
    if missing:
        out += _missing(f"No test-period equity curve for {', '.join(missing)} (not measured).")
    return out


def _trial_section(data: ReportData) -> str:
    if not data.histories:
        return _missing("No trial yet.")
    legend = "".join(
        f'<span><i class="swatch" style="background:{c};border-color:{c}"></i>{k}</span>'
        for k, c in KIND_COLOURS.items()
    )
    legend += (
        '<span><i class="swatch" style="background:#fff;border-color:#5b6b82"></i>'
        "hollow: deleted by retention</span>"
    )
    parts = [
        "<p>Validation metrics at each evaluation, and every checkpoint each trial's runs "
        "saved, one row per event: filled if its file is still on disk (kept by retention), "
        "hollow if it is gone.</p>",
        f'<p class="legend">{legend}</p>',
    ]
    parts.append(f'<div class="trials">{"".join(_trial_block(h) for h in data.histories)}</div>')
    return "".join(parts)


def _trial_block(h: TrialHistory) -> str:
    t = h.trial
    kept = sum(e.kept for e in h.events)
    counts = ", ".join(f"{k} {n}" for k in EVENT_KINDS if (n := sum(e.kind == k for e in h.events)))
    note = (
        ""
        if h.reports_saved or not h.events
        else (
            ' <span class="missing">(results from before every event was reported: deleted '
            "best checkpoints are not shown)</span>"
        )
    )
    return (
        f'<div class="trial" id="trial-{_e(t.trial_id)}"'
        f' data-points="{len(h.points)}" data-events="{len(h.events)}" data-kept="{kept}">'
        f"<h3>{_e(t.market)} seed {_e(t.seed)} <span>{_e(t.status)}, run {_e(t.run_id or 'legacy')}"
        f", {len(h.points)} evaluations, {len(h.events)} checkpoints saved ({counts or 'none'}), "
        f"{kept} kept</span>{note}</h3>{trial_chart(h)}</div>"
    )


def _disk_section(data: ReportData) -> str:
    if not data.disk:
        return _missing(
            "No checkpoint folder found (has the models root moved? use --models-root)."
        )
    head = (
        '<tr><th class="l">market</th><th>phase</th><th>saved</th><th>kept</th>'
        "<th>on disk</th><th>deleted</th><th>in-run retention freed</th>"
        '<th>other runs\' checkpoints</th><th class="l">folder</th></tr>'
    )
    rows = [
        f'<tr><td class="l">{_e(r.market)}</td><td>{r.phase}</td><td>{r.saved}</td>'
        f"<td>{r.kept}</td><td>{_bytes(r.kept_bytes)}</td><td>{r.saved - r.kept}</td>"
        f"<td>{_bytes(r.pruned_bytes)}"
        f"{'' if r.pruned is None else f' ({r.pruned} checkpoints)'}</td>"
        f'<td>{r.other_runs}</td><td class="l">{_e(r.folder)}</td></tr>'
        for r in data.disk
    ]
    total = sum(r.kept_bytes for r in data.disk)
    parts = [
        f"<p>The experiment's runs keep {sum(r.kept for r in data.disk)} checkpoints, "
        f"{_bytes(total)} (zip, VecNormalize and metadata; a best and its periodic twin share "
        "their files). In-run retention: what the runs' passes over their folder deleted "
        "(any run's checkpoints), as their reports to Tune say.</p>",
        _table(head, rows),
        "<h3>The driver's retention pass after all trials</h3>",
    ]
    if data.driver_retention is None:
        parts.append(_missing("Not recorded (the summary has no retention section)."))
    else:
        head2 = '<tr><th class="l">market</th><th>phase</th><th>deleted</th><th>freed</th></tr>'
        rows2 = [
            f'<tr><td class="l">{_e(p.get("market"))}</td><td>{_e(p.get("phase"))}</td>'
            f"<td>{_e(p.get('deleted'))}</td><td>{_bytes(p.get('bytes_freed'))}</td></tr>"
            for p in data.driver_retention
        ]
        parts.append(_table(head2, rows2))
    return "".join(parts)


def _search_points(
    data: ReportData, metric: str, chosen: set[str]
) -> dict[str, list[tuple[Any, float, str, str]]]:
    by_param: dict[str, list[tuple[Any, float, str, str]]] = {}
    for t in data.trials:
        value = t.metrics.get(metric)
        if not t.training or t.market is None or value is None or not math.isfinite(value):
            continue
        cls = "stopped" if t.status == "stopped" else ("chosen" if t.config_id in chosen else "")
        for key, v in flatten(t.training).items():
            by_param.setdefault(key, []).append((v, float(value), t.market, cls))
    return by_param


def _search_section(data: ReportData) -> str:
    search = data.search
    if search is None:
        return _missing(
            f"Not a search: no {data.name}_search.json in {data.summaries_dir} "
            "(python -m tuner.run --search writes it)."
        )
    about: Mapping[str, Any] = search.get("search") or {}
    metric = str(about.get("metric") or "val_reward")
    verdicts: Mapping[str, Any] = search.get("markets") or {}
    chosen = {
        str(v["chosen"]["config_id"])
        for v in verdicts.values()
        if isinstance(v.get("chosen"), dict)
    }
    markets = sorted(verdicts) or sorted({t.market for t in data.trials if t.market})
    points = _search_points(data, metric, chosen)
    parts = [
        f"<p>{_e(about.get('searcher', '?'))} search, scheduler {_e(about.get('scheduler', '?'))}, "
        f"{_e(about.get('num_samples', '?'))} configurations per market; each dot a trial's last "
        f"validation {_e(metric)} (hollow: stopped early; ringed: the chosen configuration).</p>"
    ]
    if points:
        parts.append(_market_legend(markets))
        parts.append(
            '<div class="charts">'
            + "".join(scatter_chart(k, v, markets) for k, v in sorted(points.items()))
            + "</div>"
        )
    else:
        parts.append(_missing("No trial reported the metric with a configuration."))
    parts.append("<h3>Chosen configuration per market</h3>")
    parts.append(_chosen_table(verdicts, metric))
    return "".join(parts)


def _market_legend(markets: Sequence[str]) -> str:
    swatches = "".join(
        f'<span><i class="swatch m{i % 8}"></i>{_e(m)}</span>' for i, m in enumerate(markets)
    )
    return f'<p class="legend">{swatches}</p>'


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _chosen_table(verdicts: Mapping[str, Any], metric: str) -> str:
    head = (
        f'<tr><th class="l">market</th><th class="l">configuration</th><th>{_e(metric)} '
        'mean \u00b1 std</th><th>seeds</th><th class="l">values</th></tr>'
    )
    rows = []
    for market, verdict in sorted(verdicts.items()):
        c = verdict.get("chosen") if isinstance(verdict, dict) else None
        if not isinstance(c, dict):
            rows.append(
                f'<tr><td class="l">{_e(market)}</td><td class="l" colspan="4">none (no '
                "configuration finished on every seed)</td></tr>"
            )
            continue
        values = ", ".join(
            f"{k.split('.')[-1]}={_value(v)}" for k, v in (c.get("values") or {}).items()
        )
        rows.append(
            f'<tr><td class="l">{_e(market)}</td><td class="l">{_e(c.get("config_id"))}</td>'
            f"<td>{_num(c.get('mean'), '+.4f')} \u00b1 {_num(c.get('std'), '.4f')}</td>"
            f'<td>{len(c.get("seeds") or {})}</td><td class="l">{_e(values)}</td></tr>'
        )
    return _table(head, rows)


def _overview(data: ReportData) -> str:
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    names = ", ".join(e.name for e in data.experiments)
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in data.notes)
    return (
        f"<p>{len(data.trials)} trials ({status or 'none'}) of {_e(names)}; markets "
        f"{_e(', '.join(data.markets) or 'none')}. Tune results: {_e(data.storage_path)}; "
        f"checkpoints: {_e(data.models_root)}.</p>{notes}"
    )


_SECTIONS = (
    ("markets", "Markets side by side", _markets_section),
    ("selected", "Selected checkpoints: validation, held-out test, baselines", _selected_section),
    ("trials", "Learning curves and checkpoint events per trial", _trial_section),
    ("disk", "Disk", _disk_section),
    ("search", "Search", _search_section),
)


def render(data: ReportData) -> str:
    """The whole page."""
    nav = "".join(f'<a href="#{key}">{_e(title.split(":")[0])}</a>' for key, title, _ in _SECTIONS)
    body = "".join(
        f'<section id="{key}"><h2>{_e(title)}</h2>{build(data)}</section>'
        for key, title, build in _SECTIONS
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(data.name)}: report</title><style>{CSS}</style></head><body>"
        f"<header><h1>Experiment {_e(data.name)}</h1><p>generated {_e(data.generated)} by "
        f"python -m tuner.report</p><nav>{nav}</nav></header><main>"
        f'<section id="overview"><h2>Overview</h2>{_overview(data)}</section>{body}'
        "</main></body></html>\n"
    )


def write(data: ReportData, out: Path) -> Path:
    """Write the page to ``out`` (through a temporary, replaced at once); returns ``out``."""
    import os

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(data), encoding="utf-8")
    os.replace(tmp, out)
    return out
