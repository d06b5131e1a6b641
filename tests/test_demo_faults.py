"""The demo's scheduled faults: every device state and device alert kind is planned within the
first minutes, each on its own device, and carrying the plan out changes what the running
simulated devices answer, and takes the small site's agent down and back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.simulator import start_site
from agent.simulator.fault_schedule import (
    FAULTY,
    LAMP_WORN,
    LEFT_ON,
    OVERHEAT,
    SITE_OFFLINE,
    UNREACHABLE,
    plan_faults,
    run_faults,
)
from fleet.protocol.messages import Flag, Power
from fleet.protocol.site_config import load_sites

# Monday 3 March 2025, 20:00 UTC: after the last class at every Asian site, in class nowhere.
MONDAY_EVENING = datetime(2025, 3, 3, 20, 0, tzinfo=UTC)


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
def test_a_plan_for_any_time_is_sound(at: datetime) -> None:
    plan = plan_faults(load_sites(), at.replace(tzinfo=UTC))
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
