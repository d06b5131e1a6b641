"""What is wrong with a device or a site right now, as plain findings (no I/O).

`evaluate` judges one device from its facts, its newest reading, its profile and its site's
clock; `evaluate_site` judges a site's link. Reconcile (reconcile.py) turns findings into
alert rows: a kind found opens or updates its alert, a kind judged and not found resolves it,
and a kind the data cannot speak to (`unjudged_kinds`) leaves its alert as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from fleet.alerts.models import AlertKind, Severity
from fleet.devices.state import (
    AgentFacts,
    DeviceFacts,
    DeviceState,
    device_silence_threshold,
    silence_unjudged,
    site_offline_since,
)
from fleet.protocol.messages import Flag, Power, Reading
from fleet.protocol.profiles import Profile
from fleet.protocol.timetable import Timetable

UNREACHABLE_AFTER = timedelta(minutes=10)  # of class time
LEFT_ON_GRACE = timedelta(minutes=30)  # after the day's last class
EARLY_START = timedelta(minutes=30)  # switched on this long before a class is preparation
SITE_OFFLINE_AFTER = timedelta(minutes=5)  # an agent restart is not an outage
LIFE_WARNING = 0.9
# How far back to look for class time: a week always holds a class if the site has any.
_LOOKBACK = timedelta(days=8)

READING_KINDS = frozenset(
    {
        AlertKind.over_temperature,
        AlertKind.lamp_hours,
        AlertKind.filter_hours,
        AlertKind.device_error,
        AlertKind.firmware_below_minimum,
        AlertKind.left_on_after_hours,
    }
)
DEVICE_KINDS = READING_KINDS | {AlertKind.device_unreachable}
SITE_KINDS = frozenset({AlertKind.site_offline})
_POWERED = {Power.on, Power.warming}
# States in which the newest reading is not news about the device now.
_NOT_CURRENT = {DeviceState.unreachable, DeviceState.site_offline, DeviceState.unknown}


@dataclass(frozen=True)
class Finding:
    kind: AlertKind
    severity: Severity
    message: str


@dataclass(frozen=True)
class SiteClock:
    timetable: Timetable
    tz: ZoneInfo


def evaluate(
    device: DeviceFacts,
    reading: Reading | None,
    profile: Profile | None,
    clock: SiteClock,
    now: datetime,
    *,
    unreachable_after: timedelta = UNREACHABLE_AFTER,
) -> set[Finding]:
    found: set[Finding] = set()
    unreachable = _unreachable(device, clock, now, unreachable_after)
    if unreachable is not None:
        found.add(unreachable)
    if reading is None or not reading.reachable or device.state in _NOT_CURRENT:
        return found
    found |= _reading_findings(device, reading, profile)
    if _is_fresh(device, reading, now) and reading.power in _POWERED:
        since = after_hours_since(clock, now)
        if since is not None:
            local = since.astimezone(clock.tz).strftime("%H:%M")
            found.add(
                Finding(
                    AlertKind.left_on_after_hours,
                    Severity.warning,
                    f"{device.id} is powered {reading.power.value} after hours "
                    f"(since {local} {clock.tz.key}, 30 min after the last class)",
                )
            )
    return found


def unjudged_kinds(device: DeviceFacts, reading: Reading | None, now: datetime) -> set[AlertKind]:
    """Kinds the data cannot confirm or clear: a silent device's lamp did not get younger."""
    if reading is None or not reading.reachable or device.state in _NOT_CURRENT:
        return set(READING_KINDS)
    if not _is_fresh(device, reading, now):
        return {AlertKind.left_on_after_hours}
    return set()


def evaluate_site(
    agent: AgentFacts | None,
    silence: timedelta,
    now: datetime,
    *,
    offline_after: timedelta = SITE_OFFLINE_AFTER,
    watching_since: datetime | None = None,
) -> set[Finding] | None:
    """The site's findings, or None when they cannot be judged yet: the controller is back
    from its own outage and has not listened long enough (an open alert stays as it is)."""
    if agent is None:
        return set()  # never heard: a site being installed is not an outage
    if silence_unjudged(agent, silence, now, watching_since):
        return None
    offline = site_offline_since(agent, silence, now)
    if offline is None or now - offline[0] < offline_after:
        return set()
    return {Finding(AlertKind.site_offline, Severity.critical, offline[1])}


def after_hours_since(clock: SiteClock, now: datetime) -> datetime | None:
    """When "after hours" began (30 min after the latest class end), or None if it is not
    after hours now: in class, within 30 min of a class's end, or just before a class."""
    tt, tz = clock.timetable, clock.tz
    if tt.in_class(now, tz):
        return None
    local = now.astimezone(tz)
    for period in tt.periods_on(local.date()):
        start = datetime.combine(local.date(), period.start, tzinfo=tz)
        if local < start <= local + EARLY_START:
            return None
    last_end = _latest_class_end(tt, tz, now)
    if last_end is None:
        return None  # no classes for a week: no timetable to judge "after hours" by
    since = last_end + LEFT_ON_GRACE
    return since if now >= since else None


