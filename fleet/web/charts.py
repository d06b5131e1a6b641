"""SVG charts made on the server: a line over time, and a band of power states over time.

Plain functions, data in and markup out. Every piece of text goes through `escape`; the
result is `Markup` so templates embed it as is. Times on the axis are UTC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import pairwise
from statistics import median

from markupsafe import Markup, escape

WIDTH, HEIGHT = 760, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 26
MAX_POINTS = 600  # more than this many samples are averaged into buckets
GAP_FACTOR = 3  # a pause longer than this many usual intervals breaks the line

# Readable steps for the time axis, smallest first.
TIME_STEPS = [
    timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880)
]


@dataclass(frozen=True)
class Point:
    """One value of a line chart, at a time (UTC)."""

    ts: datetime
    value: float


@dataclass(frozen=True)
class Segment:
    """A run of one power state (or unreachable) on a device's power band, from `start` to `end`
    (UTC)."""

    start: datetime
    end: datetime
    label: str  # a power value, or "unreachable"


def downsample(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """Average into at most `limit` equal-time buckets, so the SVG stays small."""
    if len(points) <= limit:
        return list(points)
    start, end = points[0].ts, points[-1].ts
    span = (end - start).total_seconds() or 1.0
    buckets: dict[int, list[Point]] = {}
    for p in points:
        index = min(int((p.ts - start).total_seconds() / span * limit), limit - 1)
        buckets.setdefault(index, []).append(p)
    out = []
    for group in buckets.values():
        middle = group[len(group) // 2].ts
        out.append(Point(middle, sum(p.value for p in group) / len(group)))
    return out


def usual_interval(times: Sequence[datetime]) -> timedelta | None:
    """The median gap between consecutive times, or None for fewer than two: what counts as a
    pause in the line."""
    if len(times) < 2:
        return None
    return timedelta(seconds=median((b - a).total_seconds() for a, b in pairwise(times)))


def nice_step(span: float, ticks: int = 4) -> float:
    """A round step for the value axis (1, 2, 2.5 or 5 times a power of ten) giving about `ticks`
    ticks over `span`."""
    raw = span / ticks if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


class _Frame:
    """Maps time and value to pixels inside the plot area."""

    def __init__(self, start: datetime, end: datetime, low: float, high: float) -> None:
        self.start, self.end = start, end
        self.low, self.high = low, high
        self.seconds = max((end - start).total_seconds(), 1.0)

    def x(self, ts: datetime) -> float:
        share = (ts - self.start).total_seconds() / self.seconds
        return LEFT + share * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        share = (value - self.low) / ((self.high - self.low) or 1.0)
        return HEIGHT - BOTTOM - share * (HEIGHT - TOP - BOTTOM)


def _time_axis(frame: _Frame, zone: tzinfo = UTC) -> list[str]:
    """Ticks labelled in `zone` (the site's time, or the user's chosen zone)."""
    step = next((s for s in TIME_STEPS if frame.seconds / s.total_seconds() <= 8), TIME_STEPS[-1])
    step_s = step.total_seconds()
    first = math.ceil(frame.start.timestamp() / step_s) * step_s
    with_date = frame.seconds > 36 * 3600 or step >= timedelta(days=1)
    parts = []
    tick = frame.start + timedelta(seconds=first - frame.start.timestamp())
    while tick <= frame.end:
        x = frame.x(tick)
        label = tick.astimezone(zone).strftime("%d %b %H:%M" if with_date else "%H:%M")
        parts.append(
            f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{label}</text>'
        )
        tick += step
    return parts


def _svg(title: str, body: list[str], height: int = HEIGHT) -> Markup:
    return Markup(  # noqa: S704  (every text escaped)
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'preserveAspectRatio="xMidYMid meet" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    unit: str,
    start: datetime,
    end: datetime,
    zone: tzinfo = UTC,
) -> Markup:
    """A line of one numeric field; gaps in the samples show as gaps in the line. Values that
    are not finite (NaN, ±Infinity, stored before ingest refused them) are left out: they
    have no place on an axis."""
    points = [p for p in points if math.isfinite(p.value)]
    if not points:
        return _svg(title, [_empty_note(HEIGHT, f"no {title.lower()} in this window")])
    shown = downsample(points)
    values = [p.value for p in shown]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    step = nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    frame = _Frame(start, end, low, high)
    body = _time_axis(frame, zone)
    tick = low
    while tick <= high + step / 2:
        y = frame.y(tick)
        body.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{tick:g}{escape(unit)}</text>"
        )
        tick += step
    gap = usual_interval([p.ts for p in points])
    limit = gap * GAP_FACTOR if gap else None
    if limit is not None and len(shown) < len(points):
        limit = max(limit, (shown[-1].ts - shown[0].ts) / len(shown) * GAP_FACTOR)
    path = []
    previous: Point | None = None
    for p in shown:
        move = previous is None or (limit is not None and p.ts - previous.ts > limit)
        path.append(f"{'M' if move else 'L'}{frame.x(p.ts):.1f},{frame.y(p.value):.1f}")
        previous = p
    body.append(f'<path class="series" d="{" ".join(path)}"/>')
    if len(shown) == 1:
        body.append(
            f'<circle class="series-dot" cx="{frame.x(shown[0].ts):.1f}" '
            f'cy="{frame.y(shown[0].value):.1f}" r="3"/>'
        )
    return _svg(title, body)


BAND_HEIGHT = 86


def power_band(
    segments: Sequence[Segment],
    *,
    title: str,
    start: datetime,
    end: datetime,
    zone: tzinfo = UTC,
) -> Markup:
    """Power state over time as coloured spans; white where there are no samples."""
    if not segments:
        return _svg(title, [_empty_note(BAND_HEIGHT, "no samples in this window")], BAND_HEIGHT)
    frame = _Frame(start, end, 0, 1)
    top, bottom = TOP, BAND_HEIGHT - BOTTOM
    body = [
        f'<rect class="band-bg" x="{LEFT}" y="{top}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{bottom - top}"/>'
    ]
    for seg in segments:
        x1, x2 = frame.x(seg.start), frame.x(seg.end)
        label = escape(seg.label)
        body.append(
            f'<rect class="power-{label}" x="{x1:.1f}" y="{top}" width="{max(x2 - x1, 1.0):.1f}" '
            f'height="{bottom - top}"><title>{label}: {seg.start:%H:%M} to {seg.end:%H:%M} UTC'
            "</title></rect>"
        )
    axis = _Frame(start, end, 0, 1)
    for part in _time_axis(axis, zone):
        # The shared axis draws grid lines for the full chart height: shorten them for a band.
        body.append(
            part.replace(f'y2="{HEIGHT - BOTTOM}"', f'y2="{bottom}"').replace(
                f'y="{HEIGHT - 8}"', f'y="{BAND_HEIGHT - 8}"'
            )
        )
    return _svg(title, body, BAND_HEIGHT)


def _empty_note(height: int, text: str) -> str:
    return (
        f'<text class="empty" x="{WIDTH / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">'
        f"{escape(text)}</text>"
    )
