"""Faults on a schedule for `fleet demo`: within its first minutes a newcomer sees every device
state and every kind of device alert, not a fleet where all is online or in standby.

`plan_faults` is pure (sites and a time in, a list of `ScheduledFault` out), so the choice of
devices is tested without sockets; so are the demo's own sites (`demo_site_configs`), whose
timetables are built from the demo's start time. `run_faults` carries the plan out on the
running simulated devices, and takes a site's agent down and back through the two callables
the demo gives it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from agent.simulator import SimulatedSite
from agent.simulator.behaviour import DeviceBehaviour
from fleet.protocol.messages import Flag
from fleet.protocol.site_config import LoadedSite
from fleet.protocol.timetable import WEEKDAYS

log = logging.getLogger(__name__)

# What a fault does, and the device state or alert a newcomer then sees.
UNREACHABLE = "unreachable"  # stops answering: state unreachable, alert device_unreachable
FAULTY = "faulty"  # reports an error flag: state faulty, alert device_error
OVERHEAT = "overheat"  # runs hot past its profile's limit: alert over_temperature
LAMP_WORN = "lamp_worn"  # lamp past its rated life: alert lamp_hours
LEFT_ON = "left_on"  # on after the last class: alert left_on_after_hours
FILTER_WORN = "filter_worn"  # filter past its rated life: alert filter_hours
OLD_FIRMWARE = "old_firmware"  # reports a version below its profile's minimum: alert
# firmware_below_minimum
SITE_OFFLINE = "site_offline"  # its agent stops: every device site_offline, alert site_offline

ALERT_HOLD_MARGIN = timedelta(minutes=2)  # past the last class: the rule waits 30 min
# The unreachable alert opens after 10 min of class time since the device stopped answering
# (fleet.alerts.rules); the fault starts at 30 s and lasts 15 min: a site must be in class
# for this long from the demo's start for the alert to open while the fault lasts.
UNREACHABLE_CLASS_TIME = timedelta(minutes=13)
# The demo's own site, added only when no real site has that much class time ahead: a
# simulated open lab in class around the clock, so that the real rule fires on its device.
OPEN_LAB_CODE = "demo-open-lab"
OPEN_LAB_DEVICE = "demo-lab-projector"
# The demo's evening school, always added: its one class of the day ended an hour before the
# demo started (site-local), so its projector, left on, is on after hours at any hour of the
# demo's start; a programme milestone planned for the day before is overdue.
EVENING_CODE = "demo-evening-school"
EVENING_DEVICE = "demo-evening-projector"
EVENING_ENDED_AGO = timedelta(hours=1)
EVENING_CLASS = timedelta(hours=2)
# Below every shipped profile's firmware_minimum: a rollout to the profile's release mends it.
OLD_VERSION = "0.9.0"
DEMO_CODES = frozenset({OPEN_LAB_CODE, EVENING_CODE})


@dataclass(frozen=True)
class ScheduledFault:
    """One fault: `after` the demo starts, for `lasting` (None: until the demo stops)."""

    after: timedelta
    kind: str
    site: str
    device: str | None
    lasting: timedelta | None
    why: str  # what the newcomer will see, as the demo says it


def _after_hours(site: LoadedSite, now: datetime) -> bool:
    """Past the last class of the local day by more than the left-on rule waits, or a day
    with no class at all."""
    timetable, tz = site.config.timetable, site.config.tz
    if timetable.in_class(now, tz):
        return False
    last = timetable.last_class_end(now, tz)
    return last is None or now >= last + timedelta(minutes=30) + ALERT_HOLD_MARGIN


def class_time_ahead(site: LoadedSite, now: datetime, span: timedelta) -> timedelta:
    """Class time at the site in [now, now + span), by its timetable in its zone."""
    timetable, tz = site.config.timetable, site.config.tz
    return sum((b - a for a, b in timetable.class_intervals(now, now + span, tz)), timedelta())


def _offline_site(sites: list[LoadedSite]) -> LoadedSite | None:
    """The site the demo takes offline: the smallest real one (never one of the demo's own)."""
    real = [s for s in sites if s.config.site.code not in DEMO_CODES] or sites
    ranked = sorted(real, key=lambda s: (len(s.config.devices()), s.config.site.code))
    return ranked[0] if ranked else None


def needs_open_lab(sites: list[LoadedSite], now: datetime) -> bool:
    """Whether no real site (but the one taken offline) is in class long enough from `now`
    for the device_unreachable alert to open within the demo's first minutes."""
    offline = _offline_site(sites)
    window = UNREACHABLE_CLASS_TIME + timedelta(minutes=2)
    return not any(
        class_time_ahead(s, now, window) >= UNREACHABLE_CLASS_TIME
        for s in sites
        if s is not offline and s.config.site.code not in DEMO_CODES
    )


def open_lab_config(profile: str = "snmp-projector") -> dict[str, object]:
    """The demo's open lab as a site config (the YAML's shape, fleet.protocol.site_config):
    one room with one simulated projector, in class every day from 00:00 to 23:59 UTC."""
    every_day = ["00:00-23:59"]
    return {
        "site": {
            "code": OPEN_LAB_CODE,
            "name": "Demo open lab (simulated)",
            "institution": "classroom-fleet demo",
            "country": "none (simulated)",
            "timezone": "UTC",
        },
        "illustrative": "Added by `fleet demo` when no real site is in class: an open lab in "
        "class around the clock, so that an unreachable device raises its alert at any hour.",
        "timetable": {"weekly": {day: every_day for day in WEEKDAYS}},
        "agent": {"id": f"{OPEN_LAB_CODE}-agent-1"},
        "rooms": [
            {
                "id": "demo-lab-1",
                "name": "Open lab",
                "devices": [{"id": OPEN_LAB_DEVICE, "profile": profile, "address": "192.0.2.250"}],
            }
        ],
    }


def evening_timetable(now: datetime, tz: ZoneInfo) -> dict[str, list[str]]:
    """The evening school's weekly timetable (the site config's `timetable.weekly` shape): one
    class of up to two hours that ended `EVENING_ENDED_AGO` before `now` in zone `tz`, on that
    weekday alone. From `now` it is after hours (fleet.alerts.rules.after_hours_since: 30 min
    past the last class) for nearly a week. A class would cross midnight: it starts at 00:00;
    one that would end at 00:00 ends at 23:59 the day before (a period is within one day)."""
    # An hour ago in time, then on the wall: the other way round (an aware datetime's
    # arithmetic is the wall's) it ends only minutes ago just after the clocks go forward.
    end = (now - EVENING_ENDED_AGO).astimezone(tz).replace(second=0, microsecond=0)
    if end.time() == time(0, 0):
        end -= timedelta(minutes=1)
    start = max(end - EVENING_CLASS, end.replace(hour=0, minute=0))
    return {WEEKDAYS[end.weekday()]: [f"{start:%H:%M}-{end:%H:%M}"]}


def evening_school_config(now: datetime, timezone: str = "UTC") -> dict[str, object]:
    """The demo's evening school as a site config (fleet.protocol.site_config's YAML shape),
    built for a demo started at `now`: its class ended an hour ago in `timezone`
    (`evening_timetable`), one room with a projector and a panel, and a training milestone
    planned for the day before (site-local), so the programme-overdue alert is real."""
    tz = ZoneInfo(timezone)
    yesterday = (now.astimezone(tz) - timedelta(days=1)).date()
    return {
        "site": {
            "code": EVENING_CODE,
            "name": "Demo evening school (simulated)",
            "institution": "classroom-fleet demo",
            "country": "none (simulated)",
            "timezone": timezone,
        },
        "illustrative": "Added by `fleet demo`: its one class ended an hour before the demo "
        "started, so a projector left on is on after hours whatever the hour.",
        "timetable": {"weekly": evening_timetable(now, tz)},
        "agent": {"id": f"{EVENING_CODE}-agent-1"},
        "rooms": [
            {
                "id": "demo-evening-1",
                "name": "Evening classroom",
                "devices": [
                    {"id": EVENING_DEVICE, "profile": "snmp-projector", "address": "192.0.2.251"},
                    {"id": "demo-evening-panel", "profile": "seewo-panel",
                     "address": "192.0.2.252"},
                ],
            }
        ],
        "programme": [
            {
                "phase": 1,
                "rooms": ["demo-evening-1"],
                "milestones": [
                    {"milestone": "training_done", "planned": yesterday.isoformat(),
                     "note": "planned for the day before the demo started: overdue"},
                ],
            }
        ],
    }  # fmt: skip


def demo_site_configs(sites: list[LoadedSite], now: datetime) -> list[dict[str, object]]:
    """The demo's own sites for a demo started at `now` beside the real `sites`: always the
    evening school (`evening_school_config`), and the open lab (`open_lab_config`) when no
    real site has class time enough ahead (`needs_open_lab`)."""
    real = [s for s in sites if s.config.site.code not in DEMO_CODES]
    extra = [evening_school_config(now)]
    if needs_open_lab(real, now):
        extra.append(open_lab_config())
    return extra


def plan_faults(sites: list[LoadedSite], now: datetime) -> list[ScheduledFault]:
    """The demo's faults, each on a different device, in the first few minutes. The site taken
    offline is the smallest real one (it is back after seven minutes); the device made
    unreachable is at a site in class for long enough from `now` if any is, else the open lab's
    (`open_lab_config`, which the demo adds then: `needs_open_lab`); a device is left on at
    the evening school (`evening_school_config`) if it is there, else at a real site where it
    is after hours `now`, if any is. A kind no device can show is left out."""
    offline = _offline_site(sites)
    if offline is None:
        return []
    lab = [s for s in sites if s.config.site.code == OPEN_LAB_CODE and s is not offline]
    evening = [s for s in sites if s.config.site.code == EVENING_CODE and s is not offline]
    others = [
        s
        for s in sorted(sites, key=lambda s: s.config.site.code)
        if s is not offline and s.config.site.code not in DEMO_CODES
    ]
    used: set[str] = set()
    plan: list[ScheduledFault] = []

    def pick(want: Callable[[LoadedSite, str], bool], among: list[LoadedSite]) -> tuple[str, str]:
        for site in among:
            for _, device in site.config.devices():
                if device.id not in used and want(site, device.id):
                    used.add(device.id)
                    return site.config.site.code, device.id
        return "", ""

    def profile(site: LoadedSite, device_id: str) -> tuple[str, object]:
        device = next(d for _, d in site.config.devices() if d.id == device_id)
        p = site.profile_of(device)
        return p.protocol, p

    def has_error_flags(site: LoadedSite, device_id: str) -> bool:
        protocol, p = profile(site, device_id)
        snmp = getattr(p, "snmp", None)
        fields = [o.field for o in snmp.objects] if snmp else []
        return protocol == "pjlink" or any(f.startswith("errors.") for f in fields)

    def has_limit(name: str) -> Callable[[LoadedSite, str], bool]:
        def test(site: LoadedSite, device_id: str) -> bool:
            _, p = profile(site, device_id)
            return getattr(getattr(p, "thresholds", None), name, None) is not None

        return test

    # The unreachable alert counts class minutes (10): a site in class long enough from now
    # shows it while the fault lasts; else the open lab, in class around the clock.
    ahead = UNREACHABLE_CLASS_TIME + timedelta(minutes=2)
    in_class = sorted(
        (s for s in others if class_time_ahead(s, now, ahead) >= UNREACHABLE_CLASS_TIME),
        key=lambda s: -class_time_ahead(s, now, ahead),
    )
    code, device = pick(lambda s, d: True, in_class + lab + others)
    if device:
        plan.append(
            ScheduledFault(
                timedelta(seconds=30),
                UNREACHABLE,
                code,
                device,
                timedelta(minutes=15),
                "stops answering: unreachable, and a device_unreachable alert after 10 min "
                "of class time",
            )
        )

    def reads_firmware(site: LoadedSite, device_id: str) -> bool:
        # Over SNMP the version is read every poll (PJLink's SVER only hourly).
        _, p = profile(site, device_id)
        snmp = getattr(p, "snmp", None)
        fields = [o.field for o in snmp.objects] if snmp else []
        return "firmware" in fields and getattr(p, "firmware_minimum", None) is not None

    # At the evening school, after hours from the start: on from the start, so its alert
    # opens after the rule's hold (5 min) from its first reading.
    late = evening + [s for s in others if _after_hours(s, now)]
    code, device = pick(lambda s, d: d == EVENING_DEVICE or s not in evening, late)
    if device:
        plan.append(
            ScheduledFault(
                timedelta(0),
                LEFT_ON,
                code,
                device,
                timedelta(minutes=45),
                "left on after hours: a left_on_after_hours alert after the rule's 5 min hold",
            )
        )
    wants = [
        (timedelta(seconds=20), OLD_FIRMWARE, reads_firmware, None,
         "reports firmware below its profile's minimum: a firmware_below_minimum alert"),
        (timedelta(seconds=60), FAULTY, has_error_flags, timedelta(minutes=10),
         "reports an error flag: faulty, and a device_error alert"),
        (timedelta(seconds=90), OVERHEAT, has_limit("temperature_c_max"), timedelta(minutes=12),
         "runs hot past its limit: an over_temperature alert"),
        (timedelta(seconds=120), LAMP_WORN, has_limit("lamp_hours_life"), None,
         "lamp past its rated life: a lamp_hours alert"),
        (timedelta(seconds=135), FILTER_WORN, has_limit("filter_hours_life"), None,
         "filter past its rated life: a filter_hours alert"),
    ]  # fmt: skip
    for after, kind, want, lasting, why in wants:
        code, device = pick(want, others)
        if device:
            plan.append(ScheduledFault(after, kind, code, device, lasting, why))
    plan.append(
        ScheduledFault(
            timedelta(seconds=180),
            SITE_OFFLINE,
            offline.config.site.code,
            None,
            # Longer than the 5 min after which the site_offline alert opens.
            timedelta(minutes=7),
            "its agent stops: every device site_offline, a site_offline alert after 5 min; "
            "back in 7 min",
        )
    )
    return sorted(plan, key=lambda f: f.after)


AgentSwitch = Callable[[str], Awaitable[None]]


def _behaviour(simulation: SimulatedSite, device: str) -> tuple[DeviceBehaviour, object]:
    if device in simulation.projectors:
        server = simulation.projectors[device]
        return server.behaviour, server
    responder = simulation.device(device)
    return responder.behaviour, responder


def _start(fault: ScheduledFault, simulation: SimulatedSite) -> None:
    assert fault.device is not None
    behaviour, server = _behaviour(simulation, fault.device)
    if fault.kind == UNREACHABLE:
        server.alive = False  # type: ignore[attr-defined]
    else:
        start_fault(fault, behaviour)


def start_fault(fault: ScheduledFault, behaviour: DeviceBehaviour) -> None:
    """Start a fault that changes what a device reports (every kind but UNREACHABLE, which
    silences its server, and SITE_OFFLINE, which stops an agent) on its simulated device's
    behaviour, by the behaviour's own clock."""
    if fault.kind == FAULTY:
        flags = behaviour._error_flags or ["other"]
        until = behaviour.clock() + (fault.lasting or timedelta(days=3650))
        behaviour.faults["fan" if "fan" in flags else flags[0]] = (Flag.error, until)
    elif fault.kind == OVERHEAT:
        limit = behaviour.profile.thresholds.temperature_c_max or 60.0
        behaviour.forced_on = True
        behaviour.extra_heat_c = limit + 8 - behaviour.profile.simulation.temperature_on_c
        behaviour.temperature_c = limit + 5  # hot now, not after the ten-minute drift
    elif fault.kind == LAMP_WORN:
        life = behaviour.profile.thresholds.lamp_hours_life or 0.0
        behaviour.lamp_hours = life + 1
    elif fault.kind == FILTER_WORN:
        life = behaviour.profile.thresholds.filter_hours_life or 0.0
        behaviour.filter_hours = life + 1
    elif fault.kind == OLD_FIRMWARE:
        behaviour.firmware = OLD_VERSION
    elif fault.kind == LEFT_ON:
        behaviour.forced_on = True


def _end(fault: ScheduledFault, simulation: SimulatedSite) -> None:
    assert fault.device is not None
    behaviour, server = _behaviour(simulation, fault.device)
    if fault.kind == UNREACHABLE:
        server.alive = True  # type: ignore[attr-defined]
    elif fault.kind == FAULTY:
        behaviour.faults.clear()
    elif fault.kind in (OVERHEAT, LEFT_ON):
        behaviour.forced_on = None
        behaviour.extra_heat_c = 0.0


async def run_faults(
    plan: list[ScheduledFault],
    simulations: Mapping[str, SimulatedSite],
    stop_agent: AgentSwitch,
    start_agent: AgentSwitch,
    say: Callable[[str], None] = print,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Carry the plan out, each fault at its time and its end after `lasting`; returns when the
    last has ended (those without an end stay). Cancel it to stop early: nothing is undone."""
    events: list[tuple[timedelta, int, ScheduledFault, bool]] = []
    for n, fault in enumerate(plan):
        events.append((fault.after, n, fault, True))
        if fault.lasting is not None:
            events.append((fault.after + fault.lasting, n, fault, False))
    events.sort(key=lambda e: (e[0], e[1]))
    elapsed = timedelta(0)
    for at, _, fault, starting in events:
        await sleep(max(0.0, (at - elapsed).total_seconds()))
        elapsed = at
        where = f"{fault.site}/{fault.device}" if fault.device else fault.site
        try:
            if fault.kind == SITE_OFFLINE:
                await (stop_agent if starting else start_agent)(fault.site)
            elif starting:
                _start(fault, simulations[fault.site])
            else:
                _end(fault, simulations[fault.site])
        except (KeyError, OSError, RuntimeError) as exc:  # one fault, not the demo
            log.warning("demo fault %s at %s could not be %s: %s", fault.kind, where,
                        "started" if starting else "ended", exc)  # fmt: skip
            continue
        say(f"demo fault: {where} {fault.why}" if starting else f"demo fault over: {where}")
