"""SNMP as agents in the field answer it, each quirk served by a loopback UDP agent that has it
(agent/simulator/snmp_responder.py, SnmpQuirks): Opaque-wrapped floats and every other value
type, one OID per request (silent on more), only the first OID answered, tooBig, answers in
another order, SNMPv1 genErr for one missing object; and the value conversion under hostile
values (Hypothesis)."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pyasn1.codec.ber import encoder
from pysnmp.proto import rfc1902

from agent.collectors import Target, target_for
from agent.collectors.snmp import SnmpCollector, reading_from_values
from agent.collectors.snmp_values import ValueProblem, convert, unwrap_opaque
from agent.poller import deadline_of
from agent.simulator import SimulatedSite, start_devices
from agent.simulator.snmp_responder import DeviceResponder
from fleet.protocol.messages import Power, Reading, utcnow
from fleet.protocol.profiles import Profile, SnmpObject, load_profile
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig

TEMPERATURE = "1.3.6.1.4.1.32473.50.1.3.0"
PROBE = "1.3.6.1.4.1.32473.50.9.1.0"  # a metric object of the tests' own
OPAQUE_13_7 = bytes.fromhex("9F7804415B3333")  # inside `44 07 ...`: the float 13.7
# A timeout costs 2 s (1 s, two tries): well apart from a poll that spends none.
FAST = {"interval_s": 60, "timeout_s": 1.0, "retries": 1}


def projector_profile(**snmp: Any) -> Profile:
    """The shipped SNMP projector (11 objects), polled quickly, with `snmp` changes."""
    base = load_profile(DEFAULT_PROFILES_DIR / "snmp-projector.yaml")
    data = base.model_dump()
    data["poll"].update(FAST)
    data["snmp"].update(snmp)
    return Profile.model_validate(data)


def with_float_temperature(profile: Profile) -> Profile:
    data = profile.model_dump()
    for obj in data["snmp"]["objects"]:
        if obj["oid"] == TEMPERATURE:
            obj.update(type="float", scale=1.0)
    return Profile.model_validate(data)


@asynccontextmanager
async def agent(profile: Profile) -> AsyncIterator[tuple[DeviceResponder, Target, SimulatedSite]]:
    simulated = await start_devices(1, profile)
    try:
        responder = simulated.device("sim-0000")
        device = responder.behaviour.device
        yield responder, target_for(device, profile, simulated.address_map["sim-0000"]), simulated
    finally:
        await simulated.close()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def fully_read(reading: Reading) -> None:
    """Every object of the projector profile that the device has came through."""
    assert reading.reachable, reading.error
    assert reading.error is None, reading.error
    assert reading.power != Power.unknown  # mapped from the power object
    assert reading.firmware == "1.4.0"  # (input: none selected in standby, noSuchInstance)
    assert reading.lamp_hours is not None and reading.filter_hours is not None
    assert reading.temperature_c is not None and reading.uptime_s is not None
    assert reading.metrics["sys_name"] == "sim-0000"
    assert reading.errors is not None


# --- value types ----------------------------------------------------------------------------


def test_the_issues_opaque_bytes_are_an_opaque_float() -> None:
    assert bytes(encoder.encode(rfc1902.Opaque(OPAQUE_13_7))) == bytes.fromhex("44079F7804415B3333")
    assert unwrap_opaque(OPAQUE_13_7) == 13.7


def test_opaque_float_temperature_is_read() -> None:
    async def scenario() -> tuple[Reading, Reading]:
        profile = with_float_temperature(projector_profile())
        async with agent(profile) as (responder, target, _):
            responder.quirks.raw_values[TEMPERATURE] = rfc1902.Opaque(OPAQUE_13_7)
            collector = SnmpCollector()
            try:
                read = await collector.poll(target)
                # The shipped profile reads the object as tenths of a degree in an INTEGER:
                # a float there is an error that names the object, not a silent None.
                shipped = projector_profile()
                other = await collector.poll(
                    target_for(target.device, shipped, (target.host, target.port))
                )
            finally:
                await collector.close()
            return read, other

    read, other = run(scenario())
    assert read.temperature_c == 13.7 and read.error is None
    assert other.reachable and other.temperature_c is None
    assert other.error is not None
    assert f"temperature_c ({TEMPERATURE}): 13.7 is not a whole number (int)" in other.error
    assert other.firmware == "1.4.0"  # the rest of the reading kept


def probe_profile(kind: str) -> Profile:
    base = projector_profile()
    data = base.model_dump()
    data["snmp"]["objects"] = [
        {"field": "uptime_s", "oid": "1.3.6.1.2.1.1.3.0", "type": "timeticks"},
        {"field": "metrics.probe", "oid": PROBE, "type": kind},
    ]
    return Profile.model_validate(data)


def opaque(tag: int, body: bytes) -> rfc1902.Opaque:
    return rfc1902.Opaque(bytes([0x9F, tag, len(body)]) + body)


class Problem(str):
    """Words the reading's error must hold (the value itself is not read)."""


