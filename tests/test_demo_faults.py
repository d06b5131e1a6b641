"""The demo's scheduled faults: every device state and alert kind is planned within the first
minutes, each on its own device; carrying the plan out changes what the running simulated
devices answer, and takes the small site's agent down and back; and, with the demo started at
03:00 and at 15:00 (site-local), the real rules and hold times open every kind of alert
within the first minutes while its fault lasts."""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.simulator import start_site
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.fault_schedule import (
    EVENING_CODE,
    EVENING_DEVICE,
    FAULTY,
    FILTER_WORN,
    LAMP_WORN,
    LEFT_ON,
    OLD_FIRMWARE,
    OPEN_LAB_CODE,
    OPEN_LAB_DEVICE,
    OVERHEAT,
    SITE_OFFLINE,
    UNREACHABLE,
    ScheduledFault,
    demo_site_configs,
    evening_timetable,
    needs_open_lab,
    plan_faults,
    run_faults,
    start_fault,
)
from fleet.alerts.hold import NONE, Action, step
from fleet.alerts.models import AlertKind
from fleet.alerts.rules import (
    HOLDS,
    UNREACHABLE_AFTER,
    SiteClock,
    after_hours_since,
    observe,
    observe_site,
)
from fleet.demo import _with_demo_sites
from fleet.devices.state import AgentFacts, DeviceFacts, site_silence_threshold
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading
from fleet.protocol.site_config import DEFAULT_SITES_DIR, LoadedSite, load_sites

# Monday 3 March 2025, 20:00 UTC: after the last class at every Asian site, in class nowhere.
MONDAY_EVENING = datetime(2025, 3, 3, 20, 0, tzinfo=UTC)
# Sunday 2 March 2025, 23:00 UTC: no class at any site.
SUNDAY_NIGHT = datetime(2025, 3, 2, 23, 0, tzinfo=UTC)
_ANSWERING = ("online", "standby")
# The alert each fault is there to show.
ALERT_OF = {
    UNREACHABLE: AlertKind.device_unreachable,
    FAULTY: AlertKind.device_error,
    OVERHEAT: AlertKind.over_temperature,
    LAMP_WORN: AlertKind.lamp_hours,
    FILTER_WORN: AlertKind.filter_hours,
    OLD_FIRMWARE: AlertKind.firmware_below_minimum,
    LEFT_ON: AlertKind.left_on_after_hours,
    SITE_OFFLINE: AlertKind.site_offline,
}
ALERTS_JOB = timedelta(seconds=30)  # fleet.scheduler: the alerts job's period


def test_every_kind_is_planned_in_the_first_minutes() -> None:
    sites = load_sites()
    plan = plan_faults(sites, MONDAY_EVENING)
    kinds = [f.kind for f in plan]
    assert sorted(kinds) == sorted(
        [UNREACHABLE, FAULTY, OVERHEAT, LAMP_WORN, FILTER_WORN, OLD_FIRMWARE, LEFT_ON, SITE_OFFLINE]
    )
    assert all(f.after <= timedelta(minutes=5) for f in plan)
    devices = [f.device for f in plan if f.device]
    assert len(devices) == len(set(devices))  # one fault a device
    smallest = min(sites, key=lambda s: (len(s.config.devices()), s.config.site.code))
    offline = next(f for f in plan if f.kind == SITE_OFFLINE)
    assert offline.site == smallest.config.site.code and offline.lasting is not None
    assert all(f.site != offline.site for f in plan if f.device)  # its devices stay its own