def version_key(version: str) -> tuple[int, ...] | None:
    """ "3.10.2" -> (3, 10, 2), numerically; a leading "v" and a suffix ("-beta") are ignored."""
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    if match is None:
        return None
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 1.2 == 1.2.0
    return tuple(parts)


def _unreachable(
    device: DeviceFacts, clock: SiteClock, now: datetime, after: timedelta
) -> Finding | None:
    if device.state != DeviceState.unreachable or device.state_since is None:
        return None
    # Class time since it became unreachable: a projector unplugged overnight raises its
    # alert ten minutes into the morning's first class, and the alert outlives the class.
    start = max(device.state_since, now - _LOOKBACK)
    intervals = clock.timetable.class_intervals(start, now, clock.tz)
    in_class = sum((b - a for a, b in intervals), timedelta())
    if in_class < after:
        return None
    minutes = int((now - device.state_since).total_seconds() // 60)
    return Finding(
        AlertKind.device_unreachable,
        Severity.critical,
        f"{device.id} unreachable for {minutes} min, {int(in_class.total_seconds() // 60)} "
        "of them in class hours",
    )


def _reading_findings(
    device: DeviceFacts, reading: Reading, profile: Profile | None
) -> set[Finding]:
    found: set[Finding] = set()
    flags = _error_flags(reading)
    if flags is not None:
        found.add(flags)
    if profile is None:
        return found
    limits = profile.thresholds
    temp = reading.temperature_c
    if (
        temp is not None
        and limits.temperature_c_max is not None
        and temp > limits.temperature_c_max
    ):
        found.add(
            Finding(
                AlertKind.over_temperature,
                Severity.critical,
                f"{device.id} at {temp:g} °C, above its profile's maximum "
                f"{limits.temperature_c_max:g} °C ({profile.id})",
            )
        )
    for kind, used, life, what in (
        (AlertKind.lamp_hours, reading.lamp_hours, limits.lamp_hours_life, "lamp"),
        (AlertKind.filter_hours, reading.filter_hours, limits.filter_hours_life, "filter"),
    ):
        wear = _wear(kind, device.id, what, used, life)
        if wear is not None:
            found.add(wear)
    firmware = _firmware(device.id, reading.firmware, profile)
    if firmware is not None:
        found.add(firmware)
    return found


def _wear(
    kind: AlertKind, device: str, what: str, used: float | None, life: float | None
) -> Finding | None:
    if used is None or not life:
        return None
    share = used / life
    if share < LIFE_WARNING:
        return None
    severity = Severity.critical if share >= 1 else Severity.warning
    action = "replace it now" if severity == Severity.critical else "order a replacement"
    return Finding(
        kind,
        severity,
        f"{device} {what} at {used:g} h, {share:.0%} of its {life:g} h life: {action}",
    )


def _error_flags(reading: Reading) -> Finding | None:
    if reading.errors is None:
        return None
    worst = reading.errors.worst()
    if worst == Flag.ok:
        return None
    named = ", ".join(f"{name}={flag.value}" for name, flag in reading.errors if flag != Flag.ok)
    severity = Severity.critical if worst == Flag.error else Severity.warning
    return Finding(AlertKind.device_error, severity, f"{reading.device} reports {named}")


def _firmware(device: str, firmware: str | None, profile: Profile) -> Finding | None:
    if firmware is None or profile.firmware_minimum is None:
        return None
    have, need = version_key(firmware), version_key(profile.firmware_minimum)
    if have is None or need is None or have >= need:
        return None  # a version we cannot read is not evidence of an old one
    return Finding(
        AlertKind.firmware_below_minimum,
        Severity.warning,
        f"{device} runs firmware {firmware}, below {profile.id}'s minimum "
        f"{profile.firmware_minimum}: schedule a rollout",
    )


def _is_fresh(device: DeviceFacts, reading: Reading, now: datetime) -> bool:
    # An agent draining its outbox sends hours-old readings: "on" then is not "on" now.
    return now - reading.ts <= device_silence_threshold(device.poll_interval_s)


def _latest_class_end(tt: Timetable, tz: ZoneInfo, now: datetime) -> datetime | None:
    day = now.astimezone(tz).date()
    for back in range(_LOOKBACK.days):
        ends = [
            datetime.combine(day - timedelta(days=back), p.end, tzinfo=tz)
            for p in tt.periods_on(day - timedelta(days=back))
        ]
        past = [end for end in ends if end <= now]
        if past:
            return max(past)
    return None
