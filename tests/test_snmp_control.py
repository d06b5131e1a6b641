"""Power over SNMP SET, below the API: the agent's SNMP control against the simulated SNMP
projector (agent/simulator/snmp_responder.py) over real loopback UDP. The illustrative
`snmp-projector` profile names a power object (`snmp.power_set`); the simulated device takes
a SET of it as a projector's own agent would, and refuses what a real agent refuses, with
the SNMP error it would give."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from agent.collectors import target_for
from agent.collectors.control import control_for
from agent.collectors.snmp import SnmpCollector
from agent.simulator.behaviour import TRANSITION_S, DeviceBehaviour
from agent.simulator.snmp_responder import DeviceResponder, ObjectTable, serve_device
from fleet.devices.profile_book import profiles_in
from fleet.protocol.profiles import SnmpSetObject
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from fleet.protocol.timetable import Timetable

PROFILE = profiles_in(DEFAULT_PROFILES_DIR)["snmp-projector"]
START = datetime(2026, 3, 2, 20, 0, tzinfo=ZoneInfo("UTC"))


class Clock:
    """The simulated device's time, moved by the test (warm-up and cool-down take minutes)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _projector(clock: Clock, community: str = "public") -> tuple[DeviceConfig, DeviceResponder]:
    device = DeviceConfig(id="p1", profile=PROFILE.id, address="127.0.0.1", community=community)
    behaviour = DeviceBehaviour(
        device, PROFILE, timetable=Timetable(), tz=ZoneInfo("UTC"), clock=clock
    )
    return device, DeviceResponder(behaviour, ObjectTable.for_profile(PROFILE), "private")


async def _power_off_then_poll() -> dict[str, Any]:
    clock = Clock()
    device, responder = _projector(clock, community="private")
    await serve_device(responder)
    out: dict[str, Any] = {}
    try:
        assert responder.behaviour.switch(True)  # left on: warm it up, then it is on
        clock.now += timedelta(seconds=TRANSITION_S + 1)
        target = target_for(device, PROFILE, responder.address)
        collector = SnmpCollector()
        out["before"] = (await collector.poll(target)).power
        control = control_for("snmp")
        assert control is not None
        answer = await control.set_power(target, False)
        out["off"] = (answer.ok, answer.answer)
        # Cooling now: a second switch is refused as the device refuses it.
        again = await control.set_power(target, True)
        out["while cooling"] = (again.ok, again.answer)
        clock.now += timedelta(seconds=TRANSITION_S + 1)
        out["after"] = (await collector.poll(target)).power
    finally:
        responder.close()
    return out


def test_power_off_by_snmp_set_and_the_next_poll_shows_standby() -> None:
    out = asyncio.run(asyncio.wait_for(_power_off_then_poll(), 30))
    assert out["before"] == "on"
    assert out["off"] == (True, "SET 1.3.6.1.4.1.32473.50.1.9.0 = 2: noError")
    assert out["while cooling"][0] is False
    assert "inconsistentValue" in out["while cooling"][1]
    assert out["after"] == "standby"


async def _set_with(obj: SnmpSetObject, wanted: str, community: str) -> tuple[bool, str, str]:
    """Power `wanted` through the agent with the profile's power object replaced by `obj`
    (a profile that writes what the device does not take) and the device's community."""
    clock = Clock()
    device, responder = _projector(clock, community=community)
    responder.read_only_communities.add(b"public")
    await serve_device(responder)
    try:
        assert PROFILE.snmp is not None
        profile = PROFILE.model_copy(
            update={"snmp": PROFILE.snmp.model_copy(update={"power_set": obj})}
        )
        target = target_for(device, profile, responder.address)
        control = control_for("snmp")
        assert control is not None
        answer = await control.set_power(target, False)
        return answer.ok, answer.answer, responder.behaviour.power().value
    finally:
        responder.close()


def test_a_value_the_device_does_not_take_is_refused_with_its_own_error() -> None:
    assert PROFILE.snmp is not None and PROFILE.snmp.power_set is not None
    wrong = SnmpSetObject(oid=PROFILE.snmp.power_set.oid, values={"on": "1", "off": "7"})
    ok, answer, power = asyncio.run(asyncio.wait_for(_set_with(wrong, "off", "private"), 30))
    assert not ok and "wrongValue" in answer and "= 7" in answer
    assert power == "standby"
    as_text = SnmpSetObject(oid=PROFILE.snmp.power_set.oid, type="string")
    ok, answer, _ = asyncio.run(asyncio.wait_for(_set_with(as_text, "off", "private"), 30))
    assert not ok and "wrongType" in answer