@settings(max_examples=60, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_a_plan_for_any_time_is_sound(shipped_sites: list[LoadedSite], at: datetime) -> None:
    plan = plan_faults(shipped_sites, at.replace(tzinfo=UTC))
    kinds = {f.kind for f in plan}
    # Left on only where it is after hours: at some hours no site is; the rest always.
    assert {
        UNREACHABLE,
        FAULTY,
        OVERHEAT,
        LAMP_WORN,
        FILTER_WORN,
        OLD_FIRMWARE,
        SITE_OFFLINE,
    } <= kinds
    assert [f.after for f in plan] == sorted(f.after for f in plan)


def test_no_site_no_fault() -> None:
    assert plan_faults([], MONDAY_EVENING) == []


@pytest.mark.timeout(60)
def test_faults_change_what_the_simulated_devices_answer() -> None:
    async def scenario() -> None:
        sites = load_sites()
        plan = plan_faults(sites, MONDAY_EVENING)
        wanted = {f.site for f in plan}
        simulations = {
            s.config.site.code: await start_site(s) for s in sites if s.config.site.code in wanted
        }
        switched: list[str] = []

        async def stop_agent(code: str) -> None:
            switched.append(f"stop {code}")

        async def start_agent(code: str) -> None:
            switched.append(f"start {code}")

        async def no_wait(_: float) -> None:
            await asyncio.sleep(0)

        said: list[str] = []
        by_kind = {f.kind: f for f in plan}
        offline_site = by_kind[SITE_OFFLINE].site

        def server(kind: str) -> Any:
            f = by_kind[kind]
            assert f.device is not None
            simulation = simulations[f.site]
            return simulation.projectors.get(f.device) or simulation.device(f.device)

        try:
            # Every fault started, none ended yet: each as if it lasted for ever.
            starts = [replace(f, lasting=None) for f in plan]
            await run_faults(starts, simulations, stop_agent, start_agent, said.append, no_wait)
            assert server(UNREACHABLE).alive is False
            faulty = server(FAULTY).behaviour
            assert Flag.error in [faulty.error_flag(name) for name in faulty.faults]
            hot = server(OVERHEAT).behaviour
            assert hot.field_value("temperature_c") > hot.profile.thresholds.temperature_c_max
            worn = server(LAMP_WORN).behaviour
            assert worn.field_value("lamp_hours") > worn.profile.thresholds.lamp_hours_life
            assert server(LEFT_ON).behaviour.power() in (Power.on, Power.warming)
            filter_ = server(FILTER_WORN).behaviour
            assert (
                filter_.field_value("filter_hours") > filter_.profile.thresholds.filter_hours_life
            )
            old = server(OLD_FIRMWARE).behaviour
            assert old.field_value("firmware") == "0.9.0" and old.profile.firmware_minimum
            assert switched == [f"stop {offline_site}"]
            assert len(said) == len(plan) and all(s.startswith("demo fault:") for s in said)

            # The whole plan, ends included: back as they were, the site's agent restarted.
            switched.clear()
            await run_faults(plan, simulations, stop_agent, start_agent, said.append, no_wait)
            assert server(UNREACHABLE).alive is True and not faulty.faults
            assert hot.forced_on is None and hot.extra_heat_c == 0.0
            assert switched == [f"stop {offline_site}", f"start {offline_site}"]
        finally:
            for simulation in simulations.values():
                await simulation.close()

    asyncio.run(scenario())


def test_alerts_have_the_time_to_open() -> None:
    """The unreachable device is at a site in class (its alert counts class minutes) and the
    site stays offline past the 5 min its alert waits."""
    sites = load_sites()
    morning = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)  # Monday: 13:00 in Kuala Lumpur
    in_class = {
        s.config.site.code for s in sites if s.config.timetable.in_class(morning, s.config.tz)
    }
    assert in_class
    plan = {f.kind: f for f in plan_faults(sites, morning)}
    assert plan[UNREACHABLE].site in in_class
    assert plan[UNREACHABLE].lasting is not None and plan[UNREACHABLE].lasting > timedelta(
        minutes=10
    )
    assert plan[SITE_OFFLINE].lasting is not None
    assert plan[SITE_OFFLINE].lasting > timedelta(minutes=5)


def _with_lab_if_needed(now: datetime, tmp: Path) -> list[LoadedSite]:
    """The sites as `fleet demo` runs them at `now`: the real ones, its evening school, and
    its open lab when no real site is in class long enough."""
    extra = demo_site_configs(load_sites(), now)
    return load_sites(_with_demo_sites(DEFAULT_SITES_DIR, tmp, extra))


@pytest.fixture(scope="module")
def shipped_sites() -> list[LoadedSite]:
    """The real sites, read once for all examples: reading them is most of an example's time,
    and plan_faults only reads them."""
    return load_sites()


