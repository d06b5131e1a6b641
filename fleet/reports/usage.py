"""Usage from raw readings, as plain functions: a timeline, power-on sessions, hourly roll-ups.

A reading stands for its device's state until the next reading, as long as that comes within
`GAP_POLLS` poll intervals. After a longer gap the reading stands for one poll interval and
the rest of the gap is unknown: neither on nor off, since nobody could see the device.
Hours are the site's local hours (a UTC+05:45 hour starts at hh:15 UTC).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

GAP_POLLS = 3
_POWERED_DOWN = {"standby", "off", "cooling"}
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Point:
    """One reading, reduced to what usage needs."""

    ts: datetime
    reachable: bool
    on: bool
    faulty: bool
    input: str | None = None
    temperature_c: float | None = None
    lamp_hours: float | None = None
    filter_hours: float | None = None
    firmware: str | None = None


def point_from_sample(
    ts: datetime,
    reachable: bool,
    power: str,
    input: str | None = None,
    temperature_c: float | None = None,
    lamp_hours: float | None = None,
    filter_hours: float | None = None,
    firmware: str | None = None,
    errors: dict[str, Any] | None = None,
) -> Point:
    """One stored sample as a usage point: on when reachable and not powered down, faulty when
    reachable with an error flag; the input counts only while on."""
    # As fleet.devices.state: a reachable device that reports no power state is taken to be on.
    on = reachable and power not in _POWERED_DOWN
    faulty = reachable and any(v == "error" for v in (errors or {}).values())
    return Point(
        ts=ts,
        reachable=reachable,
        on=on,
        faulty=faulty,
        input=input if on else None,
        temperature_c=temperature_c,
        lamp_hours=lamp_hours,
        filter_hours=filter_hours,
        firmware=firmware,
    )


@dataclass(frozen=True)
class Segment:
    """A stretch of time one reading vouches for."""

    start: datetime
    end: datetime
    point: Point


def gap_limit(poll_interval_s: float) -> timedelta:
    """The longest gap after which a reading still stands for its device's state: GAP_POLLS poll
    intervals of `poll_interval_s` seconds."""
    return timedelta(seconds=GAP_POLLS * poll_interval_s)


def timeline(points: Sequence[Point], poll_interval_s: float) -> list[Segment]:
    """Known segments of `points` (sorted by ts); the time between them is unknown."""
    poll = timedelta(seconds=poll_interval_s)
    limit = gap_limit(poll_interval_s)
    out = []
    for i, point in enumerate(points):
        nxt = points[i + 1].ts if i + 1 < len(points) else None
        if nxt is not None and nxt - point.ts <= limit:
            end = nxt
        else:
            end = point.ts + poll if nxt is None else min(point.ts + poll, nxt)
        if end > point.ts:
            out.append(Segment(point.ts, end, point))
    return out


def sessions(
    segments: Iterable[Segment], start: datetime, end: datetime
) -> list[tuple[datetime, datetime, str | None]]:
    """Power-on sessions (start, end, input) within [start, end): contiguous on-time with one
    input. Unknown time ends a session: nobody knows whether it stayed on."""
    out: list[tuple[datetime, datetime, str | None]] = []
    for seg in segments:
        if not seg.point.on:
            continue
        a, b = max(seg.start, start), min(seg.end, end)
        if a >= b:
            continue
        if out and out[-1][1] == a and out[-1][2] == seg.point.input:
            out[-1] = (out[-1][0], b, seg.point.input)
        else:
            out.append((a, b, seg.point.input))
    return out


def local_hour_start(at: datetime, tz: ZoneInfo) -> datetime:
    """The start, in UTC, of the site's local hour (time zone `tz`) that holds `at`."""
    local = at.astimezone(tz)
    # replace() keeps `fold`, so the repeated hour of a DST change maps to its own instant.
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def local_hours(start: datetime, end: datetime, tz: ZoneInfo) -> list[tuple[datetime, datetime]]:
    """The site's local hours overlapping [start, end), as UTC intervals (not clipped)."""
    out = []
    at = local_hour_start(start, tz)
    while at < end:
        nxt = local_hour_start(at + HOUR, tz)
        if nxt <= at:  # cannot happen with whole-hour or fixed offsets; guard against a loop
            nxt = at + HOUR
        out.append((at, nxt))
        at = nxt
    return out


def _overlap(a: datetime, b: datetime, intervals: Sequence[tuple[datetime, datetime]]) -> float:
    """Seconds of [a, b) inside the sorted, disjoint `intervals`."""
    total = 0.0
    for c, d in intervals:
        if d <= a:
            continue
        if c >= b:
            break
        total += (min(b, d) - max(a, c)).total_seconds()
    return total


