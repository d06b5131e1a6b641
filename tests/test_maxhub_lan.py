"""MAXHUB LAN control (TCP 4664, 9-byte frames) against a simulated panel on loopback, with
each serial-over-LAN quirk: replies split across TCP segments, stray bytes before a reply,
a busy period after power-on, one client at a time, a power query not answered over LAN, a
panel that is off; and the frame builders against the public table's bytes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.collectors import target_for
from agent.collectors.maxhub_lan import (
    MaxhubFrameError,
    MaxhubLanCollector,
    input_frame,
    parse_reply,
    power_frame,
    query_frame,
)
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.maxhub_server import MaxhubPanelServer, MaxhubQuirks
from fleet.protocol.messages import Power, Reading
from fleet.protocol.profiles import Profile, load_profile
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from fleet.protocol.timetable import Timetable

UTC_TZ = ZoneInfo("UTC")
# A Monday: class 08:00-10:00. Before 08:00 the panel is off, during class it is on.
BEFORE_CLASS = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)
IN_CLASS = datetime(2025, 3, 3, 8, 30, tzinfo=UTC)
TIMETABLE = Timetable.model_validate({"weekly": {"mon": ["08:00-10:00"]}})


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop with a deadline: a stuck poll fails, never hangs."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return run


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def maxhub_profile() -> Profile:
    data = load_profile(DEFAULT_PROFILES_DIR / "maxhub-panel.yaml").model_dump()
    data["poll"].update({"timeout_s": 0.3, "retries": 1})
    data["simulation"].update({"off_in_class_share": 0.0, "left_on_share": 0.0})
    return Profile.model_validate(data)


async def start_panel(
    clock: Clock, quirks: MaxhubQuirks | None = None
) -> tuple[MaxhubPanelServer, Any]:
    profile = maxhub_profile()
    device = DeviceConfig(id="room-panel", profile=profile.id, address="127.0.0.1")
    behaviour = DeviceBehaviour(
        device,
        profile,
        timetable=TIMETABLE,
        tz=UTC_TZ,
        room_name="Room 1",
        clock=clock,
        rng=__import__("random").Random(1),
    )
    panel = await MaxhubPanelServer(behaviour, quirks or MaxhubQuirks()).start()
    return panel, target_for(device, profile, panel.address)


async def poll(target: Any) -> Reading:
    collector = MaxhubLanCollector()
    try:
        return await collector.poll(target)
    finally:
        await collector.close()


# --- frames: the public table's bytes ---------------------------------------------------


def test_frames_are_the_public_tables_bytes() -> None:
    assert query_frame(0x30) == bytes.fromhex("3A 30 31 47 30 30 30 30 0D")
    assert power_frame("off") == bytes.fromhex("3A 30 31 53 30 30 30 32 0D")
    assert power_frame("on") == bytes.fromhex("3A 30 31 53 30 30 30 33 0D")
    assert power_frame("backlight-off") == bytes.fromhex("3A 30 31 53 30 30 30 30 0D")
    assert input_frame("hdmi1") == bytes.fromhex("3A 30 31 53 3A 30 30 31 0D")
    assert input_frame("type-c2") == bytes.fromhex("3A 30 31 53 3A 31 30 35 0D")
    for frame in (query_frame(0x3A), power_frame("on"), input_frame("slot-in-pc")):
        assert len(frame) == 9


def test_frame_builders_refuse_what_the_table_does_not_give() -> None:
    with pytest.raises(MaxhubFrameError, match="not in the public table"):
        input_frame("hdmi7")
    with pytest.raises(MaxhubFrameError, match="not in the table"):
        power_frame("reboot")


def test_reply_found_among_stray_bytes_and_other_commands() -> None:
    reply = bytes.fromhex("3A 30 31 72 3A 31 30 34 0D")
    assert parse_reply(b"\x00\x00" + reply, 0x3A) == "104"
    assert parse_reply(b"401-\r", 0x3A) is None
    # The reply to another command is not taken for this one.
    assert parse_reply(bytes.fromhex("3A 30 31 72 38 30 35 30 0D"), 0x3A) is None


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(max_size=64), tail=st.binary(max_size=64), code=st.integers(0, 999))
def test_any_bytes_around_a_reply_leave_its_value(noise: bytes, tail: bytes, code: int) -> None:
    reply = b":01r:" + b"%03d" % code + b"\r"
    found = parse_reply(noise + reply + tail, 0x3A)
    # The reply is found unless the noise itself held a (different) complete reply first.
    if b":01r:" not in noise:
        assert found == f"{code:03d}"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    result = parse_reply(data, 0x30)
    assert result is None or (len(result) == 3 and result.isdigit())


# --- the collector against the simulated panel ---------------------------------------------


@aio
async def test_power_input_and_settings_read_from_split_replies() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(split_replies=True))
    try:
        panel.behaviour.input = "type-c1"
        reading = await poll(target)
    finally:
        panel.close()
    assert reading.reachable and reading.error is None, reading
    assert reading.power == Power.on
    assert reading.input == "type-c1"
    assert reading.metrics["backlight_pct"] == 80
    assert reading.metrics["volume_pct"] == 30
    assert reading.metrics["mute"] is False and reading.metrics["touch"] is True
    # The table is silent on these: nothing invented.
    assert reading.temperature_c is None and reading.firmware is None and reading.errors is None
    assert panel.frames == 6


@aio
async def test_stray_bytes_before_each_reply_are_skipped() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(leading_noise=b"\x00\xff\r"))
    try:
        reading = await poll(target)
    finally:
        panel.close()
    assert reading.power == Power.on and reading.input is not None, reading


@aio
async def test_an_input_code_outside_the_table_is_kept_unnamed() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        panel.behaviour.input = "hdmi9"  # the simulator answers 001 for names it lacks...
        panel.reply = lambda raw: b":01r:051\r" if raw[4] == 0x3A else b"401-\r"  # type: ignore[method-assign]
        reading = await poll(target)
    finally:
        panel.close()
    assert reading.reachable
    assert reading.input is None and reading.metrics["input_code"] == "051"
    assert reading.power == Power.unknown  # every other query got the failure ack


@aio
async def test_power_unknown_when_the_power_query_is_not_answered_over_lan() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(power_query_over_lan=False))
    try:
        reading = await poll(target)
    finally:
        panel.close()
    assert reading.reachable and reading.power == Power.unknown
    assert reading.input is not None  # the other queries still answered


@aio
async def test_busy_after_power_on_then_answers() -> None:
    clock = Clock(BEFORE_CLASS)
    panel, target = await start_panel(clock, MaxhubQuirks(busy_after_power_on_s=60))
    try:
        off = await poll(target)
        assert not off.reachable and "nothing listens" in (off.error or ""), off
        clock.now = IN_CLASS  # switched on: the port comes up, busy for 60 s of its clock
        await panel.sync()
        assert panel.serving
        busy = await poll(target)
        assert busy.reachable and busy.power == Power.unknown, busy
        assert "answered no query" in (busy.error or "")
        assert panel.unanswered_busy >= 1
        clock.now = IN_CLASS + timedelta(seconds=61)
        ready = await poll(target)
    finally:
        panel.close()
    assert ready.reachable and ready.power == Power.on and ready.error is None, ready


@aio
async def test_one_client_at_a_time_second_is_retried() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        # Another client holds the port for a moment, then lets go.
        _reader, holder = await asyncio.open_connection(*panel.address)
        await asyncio.sleep(0.05)

        async def release() -> None:
            await asyncio.sleep(0.2)
            holder.close()

        releaser = asyncio.create_task(release())
        reading = await poll(target)
        await releaser
    finally:
        panel.close()
    assert panel.refused_second_client >= 1
    assert reading.reachable and reading.power == Power.on, reading


@aio
async def test_port_held_throughout_is_reported_not_guessed() -> None:
    clock = Clock(IN_CLASS)
    panel, target = await start_panel(clock)
    try:
        _reader, holder = await asyncio.open_connection(*panel.address)
        await asyncio.sleep(0.05)
        reading = await poll(target)
        holder.close()
    finally:
        panel.close()
    assert not reading.reachable
    assert "another client holds it" in (reading.error or ""), reading


@aio
async def test_panel_that_is_off_serves_no_port() -> None:
    clock = Clock(BEFORE_CLASS)
    panel, target = await start_panel(clock)
    try:
        reading = await poll(target)
    finally:
        panel.close()
    assert not panel.serving
    assert not reading.reachable and "LAN control is disabled" in (reading.error or "")


@settings(max_examples=25, deadline=None)
@given(
    answer=st.lists(st.binary(min_size=1, max_size=40), min_size=0, max_size=4),
    close_after=st.booleans(),
)
def test_any_bytes_a_port_sends_give_a_reading_never_an_exception(
    answer: list[bytes], close_after: bool
) -> None:
    """Another device on 4664, a bridge sending noise, half a frame, a close mid-reply: the
    collector gives a reading (reachable, since the port answered) and never raises."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(9)
        for piece in answer:
            writer.write(piece)
            await writer.drain()
        if close_after:
            writer.close()
        else:
            await reader.read(1024)

    async def run() -> Reading:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        profile = maxhub_profile().model_copy(
            update={"poll": maxhub_profile().poll.model_copy(update={"retries": 0})}
        )
        device = DeviceConfig(id="room-panel", profile=profile.id, address="127.0.0.1")
        target = target_for(device, profile, server.sockets[0].getsockname()[:2])
        try:
            return await poll(target)
        finally:
            server.close()

    reading = asyncio.run(asyncio.wait_for(run(), 10))
    if reading.reachable:
        assert reading.power in (Power.on, Power.standby, Power.off, Power.unknown)
        assert reading.input is None or reading.input in {
            "hdmi1",
            "slot-in-pc",
            "type-c1",
            "type-c2",
        }
    else:
        assert "another client holds it" in (reading.error or ""), reading


@aio
async def test_discover_finds_a_maxhub_panel_and_nothing_else_on_its_port() -> None:
    from agent.discover import Probe, discover

    clock = Clock(IN_CLASS)
    panel, _target = await start_panel(clock)

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(9)
        writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(http, "127.0.0.1", 0)
    other_port = other.sockets[0].getsockname()[1]
    port = panel.address[1]
    probes = [
        Probe("127.0.0.1", "maxhub-lan", port),
        Probe("127.0.0.1", "pjlink", port),  # a MAXHUB panel greets nobody: not PJLink
        Probe("127.0.0.1", "maxhub-lan", other_port),  # another service on the port
    ]
    profiles = {p.id: p for p in [maxhub_profile()]}
    try:
        findings = await discover(
            probes, profiles, communities=["public"], passwords=[None], timeout=0.5
        )
    finally:
        panel.close()
        other.close()
    assert [f.probe for f in findings] == [probes[0]], findings
    assert findings[0].facts["maxhub_power"] == "001"  # backlight on
    assert findings[0].facts["maxhub_input"] in {"001", "103", "104", "105"}
    assert findings[0].profile == "maxhub-panel"