@settings(max_examples=80, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_the_unreachable_alert_opens_at_any_hour(at: datetime) -> None:
    """Whatever the time of day or week, the real rule (10 min of class time) opens the
    device_unreachable alert on the demo's unreachable device while its fault lasts."""
    now = at.replace(tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        sites = _with_lab_if_needed(now, Path(tmp))
    fault = next(f for f in plan_faults(sites, now) if f.kind == UNREACHABLE)
    site = next(s for s in sites if s.config.site.code == fault.site)
    assert fault.lasting is not None and fault.after <= timedelta(minutes=1)
    # The controller marks it unreachable within a minute of its silence; the alert must
    # have opened before the fault ends and the device answers again.
    since = now + fault.after + timedelta(minutes=1)
    judged = now + fault.after + fault.lasting - timedelta(seconds=1)
    device = DeviceFacts(fault.device or "", fault.site, "unreachable", since, since, 60.0)
    clock = SiteClock(site.config.timetable, site.config.tz)
    found = [o.finding for o in observe(device, None, None, clock, judged) if o.finding]
    assert [f.kind for f in found] == [AlertKind.device_unreachable], (now, fault.site)
    assert timedelta(minutes=10) == UNREACHABLE_AFTER  # the real rule, not a demo's


def test_the_open_lab_is_added_only_when_no_site_is_in_class(tmp_path: Path) -> None:
    sites = load_sites()
    morning = datetime(2025, 3, 3, 5, 0, tzinfo=UTC)  # Monday: in class in Asia
    assert not needs_open_lab(sites, morning)
    assert needs_open_lab(sites, SUNDAY_NIGHT)
    sunday_night = SUNDAY_NIGHT
    folder = _with_demo_sites(
        DEFAULT_SITES_DIR, tmp_path / "demo-sites", demo_site_configs(sites, sunday_night)
    )
    for real in DEFAULT_SITES_DIR.glob("*.yaml"):  # the real sites as they are
        assert (folder / real.name).read_bytes() == real.read_bytes()
    with_lab = load_sites(folder)
    assert len(with_lab) == len(sites) + 2  # the open lab and the evening school
    assert len(demo_site_configs(sites, morning)) == 1  # the evening school alone
    lab = next(s for s in with_lab if s.config.site.code == OPEN_LAB_CODE)
    assert [d.id for _, d in lab.config.devices()] == [OPEN_LAB_DEVICE]
    plan = plan_faults(with_lab, sunday_night)
    by_kind = {f.kind: f for f in plan}
    assert by_kind[UNREACHABLE].site == OPEN_LAB_CODE
    assert by_kind[SITE_OFFLINE].site != OPEN_LAB_CODE  # the smallest real site goes offline
    assert all(f.site != OPEN_LAB_CODE for f in plan if f.kind != UNREACHABLE)
    # A second demo in the same folder starts from the real configs again.
    (folder / "stale.yaml").write_text("not: a site\n")
    again = _with_demo_sites(DEFAULT_SITES_DIR, folder, demo_site_configs(sites, sunday_night))
    assert len(load_sites(again)) == len(with_lab)


@pytest.mark.timeout(180)
def test_a_demo_outside_class_hours_runs_its_open_lab(tmp_path: Path) -> None:
    """A demo started when no site is in class (its start clock set to a Sunday night)
    serves the open lab and the evening school beside the real sites, their projectors
    polled by their own agents, and plans the unreachable fault at the lab."""
    import httpx

    import fleet.demo as demo

    said: list[str] = []

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        options = demo.DemoOptions(
            data_dir=tmp_path,
            port=0,
            say=said.append,
            stop=stop,
            ready=ready,
            clock=lambda: SUNDAY_NIGHT,
        )
        task = asyncio.create_task(demo.run_demo(options))
        try:
            await asyncio.wait_for(ready.wait(), 120)  # a loaded machine starts slowly
            token = options.tokens["demo-ops"]
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=options.urls["base"], headers=headers) as c:
                deadline = asyncio.get_running_loop().time() + 60
                for device in (OPEN_LAB_DEVICE, EVENING_DEVICE):
                    while True:
                        answer = await c.get(f"/api/v1/devices/{device}")
                        if answer.status_code == 200 and answer.json().get("state") in _ANSWERING:
                            break
                        assert asyncio.get_running_loop().time() < deadline, answer.text
                        await asyncio.sleep(0.5)
                sites = (await c.get("/api/v1/sites")).json()
            codes = [s["code"] for s in (sites["items"] if isinstance(sites, dict) else sites)]
            assert {OPEN_LAB_CODE, EVENING_CODE, "upm"} <= set(codes)
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    asyncio.run(scenario())
    assert any("open lab" in line for line in said)
    assert any(f"{UNREACHABLE} {OPEN_LAB_DEVICE}" in line for line in said)


def test_every_alert_kind_has_a_fault() -> None:
    """Every kind in fleet.alerts.models has its fault in the plan, but programme_overdue,
    which the evening school's overdue milestone shows (tests/test_demo.py awaits it)."""
    assert set(AlertKind) - set(ALERT_OF.values()) == {AlertKind.programme_overdue}


@pytest.mark.parametrize("local", ["03:00", "15:00"])
@pytest.mark.parametrize("zone", ["UTC", "Asia/Tashkent", "America/Bogota"])
def test_the_evening_school_is_after_hours_whenever_the_demo_starts(local: str, zone: str) -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    hour, minute = (int(x) for x in local.split(":"))
    for day in range(3, 10):  # every weekday, from Monday 3 March 2025
        now = datetime(2025, 3, day, hour, minute, tzinfo=tz).astimezone(UTC)
        from fleet.protocol.timetable import Timetable

        timetable = Timetable.model_validate({"weekly": evening_timetable(now, tz)})
        clock = SiteClock(timetable, tz)
        # After hours from the start, and for the whole of the demo's first hour.
        for minutes in range(0, 61, 5):
            assert after_hours_since(clock, now + timedelta(minutes=minutes)) is not None
        last = timetable.last_class_end(now - timedelta(hours=1), tz)
        assert last is not None and timedelta(minutes=59) <= now - last <= timedelta(hours=1)


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Europe/London", "2025-03-30T01:05:00+00:00"),  # 02:05 BST, an hour after 01:00 GMT
        ("America/Santiago", "2025-09-07T04:02:00+00:00"),  # 01:02, the clocks went on at 00:00
    ],
)
def test_the_evening_school_is_after_hours_just_after_the_clocks_go_forward(
    zone: str, start: str
) -> None:
    # An hour ago by the clock on the wall is not an hour ago when the clocks went forward in
    # between: the class must have ended an hour ago in time, not 5 minutes ago.
    from zoneinfo import ZoneInfo

    from fleet.protocol.timetable import Timetable

    tz, now = ZoneInfo(zone), datetime.fromisoformat(start)
    timetable = Timetable.model_validate({"weekly": evening_timetable(now, tz)})
    clock = SiteClock(timetable, tz)
    for minutes in range(0, 61, 5):
        assert after_hours_since(clock, now + timedelta(minutes=minutes)) is not None
    last = timetable.last_class_end(now - timedelta(minutes=30), tz)
    assert last is not None and timedelta(minutes=59) <= now - last <= timedelta(hours=1)