# (what the agent sends, the profile's type, the metric expected or the error's words)
VALUE_TYPES: list[tuple[str, Any, str, Any]] = [
    ("Integer32", rfc1902.Integer32(-5), "int", -5),
    ("Counter32", rfc1902.Counter32(2**32 - 1), "int", 2**32 - 1),
    ("Gauge32 as float", rfc1902.Gauge32(7), "float", 7.0),
    ("Unsigned32 as string", rfc1902.Unsigned32(3), "string", "3"),
    ("TimeTicks", rfc1902.TimeTicks(12345), "timeticks", 123.45),
    ("Counter64", rfc1902.Counter64(2**40), "int", 2**40),
    ("OctetString number", rfc1902.OctetString(b" 27.5 "), "float", 27.5),
    (
        "OctetString not a number",
        rfc1902.OctetString(b"abc"),
        "int",
        Problem("'abc' is not a number"),
    ),
    ("OctetString Latin-1", rfc1902.OctetString(b"H\xf6rsaal"), "string", "Hörsaal"),
    ("Opaque float", rfc1902.Opaque(OPAQUE_13_7), "float", 13.7),
    ("Opaque double", opaque(0x79, struct.pack(">d", -0.25)), "float", -0.25),
    ("Opaque int64", opaque(0x7A, b"\xff\xfe"), "int", -2),
    ("Opaque uint64", opaque(0x7B, b"\xff\xfe"), "int", 65534),
    ("Opaque counter64", opaque(0x76, b"\x01\x00\x00\x00\x00"), "int", 2**32),
    ("Opaque BER INTEGER", rfc1902.Opaque(b"\x02\x01\x05"), "int", 5),
    ("Opaque not BER", rfc1902.Opaque(b"\x01"), "int", Problem("not BER")),
    ("Opaque float cut short", rfc1902.Opaque(OPAQUE_13_7[:-1]), "float", Problem("Opaque float")),
    (
        "Opaque float NaN",
        opaque(0x78, b"\x7f\xc0\x00\x00"),
        "float",
        Problem("not a finite number"),
    ),
    ("IpAddress as string", rfc1902.IpAddress("10.0.0.1"), "string", "10.0.0.1"),
    (
        "IpAddress as int",
        rfc1902.IpAddress("10.0.0.1"),
        "int",
        Problem("'10.0.0.1' is not a number"),
    ),
    ("ObjectIdentifier", rfc1902.ObjectIdentifier("1.3.6.1"), "string", "1.3.6.1"),
    # BITS travels as an OCTET STRING: its byte is not UTF-8, so it is read as Latin-1.
    ("Bits", rfc1902.Bits(b"\xa0"), "string", "\xa0"),
    ("Float text as int", rfc1902.OctetString(b"1.5"), "int", Problem("1.5 is not a whole number")),
]


@pytest.mark.parametrize(
    ("sent", "kind", "expected"),
    [pytest.param(v, k, e, id=name) for name, v, k, e in VALUE_TYPES],
)
def test_every_value_type_maps_to_its_field_or_names_the_object(
    sent: Any, kind: str, expected: Any
) -> None:
    async def scenario() -> Reading:
        profile = probe_profile(kind)
        async with agent(profile) as (responder, target, _):
            responder.quirks.raw_values[PROBE] = sent
            collector = SnmpCollector()
            try:
                return await collector.poll(target)
            finally:
                await collector.close()

    reading = run(scenario())
    assert reading.reachable and reading.uptime_s is not None
    if isinstance(expected, Problem):
        assert "probe" not in reading.metrics
        assert reading.error is not None
        assert f"metrics.probe ({PROBE})" in reading.error and expected in reading.error
    else:
        assert reading.error is None, reading.error
        assert reading.metrics["probe"] == expected
        assert type(reading.metrics["probe"]) is type(expected)


def test_null_is_an_error_naming_the_object() -> None:
    obj = SnmpObject(field="temperature_c", oid=TEMPERATURE, type="float")
    with pytest.raises(ValueProblem, match=rf"temperature_c \({TEMPERATURE}\): .*NULL"):
        convert(obj, rfc1902.Null(""))


