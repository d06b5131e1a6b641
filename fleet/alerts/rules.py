"""What is wrong with a device or a site right now, as plain observations (no I/O).

`observe` judges one device from its facts, its newest reading, its profile and its site's
clock; `observe_site` judges a site's link. Each judged kind gives one `Observation`: the
condition holds at its raising level (a finding), it is at or past its clearing level, or it
is in between (hysteresis: a temperature just under its limit neither raises nor clears). A
kind the data cannot speak to (`unjudged_kinds`) gives none and leaves its alert as it is.

How many observations, over how long, raise and clear an alert is each kind's `Hold` in
`HOLDS`; hold.py applies them and reconcile.py writes the alert rows.
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
LIFE_WARNING = 0.9  # share of a lamp's or filter's life that raises
LIFE_CLEAR = 0.85  # ...and the share below which it clears (a lamp or filter replaced)
# A temperature alert clears only this far below the profile's maximum.
TEMPERATURE_HYSTERESIS_C = 3.0
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
    """A condition that holds at its raising level, with the alert's severity and message."""

    kind: AlertKind
    severity: Severity
    message: str


@dataclass(frozen=True)
class Observation:
    """One judgement of one kind for one subject. `finding` set: the condition holds at its
    raising level; `cleared`: it is at or past its clearing level; neither: in between."""

    kind: AlertKind
    # The evidence's own time: the reading's ts for what a reading says (judging the same
    # reading twice counts once), the judging clock for what time alone decides.
    at: datetime
    finding: Finding | None = None
    cleared: bool = False

    @classmethod
    def of(cls, kind: AlertKind, at: datetime, finding: Finding | None) -> Observation:
        """A kind with no band between its levels: found, or cleared."""
        return cls(kind, at, finding, cleared=finding is None)


@dataclass(frozen=True)
class Hold:
    """How long a condition must be seen before its alert opens, and how long its absence
    before it clears. An alert opens on an observation at the raising level once there have
    been `raise_readings` of them over at least `raise_after`, in a run that only a clearing
    ends; it clears once `clear_readings` observations in a row are at the clearing level over
    at least `clear_after`. A raise not yet due lapses after 15 min with no observation at the
    raising level (fleet.alerts.hold.RUN_LAPSES_AFTER)."""

    raise_readings: int
    raise_after: timedelta
    clear_readings: int
    clear_after: timedelta


# Each kind's hold; the README's alert table lists them with the levels above.
HOLDS: dict[AlertKind, Hold] = {
    AlertKind.over_temperature: Hold(3, timedelta(minutes=2), 3, timedelta(minutes=5)),
    AlertKind.lamp_hours: Hold(2, timedelta(minutes=2), 2, timedelta(minutes=2)),
    AlertKind.filter_hours: Hold(2, timedelta(minutes=2), 2, timedelta(minutes=2)),
    AlertKind.device_error: Hold(2, timedelta(minutes=1), 5, timedelta(minutes=5)),
    # A version does not jitter: two readings in a row guard against a misread.
    AlertKind.firmware_below_minimum: Hold(2, timedelta(0), 2, timedelta(0)),
    AlertKind.left_on_after_hours: Hold(2, timedelta(minutes=5), 2, timedelta(minutes=5)),
    # Their levels are durations already (10 min of class time, 5 min offline): they raise
    # at the first judgement past them, and clear after 2 min back.
    AlertKind.device_unreachable: Hold(1, timedelta(0), 2, timedelta(minutes=2)),
    AlertKind.site_offline: Hold(1, timedelta(0), 2, timedelta(minutes=2)),
    # Dates, judged hourly: nothing to smooth.
    AlertKind.programme_overdue: Hold(1, timedelta(0), 1, timedelta(0)),
}


@dataclass(frozen=True)
class SiteClock:
    """A site's timetable and time zone, to judge a device against the site's local class hours."""

    timetable: Timetable
    tz: ZoneInfo


def observe(
    device: DeviceFacts,
    reading: Reading | None,
    profile: Profile | None,
    clock: SiteClock,
    now: datetime,
    *,
    unreachable_after: timedelta = UNREACHABLE_AFTER,
) -> list[Observation]:
    """One observation per device kind the data can speak to at `now`."""
    out: list[Observation] = []
    unreachable = _unreachable(device, clock, now, unreachable_after)
    if unreachable is not None:
        out.append(unreachable)
    unjudged = unjudged_kinds(device, reading, now)
    if reading is None or AlertKind.over_temperature in unjudged:
        return out
    out += _reading_observations(device, reading, profile)
    if AlertKind.left_on_after_hours not in unjudged:
        out.append(_left_on(device, reading, clock, now))
    return out


def evaluate(
    device: DeviceFacts,
    reading: Reading | None,
    profile: Profile | None,
    clock: SiteClock,
    now: datetime,
    *,
    unreachable_after: timedelta = UNREACHABLE_AFTER,
) -> set[Finding]:
    """The device's conditions that hold at their raising level at `now`."""
    observed = observe(device, reading, profile, clock, now, unreachable_after=unreachable_after)
    return {o.finding for o in observed if o.finding is not None}