def _reading(behaviour: DeviceBehaviour, device: str, at: datetime) -> Reading:
    """What the agent reads from the simulated device at `at` (its collector's fields)."""
    flags = {name: behaviour.error_flag(name, at) for name in ErrorFlags.model_fields}
    temperature = behaviour.field_value("temperature_c", at)
    lamp = behaviour.field_value("lamp_hours", at)
    filter_ = behaviour.field_value("filter_hours", at)
    return Reading(
        device=device,
        ts=at,
        reachable=True,
        power=behaviour.power(at),
        temperature_c=temperature if isinstance(temperature, float) else None,
        lamp_hours=lamp if isinstance(lamp, int) else None,
        filter_hours=filter_ if isinstance(filter_, int) else None,
        firmware=behaviour.firmware,
        errors=ErrorFlags(**flags),
    )


def _opens_at(fault: ScheduledFault, sites: list[LoadedSite], now: datetime) -> timedelta | None:
    """When, after the demo's start at `now`, the real rules and holds open the fault's alert
    (each observation as the controller makes it: a device's at each of its readings, a
    silence's and a site's at each run of the alerts job), or None if not before the fault
    ends or an hour has passed. Waits on the opening, in the simulated time of the demo."""
    site = next(s for s in sites if s.config.site.code == fault.site)
    clock = SiteClock(site.config.timetable, site.config.tz)
    kind = ALERT_OF[fault.kind]
    hold = HOLDS[kind]
    start = now + fault.after
    end = start + (fault.lasting or timedelta(hours=1))
    counts = NONE
    if fault.kind == SITE_OFFLINE:
        # The stopped agent says so (its retained state): the site is offline from then.
        agent = AgentFacts(site.config.site.code, site.config.agent_id, "offline", start, start)
        intervals = [site.profile_of(d).poll.interval_s for _, d in site.config.devices()]
        silence = site_silence_threshold(intervals)
        at = now
        while at < end:
            at += ALERTS_JOB
            seen = observe_site(agent, silence, at, watching_since=now) if at >= start else None
            if seen is not None:
                counts, action = step(counts, False, seen, hold)
                if action == Action.open:
                    return at - now
        return None
    device = next(d for _, d in site.config.devices() if d.id == fault.device)
    profile = site.profile_of(device)
    poll = timedelta(seconds=profile.poll.interval_s)
    if fault.kind == UNREACHABLE:
        # The first poll after it stops answering reads it unreachable.
        since = start + poll
        facts = DeviceFacts(device.id, fault.site, "unreachable", since, since, poll.seconds)
        at = since
        while at < end:
            at += ALERTS_JOB
            for seen in observe(facts, None, profile, clock, at):
                if seen.kind == kind:
                    counts, action = step(counts, False, seen, hold)
                    if action == Action.open:
                        return at - now
        return None
    simulated = [now]
    behaviour = DeviceBehaviour(
        device, profile, timetable=clock.timetable, tz=clock.tz, clock=lambda: simulated[0]
    )
    at, started = now, False
    while at < end:
        if not started and at >= start:
            simulated[0] = start
            start_fault(fault, behaviour)
            started = True
        simulated[0] = at
        reading = _reading(behaviour, device.id, at)
        facts = DeviceFacts(device.id, fault.site, "online", now, at, poll.seconds)
        for seen in observe(facts, reading, profile, clock, at):
            if seen.kind == kind:
                counts, action = step(counts, False, seen, hold)
                if action == Action.open and started:
                    return at - now
        at += poll
    return None