def test_a_value_outside_the_map_is_an_error_naming_the_object() -> None:
    obj = SnmpObject(field="power", oid="1.3.6.1.4.1.32473.50.1.1.0", type="int", map={"1": "on"})
    assert convert(obj, rfc1902.Integer32(1)) == ("on", None)
    with pytest.raises(ValueProblem, match=r"power \(1\.3\.6\.1\.4\.1\.32473\.50\.1\.1\.0\): '9'"):
        convert(obj, rfc1902.Integer32(9))


# --- partial agents -------------------------------------------------------------------------


def test_agent_that_takes_one_oid_per_request_is_read_in_full() -> None:
    async def scenario() -> None:
        async with agent(projector_profile()) as (responder, target, _):
            responder.quirks.max_oids = 1
            collector = SnmpCollector()
            try:
                before = deadline_of(target, collector)
                first = await collector.poll(target)
                fully_read(first)
                assert first.metrics["snmp_notes"] == "agent takes 1 OIDs per request"
                # All eleven (a try and its retry), then one by one.
                assert responder.requests == 2 + 11
                # The next poll asks one at a time from the start: no timeout spent.
                responder.requests = 0
                started = time.monotonic()
                second = await collector.poll(target)
                assert time.monotonic() - started < 1.5
                fully_read(second)
                assert responder.requests == 11
                # And the poller's deadline counts the requests the poll now makes.
                assert deadline_of(target, collector) > before
                assert deadline_of(target, collector) >= 1.0 * 2 * 11
            finally:
                await collector.close()

    run(scenario())


def test_max_oids_per_request_in_the_profile_spends_no_timeout() -> None:
    async def scenario() -> None:
        profile = projector_profile(max_oids_per_request=3)
        async with agent(profile) as (responder, target, _):
            responder.quirks.max_oids = 3
            collector = SnmpCollector()
            try:
                started = time.monotonic()
                reading = await collector.poll(target)
                assert time.monotonic() - started < 1.5
                fully_read(reading)
                assert responder.requests == 4  # 3 + 3 + 3 + 2
            finally:
                await collector.close()

    run(scenario())


def test_agent_answering_only_the_first_oid_is_read_in_full() -> None:
    async def scenario() -> None:
        async with agent(projector_profile()) as (responder, target, _):
            responder.quirks.first_only = True
            collector = SnmpCollector()
            try:
                reading = await collector.poll(target)
                fully_read(reading)
                assert reading.metrics["snmp_notes"] == "agent takes 1 OIDs per request"
            finally:
                await collector.close()

    run(scenario())


def test_too_big_splits_the_request() -> None:
    async def scenario() -> None:
        async with agent(projector_profile()) as (responder, target, _):
            responder.quirks.too_big_over = 4
            collector = SnmpCollector()
            try:
                reading = await collector.poll(target)
                fully_read(reading)
                assert "agent takes 3 OIDs per request" in str(reading.metrics["snmp_notes"])
            finally:
                await collector.close()

    run(scenario())


def test_answers_are_matched_by_oid_not_by_position() -> None:
    async def scenario() -> None:
        async with agent(projector_profile()) as (responder, target, _):
            responder.quirks.reversed_order = True
            collector = SnmpCollector()
            try:
                fully_read(await collector.poll(target))
            finally:
                await collector.close()

    run(scenario())


def test_snmpv1_gen_err_for_one_missing_object_costs_that_object_only() -> None:
    async def scenario() -> Reading:
        async with agent(projector_profile(version="1")) as (responder, target, _):
            responder.quirks.gen_err_for_missing = True
            responder.missing.add(TEMPERATURE)
            collector = SnmpCollector()
            try:
                return await collector.poll(target)
            finally:
                await collector.close()

    reading = run(scenario())
    assert reading.reachable
    assert reading.temperature_c is None
    assert reading.firmware == "1.4.0" and reading.lamp_hours is not None
    assert reading.power != Power.unknown and reading.errors is not None
    assert reading.error is not None
    assert f"temperature_c ({TEMPERATURE}): the agent answered genErr" in reading.error


def test_a_dead_agent_costs_one_probe_then_is_unreachable() -> None:
    async def scenario() -> None:
        async with agent(projector_profile()) as (responder, target, _):
            responder.alive = False
            collector = SnmpCollector()
            try:
                started = time.monotonic()
                reading = await collector.poll(target)
                took = time.monotonic() - started
            finally:
                await collector.close()
            assert not reading.reachable and "SNMP timeout after 2 tries" in (reading.error or "")
            # The whole request, then one OID alone, each with its retry: counted at the
            # agent, not timed, so a loaded machine cannot fail it.
            assert responder.unanswered == 4, responder.unanswered
            assert took < deadline_of(target, SnmpCollector())

    run(scenario())