def unjudged_kinds(device: DeviceFacts, reading: Reading | None, now: datetime) -> set[AlertKind]:
    """Kinds the data cannot confirm or clear: a silent device's lamp did not get younger,
    and a device behind a site that is offline is neither reachable nor unreachable."""
    if device.state in _NOT_CURRENT - {DeviceState.unreachable}:
        return set(DEVICE_KINDS)
    if reading is None or not reading.reachable or device.state in _NOT_CURRENT:
        return set(READING_KINDS)
    if not _is_fresh(device, reading, now):
        return {AlertKind.left_on_after_hours}
    return set()


def observe_site(
    agent: AgentFacts | None,
    silence: timedelta,
    now: datetime,
    *,
    offline_after: timedelta = SITE_OFFLINE_AFTER,
    watching_since: datetime | None = None,
) -> Observation | None:
    """The site's link at `now`, or None when it cannot be judged yet: the controller is back
    from its own outage and has not listened long enough (an open alert stays as it is).
    Offline for less than `offline_after` is in between: an agent restart neither raises
    nor clears."""
    kind = AlertKind.site_offline
    if agent is None:
        return Observation(kind, now, cleared=True)  # never heard: being installed, no outage
    if silence_unjudged(agent, silence, now, watching_since):
        return None
    offline = site_offline_since(agent, silence, now)
    if offline is None:
        return Observation(kind, now, cleared=True)
    if now - offline[0] < offline_after:
        return Observation(kind, now)
    return Observation(kind, now, Finding(kind, Severity.critical, offline[1]))


def evaluate_site(
    agent: AgentFacts | None,
    silence: timedelta,
    now: datetime,
    *,
    offline_after: timedelta = SITE_OFFLINE_AFTER,
    watching_since: datetime | None = None,
) -> set[Finding] | None:
    """The site's findings at their raising level, or None when not judged yet."""
    observed = observe_site(
        agent, silence, now, offline_after=offline_after, watching_since=watching_since
    )
    if observed is None:
        return None
    return {observed.finding} if observed.finding is not None else set()


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
) -> Observation | None:
    kind = AlertKind.device_unreachable
    if device.state in _NOT_CURRENT - {DeviceState.unreachable}:
        return None  # behind an offline site, or never heard: nothing to say of the device
    if device.state != DeviceState.unreachable or device.state_since is None:
        return Observation(kind, now, cleared=True)
    # Class time since it became unreachable: a projector unplugged overnight raises its
    # alert ten minutes into the morning's first class, and the alert outlives the class.
    start = max(device.state_since, now - _LOOKBACK)
    intervals = clock.timetable.class_intervals(start, now, clock.tz)
    in_class = sum((b - a for a, b in intervals), timedelta())
    if in_class < after:
        return Observation(kind, now)  # unreachable, not yet for long: neither level
    minutes = int((now - device.state_since).total_seconds() // 60)
    finding = Finding(
        kind,
        Severity.critical,
        f"{device.id} unreachable for {minutes} min, {int(in_class.total_seconds() // 60)} "
        "of them in class hours",
    )
    return Observation(kind, now, finding)


def _left_on(device: DeviceFacts, reading: Reading, clock: SiteClock, now: datetime) -> Observation:
    kind = AlertKind.left_on_after_hours
    since = after_hours_since(clock, now) if reading.power in _POWERED else None
    if since is None:
        return Observation(kind, reading.ts, cleared=True)
    local = since.astimezone(clock.tz).strftime("%H:%M")
    finding = Finding(
        kind,
        Severity.warning,
        f"{device.id} is powered {reading.power.value} after hours "
        f"(since {local} {clock.tz.key}, 30 min after the last class)",
    )
    return Observation(kind, reading.ts, finding)


def _reading_observations(
    device: DeviceFacts, reading: Reading, profile: Profile | None
) -> list[Observation]:
    at = reading.ts
    out: list[Observation] = []
    if reading.errors is not None:  # a reading without flags says nothing of them
        out.append(Observation.of(AlertKind.device_error, at, _error_flags(reading)))
    if profile is None:
        return out
    limits = profile.thresholds
    temp = reading.temperature_c
    if temp is not None and limits.temperature_c_max is not None:
        top = limits.temperature_c_max
        finding = None
        if temp > top:
            finding = Finding(
                AlertKind.over_temperature,
                Severity.critical,
                f"{device.id} at {temp:g} °C, above its profile's maximum {top:g} °C "
                f"({profile.id})",
            )
        cleared = temp <= top - TEMPERATURE_HYSTERESIS_C
        out.append(Observation(AlertKind.over_temperature, at, finding, cleared))
    for kind, used, life, what in (
        (AlertKind.lamp_hours, reading.lamp_hours, limits.lamp_hours_life, "lamp"),
        (AlertKind.filter_hours, reading.filter_hours, limits.filter_hours_life, "filter"),
    ):
        if used is not None and life:
            share = used / life
            wear = _wear(kind, device.id, what, used, life)
            out.append(Observation(kind, at, wear, cleared=share < LIFE_CLEAR))
    if reading.firmware is not None and profile.firmware_minimum is not None:
        firmware = _firmware(device.id, reading.firmware, profile)
        out.append(Observation.of(AlertKind.firmware_below_minimum, at, firmware))
    return out


def _wear(
    kind: AlertKind, device: str, what: str, used: float | None, life: float | None
) -> Finding | None:
    if used is None or not life:
        return None
    share = used / life
    if not share >= LIFE_WARNING:  # NaN included: a value that says nothing raises nothing
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