@pytest.mark.parametrize(
    "start",
    [
        datetime(2025, 3, 3, 3, 0, tzinfo=UTC),  # Monday 03:00 at the evening school (UTC)
        datetime(2025, 3, 3, 15, 0, tzinfo=UTC),  # Monday 15:00
        SUNDAY_NIGHT,  # no class anywhere: the open lab
    ],
    ids=["03:00", "15:00", "sunday-23:00"],
)
def test_every_alert_opens_in_the_first_minutes(start: datetime, tmp_path: Path) -> None:
    """The demo started at `start`: each fault's alert opens by the real rules and holds,
    within 13 minutes of the start and while the fault lasts; the minutes are printed."""
    sites = _with_lab_if_needed(start, tmp_path)
    plan = plan_faults(sites, start)
    assert {f.kind for f in plan} == set(ALERT_OF)
    left_on = next(f for f in plan if f.kind == LEFT_ON)
    assert (left_on.site, left_on.device) == (EVENING_CODE, EVENING_DEVICE)
    opened = {f.kind: _opens_at(f, sites, start) for f in plan}
    print(
        f"\n[demo started {start:%a %H:%M} UTC] "
        + ", ".join(
            f"{ALERT_OF[k]} at {t.total_seconds() / 60:.1f} min" if t else f"{ALERT_OF[k]} never"
            for k, t in sorted(opened.items(), key=lambda kv: kv[1] or timedelta.max)
        )
    )
    assert all(t is not None and t <= timedelta(minutes=13) for t in opened.values()), opened


