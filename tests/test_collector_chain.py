"""Collector chains: a profile's collectors in order, which run where (site-enabled ones,
simulation-only ones), one merged reading that says which answered, and the contract that
carries it (old agents' readings without it still accepted, bad ones refused with a reason)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.collectors import Step, steps_for, target_for
from agent.collectors.chain import merge_readings
from agent.poller import Poller, build_targets
from agent.simulator import MaxhubQuirks, start_site
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading
from fleet.protocol.profiles import Profile, load_profiles
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig, check_site, load_site
from fleet.protocol.timetable import Timetable

TS = datetime(2025, 3, 3, 8, 30, tzinfo=UTC)
PROFILES = load_profiles(DEFAULT_PROFILES_DIR)


def device(profile: str) -> DeviceConfig:
    return DeviceConfig(id="room-panel", profile=profile, address="192.0.2.50")


def test_maxhub_chain_in_profile_order_with_pjlink_only_where_enabled() -> None:
    maxhub = PROFILES["maxhub-panel"]
    plain = steps_for(device("maxhub-panel"), maxhub)
    assert plain == (
        Step("maxhub-lan", "192.0.2.50", 4664),
        Step("reachability", "192.0.2.50", 0),
    )
    enabled = steps_for(device("maxhub-panel"), maxhub, enabled=frozenset({"pjlink"}))
    assert [s.collector for s in enabled] == ["maxhub-lan", "pjlink", "reachability"]
    assert enabled[1].port == 4352


@pytest.mark.parametrize("profile", ["seewo-panel", "dazzleview-panel", "weidong-panel"])
def test_panels_without_a_public_protocol_read_simulated_snmp_only_when_simulated(
    profile: str,
) -> None:
    prof = PROFILES[profile]
    real = steps_for(device(profile), prof, enabled=frozenset({"pjlink"}))
    assert [s.collector for s in real] == ["pjlink", "reachability"]  # honest at a real site
    simulated = steps_for(device(profile), prof, ("127.0.0.1", 40001))
    assert [s.collector for s in simulated] == ["simulated"]
    assert all(s.host == "127.0.0.1" for s in simulated)  # never the config's address


def test_address_map_never_sends_to_the_config_address() -> None:
    maxhub = PROFILES["maxhub-panel"]
    steps = steps_for(device("maxhub-panel"), maxhub, ("127.0.0.1", 40002), frozenset({"pjlink"}))
    assert steps == (
        Step("maxhub-lan", "127.0.0.1", 40002),
        Step("reachability", "127.0.0.1", 40002),
    )


def _reading(**fields: object) -> Reading:
    return Reading(device="room-panel", ts=TS, **fields)  # type: ignore[arg-type]


def test_merge_takes_each_field_from_the_first_collector_that_gave_it() -> None:
    target = target_for(device("maxhub-panel"), PROFILES["maxhub-panel"])
    lan = _reading(reachable=True, power=Power.unknown, input="hdmi1", metrics={"volume_pct": 30})
    pjlink = _reading(
        reachable=True,
        power=Power.on,
        input="hdmi2",
        lamp_hours=12.0,
        errors=ErrorFlags(fan=Flag.warning),
        metrics={"volume_pct": 99, "pjlink_class": 2},
    )
    ping = _reading(reachable=True, metrics={"rtt_ms": 0.4})
    steps = [Step("maxhub-lan", "h", 1), Step("pjlink", "h", 2), Step("reachability", "h", 0)]
    merged = merge_readings(target, list(zip(steps, [lan, pjlink, ping], strict=True)), TS)
    assert merged.reachable and merged.power == Power.on  # first that knew it
    assert merged.input == "hdmi1" and merged.lamp_hours == 12.0
    assert merged.errors is not None and merged.errors.fan == Flag.warning
    assert merged.metrics == {"volume_pct": 30, "pjlink_class": 2, "rtt_ms": 0.4}
    assert merged.collectors == {"maxhub-lan": True, "pjlink": True, "reachability": True}


def test_merge_when_nothing_answered_keeps_every_reason() -> None:
    target = target_for(device("maxhub-panel"), PROFILES["maxhub-panel"])
    lan = _reading(reachable=False, error="nothing listens on TCP 4664")
    ping = _reading(reachable=False, error="no ICMP echo reply")
    steps = [Step("maxhub-lan", "h", 1), Step("reachability", "h", 0)]
    merged = merge_readings(target, list(zip(steps, [lan, ping], strict=True)), TS)
    assert not merged.reachable
    assert merged.collectors == {"maxhub-lan": False, "reachability": False}
    assert "maxhub-lan: nothing listens" in (merged.error or "")
    assert "reachability: no ICMP echo reply" in (merged.error or "")


def test_site_poll_merges_lan_and_reachability_and_records_who_answered() -> None:
    site = load_site("site_configs/usthb.yaml")
    # In class, and never left off: the simulated panels are on.
    clock_now = datetime(2025, 3, 2, 9, 0, tzinfo=UTC)  # a Sunday: USTHB teaches
    for pid, profile in list(site.profiles.items()):
        hints = profile.simulation.model_copy(update={"off_in_class_share": 0.0})
        site.profiles[pid] = profile.model_copy(update={"simulation": hints})

    async def run() -> list[Reading]:
        simulated = await start_site(
            site, clock=lambda: clock_now, maxhub_quirks=MaxhubQuirks(busy_after_power_on_s=0)
        )
        poller = Poller(build_targets(site, simulated.address_map), lambda r: None)
        try:
            return await poller.poll_all_once()
        finally:
            await poller.close()
            await simulated.close()

    assert site.config.timetable.in_class(clock_now, site.config.tz)
    readings = {r.device: r for r in asyncio.run(asyncio.wait_for(run(), 60))}
    lan = readings["usthb-sc1-panel-1"]
    assert lan.reachable and lan.power == Power.on, lan
    assert lan.collectors == {"maxhub-lan": True, "reachability": True}
    only = readings["usthb-sc1-panel-2"]
    assert only.reachable and only.collectors == {"reachability": True}
    assert only.power == Power.unknown


def test_reading_from_an_agent_before_chains_is_accepted() -> None:
    old = Reading.model_validate_json(
        '{"device": "d-1", "ts": "2025-03-03T08:30:00Z", "reachable": true, "power": "on"}'
    )
    assert old.collectors is None


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=40),
        st.one_of(st.booleans(), st.integers(), st.none(), st.text(max_size=5)),
        max_size=12,
    )
)
def test_collectors_field_takes_names_and_booleans_only(value: dict[str, object]) -> None:
    good = len(value) <= 8 and all(
        isinstance(v, bool)
        and 0 < len(k) <= 32
        and k[0].isascii()
        and k[0].islower()
        and all(c.isascii() and (c.islower() or c.isdigit() or c == "-") for c in k)
        for k, v in value.items()
    )
    try:
        reading = Reading(device="d-1", ts=TS, reachable=True, collectors=value)  # type: ignore[arg-type]
    except ValidationError as exc:
        assert not good, exc
        assert "collectors" in str(exc)  # the reason names the field
    else:
        assert good and reading.collectors == value


def test_device_page_says_which_collectors_read_it() -> None:
    from fleet.web.device_page import _shown

    shown = _shown("collectors", {"maxhub-lan": False, "reachability": True})
    assert shown == "maxhub-lan no answer, reachability answered"
    assert _shown("collectors", None) is None  # a reading from before chains: not shown


def test_a_profile_with_nothing_to_run_at_a_real_site_sends_nothing() -> None:
    """Simulated SNMP and a PJLink the site has not enabled: no illustrative object is ever
    asked of a real device; the reading says what to enable."""
    seewo = PROFILES["seewo-panel"]
    only_simulated = seewo.model_copy(
        update={"collectors": [c for c in seewo.chain() if c.collector != "reachability"]}
    )
    target = target_for(device("seewo-panel"), only_simulated)
    assert target.steps == ()
    poller = Poller([target], lambda r: None)
    reading = asyncio.run(poller.poll(target))
    assert not reading.reachable
    assert "none of profile seewo-panel's collectors runs at this site" in (reading.error or "")
    assert "agent.enable_collectors" in (reading.error or "")
    assert poller._collectors == {}  # no collector was even made: nothing sent


def test_site_enabling_a_collector_that_does_not_exist_is_refused_with_the_fix(
    tmp_path: Path,
) -> None:
    data = yaml.safe_load(Path("site_configs/usthb.yaml").read_text())
    data["agent"]["enable_collectors"] = ["pjlink", "icmp"]
    with pytest.raises(ConfigErrors) as caught:
        check_site(tmp_path / "usthb.yaml", data, PROFILES)
    text = str(caught.value)
    assert "agent.enable_collectors" in text and "pjlink" in text


def test_profile_naming_an_unknown_collector_is_refused() -> None:
    data = PROFILES["maxhub-panel"].model_dump()
    data["collectors"] = [{"collector": "maxhub-lan"}, {"collector": "telnet"}]
    with pytest.raises(ValidationError, match="collectors"):
        Profile.model_validate(data)


def test_enabled_pjlink_on_a_lan_panel_merges_on_loopback() -> None:
    """The site enabled PJLink on its MAXHUB panels: three collectors, three ports (one
    simulated MAXHUB panel and one simulated PJLink server on loopback), one reading."""
    from agent.simulator.behaviour import DeviceBehaviour
    from agent.simulator.maxhub_server import MaxhubPanelServer, MaxhubQuirks
    from agent.simulator.pjlink_server import PjlinkQuirks, ProjectorServer

    data = PROFILES["maxhub-panel"].model_dump()
    data["poll"].update({"timeout_s": 0.5, "retries": 0})
    data["simulation"].update({"off_in_class_share": 0.0, "left_on_share": 0.0})
    maxhub = Profile.model_validate(data)
    panel_device = DeviceConfig(id="room-panel", profile=maxhub.id, address="127.0.0.1")

    async def run() -> Reading:
        behaviour = DeviceBehaviour(
            panel_device,
            maxhub,
            timetable=Timetable.model_validate({"weekly": {"mon": ["08:00-10:00"]}}),
            tz=ZoneInfo("UTC"),
            room_name="Room 1",
            clock=lambda: TS,
            rng=random.Random(5),
        )
        lan = await MaxhubPanelServer(behaviour, MaxhubQuirks()).start()
        pjlink = await ProjectorServer(behaviour, None, PjlinkQuirks(slow_reply_chance=0)).start()
        target = target_for(panel_device, maxhub, lan.address)
        target = replace(
            target,
            steps=(
                Step("maxhub-lan", *lan.address),
                Step("pjlink", *pjlink.address),
                Step("reachability", *lan.address),
            ),
        )
        poller = Poller([target], lambda r: None)
        try:
            return await poller.poll(target)
        finally:
            await poller.close()
            lan.close()
            pjlink.close()

    reading = asyncio.run(asyncio.wait_for(run(), 30))
    assert reading.collectors == {"maxhub-lan": True, "pjlink": True, "reachability": True}
    assert reading.power == Power.on
    assert reading.input in {"hdmi1", "slot-in-pc", "type-c1"}  # MAXHUB's, first in chain
    assert reading.errors is not None  # only PJLink gives error flags
    assert reading.metrics["pjlink_class"] == 2 and "volume_pct" in reading.metrics
