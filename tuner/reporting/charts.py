"""The report's charts: a trial's learning curves with its checkpoint events, the markets side
by side, a market's test-period equity against buy and hold, a search's metric against each
hyperparameter. Each returns one ``<svg>`` string (:mod:`tuner.reporting.svg`)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.reporting.history import EVENT_KINDS, TrialHistory, metric_series
from tuner.reporting.svg import Frame, attrs, fmt_number, polyline, svg

__all__ = [
    "CURVE_METRICS",
    "Dot",
    "EquityLine",
    "equity_chart",
    "equity_curve_lines",
    "market_chart",
    "scatter_chart",
    "trial_chart",
]

CURVE_METRICS = ("sharpe_ratio", "val_reward")  # the metrics the summary ranks by

_WIDTH = 600
_LEFT = 58


def _title(text: str) -> str:
    return f"<title>{html.escape(text)}</title>"


# --------------------------------------------------------------------------- one trial


def trial_chart(history: TrialHistory) -> str:
    """Validation Sharpe and reward over the trial's timesteps, and below them one row per
    event kind with a dot per checkpoint saved: filled when retention kept it, hollow when
    it is gone. Phase starts are dashed lines."""
    panel_h, gap, row_h = 92.0, 24.0, 11.0
    strip_top = 14 + 2 * (panel_h + gap)
    height = strip_top + row_h * len(EVENT_KINDS) + 30
    xs_all = [float(p.timesteps) for p in history.points]
    xs_all += [float(e.timesteps) for e in history.events] + [0.0]
    parts = []
    frames = []
    for i, metric in enumerate(CURVE_METRICS):
        xs, ys = metric_series(history, metric)
        frame = Frame.fit(
            (_LEFT, 14 + i * (panel_h + gap), _WIDTH - _LEFT - 10, panel_h), xs_all, ys
        )
        frames.append(frame)
        parts.append(frame.axes(y_label=f"{metric} (validation)", x_ticks=False))
        line, _ = polyline(frame, xs, ys, f"series s{i}", {"data-metric": metric})
        parts.append(line)
    frame = frames[0]
    strip = Frame(_LEFT, strip_top, frame.width, row_h * len(EVENT_KINDS), frame.x_range, (0, 1))
    parts.append(strip.axes(x_label="timesteps", y_ticks=False))
    for row, kind in enumerate(EVENT_KINDS):
        y = strip_top + row_h * (row + 0.5)
        parts.append(
            f'<text class="tick" x="{_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{kind}</text>'
        )
    for phase, start in sorted(history.phase_starts.items()):
        if start > 0:
            x = frame.x(start)
            parts.append(
                f'<line class="phase" x1="{x:.1f}" x2="{x:.1f}" y1="14" '
                f'y2="{strip.top + strip.height:.1f}"/>'
                f'<text class="tick" x="{x + 3:.1f}" y="24">phase {phase}</text>'
            )
    for e in history.events:
        y = strip_top + row_h * (EVENT_KINDS.index(e.kind) + 0.5)
        state = "kept" if e.kept else "gone"
        tip = (
            f"{e.name}\n{e.event} at {e.timesteps:,} timesteps (phase {e.phase}), "
            f"val_reward {fmt_number(e.val_reward)}, sharpe {fmt_number(e.sharpe_ratio)}\n"
            + ("kept by retention" if e.kept else "deleted by retention (or never committed)")
        )
        parts.append(
            f'<circle class="marker {e.kind} {state}" cx="{frame.x(e.timesteps):.1f}" '
            f'cy="{y:.1f}" r="3.4"{attrs({"data-event": e.event, "data-name": e.name})}>'
            f"{_title(tip)}</circle>"
        )
    t = history.trial
    label = f"{t.market} seed {t.seed}: validation metrics and checkpoints over timesteps"
    return svg(_WIDTH, height, "".join(parts), "chart trial-chart", label)


# --------------------------------------------------------------------------- markets


@dataclass(frozen=True)
class Dot:
    """One value of one market (a seed's selected checkpoint), with what the tooltip says."""

    market: str
    value: float | None
    tip: str
    cls: str = "seed"


def market_chart(
    title: str, markets: Sequence[str], dots: Sequence[Dot], extra: Sequence[Dot] = ()
) -> str:
    """Markets side by side: a dot per seed, the mean as a bar and the standard deviation as
    a whisker; ``extra`` dots (buy and hold) as diamonds."""
    width = max(330.0, 90.0 + 80 * len(markets))
    spans = [_mean_std([d.value for d in dots if d.market == m]) for m in markets]
    ends: list[float | None] = [
        v for mean, std in spans if math.isfinite(mean) for v in (mean - std, mean + std)
    ]
    frame = Frame.fit(
        (_LEFT, 22, width - _LEFT - 10, 150),
        [0, len(markets)],
        [d.value for d in [*dots, *extra]] + ends,
        y_zero=True,
    )
    parts = [frame.axes(y_label=title, x_ticks=False)]
    zero = frame.y(0.0)
    parts.append(
        f'<line class="zero" x1="{frame.left}" x2="{frame.left + frame.width:.1f}" '
        f'y1="{zero:.1f}" y2="{zero:.1f}"/>'
    )
    for i, market in enumerate(markets):
        center = i + 0.5
        cx = frame.x(center)
        parts.append(
            f'<text class="tick" x="{cx:.1f}" y="{frame.top + frame.height + 14:.1f}" '
            f'text-anchor="middle">{html.escape(market)}</text>'
        )
        mine = [d for d in dots if d.market == market and d.value is not None]
        parts += _spread(frame, cx, [d.value for d in mine if d.value is not None], market)
        for j, d in enumerate(mine):
            assert d.value is not None
            offset = (j - (len(mine) - 1) / 2) * min(8.0, 40.0 / max(1, len(mine)))
            parts.append(
                f'<circle class="dot {d.cls} m{i % 8}" cx="{cx + offset:.1f}" '
                f'cy="{frame.y(d.value):.1f}" r="3.5"{attrs({"data-market": market})}>'
                f"{_title(d.tip)}</circle>"
            )
        for d in extra:
            if d.market == market and d.value is not None:
                x, y = cx + 22, frame.y(d.value)
                parts.append(
                    f'<path class="hold" d="M{x:.1f},{y - 5:.1f} l5,5 l-5,5 l-5,-5 z"'
                    f"{attrs({'data-market': market})}>{_title(d.tip)}</path>"
                )
    return svg(width, 200, "".join(parts), "chart market-chart", title)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def _spread(frame: Frame, cx: float, values: Sequence[float], market: str) -> list[str]:
    if not values:
        return []
    mean, std = _mean_std(values)
    y = frame.y(mean)
    tip = f"{market}: mean {mean:+.3f}, std {std:.3f} over {len(values)} seed(s)"
    return [
        f'<line class="whisker" x1="{cx:.1f}" x2="{cx:.1f}" y1="{frame.y(mean - std):.1f}" '
        f'y2="{frame.y(mean + std):.1f}"/>',
        f'<line class="mean" x1="{cx - 16:.1f}" x2="{cx + 16:.1f}" y1="{y:.1f}" y2="{y:.1f}"'
        f"{attrs({'data-mean': f'{mean:.6g}'})}>{_title(tip)}</line>",
    ]


# --------------------------------------------------------------------------- equity


@dataclass(frozen=True)
class EquityLine:
    """A test-period equity curve in percent of the starting capital over the bars."""

    label: str
    bars: Sequence[float]
    percent: Sequence[float | None]
    cls: str


def equity_curve_lines(result: Mapping[str, Any], label: str, cls: str) -> list[EquityLine]:
    """The policy's and buy and hold's lines of one test result (none without a curve)."""
    curve = result.get("curve")
    if not isinstance(curve, Mapping):
        return []
    bars = [float(b) for b in curve.get("bar") or []]
    out = []
    for key, line_label, line_cls in (
        ("policy", label, cls),
        ("buy_and_hold", "buy and hold", "hold-line"),
    ):
        values = curve.get(key) or []
        if len(values) == len(bars) and values and values[0]:
            start = float(values[0])
            out.append(
                EquityLine(
                    line_label, bars, [(float(v) / start - 1) * 100 for v in values], line_cls
                )
            )
    return out


def equity_chart(title: str, lines: Sequence[EquityLine], start: str, end: str) -> str:
    """Equity (percent of the starting capital) over the test span's bars."""
    xs = [x for line in lines for x in line.bars]
    ys = [y for line in lines for y in line.percent]
    frame = Frame.fit((_LEFT, 22, _WIDTH - _LEFT - 10, 170), xs, ys, y_zero=True)
    parts = [frame.axes(x_label=f"test bars ({start} to {end})", y_label=title)]
    for line in lines:
        drawn, _ = polyline(frame, line.bars, line.percent, line.cls, {"data-label": line.label})
        parts.append(drawn)
    legend_y = 14.0
    for k, (label, cls) in enumerate(dict.fromkeys((ln.label, ln.cls) for ln in lines)):
        x, y = _WIDTH - 250 + 130 * (k % 2), legend_y + 12 * (k // 2)
        parts.append(
            f'<line class="{cls}" x1="{x}" x2="{x + 16}" y1="{y}" y2="{y}"/>'
            f'<text class="tick" x="{x + 20}" y="{y + 3}">{html.escape(label[:22])}</text>'
        )
    return svg(_WIDTH, 236, "".join(parts), "chart equity-chart", title)


# --------------------------------------------------------------------------- search


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def scatter_chart(
    param: str, points: Sequence[tuple[Any, float, str, str]], markets: Sequence[str]
) -> str:
    """The metric against one hyperparameter: (value, metric, market, css class) per trial;
    a log axis for positive values spread over 20x or more, categories for the rest."""
    values = [p[0] for p in points]
    numeric = _numeric(values)
    categories: list[str] = []
    if numeric:
        positive = [float(v) for v in values if float(v) > 0]
        log_x = len(positive) == len(values) and max(positive) >= 20 * min(positive)
        xs = [float(v) for v in values]
    else:
        categories = sorted({_category(v) for v in values})
        log_x = False
        xs = [categories.index(_category(v)) + 0.5 for v in values]
    box = (_LEFT, 22, 300 - _LEFT - 10, 130)
    x_domain = xs if numeric else [0, len(categories)]
    frame = Frame.fit(box, x_domain, [p[1] for p in points], log_x=log_x)
    parts = [frame.axes(x_label=param, y_label="", x_ticks=numeric)]
    for i, name in enumerate(categories):
        parts.append(
            f'<text class="tick" x="{frame.x(i + 0.5):.1f}" '
            f'y="{frame.top + frame.height + 12:.1f}" text-anchor="middle">'
            f"{html.escape(name[:14])}</text>"
        )
    for (value, metric, market, cls), x in zip(points, xs, strict=True):
        tip = f"{market}: {param} = {value}, metric {fmt_number(metric, '+.4g')}"
        index = markets.index(market) if market in markets else 0
        parts.append(
            f'<circle class="dot {cls} m{index % 8}" cx="{frame.x(x):.1f}" '
            f'cy="{frame.y(metric):.1f}" r="3.5"{attrs({"data-market": market})}>'
            f"{_title(tip)}</circle>"
        )
    return svg(300, 180, "".join(parts), "chart scatter-chart", f"metric against {param}")


def _category(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)