def _added(values: list[tuple[datetime, float]], b0: datetime, b1: datetime) -> float:
    """Counter growth in [b0, b1): last value before b1 minus last before b0 (or first in it)."""
    times = [t for t, _ in values]
    i_end = bisect_left(times, b1)
    i_start = bisect_left(times, b0)
    if i_end == 0:
        return 0.0
    last = values[i_end - 1][1]
    base = values[i_start - 1][1] if i_start > 0 else values[i_start][1]
    return max(0.0, last - base)  # a new lamp resets the counter: no negative use


def hour_rollups(
    points: Sequence[Point],
    poll_interval_s: float,
    hours: Sequence[tuple[datetime, datetime]],
    class_intervals: Sequence[tuple[datetime, datetime]],
    tz: ZoneInfo,
) -> list[dict[str, Any]]:
    """One row (UsageHour columns but device_id) per hour in `hours` that any reading covers.

    `points` must include the reading before the first hour, if there is one, so that the
    first hour knows the state it starts in and whether a fault there is a new one.
    """
    segments = timeline(points, poll_interval_s)
    starts = [s.start for s in segments]
    point_times = [p.ts for p in points]
    lamps = [(p.ts, p.lamp_hours) for p in points if p.lamp_hours is not None]
    filters = [(p.ts, p.filter_hours) for p in points if p.filter_hours is not None]
    fault_times = _fault_starts(segments)
    rows = []
    for b0, b1 in hours:
        first = max(0, bisect_right(starts, b0) - 1)
        in_class = [(max(a, b0), min(b, b1)) for a, b in class_intervals if a < b1 and b > b0]
        acc = dict.fromkeys(
            (
                "known",
                "reachable",
                "on",
                "faulty",
                "class_known",
                "class_on",
                "class_available",
            ),
            0.0,
        )
        by_input: dict[str, float] = {}
        for seg in segments[first:]:
            if seg.start >= b1:
                break
            a, b = max(seg.start, b0), min(seg.end, b1)
            if a >= b:
                continue
            seconds = (b - a).total_seconds()
            cls = _overlap(a, b, in_class)
            p = seg.point
            acc["known"] += seconds
            acc["class_known"] += cls
            if p.reachable:
                acc["reachable"] += seconds
            if p.faulty:
                acc["faulty"] += seconds
            if p.reachable and not p.faulty:
                acc["class_available"] += cls
            if p.on:
                acc["on"] += seconds
                acc["class_on"] += cls
                if p.input:
                    by_input[p.input] = by_input.get(p.input, 0.0) + seconds
        lo, hi = bisect_left(point_times, b0), bisect_left(point_times, b1)
        inside = points[lo:hi]
        if acc["known"] <= 0 and not inside:
            continue
        length = (b1 - b0).total_seconds()
        local = b0.astimezone(tz)
        temps = [p.temperature_c for p in inside if p.temperature_c is not None]
        firmware = [p.firmware for p in inside if p.firmware]
        rows.append(
            {
                "hour_start": b0,
                "local_date": local.date(),
                "local_hour": local.hour,
                "local_weekday": local.weekday(),
                "minutes": length / 60,
                "minutes_known": acc["known"] / 60,
                "minutes_unknown": max(0.0, length - acc["known"]) / 60,
                "minutes_reachable": acc["reachable"] / 60,
                "minutes_on": acc["on"] / 60,
                "minutes_faulty": acc["faulty"] / 60,
                "class_minutes_known": acc["class_known"] / 60,
                "class_minutes_on": acc["class_on"] / 60,
                "class_minutes_available": acc["class_available"] / 60,
                "fault_starts": sum(1 for t in fault_times if b0 <= t < b1),
                # Longest first; ties by name, so a recomputation picks the same one.
                "top_input": min(by_input, key=lambda k: (-by_input[k], k)) if by_input else None,
                "peak_temperature_c": max(temps) if temps else None,
                "lamp_hours_added": _added(lamps, b0, b1),
                "filter_hours_added": _added(filters, b0, b1),
                "lamp_hours_last": _last_before(lamps, b1),
                "filter_hours_last": _last_before(filters, b1),
                "firmware_last": firmware[-1] if firmware else None,
            }
        )
    return rows


def _last_before(values: list[tuple[datetime, float]], at: datetime) -> float | None:
    i = bisect_left([t for t, _ in values], at)
    return values[i - 1][1] if i > 0 else None


def _fault_starts(segments: Sequence[Segment]) -> list[datetime]:
    """When the device turned faulty; unknown time between two faulty readings is one fault."""
    out = []
    was_faulty: bool | None = None
    for seg in segments:
        if seg.point.faulty and was_faulty is not True:
            out.append(seg.start)
        was_faulty = seg.point.faulty
    return out