def test_a_read_only_community_is_refused_no_access() -> None:
    assert PROFILE.snmp is not None
    ok, answer, _ = asyncio.run(
        asyncio.wait_for(_set_with(PROFILE.snmp.power_set, "off", "public"), 30)  # type: ignore[arg-type]
    )
    assert not ok and "noAccess" in answer, answer


def test_an_object_the_profile_does_not_name_is_not_writable() -> None:
    assert PROFILE.snmp is not None
    firmware = SnmpSetObject(oid="1.3.6.1.4.1.32473.50.1.4.0", values={"off": "1"})
    ok, answer, _ = asyncio.run(asyncio.wait_for(_set_with(firmware, "off", "private"), 30))
    assert not ok and "notWritable" in answer, answer


def _set_request(version: int, community: bytes, oid: str, value: Any) -> bytes:
    p_mod = api.PROTOCOL_MODULES[version]
    pdu = p_mod.SetRequestPDU()
    p_mod.apiPDU.set_defaults(pdu)
    p_mod.apiPDU.set_varbinds(pdu, [(p_mod.ObjectIdentifier(oid), value)])
    message = p_mod.Message()
    p_mod.apiMessage.set_defaults(message)
    p_mod.apiMessage.set_community(message, community)
    p_mod.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from([api.SNMP_VERSION_1, api.SNMP_VERSION_2C]),
    value=st.one_of(
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
        st.binary(max_size=300),
    ),
    oid=st.sampled_from(
        ["1.3.6.1.4.1.32473.50.1.9.0", "1.3.6.1.4.1.32473.50.1.1.0", "1.3.6.1.2.1.1.5.0"]
    ),
)
def test_any_set_is_answered_with_a_status_and_only_1_or_2_switches(
    version: int, value: int | bytes, oid: str
) -> None:
    """Hostile SETs: every one is answered (never dropped, never an exception), and only the
    power object with 1 or 2 succeeds; everything else leaves the device as it was."""
    clock = Clock()
    _, responder = _projector(clock)
    p_mod = api.PROTOCOL_MODULES[version]
    wire = p_mod.Integer(value) if isinstance(value, int) else p_mod.OctetString(value)
    before = responder.behaviour.on
    raw = responder.answer(_set_request(version, b"private", oid, wire))
    assert raw is not None
    response, _ = decoder.decode(raw, asn1Spec=p_mod.Message())
    status = int(p_mod.apiPDU.get_error_status(p_mod.apiMessage.get_pdu(response)))
    takes = oid.endswith(".50.1.9.0") and isinstance(value, int) and value in (1, 2)
    assert (status == 0) == takes, (oid, value, status)
    if takes:
        assert responder.behaviour.on == (value == 1)
    else:
        assert responder.behaviour.on == before


def test_the_warm_up_is_as_long_as_the_simulator_is_told() -> None:
    """`fleet-agent simulate --warm-up-s` shortens a projector's warm-up and cool-down: warming
    (POWR 3) just before it ends and on just after, then cooling (POWR 2) the same way."""
    from fleet.protocol.messages import Power

    clock = Clock()
    device = DeviceConfig(id="p1", profile=PROFILE.id, address="127.0.0.1")
    behaviour = DeviceBehaviour(
        device, PROFILE, timetable=Timetable(), tz=ZoneInfo("UTC"), clock=clock, transition_s=5
    )
    assert behaviour.switch(True)
    clock.now += timedelta(seconds=4.9)
    assert behaviour.power() == Power.warming
    assert not behaviour.switch(False)  # refused while warming, as PJLink's ERR3
    clock.now += timedelta(seconds=0.2)
    assert behaviour.power() == Power.on
    assert behaviour.switch(False)
    clock.now += timedelta(seconds=4.9)
    assert behaviour.power() == Power.cooling
    clock.now += timedelta(seconds=0.2)
    assert behaviour.power() == Power.standby
