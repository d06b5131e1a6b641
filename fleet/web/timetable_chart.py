"""A site's week of classes as SVG, with "now" marked in the site's local time.

The one place the dashboard shows a site's local time: the timetable is written in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from fleet.protocol.timetable import Timetable

WIDTH = 760
LEFT, RIGHT, TOP, ROW, BOTTOM = 48, 12, 22, 24, 8
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass(frozen=True)
class LocalNow:
    """Where a site is in its timetable now: its local time, whether a class is on, and a short
    summary for its page."""

    at: datetime  # in the site's timezone
    in_class: bool
    summary: str  # "in class until 16:00" / "next class Tue 08:00" / "no classes this week"


def local_now(timetable: Timetable, tz: ZoneInfo, now: datetime) -> LocalNow:
    """`now` at a site in zone `tz`: whether a class is on, and if not, when the next one in the
    coming week starts."""
    local = now.astimezone(tz)
    for period in timetable.periods_on(local.date()):
        if period.start <= local.time() < period.end:
            return LocalNow(local, True, f"in class until {period.end:%H:%M}")
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for period in timetable.periods_on(day):
            if offset > 0 or period.start > local.time():
                when = f"{period.start:%H:%M}" if offset == 0 else f"{day:%a} {period.start:%H:%M}"
                return LocalNow(local, False, f"no class now; next class {when}")
    return LocalNow(local, False, "no classes in the coming week")


def _hours_shown(timetable: Timetable) -> tuple[int, int]:
    starts = [p.start.hour for ps in timetable.weekly.values() for p in ps]
    ends = [p.end.hour + (1 if p.end.minute else 0) for ps in timetable.weekly.values() for p in ps]
    if not starts:
        return 7, 19
    return max(min(starts) - 1, 0), min(max(ends) + 1, 24)


def week_chart(timetable: Timetable, tz: ZoneInfo, now: datetime) -> Markup:
    """This week (Monday to Sunday, local): class periods as blocks, today and "now" marked."""
    local = now.astimezone(tz)
    monday = local.date() - timedelta(days=local.weekday())
    first, last = _hours_shown(timetable)
    span_min = (last - first) * 60

    def x(t: time) -> float:
        minutes = t.hour * 60 + t.minute - first * 60
        return LEFT + max(0, min(minutes, span_min)) / span_min * (WIDTH - LEFT - RIGHT)

    height = TOP + ROW * 7 + BOTTOM
    parts = []
    for hour in range(first, last + 1):
        hx = x(time(hour)) if hour < 24 else WIDTH - RIGHT
        parts.append(
            f'<line class="grid" x1="{hx:.1f}" x2="{hx:.1f}" y1="{TOP}" y2="{TOP + ROW * 7}"/>'
            f'<text class="tick" x="{hx:.1f}" y="{TOP - 8}" text-anchor="middle">{hour:02d}</text>'
        )
    for index in range(7):
        day: date = monday + timedelta(days=index)
        y = TOP + index * ROW
        today = day == local.date()
        closed = day in timetable.closed
        label = DAY_NAMES[index] + (" (closed)" if closed else "")
        if today:
            parts.append(f'<rect class="today" x="0" y="{y}" width="{WIDTH}" height="{ROW}"/>')
        parts.append(
            f'<text class="day{" today-label" if today else ""}" x="6" y="{y + ROW / 2 + 4:.0f}">'
            f"{escape(DAY_NAMES[index])}</text>"
        )
        for period in timetable.periods_on(day):
            x1, x2 = x(period.start), x(period.end)
            parts.append(
                f'<rect class="class-period" x="{x1:.1f}" y="{y + 3}" width="{x2 - x1:.1f}" '
                f'height="{ROW - 6}" rx="3"><title>{escape(label)} '
                f"{period.start:%H:%M} to {period.end:%H:%M}</title></rect>"
            )
    now_x = x(local.time())
    today_y = TOP + local.weekday() * ROW
    parts.append(
        f'<line class="now" x1="{now_x:.1f}" x2="{now_x:.1f}" y1="{today_y - 4}" '
        f'y2="{today_y + ROW + 4}"/>'
        f'<text class="now-label" x="{now_x + 4:.1f}" y="{today_y - 5}">now {local:%H:%M}</text>'
    )
    title = f"Week of {monday:%d %b %Y}, local time ({tz.key})"
    return Markup(  # noqa: S704  (every text escaped)
        f'<svg class="chart timetable" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{"".join(parts)}</svg>'
    )
