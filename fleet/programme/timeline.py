"""A site's timeline, planned against actual: JSON for the dashboard, SVG for a person.

The SVG is drawn here as text (no JS, no fonts or scripts fetched): one row per phase and per
classroom, a hollow diamond where a milestone is planned, a filled mark or bar where it happened.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from xml.sax.saxutils import escape

from fleet.models import Site
from fleet.programme.milestones import ORDER, MilestoneName, is_overdue
from fleet.programme.overview import Located

COLOURS = {
    MilestoneName.agreement_signed: "#6a3d9a",
    MilestoneName.equipment_delivered: "#1f78b4",
    MilestoneName.installed: "#33a02c",
    MilestoneName.training_done: "#ff7f00",
    MilestoneName.in_use: "#b15928",
}
LATE = "#e31a1c"
LABEL_W, PLOT_W, ROW_H, TOP, PAD = 190, 680, 34, 40, 10


@dataclass(frozen=True)
class TimelineWords:
    """The SVG's words, English by default; the dashboard gives its page's language's
    (`fleet.web.words.timeline_words`). Each `%(name)s` is filled in here; `milestones` maps a
    milestone's code to its name (a code not in it is shown with spaces for underscores)."""

    milestones: Mapping[str, str] = field(default_factory=dict)
    phase: str = "phase %(phase)s"
    phase_room: str = "phase %(phase)s · %(room)s"
    title: str = "%(site)s: programme, planned against actual (as of %(today)s)"
    planned: str = "%(milestone)s planned %(day)s"
    planned_late: str = "%(milestone)s planned %(day)s (late)"
    happened: str = "%(milestone)s %(day)s"
    happened_span: str = "%(milestone)s %(day)s to %(end)s"
    undated: str = "reached, date not given: %(milestones)s"
    today: str = "today"
    legend: str = "filled: happened · hollow diamond: planned · red: planned date passed"

    def milestone(self, name: MilestoneName) -> str:
        """The milestone's name in these words."""
        return self.milestones.get(name.value) or name.value.replace("_", " ")

    def subject(self, phase: int, room: str | None) -> str:
        """A row's label: the phase, and the classroom when given."""
        if room:
            return self.phase_room % {"phase": phase, "room": room}
        return self.phase % {"phase": phase}


ENGLISH = TimelineWords()


@dataclass(frozen=True)
class Timeline:
    """A site's milestones as timeline rows, one per phase and per classroom, as of the site's
    `today`."""

    site: Site
    today: date
    rows: dict[str, list[Located]]  # subject label -> its milestones, in order

    def span(self) -> tuple[date, date]:
        """The dates the timeline covers: from a month before the earliest date shown (today
        included) to a month after the latest."""
        days = [self.today]
        for items in self.rows.values():
            for m in items:
                days += [d for d in (m.facts.planned, m.facts.actual, m.facts.actual_end) if d]
        return min(days) - timedelta(days=31), max(days) + timedelta(days=31)


def build_timeline(site: Site, milestones: list[Located], today: date) -> Timeline:
    """The site's milestones sorted into rows (by phase, classroom, then milestone order)."""
    rows: dict[str, list[Located]] = defaultdict(list)
    for m in sorted(milestones, key=lambda m: (m.phase, m.room, ORDER.index(m.facts.milestone))):
        rows[f"phase {m.phase}" + (f" · {m.room}" if m.room else "")].append(m)
    return Timeline(site=site, today=today, rows=dict(rows))


def timeline_json(timeline: Timeline) -> dict[str, Any]:
    """The timeline as the dashboard's JSON: its span, and each row's milestones with their dates
    (ISO 8601) and whether each is overdue."""
    start, end = timeline.span()
    return {
        "site": timeline.site.code,
        "today": timeline.today.isoformat(),
        "start": start.isoformat(),
        "end": end.isoformat(),
        "rows": [
            {
                "subject": subject,
                "phase": items[0].phase,
                "room": items[0].room or None,
                "milestones": [
                    {
                        "milestone": m.facts.milestone.value,
                        "planned": _iso(m.facts.planned),
                        "actual": _iso(m.facts.actual),
                        "actual_end": _iso(m.facts.actual_end),
                        "reached": m.facts.reached,
                        "overdue": is_overdue(m.facts, timeline.today),
                        "note": m.note,
                    }
                    for m in items
                ],
            }
            for subject, items in timeline.rows.items()
        ],
    }


