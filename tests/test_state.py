from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleet.devices.state import DeviceState, derive_state, site_offline_reason
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading
from fleet.protocol.site_config import load_site

TRIBHUVAN = load_site("site_configs/tribhuvan.yaml").config  # Asia/Kathmandu, UTC+05:45


def kathmandu(hour: int, minute: int = 0) -> datetime:
    # Monday 2025-03-03, local time in Kathmandu, as UTC.
    return datetime(2025, 3, 3, hour, minute, tzinfo=UTC) - timedelta(hours=5, minutes=45)


def panel(ts: datetime, **fields: object) -> Reading:
    return Reading.model_validate(
        {"device": "tu-sc1-panel-1", "ts": ts, "reachable": True, **fields}
    )


def state_at_site(reading: Reading) -> tuple[DeviceState, str]:
    in_class = TRIBHUVAN.timetable.in_class(reading.ts, TRIBHUVAN.tz)
    return derive_state(reading, in_class=in_class)


def test_online_names_power_and_input() -> None:
    state, reason = derive_state(panel(kathmandu(8), power="on", input="hdmi1"), in_class=True)
    assert state == DeviceState.online
    assert reason == "reachable, power on, input hdmi1"


def test_kathmandu_standby_at_local_evening_is_expected() -> None:
    state, reason = state_at_site(panel(kathmandu(20), power="standby"))
    assert state == DeviceState.standby
    assert reason == "standby outside class hours (expected)"


def test_kathmandu_standby_during_class_is_flagged() -> None:
    state, reason = state_at_site(panel(kathmandu(8), power="standby"))
    assert state == DeviceState.standby
    assert reason == "standby during class hours"


@pytest.mark.parametrize(
    ("local", "in_class"),
    [((6, 59), False), ((7, 0), True), ((11, 15), False), ((12, 0), True), ((13, 59), True)],
)
def test_kathmandu_class_edges_follow_the_45_minute_offset(
    local: tuple[int, int], in_class: bool
) -> None:
    _, reason = state_at_site(panel(kathmandu(*local), power="standby"))
    assert ("during class hours" in reason) is in_class


def test_unreachable_carries_the_agents_reason() -> None:
    reading = Reading(
        device="tu-sc1-panel-1",
        ts=kathmandu(8),
        reachable=False,
        error="SNMP timeout after 2 tries: check the community",
    )
    state, reason = derive_state(reading, in_class=True)
    assert state == DeviceState.unreachable
    assert reason == "cannot reach tu-sc1-panel-1: SNMP timeout after 2 tries: check the community"


def test_error_flag_makes_a_reachable_device_faulty() -> None:
    reading = panel(kathmandu(8), power=Power.on, errors=ErrorFlags(lamp=Flag.error))
    assert derive_state(reading, in_class=True) == (DeviceState.faulty, "error flags: lamp=error")


def test_warning_flag_stays_online_and_is_mentioned() -> None:
    reading = panel(kathmandu(8), power="on", errors={"filter": "warning"})
    state, reason = derive_state(reading, in_class=True)
    assert state == DeviceState.online
    assert reason.endswith("warnings: filter=warning")


def test_reachable_without_power_object_is_online() -> None:
    state, reason = derive_state(panel(kathmandu(8)), in_class=False)
    assert (state, reason) == (DeviceState.online, "reachable, power not reported")


def test_power_off_outside_class_is_expected_standby() -> None:
    state, reason = derive_state(panel(kathmandu(20), power="off"), in_class=False)
    assert (state, reason) == (DeviceState.standby, "power off outside class hours (expected)")


def test_site_offline_reason_names_agent_and_time() -> None:
    at = datetime(2025, 3, 3, 14, 15, tzinfo=UTC)
    reason = site_offline_reason("tribhuvan-agent-1", at)
    assert reason.startswith("site agent tribhuvan-agent-1 offline")
    assert "2025-03-03 14:15:00Z" in reason
    silent = site_offline_reason("tribhuvan-agent-1", at, silent_for=timedelta(minutes=12))
    assert "silent for 12 min" in silent
