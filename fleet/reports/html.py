"""The usage report as one self-contained HTML page: tables and server-made SVG bar charts.

No script, no CDN, no web font: it opens offline and prints on A4 landscape as shown.
"""

from __future__ import annotations

from html import escape
from typing import Any

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
.meta { color: #555; margin-bottom: 1rem; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1rem; }
th, td { border-bottom: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f2f2f2; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: .3rem; }
svg text { font: 10px sans-serif; fill: #333; } .bar { fill: #3b6ea8; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0 1rem; color: #444; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; font-size: 10px; }
  figure, tr { break-inside: avoid; } h2 { break-after: avoid; }
  thead { display: table-header-group; }
}
"""

# (column, heading, how it is shown)
SHOWN = [
    ("hours_on", "Hours on", "num"),
    ("utilization", "Utilization", "pct"),
    ("after_hours_on", "After-hours h", "num"),
    ("after_hours_energy_kwh", "After-hours kWh", "num"),
    ("saved_on_hours", "Saved h (schedules)", "num"),
    ("saved_lamp_hours", "Lamp h saved", "num"),
    ("saved_energy_kwh", "Saved kWh (illustrative)", "num"),
    ("availability", "Availability", "pct"),
    ("class_hours_unknown", "Class h unknown", "num"),
    ("faults", "Faults", "int"),
    ("mtbf_hours", "MTBF h", "num"),
    ("firmware_compliance", "Firmware OK", "pct"),
    ("lamp_hours_used", "Lamp h used", "num"),
    ("lamp_end_of_life", "Lamp end of life", "text"),
    ("filter_end_of_life", "Filter end of life", "text"),
]


def _cell(value: Any, how: str) -> str:
    if value is None:
        return "unknown" if how == "pct" else "-"
    if how == "pct":
        return f"{value * 100:.1f} %"
    if how == "int":
        return str(int(value))
    if how == "num":
        return f"{value:,.1f}"
    return escape(str(value))


def _inputs(row: dict[str, Any]) -> str:
    shares = sorted(row.get("inputs", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{escape(k)} {v * 100:.0f} %" for k, v in shares) or "-"


def _table(title: str, rows: list[dict[str, Any]], label: str = "id") -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for _, h, _ in SHOWN)
    body = []
    for row in rows:
        name = escape(str(row[label]))
        if row.get("name") and row["name"] != row[label]:
            name += f" <small>({escape(str(row['name']))})</small>"
        cells = "".join(f"<td>{_cell(row[c], how)}</td>" for c, _, how in SHOWN)
        body.append(f"<tr><td>{name}</td>{cells}<td>{_inputs(row)}</td></tr>")
    return (
        f"<h2>{escape(title)}</h2><table><thead><tr><th></th>{head}<th>Inputs</th></tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table>"
    )


def svg_columns(values: list[float], labels: list[str], unit: str) -> str:
    """A vertical bar chart, scaled to its largest value."""
    width, height, pad = 24 * max(len(values), 1) + 40, 170, 30
    top = max(values, default=0.0) or 1.0
    step = (width - 40) / max(len(values), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    parts.append(f'<text x="2" y="10">{top:,.0f} {escape(unit)}</text>')
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = (height - pad - 14) * value / top
        x = 36 + i * step
        y = height - pad - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{step * 0.75:.1f}" '
            f'height="{h:.1f}"><title>{escape(label)}: {value:,.1f} {escape(unit)}</title></rect>'
        )
        parts.append(f'<text x="{x:.1f}" y="{height - pad + 12}">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_rows(values: list[float | None], labels: list[str]) -> str:
    """A horizontal bar chart of shares (0..1), one row per label."""
    width, row_h, label_w = 560, 18, 200
    height = row_h * max(len(values), 1) + 4
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        y = i * row_h + 2
        share = value or 0.0
        w = (width - label_w - 60) * min(share, 1.0)
        parts.append(f'<text x="0" y="{y + 12}">{escape(label[:32])}</text>')
        parts.append(
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{row_h - 4}"/>'
        )
        shown = "-" if value is None else f"{share * 100:.1f} %"
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{shown}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict[str, Any]) -> bytes:
    """The report as one UTF-8 HTML page, its style and its charts (SVG) inline: the totals, a table
    per level, and the definitions."""
    scope = ", ".join(f"{k} {report[k]}" for k in ("vendor", "site", "device") if report[k])
    title = f"Usage report: {scope or 'all devices'}, {report['from']} to {report['to']}"
    charts = report["charts"]
    rooms = report["rooms"]
    figures = [
        (
            "Hours on by local hour of day",
            svg_columns(charts["hours_on_by_local_hour"], [f"{h:02d}" for h in range(24)], "h"),
        ),
        ("Hours on by weekday", svg_columns(charts["hours_on_by_weekday"], WEEKDAYS, "h")),
        (
            "Utilization per room (class hours on / class hours)",
            svg_rows([r["utilization"] for r in rooms], [str(r["name"]) for r in rooms]),
        ),
    ]
    definitions = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in report["definitions"].items()
    )
    page = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="meta">{report["days"]} days, in each site\'s local time. '
        f"{report['totals']['devices']} devices.</div>",
        '<div class="charts">',
        *(f"<figure><figcaption>{escape(c)}</figcaption>{svg}</figure>" for c, svg in figures),
        "</div>",
        _table("Total", [report["totals"]]),
        _table("Vendors", report["vendors"]),
        _table("Sites", report["sites"]),
        _table("Rooms", report["rooms"]),
        _table("Devices", report["devices"]),
        f"<h2>Definitions</h2><dl>{definitions}</dl>",
        "</body></html>\n",
    ]
    return "".join(page).encode()