def timeline_svg(timeline: Timeline, words: TimelineWords = ENGLISH) -> str:
    """The timeline as a standalone SVG document (text; no script, nothing fetched), its
    words in `words`' language."""
    start, end = timeline.span()
    total = max((end - start).days, 1)

    def x(day: date) -> float:
        return LABEL_W + PLOT_W * (day - start).days / total

    rows = list(timeline.rows.items())
    height = TOP + ROW_H * max(len(rows), 1) + 76
    width = LABEL_W + PLOT_W + PAD
    title = words.title % {"site": timeline.site.name, "today": timeline.today}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{PAD}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    bottom = TOP + ROW_H * max(len(rows), 1)
    for tick in _quarters(start, end):
        tx = x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{TOP - 6}" x2="{tx:.1f}" y2="{bottom}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{tx:.1f}" y="{bottom + 14}" text-anchor="middle">{tick:%Y-%m}</text>')
    for index, (subject, items) in enumerate(rows):
        y = TOP + ROW_H * index + ROW_H / 2
        shown = words.subject(items[0].phase, items[0].room) if items else subject
        out.append(f'<text x="{PAD}" y="{y + 4:.1f}">{escape(shown)}</text>')
        out.append(
            f'<line x1="{LABEL_W}" y1="{y:.1f}" x2="{LABEL_W + PLOT_W}" y2="{y:.1f}" '
            'stroke="#eee"/>'
        )
        undated = []
        labels: list[tuple[float, str, str]] = []
        for m in items:
            shapes, label = _marks(m, x, y, timeline.today, words)
            out += shapes
            labels += label
            if m.facts.reached and m.facts.actual is None:
                undated.append(words.milestone(m.facts.milestone))
        out += _place_labels(labels, y)
        if undated:
            out.append(
                f'<text x="{PAD}" y="{y + 15:.1f}" font-size="9" fill="#555">'
                f"{escape(words.undated % {'milestones': ', '.join(undated)})}</text>"
            )
    tx = x(timeline.today)
    out.append(
        f'<line x1="{tx:.1f}" y1="{TOP - 10}" x2="{tx:.1f}" y2="{bottom}" stroke="{LATE}" '
        'stroke-dasharray="4 3"/>'
    )
    out.append(
        f'<text x="{tx:.1f}" y="{TOP - 12}" text-anchor="middle" fill="{LATE}">'
        f"{escape(words.today)}</text>"
    )
    out += _legend(bottom + 34, words)
    out.append("</svg>")
    return "\n".join(out) + "\n"


LABEL_CHAR_W = 5.6  # px a character of the 9 px labels takes, at most (sans-serif)
LABEL_GAP = 4.0


def label_width(text: str) -> float:
    """The most width, in pixels, a milestone label takes in the SVG."""
    return len(text) * LABEL_CHAR_W


def _place_labels(labels: list[tuple[float, str, str]], y: float) -> list[str]:
    """A row's milestone names (x, name, colour), none over another: each goes above its mark,
    else below it, else after the last label above. Two milestones on the same day (installed
    and in use both planned for 31 December) are written one above, one below."""
    lanes = [y - 9, y + 17]  # the marks span y - 6 to y + 6
    ends = [-1e9, -1e9]
    out = []
    for lx, name, colour in sorted(labels, key=lambda label: (label[0], label[1])):
        free = [n for n, end in enumerate(ends) if lx >= end + LABEL_GAP]
        lane = free[0] if free else 0
        at = lx if free else ends[0] + LABEL_GAP
        ends[lane] = at + label_width(name)
        out.append(
            f'<text x="{at:.1f}" y="{lanes[lane]:.1f}" font-size="9" fill="{colour}">'
            f"{escape(name)}</text>"
        )
    return out


def _marks(
    m: Located, x: Any, y: float, today: date, words: TimelineWords
) -> tuple[list[str], list[tuple[float, str, str]]]:
    """A milestone's shapes, and its label (x, name, colour) for `_place_labels` to lay out."""
    colour = COLOURS[m.facts.milestone]
    label = words.milestone(m.facts.milestone)
    out = []
    labels: list[tuple[float, str, str]] = []
    if m.facts.planned is not None:
        px = x(m.facts.planned)
        stroke = LATE if is_overdue(m.facts, today) else colour
        said = words.planned_late if is_overdue(m.facts, today) else words.planned
        tip = said % {"milestone": label, "day": m.facts.planned}
        out.append(
            f'<path d="M{px:.1f} {y - 6:.1f} L{px + 6:.1f} {y:.1f} L{px:.1f} {y + 6:.1f} '
            f'L{px - 6:.1f} {y:.1f} Z" fill="white" stroke="{stroke}" stroke-width="2">'
            f"<title>{escape(tip)}</title></path>"
        )
    if m.facts.actual is not None:
        ax = x(m.facts.actual)
        end = m.facts.actual_end or m.facts.actual
        width = max(x(end) - ax, 4.0)
        said = words.happened_span if m.facts.actual_end else words.happened
        tip = said % {"milestone": label, "day": m.facts.actual, "end": m.facts.actual_end}
        out.append(
            f'<rect x="{ax - 2:.1f}" y="{y - 6:.1f}" width="{width:.1f}" height="12" rx="2" '
            f'fill="{colour}"><title>{escape(tip)}</title></rect>'
        )
        labels.append((ax, label, colour))
    elif m.facts.planned is not None:
        labels.append((x(m.facts.planned), label, colour))
    return out, labels


def _legend(y: float, words: TimelineWords) -> list[str]:
    out = []
    lx = float(PAD)
    for name in ORDER:
        shown = words.milestone(name)
        out.append(
            f'<rect x="{lx:.0f}" y="{y - 9:.0f}" width="10" height="10" fill="{COLOURS[name]}"/>'
        )
        out.append(f'<text x="{lx + 14:.0f}" y="{y:.0f}">{escape(shown)}</text>')
        lx += 24 + 7 * len(shown)
    out.append(f'<text x="{PAD}" y="{y + 16:.0f}">{escape(words.legend)}</text>')
    return out


def _quarters(start: date, end: date) -> list[date]:
    month = ((start.month - 1) // 3) * 3 + 1
    tick = date(start.year, month, 1)
    ticks = []
    while tick <= end:
        if tick >= start:
            ticks.append(tick)
        year, month = (tick.year + 1, 1) if tick.month > 9 else (tick.year, tick.month + 3)
        tick = date(year, month, 1)
    return ticks


def _iso(value: date | None) -> str | None:
    return value.isoformat() if value else None