@pytest.mark.timeout(420)
def test_the_running_demo_shows_the_first_states_and_alerts(tmp_path: Path) -> None:
    """The demo as it runs, at the real pace (started now, whatever the hour): within its
    first minutes the API shows a device unreachable and one faulty, and the
    firmware_below_minimum alert opens, each on the device the plan named. The later kinds
    are awaited in simulated time (test_every_alert_opens_in_the_first_minutes), so that
    this test stays a few minutes long."""
    import httpx

    import fleet.demo as demo

    said: list[str] = []

    def planned(kind: str) -> str:
        line = next(line for line in said if line.startswith("demo faults, on a schedule"))
        found = re.search(rf"\+\d+ s {kind} (\S+?)(;|$)", line)
        assert found, line
        return found[1]

    async def scenario() -> dict[str, float]:
        stop, ready = asyncio.Event(), asyncio.Event()
        options = demo.DemoOptions(
            data_dir=tmp_path, port=0, say=said.append, stop=stop, ready=ready
        )
        task = asyncio.create_task(demo.run_demo(options))
        seen: dict[str, float] = {}
        try:
            await asyncio.wait_for(ready.wait(), 120)  # a loaded machine starts slowly
            began = asyncio.get_running_loop().time()
            headers = {"Authorization": f"Bearer {options.tokens['demo-ops']}"}
            wanted = {
                "unreachable": ("state", planned(UNREACHABLE), "unreachable"),
                "faulty": ("state", planned(FAULTY), "faulty"),
                "firmware_below_minimum": ("alert", planned(OLD_FIRMWARE), ""),
            }
            deadline = began + 5 * 60
            async with httpx.AsyncClient(base_url=options.urls["base"], headers=headers) as c:
                while len(seen) < len(wanted):
                    for name, (what, device, state) in wanted.items():
                        if name in seen:
                            continue
                        if what == "state":
                            answer = (await c.get(f"/api/v1/devices/{device}")).json()
                            hit = answer.get("state") == state
                        else:
                            query = {"kind": name, "device": device, "state": "open"}
                            hit = bool(
                                (await c.get("/api/v1/alerts", params=query)).json()["items"]
                            )
                        if hit:
                            seen[name] = (asyncio.get_running_loop().time() - began) / 60
                    assert asyncio.get_running_loop().time() < deadline, (seen, said)
                    await asyncio.sleep(1)  # the API polled once a second: not a guess at a time
            return seen
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    seen = asyncio.run(scenario())
    print("\n[running demo] " + ", ".join(f"{k} at {v:.1f} min" for k, v in seen.items()))
    assert set(seen) == {"unreachable", "faulty", "firmware_below_minimum"}


@pytest.mark.parametrize("start", [datetime(2025, 3, 3, 3, 0, tzinfo=UTC), SUNDAY_NIGHT])
def test_the_offline_site_comes_back_and_its_alert_resolves(start: datetime) -> None:
    """The site taken offline is back when its fault ends: its agent heard again, the real
    rule and hold resolve its open site_offline alert within 3 minutes of its return."""
    sites = load_sites()
    fault = next(f for f in plan_faults(sites, start) if f.kind == SITE_OFFLINE)
    assert fault.lasting is not None
    site = next(s for s in sites if s.config.site.code == fault.site)
    intervals = [site.profile_of(d).poll.interval_s for _, d in site.config.devices()]
    silence = site_silence_threshold(intervals)
    hold = HOLDS[AlertKind.site_offline]
    back = start + fault.after + fault.lasting
    counts, at = NONE, back
    while at < back + timedelta(minutes=3):
        at += ALERTS_JOB
        # Back: it said online on its return, and its readings arrive every poll since.
        agent = AgentFacts(site.config.site.code, site.config.agent_id, "online", back, at)
        seen = observe_site(agent, silence, at, watching_since=start)
        assert seen is not None
        counts, action = step(counts, True, seen, hold)  # its alert is open
        if action == Action.resolve:
            return
    raise AssertionError(f"{fault.site}'s site_offline alert still open 3 min after its return")
