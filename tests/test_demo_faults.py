"""The demo's scheduled faults: every device state and device alert kind is planned within the
first minutes, each on its own device, and carrying the plan out changes what the running
simulated devices answer, and takes the small site's agent down and back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.simulator import start_site
from agent.simulator.fault_schedule import (
    FAULTY,
    LAMP_WORN,
    LEFT_ON,
    OPEN_LAB_CODE,
    OPEN_LAB_DEVICE,
    OVERHEAT,
    SITE_OFFLINE,
    UNREACHABLE,
    needs_open_lab,
    plan_faults,
    run_faults,
)
from fleet.alerts.models import AlertKind
from fleet.alerts.rules import UNREACHABLE_AFTER, SiteClock, observe
from fleet.demo import _with_open_lab
from fleet.devices.state import DeviceFacts
from fleet.protocol.messages import Flag, Power
from fleet.protocol.site_config import DEFAULT_SITES_DIR, LoadedSite, load_sites

# Monday 3 March 2025, 20:00 UTC: after the last class at every Asian site, in class nowhere.
MONDAY_EVENING = datetime(2025, 3, 3, 20, 0, tzinfo=UTC)
# Sunday 2 March 2025, 23:00 UTC: no class at any site.
SUNDAY_NIGHT = datetime(2025, 3, 2, 23, 0, tzinfo=UTC)


def test_every_kind_is_planned_in_the_first_minutes() -> None:
    sites = load_sites()
    plan = plan_faults(sites, MONDAY_EVENING)
    kinds = [f.kind for f in plan]
    assert sorted(kinds) == sorted(
        [UNREACHABLE, FAULTY, OVERHEAT, LAMP_WORN, LEFT_ON, SITE_OFFLINE]
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
    assert {UNREACHABLE, FAULTY, OVERHEAT, LAMP_WORN, SITE_OFFLINE} <= kinds
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


@pytest.fixture(scope="module")
def shipped_sites() -> list[LoadedSite]:
    """The real sites, read once for all examples: reading them is most of an example's time,
    and plan_faults only reads them."""
    return load_sites()


@pytest.fixture(scope="module")
def sites_with_lab(tmp_path_factory: pytest.TempPathFactory) -> list[LoadedSite]:
    """The real sites and the demo's open lab, as `fleet demo` serves them when no real site
    is in class long enough; read once."""
    return load_sites(_with_open_lab(DEFAULT_SITES_DIR, tmp_path_factory.mktemp("lab-sites")))


@settings(max_examples=80, deadline=None)
@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_the_unreachable_alert_opens_at_any_hour(
    shipped_sites: list[LoadedSite], sites_with_lab: list[LoadedSite], at: datetime
) -> None:
    """Whatever the time of day or week, the real rule (10 min of class time) opens the
    device_unreachable alert on the demo's unreachable device while its fault lasts."""
    now = at.replace(tzinfo=UTC)
    sites = sites_with_lab if needs_open_lab(shipped_sites, now) else shipped_sites
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
    folder = _with_open_lab(DEFAULT_SITES_DIR, tmp_path / "demo-sites")
    for real in DEFAULT_SITES_DIR.glob("*.yaml"):  # the real sites as they are
        assert (folder / real.name).read_bytes() == real.read_bytes()
    with_lab = load_sites(folder)
    assert len(with_lab) == len(sites) + 1
    lab = next(s for s in with_lab if s.config.site.code == OPEN_LAB_CODE)
    assert [d.id for _, d in lab.config.devices()] == [OPEN_LAB_DEVICE]
    plan = plan_faults(with_lab, sunday_night)
    by_kind = {f.kind: f for f in plan}
    assert by_kind[UNREACHABLE].site == OPEN_LAB_CODE
    assert by_kind[SITE_OFFLINE].site != OPEN_LAB_CODE  # the smallest real site goes offline
    assert all(f.site != OPEN_LAB_CODE for f in plan if f.kind != UNREACHABLE)
    # A second demo in the same folder starts from the real configs again.
    (folder / "stale.yaml").write_text("not: a site\n")
    assert len(load_sites(_with_open_lab(DEFAULT_SITES_DIR, folder))) == len(with_lab)


@pytest.mark.timeout(180)
def test_a_demo_outside_class_hours_runs_its_open_lab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A demo started when no site is in class (made so here: the clock of the hour is the
    one thing not under the test's control) serves the open lab beside the real sites, its
    projector polled by its own agent, and plans the unreachable fault there."""
    import httpx

    import fleet.demo as demo

    monkeypatch.setattr(demo, "needs_open_lab", lambda sites, now: True)
    monkeypatch.setattr(demo, "plan_faults", lambda sites, now: plan_faults(sites, SUNDAY_NIGHT))
    said: list[str] = []

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        options = demo.DemoOptions(
            data_dir=tmp_path, port=0, say=said.append, stop=stop, ready=ready
        )
        task = asyncio.create_task(demo.run_demo(options))
        try:
            await asyncio.wait_for(ready.wait(), 60)
            token = options.tokens["demo-ops"]
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=options.urls["base"], headers=headers) as c:
                deadline = asyncio.get_running_loop().time() + 60
                while True:
                    answer = await c.get(f"/api/v1/devices/{OPEN_LAB_DEVICE}")
                    if answer.status_code == 200 and answer.json().get("state") == "online":
                        break
                    assert asyncio.get_running_loop().time() < deadline, answer.text
                    await asyncio.sleep(0.5)
                sites = (await c.get("/api/v1/sites")).json()
            codes = [s["code"] for s in (sites["items"] if isinstance(sites, dict) else sites)]
            assert OPEN_LAB_CODE in codes and "upm" in codes
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)

    asyncio.run(scenario())
    assert any("open lab" in line for line in said)
    assert any(f"{UNREACHABLE} {OPEN_LAB_DEVICE}" in line for line in said)
