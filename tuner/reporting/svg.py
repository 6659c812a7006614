"""Inline SVG, drawn in Python: axes, lines, dots and markers. No script, no fetch.

Every chart is a plain ``<svg>`` string with classes the page's CSS colours and ``data-*``
attributes that say what each element stands for (a series, a checkpoint, a trial), so a
reader's browser shows it offline and a test can count what was drawn. A line is drawn with
at most :data:`MAX_LINE_POINTS` points (:func:`tuner.reporting.series.downsample`), so a page
of a hundred trials stays light.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tuner.reporting.series import downsample

__all__ = [
    "MAX_LINE_POINTS",
    "Frame",
    "attrs",
    "fmt_number",
    "fmt_tick",
    "nice_ticks",
    "polyline",
    "svg",
]

MAX_LINE_POINTS = 500


def fmt_number(value: float | None, spec: str = ".3g") -> str:
    """A number for a label or a table; an en dash for a missing one."""
    if value is None or not math.isfinite(value):
        return "\u2013"
    return format(value, spec)


def fmt_tick(value: float) -> str:
    """A tick label: 36k, 1.5M, 0.25, 0.0001."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:.3g}k"
    return f"{value:.3g}"


def attrs(values: Mapping[str, object]) -> str:
    """`` key="value"`` pairs, escaped; None values left out."""
    return "".join(
        f' {k}="{html.escape(str(v), quote=True)}"' for k, v in values.items() if v is not None
    )


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about ``count`` of them)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _span(values: Iterable[float | None], pad: float = 0.05) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high == low:
        width = abs(low) * 0.1 or 1.0
        return low - width, high + width
    margin = (high - low) * pad
    return low - margin, high + margin


@dataclass(frozen=True)
class Frame:
    """A plot area at (left, top) of width x height pixels, for data in x and y ranges."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    log_x: bool = False

    @classmethod
    def fit(
        cls,
        box: tuple[float, float, float, float],
        xs: Iterable[float | None],
        ys: Iterable[float | None],
        *,
        log_x: bool = False,
        y_zero: bool = False,
    ) -> Frame:
        """A frame whose ranges cover ``xs`` and ``ys`` (and 0 on y with ``y_zero``)."""
        xs = [math.log10(v) if log_x and v else v for v in xs if v is None or v > 0 or not log_x]
        y_values = list(ys) + ([0.0] if y_zero else [])
        return cls(*box, _span(xs, 0.02), _span(y_values), log_x)

    def x(self, value: float) -> float:
        low, high = self.x_range
        v = math.log10(value) if self.log_x else value
        return self.left + (v - low) / (high - low) * self.width

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.top + (high - value) / (high - low) * self.height

    def axes(
        self, x_label: str = "", y_label: str = "", *, x_ticks: bool = True, y_ticks: bool = True
    ) -> str:
        """The frame's box, grid lines and tick labels."""
        parts = [
            f'<rect class="plot" x="{self.left:.1f}" y="{self.top:.1f}" '
            f'width="{self.width:.1f}" height="{self.height:.1f}"/>'
        ]
        right, bottom = self.left + self.width, self.top + self.height
        for t in nice_ticks(*self.y_range, count=4) if y_ticks else []:
            y = self.y(t)
            parts.append(
                f'<line class="grid" x1="{self.left:.1f}" x2="{right:.1f}" '
                f'y1="{y:.1f}" y2="{y:.1f}"/>'
                f'<text class="tick" x="{self.left - 4:.1f}" y="{y + 3:.1f}" '
                f'text-anchor="end">{fmt_tick(t)}</text>'
            )
        if x_ticks:
            parts += self._x_ticks(bottom)
        if x_label:
            parts.append(
                f'<text class="label" x="{self.left + self.width / 2:.1f}" '
                f'y="{bottom + 26:.1f}" text-anchor="middle">{html.escape(x_label)}</text>'
            )
        if y_label:
            parts.append(
                f'<text class="label" x="4" y="{self.top - 6:.1f}">{html.escape(y_label)}</text>'
            )
        return "".join(parts)

    def _x_ticks(self, bottom: float) -> list[str]:
        low, high = self.x_range
        if self.log_x:
            ticks = [10.0**e for e in range(math.ceil(low), math.floor(high) + 1)]
        else:
            ticks = nice_ticks(low, high, count=5)
        return [
            f'<text class="tick" x="{self.x(t):.1f}" y="{bottom + 12:.1f}" '
            f'text-anchor="middle">{fmt_tick(t)}</text>'
            for t in ticks
        ]


def polyline(
    frame: Frame,
    xs: Sequence[float],
    ys: Sequence[float | None],
    cls: str,
    data: Mapping[str, object] | None = None,
    max_points: int = MAX_LINE_POINTS,
) -> tuple[str, int]:
    """A ``<polyline>`` through the finite points of (xs, ys), downsampled to ``max_points``;
    returns it and how many points it has."""
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if not points:
        return "", 0
    keep = downsample([y for _, y in points], max_points)
    coords = " ".join(f"{frame.x(points[i][0]):.1f},{frame.y(points[i][1]):.1f}" for i in keep)
    extra = attrs({**(data or {}), "data-points": len(keep)})
    return f'<polyline class="{cls}" points="{coords}"{extra}/>', len(keep)


def svg(width: float, height: float, body: str, cls: str, label: str) -> str:
    """An ``<svg>`` element of the given size with an accessible label."""
    return (
        f'<svg class="{cls}" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{html.escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )
