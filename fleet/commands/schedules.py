"""Power schedules from the timetable: which displays to switch off now, and why.

Plain functions first (`due_offs`: a site's calendar, its schedules, its displays in, the
switch-offs due out), then the scheduled job that reads them from the database and either
sends the commands (`act`) or records what it would have sent (`notify_only`, the default:
a site watches it for a week before turning it on). Each action, sent or not, is a row of
`device_command` with its reason, so it shows in the device's command history.

Never during a class, never in a room a technician has marked in use, never on a site's
exception date (its local date), and a display is switched off by a schedule at most once
in REPEAT_AFTER.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.commands.models import DeviceCommand, PowerException, PowerSchedule, RoomInUse
from fleet.commands.sending import EXPIRES_AFTER, send
from fleet.devices.registry import timetable_from_json
from fleet.models import Device, Site
from fleet.protocol.messages import CommandKind
from fleet.protocol.timetable import Timetable

log = logging.getLogger(__name__)

SCHEDULE_ACTOR = "schedule"
REPEAT_AFTER = timedelta(minutes=30)
DISPLAYS = ("panel", "projector")
ON = ("on", "warming")


@dataclass(frozen=True)
class SchedulePolicy:
    """The power schedule policy of a site or one room, as `due_offs` reads it; minutes None: that
    rule is off."""

    mode: str = "notify_only"
    off_after_last_class_min: int | None = None
    off_after_idle_min: int | None = None


@dataclass(frozen=True)
class Display:
    """A panel or projector a power schedule may switch off: its room, its power as last read, and
    since when it has been on."""

    device_id: str
    room_id: str
    power: str | None
    # Since when it has been on (its state's start), if known.
    on_since: datetime | None


@dataclass(frozen=True)
class SwitchOff:
    """One display `due_offs` says to switch off, why (in words for the command history) and under
    which mode."""

    device_id: str
    reason: str
    mode: str


def _last_end_before(now: datetime, timetable: Timetable, tz: ZoneInfo) -> datetime | None:
    local = now.astimezone(tz)
    ends = [
        datetime.combine(local.date(), p.end, tzinfo=tz)
        for p in timetable.periods_on(local.date())
        if datetime.combine(local.date(), p.end, tzinfo=tz) <= local
    ]
    return max(ends) if ends else None


def due_offs(
    now: datetime,
    timetable: Timetable,
    tz: ZoneInfo,
    policies: dict[str, SchedulePolicy],
    exceptions: set[date],
    in_use: set[str],
    displays: list[Display],
) -> list[SwitchOff]:
    """The displays to switch off at `now`. `policies` by room id, "" the site's; `in_use`
    room ids; `exceptions` local dates without schedules."""
    local_day = now.astimezone(tz).date()
    if local_day in exceptions or timetable.in_class(now, tz):
        return []
    last_end = timetable.last_class_end(now, tz)
    recent_end = _last_end_before(now, timetable, tz)
    out = []
    for d in displays:
        policy = policies.get(d.room_id) or policies.get("")
        if policy is None or d.power not in ON or d.room_id in in_use:
            continue
        n = policy.off_after_last_class_min
        m = policy.off_after_idle_min
        reason = None
        if n is not None and last_end is not None and now >= last_end + timedelta(minutes=n):
            ended = last_end.astimezone(tz).strftime("%H:%M")
            reason = f"{n} min after the day's last class (ended {ended} local time)"
        elif (
            m is not None
            and d.on_since is not None
            and d.on_since <= now - timedelta(minutes=m)
            and (recent_end is None or recent_end <= now - timedelta(minutes=m))
        ):
            reason = f"on for {m} min or more with no class"
        if reason is not None:
            out.append(SwitchOff(d.device_id, reason, policy.mode))
    return out


Publish = Callable[..., None]
# The most one switch-off is credited with: a display left on overnight would be switched on
# for the next morning's class anyway.
AVOIDED_CAP = timedelta(hours=24)


def avoided_hours(switched_off: datetime, timetable: Timetable, tz: ZoneInfo) -> float:
    """On-time a schedule's switch-off avoided, in hours: from the switch-off to the next
    timetabled class (when the display would be wanted on again), at most AVOIDED_CAP. An
    estimate: it assumes the display would otherwise have stayed on until then."""
    local = switched_off.astimezone(tz)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for period in timetable.periods_on(day):
            start = datetime.combine(day, period.start, tzinfo=tz)
            if start > local:
                return min(start - local, AVOIDED_CAP).total_seconds() / 3600
    return AVOIDED_CAP.total_seconds() / 3600


def run_power_schedules(
    engine: Engine, now: datetime, publish: Publish | None = None, topic_root: str = "fleet/v1"
) -> None:
    """The scheduled job: each site with a schedule, its switch-offs due now sent (act) or
    recorded (notify_only). One site's trouble is logged and the others go on."""
    done = 0
    with Session(engine) as session:
        sites = sorted(set(session.exec(select(PowerSchedule.site_code)).all()))
    for site_code in sites:
        try:
            with Session(engine) as session:
                done += _run_site(session, site_code, now, publish, topic_root)
        except Exception:
            log.exception("power schedule of %s failed; the next run tries again", site_code)
    if done:
        log.info("power schedules: %d displays acted on or noted", done)