# --- hostile values -------------------------------------------------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
VALUES = st.one_of(
    st.builds(rfc1902.Integer32, INT32),
    st.builds(rfc1902.Counter32, UINT32),
    st.builds(rfc1902.Gauge32, UINT32),
    st.builds(rfc1902.TimeTicks, UINT32),
    st.builds(rfc1902.Counter64, st.integers(0, 2**64 - 1)),
    st.builds(rfc1902.OctetString, st.binary(max_size=64)),
    st.builds(
        rfc1902.OctetString,
        st.sampled_from([b"nan", b"inf", b"-1e999", b"9" * 5000, b"0x10", b"\x00", b"1_000"]),
    ),
    st.builds(rfc1902.Opaque, st.binary(max_size=16)),
    st.builds(
        lambda tag, body: opaque(tag, body),
        st.sampled_from([0x76, 0x78, 0x79, 0x7A, 0x7B]),
        st.binary(max_size=10),
    ),
    st.builds(rfc1902.IpAddress, st.binary(min_size=4, max_size=4)),
    st.just(rfc1902.Null("")),
)


@settings(max_examples=1000, deadline=None)
@given(
    value=VALUES,
    kind=st.sampled_from(["int", "float", "string", "timeticks"]),
    scale=st.sampled_from([1.0, 0.1, 1e-300, 1e300, -1.0]),
    mapped=st.booleans(),
)
def test_any_value_becomes_its_fields_type_or_a_problem_naming_the_object(
    value: Any, kind: str, scale: float, mapped: bool
) -> None:
    obj = SnmpObject(
        field="metrics.x",
        oid=PROBE,
        type=kind,  # type: ignore[arg-type]
        scale=scale,
        map={"1": "on", "2": "standby"} if mapped else None,
    )
    try:
        out, note = convert(obj, value)
    except ValueProblem as exc:
        assert f"metrics.x ({PROBE})" in str(exc)
        return
    if mapped:
        assert out in ("on", "standby")
    elif kind == "string":
        assert isinstance(out, str)
        if "\ufffd" in out:  # never put there by us: only if the device sent it
            assert b"\xef\xbf\xbd" in value.asOctets()
    else:
        assert isinstance(out, (int, float)) and not isinstance(out, bool)
        assert not isinstance(out, float) or not math.isnan(out)
    assert note is None or "Latin-1" in note


@settings(max_examples=1000, deadline=None)
@given(payload=st.binary(max_size=40))
# A BER length past what an index holds made pyasn1 raise OverflowError (found by Hypothesis).
@example(payload=b"\x01\x88\x80\x00\x00\x00\x00\x00\x00\x00")
def test_any_opaque_payload_is_a_value_or_a_value_error(payload: bytes) -> None:
    try:
        unwrap_opaque(payload)
    except ValueError as exc:
        assert str(exc)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(values=st.lists(VALUES, min_size=11, max_size=11))
def test_an_agent_answering_hostile_values_gives_a_reading_naming_what_it_lost(
    values: list[Any],
) -> None:
    profile = projector_profile()
    assert profile.snmp is not None
    objects = profile.snmp.objects

    async def scenario() -> Reading:
        async with agent(profile) as (responder, target, _):
            for obj, value in zip(objects, values, strict=True):
                responder.quirks.raw_values[obj.oid] = value
            collector = SnmpCollector()
            try:
                return await collector.poll(target)
            finally:
                await collector.close()

    reading = run(scenario())
    assert reading.reachable
    for obj in objects:
        if obj.field.startswith(("errors.", "metrics.")) or obj.field == "power":
            continue
        if getattr(reading, obj.field) is None:
            # Not read: the reading says so (or its error was cut at the contract's length).
            said = reading.error or ""
            assert obj.oid in said or len(said) >= 450 or "cleaned" in reading.metrics, obj


def test_a_power_or_flag_value_no_state_matches_is_said_not_dropped() -> None:
    profile = projector_profile()
    target = target_for(
        DeviceConfig(id="p", profile=profile.id, address="192.0.2.1"), profile, ("127.0.0.1", 9)
    )
    reading = reading_from_values(
        target, {"power": "running", "errors.fan": "spinning", "firmware": "1.4.0"}, utcnow()
    )
    assert reading.reachable and reading.power == Power.unknown and reading.errors is None
    assert reading.firmware == "1.4.0"
    assert "power: 'running' is not a power state" in (reading.error or "")
    assert "errors.fan: 'spinning' is not ok, warning or error" in (reading.error or "")
