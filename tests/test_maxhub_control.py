"""Power and input of a MAXHUB panel over its LAN control port, against the simulated panel
on loopback with its serial-over-LAN quirks: each set frame is the public table's, its
acknowledgement (401+ / 401-) is read through split segments and stray bytes, the next poll
confirms it, and what the table does not allow over LAN (power on from off, an input it does
not list) is said, never pretended."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors.control import control_for
from agent.collectors.maxhub_lan import power_frame
from agent.collectors.maxhub_lan_control import MaxhubLanControl, _read_ack
from agent.simulator.maxhub_server import MaxhubQuirks
from fleet.protocol.messages import Power
from tests.test_maxhub_lan import BEFORE_CLASS, IN_CLASS, Clock, aio, poll, start_panel


def test_the_agent_finds_the_maxhub_control_by_its_protocol() -> None:
    assert isinstance(control_for("maxhub-lan"), MaxhubLanControl)


@aio
async def test_power_off_is_acknowledged_and_the_next_poll_finds_no_port() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(split_replies=True))
    try:
        answer = await MaxhubLanControl().set_power(target, on=False)
        await panel.sync()  # the simulated panel follows its power at once, not at its next check
        after = await poll(target)
    finally:
        panel.close()
    assert answer.ok and "401+" in answer.answer, answer
    assert panel.behaviour.on is False
    assert not after.reachable and "nothing listens" in (after.error or ""), after


@aio
async def test_power_on_from_off_is_refused_with_the_tables_reason() -> None:
    clock = Clock(BEFORE_CLASS)  # off before class: no port
    panel, target = await start_panel(clock)
    try:
        answer = await MaxhubLanControl().set_power(target, on=True)
    finally:
        panel.close()
    assert not answer.ok
    assert "RS-232 only" in answer.answer and "nothing listens" in answer.answer, answer
    assert panel.behaviour.on is False


@aio
async def test_backlight_back_on_from_standby_over_lan() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(leading_noise=b"\x00\xff\r"))
    try:
        panel.backlight_on = False
        standby = await poll(target)
        answer = await MaxhubLanControl().set_power(target, on=True)
        back = await poll(target)
    finally:
        panel.close()
    assert standby.power == Power.standby, standby
    assert answer.ok, answer
    assert back.power == Power.on, back


@aio
async def test_input_set_from_the_table_and_confirmed_by_the_next_poll() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        answer = await MaxhubLanControl().set_input(target, "type-c1")
        after = await poll(target)
    finally:
        panel.close()
    assert answer.ok, answer
    assert after.input == "type-c1", after


@aio
async def test_an_input_the_table_does_not_list_is_not_sent() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        answer = await MaxhubLanControl().set_input(target, "hdmi2")
    finally:
        panel.close()
    assert not answer.ok and "not sent" in answer.answer, answer
    assert panel.frames == 0  # nothing reached the panel


@aio
async def test_an_input_the_model_lacks_is_refused_by_the_panel() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)  # the profile's simulated inputs lack type-c2
    try:
        answer = await MaxhubLanControl().set_input(target, "type-c2")
    finally:
        panel.close()
    assert not answer.ok and "401-" in answer.answer, answer


@aio
async def test_a_port_held_by_another_client_is_said_not_guessed() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        _reader, holder = await asyncio.open_connection(*panel.address)
        await asyncio.sleep(0.05)
        answer = await MaxhubLanControl().set_power(target, on=False)
        holder.close()
    finally:
        panel.close()
    assert not answer.ok and "closed the connection" in answer.answer, answer
    assert panel.behaviour.on is True


@settings(max_examples=300, deadline=None)
@given(
    noise=st.binary(max_size=300).filter(lambda b: b"401" not in b),
    ok=st.booleans(),
    cut=st.integers(min_value=1, max_value=8),
)
def test_an_ack_is_found_among_any_bytes_and_any_segments(noise: bytes, ok: bool, cut: int) -> None:
    data = noise + (b"401+\r" if ok else b"401-\r")

    async def scenario() -> bool:
        reader = asyncio.StreamReader()
        for i in range(0, len(data), cut):
            reader.feed_data(data[i : i + cut])
        reader.feed_eof()
        return await _read_ack(reader)

    assert asyncio.run(scenario()) is ok


def test_the_off_frame_is_the_tables_bytes() -> None:
    # :01S0002\r: power (0x30) set to 002, power off.
    assert power_frame("off") == bytes.fromhex("3A 30 31 53 30 30 30 32 0D")
