"""The report's look: one style sheet, inlined into the page, and its colours (a colour per
market, ``m0`` .. ``m7``; a colour per checkpoint event kind)."""

from __future__ import annotations

__all__ = ["CSS", "KIND_COLOURS", "MARKET_COLOURS"]

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9cfdb;font-size:12px}nav a{color:#9fc3ff;margin-right:14px}
main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:16px 0;
padding:4px 16px 14px}
h2{font-size:17px;margin:12px 0 6px}h3{font-size:14px;margin:10px 0 4px}
.note{color:#7a4b00;background:#fff6e0;border:1px solid #f0d9a6;padding:6px 10px;border-radius:4px}
.missing{color:#555;font-style:italic}table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{padding:3px 7px;border-bottom:1px solid #e6e9ef;text-align:right;white-space:nowrap}
th{background:#eef1f5}td.l,th.l{text-align:left}th.val,td.val{background:#f3f7ff}
th.test,td.test{background:#f1fbf3}th.base,td.base{background:#fbf6ef}
.charts{display:flex;flex-wrap:wrap;gap:10px}.trials{display:flex;flex-wrap:wrap;gap:4px 18px}
.trial{border-top:1px solid #e6e9ef;padding-top:6px;width:610px}
.trial h3 span{font-weight:normal;color:#667}svg.chart{background:#fff}
svg .plot{fill:#fbfcfd;stroke:#c8ced8}svg .grid{stroke:#eceff3}
svg .zero{stroke:#9aa3b2;stroke-dasharray:2 2}svg .tick{font-size:10px;fill:#556}
svg .label{font-size:11px;fill:#334}svg polyline{fill:none;stroke-width:1.6}
svg .s0{stroke:#2f6fd6}svg .s1{stroke:#d9822b}svg .phase{stroke:#888;stroke-dasharray:4 3}
svg .marker{stroke-width:1.4}svg .marker.gone{fill:#fff}svg .periodic{stroke:#5b6b82}
svg .periodic.kept{fill:#5b6b82}svg .best{stroke:#1c9a4a}svg .best.kept{fill:#1c9a4a}
svg .phase_end{stroke:#6a3fb5}svg .phase_end.kept{fill:#6a3fb5}svg .interrupt{stroke:#c62f2f}
svg .interrupt.kept{fill:#c62f2f}svg .boundary{stroke:#b58900}svg .boundary.kept{fill:#b58900}
svg .whisker{stroke:#333;stroke-width:1.2}svg .mean{stroke:#111;stroke-width:2.4}
svg .hold{fill:#fff;stroke:#111}svg .policy-line{stroke:#2f6fd6;stroke-width:2}
svg .other-line{stroke:#9db7e3;stroke-width:1}svg .hold-line{stroke:#444;stroke-dasharray:5 3}
svg .dot{stroke-width:.8}svg .dot.stopped{fill:#fff!important;stroke-width:1.6}
svg .dot.chosen{stroke:#111!important;stroke-width:2}
.legend span{margin-right:12px;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;
vertical-align:middle;border:1.4px solid}
"""

MARKET_COLOURS = (
    *("#2f6fd6", "#d9822b", "#1c9a4a", "#c62f2f"),
    *("#6a3fb5", "#b58900", "#0e8b8b", "#8a5a44"),
)
CSS += "".join(
    f".m{i}{{fill:{c};stroke:{c}}}.swatch.m{i}{{background:{c};border-color:{c}}}"
    for i, c in enumerate(MARKET_COLOURS)
)

KIND_COLOURS = {
    "periodic": "#5b6b82",
    "best": "#1c9a4a",
    "phase_end": "#6a3fb5",
    "interrupt": "#c62f2f",
    "boundary": "#b58900",
}