def _run_site(
    session: Session, site_code: str, now: datetime, publish: Publish | None, topic_root: str
) -> int:
    site = session.get(Site, site_code)
    if site is None:
        return 0
    timetable, tz = timetable_from_json(site.timetable), ZoneInfo(site.timezone)
    policies = {
        p.room_id: SchedulePolicy(p.mode, p.off_after_last_class_min, p.off_after_idle_min)
        for p in session.exec(select(PowerSchedule).where(PowerSchedule.site_code == site_code))
    }
    exceptions = {
        e.day
        for e in session.exec(select(PowerException).where(PowerException.site_code == site_code))
    }
    in_use = set(
        session.exec(
            select(RoomInUse.room_id).where(
                RoomInUse.site_code == site_code, col(RoomInUse.until) > now
            )
        )
    )
    devices = list(
        session.exec(
            select(Device).where(
                Device.site_code == site_code,
                col(Device.retired_at).is_(None),
                col(Device.kind).in_(DISPLAYS),
            )
        )
    )
    # What the schedule did lately: a command sent (or answered done) is not sent again; a
    # note is not taken again, but does not hold back a command once the mode is act.
    recent: dict[str, set[str]] = {}
    for row in session.exec(
        select(DeviceCommand).where(
            DeviceCommand.site_code == site_code,
            DeviceCommand.requested_by == SCHEDULE_ACTOR,
            col(DeviceCommand.created_at) > now - REPEAT_AFTER,
        )
    ):
        recent.setdefault(row.device_id, set()).add(row.state)

    def held_back(device: Device) -> bool:
        policy = policies.get(device.room_id) or policies.get("")
        # A refused or unanswered command holds the device back too: a display that says ERR3
        # (or is off the LAN) is asked again after REPEAT_AFTER, not at every run.
        blocking = {"sent", "done", "failed", "expired"}
        if policy and policy.mode != "act":
            blocking.add("notified")
        return bool(recent.get(device.id, set()) & blocking)

    displays = [
        Display(d.id, d.room_id, d.power, d.state_since if d.power in ON else None)
        for d in devices
        if not held_back(d)
    ]
    offs = due_offs(now, timetable, tz, policies, exceptions, in_use, displays)
    by_id = {d.id: d for d in devices}
    for off in offs:
        if off.mode == "act":
            try:
                send(
                    session,
                    publish,
                    topic_root,
                    [by_id[off.device_id]],
                    CommandKind.power,
                    "off",
                    SCHEDULE_ACTOR,
                    f"power schedule: {off.reason}",
                    now,
                )
            except Exception as exc:  # no broker link: noted, tried at the next run
                log.warning("power schedule could not switch %s off: %s", off.device_id, exc)
            continue
        session.add(
            DeviceCommand(
                cmd_id=f"notify-{off.device_id}-{int(now.timestamp())}",
                campaign="notify_only",
                device_id=off.device_id,
                site_code=site_code,
                kind="power",
                value="off",
                state="notified",
                answer="notify_only: nothing sent",
                requested_by=SCHEDULE_ACTOR,
                reason=f"power schedule would switch off: {off.reason}",
                created_at=now,
                expires_at=now + EXPIRES_AFTER,
                updated_at=now,
            )
        )
        session.commit()
    if offs:
        log.info("power schedule of %s: %d displays (%s)", site_code, len(offs), offs[0].mode)
    return len(offs)
