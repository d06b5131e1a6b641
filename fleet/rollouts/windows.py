"""Maintenance windows: when a site's devices may be updated, in the site's own local time.

Never during class hours (with a margin on either side, so a panel is not rebooting as a
teacher walks in), and optionally only at night or on days without classes. Time in and out
is aware UTC; the site's timezone is used only to read its timetable and the clock on its wall.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from fleet.protocol.timetable import Timetable

SCAN_STEP = timedelta(minutes=5)
SCAN_HORIZON = timedelta(days=15)


@dataclass(frozen=True)
class WindowPolicy:
    """When a rollout may update a site's devices: clear of classes by `margin_min` minutes, and,
    when asked, only at night (site local time) or on days without classes."""

    # Kept clear before a class starts and after it ends.
    margin_min: int = 30
    nights_only: bool = False
    # "Weekend" is a day without classes in the site's timetable, not Saturday and Sunday:
    # several partner countries (Algeria, Iraq) rest on Friday and Saturday.
    weekends_only: bool = False
    night_start: time = time(22, 0)
    night_end: time = time(6, 0)


def _is_night(local: datetime, policy: WindowPolicy) -> bool:
    now = local.time()
    if policy.night_start <= policy.night_end:
        return policy.night_start <= now < policy.night_end
    return now >= policy.night_start or now < policy.night_end


def window_open(at: datetime, timetable: Timetable, tz: ZoneInfo, policy: WindowPolicy) -> bool:
    """True when the maintenance window is open at `at` for a site with this timetable and time
    zone."""
    margin = timedelta(minutes=policy.margin_min)
    if timetable.class_intervals(at - margin, at + margin, tz):
        return False
    if not (policy.nights_only or policy.weekends_only):
        return True
    local = at.astimezone(tz)
    if policy.nights_only and _is_night(local, policy):
        return True
    return policy.weekends_only and not timetable.periods_on(local.date())


def next_window_start(
    at: datetime,
    timetable: Timetable,
    tz: ZoneInfo,
    policy: WindowPolicy,
    *,
    after_current: bool = False,
) -> datetime | None:
    """When the window next opens (now, if open and not `after_current`); None within
    SCAN_HORIZON means the policy leaves no time at all (every hour has a class)."""
    t = at
    end = at + SCAN_HORIZON
    if after_current:
        while t < end and window_open(t, timetable, tz, policy):
            t += SCAN_STEP
    while t < end:
        if window_open(t, timetable, tz, policy):
            return t
        t += SCAN_STEP
    return None
