"""Switching devices below the API: the PJLink projector simulator answering POWR and INPT
sets as a projector does, the agent's PJLink control over a real socket, and the checks on
what a power or input request may hold."""

from __future__ import annotations

import asyncio
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.collectors import target_for
from agent.collectors.control import control_for
from agent.collectors.pjlink_control import input_code
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.pjlink_server import PjlinkQuirks, ProjectorServer
from fleet.api.routes.commands import CommandIn
from fleet.devices.profile_book import profiles_in
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from fleet.protocol.timetable import Timetable


def test_input_names_map_to_pjlink_codes() -> None:
    assert input_code("hdmi2") == "32"
    assert input_code("digital1") == "31"
    assert input_code("rgb1") == "11"
    assert input_code("vga") == "11"
    for bad in ("hdmi10", "hdmi0", "scart1", "", "31"):
        assert input_code(bad) is None, bad


async def _switch() -> list[tuple[str, bool, str]]:
    profile = profiles_in(DEFAULT_PROFILES_DIR)["pjlink-projector"]
    device = DeviceConfig(id="p1", profile=profile.id, address="192.0.2.50", password="pw")
    behaviour = DeviceBehaviour(device, profile, timetable=Timetable(), tz=ZoneInfo("UTC"))
    server = ProjectorServer(behaviour, "pw", PjlinkQuirks(slow_reply_chance=0))
    await server.start()
    out = []
    try:
        target = target_for(device, profile, server.address)
        control = control_for("pjlink")
        assert control is not None
        for step, call in (
            ("input in standby", control.set_input(target, "hdmi1")),
            ("on", control.set_power(target, True)),
            ("off while warming", control.set_power(target, False)),
        ):
            answer = await call
            out.append((step, answer.ok, answer.answer))
        out.append(("power now", True, behaviour.power().value))
    finally:
        server.close()
    return out


def test_pjlink_projector_takes_power_and_says_err3_while_warming() -> None:
    steps = asyncio.run(asyncio.wait_for(_switch(), 30))
    assert steps[0][1] is False and "ERR3" in steps[0][2]
    assert steps[1][1] is True and steps[1][2] == "POWR 1: OK"
    assert steps[2][1] is False and "ERR3" in steps[2][2]
    assert steps[3][2] == "warming"


def test_snmp_device_whose_profile_names_no_power_object_is_not_sent_anything() -> None:
    profile = profiles_in(DEFAULT_PROFILES_DIR)["seewo-panel"]
    device = DeviceConfig.model_validate(
        {"id": "p1", "profile": "seewo-panel", "address": "127.0.0.1"}
    )
    control = control_for("snmp")
    assert control is not None
    answer = asyncio.run(control.set_power(target_for(device, profile, ("127.0.0.1", 9)), False))
    assert not answer.ok and "names no SNMP object for power" in answer.answer


@given(
    body=st.dictionaries(
        st.sampled_from(["power", "input", "reason", "room", "site", "x"]),
        st.one_of(
            st.text(max_size=600),
            st.integers(),
            st.floats(allow_nan=True),
            st.none(),
            st.sampled_from(["on", "off", "ON", "hdmi1", "<script>", "\x00", "../x", "=1+1"]),
        ),
        max_size=5,
    )
)
def test_command_requests_are_either_well_formed_or_refused_with_a_reason(
    body: dict[str, Any],
) -> None:
    try:
        parsed = CommandIn.model_validate(body)
    except ValidationError as exc:
        assert exc.errors(), body
        return
    assert (parsed.power is None) != (parsed.input is None)
    assert parsed.reason and "\x00" not in parsed.reason
    assert parsed.power in (None, "on", "off")


@pytest.mark.parametrize("value", ["on", "off"])
def test_a_power_request_needs_a_reason(value: str) -> None:
    with pytest.raises(ValidationError):
        CommandIn.model_validate({"power": value})
    assert CommandIn.model_validate({"power": value, "reason": "r"}).power == value
