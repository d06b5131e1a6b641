"""The PJLink collector against simulated projectors on loopback TCP, every quirk included:
password auth, lowercase replies, ERR3 while warming, idle drop, slow replies, class 1 models,
faults; and against projectors that answer garbage, half a reply, nothing, or reset."""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.collectors import target_for
from agent.collectors.pjlink import (
    Answer,
    PjlinkCollector,
    ProjectorAnswers,
    auth_digest,
    reading_from_answers,
)
from agent.poller import Poller
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.pjlink_server import PjlinkQuirks, ProjectorServer
from fleet.protocol.messages import Flag, Power, Reading
from fleet.protocol.profiles import Profile, load_profile
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from fleet.protocol.timetable import Timetable

NOW = datetime(2025, 3, 3, 3, 0, tzinfo=UTC)
PASSWORD = "classroom"
# Quick for tests: a dead projector costs 0.3 s per try, not the profile's 5 s.
FAST = {"timeout_s": 0.3, "retries": 1}


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop, with a deadline: a stuck poll fails, never hangs."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 15))

    return run


def profile(**changes: object) -> Profile:
    base = load_profile(DEFAULT_PROFILES_DIR / "pjlink-projector.yaml")
    data = base.model_dump()
    data["poll"].update(FAST)
    for key, value in changes.items():
        data[key] = value
    return Profile.model_validate(data)


def behaviour(prof: Profile, device_id: str = "room-projector") -> DeviceBehaviour:
    device = DeviceConfig(id=device_id, profile=prof.id, address="192.0.2.50", password=PASSWORD)
    return DeviceBehaviour(
        device, prof, timetable=Timetable(), tz=ZoneInfo("UTC"), clock=lambda: NOW
    )


@asynccontextmanager
async def projector(
    prof: Profile | None = None,
    *,
    password: str | None = PASSWORD,
    quirks: PjlinkQuirks | None = None,
) -> AsyncIterator[ProjectorServer]:
    server = ProjectorServer(
        behaviour(prof or profile()), password, quirks or PjlinkQuirks(slow_reply_chance=0)
    )
    await server.start()
    try:
        yield server
    finally:
        server.close()


async def poll(server: ProjectorServer, password: str | None = PASSWORD) -> Reading:
    device = server.behaviour.device.model_copy(update={"password": password})
    return await PjlinkCollector().poll(
        target_for(device, server.behaviour.profile, server.address)
    )


@aio
async def test_full_class2_reading_with_password_auth() -> None:
    prof = profile(simulation={**profile().simulation.model_dump(), "faults": {"lamp": "warning"}})
    async with projector(prof) as server:
        server.behaviour.on = True  # in class, lamp lit
        reading = await poll(server)
    assert reading.reachable, reading.error
    assert reading.error is None
    assert reading.power == Power.on
    assert reading.lamp_hours == 1800 and reading.filter_hours == 450
    assert reading.firmware == "2.1.0"
    assert reading.input in ("digital1", "digital2", "rgb1")
    assert reading.errors is not None and reading.errors.lamp == Flag.warning
    assert reading.errors.fan == Flag.ok
    assert reading.metrics["lamp1_on"] is True and reading.metrics["lamp1_hours"] == 1800
    assert reading.metrics["pjlink_class"] == 2
    assert reading.metrics["manufacturer"] == "Generic"
    assert reading.metrics["product"] == "PJLink projector"
    assert reading.metrics["name"] == "room-projector"
    assert str(reading.metrics["serial"]).startswith("SIM")
    assert server.auth_failures == 0 and server.connections == 1


@aio
async def test_lowercase_replies_are_read_like_uppercase() -> None:
    async with projector(quirks=PjlinkQuirks(lowercase=True, slow_reply_chance=0)) as server:
        assert server.reply("%1POWR ?") == "%1powr=0"
        assert server.reply("%1XXXX ?") == "%1xxxx=err1"
        reading = await poll(server)
    assert reading.reachable and reading.error is None
    assert reading.power == Power.off  # PJLink 0: standby, network still up
    assert reading.lamp_hours == 1800
    assert reading.metrics["pjlink_busy"] == "INPT"  # no input in standby: ERR3, not a fault


@aio
async def test_err3_while_warming_is_busy_not_faulty() -> None:
    async with projector() as server:
        b = server.behaviour
        b.on, b.changed_at = True, NOW  # switched on just now: warming up
        reading = await poll(server)
    assert reading.reachable
    assert reading.power == Power.warming
    assert reading.error is None  # busy is not a fault
    assert reading.lamp_hours is None and reading.input is None and reading.filter_hours is None
    assert reading.metrics["pjlink_busy"] == "LAMP,INPT,FILT"
    assert reading.errors is not None and reading.errors.worst() == Flag.ok


@aio
async def test_wrong_password_gives_a_clear_error() -> None:
    async with projector() as server:
        wrong = await poll(server, password="not-it")
        missing = await poll(server, password=None)
    assert not wrong.reachable
    assert "PJLink authentication failed" in (wrong.error or "")
    assert "PJLINK ERRA" in (wrong.error or "")
    assert "set password: for room-projector" in (wrong.error or "")
    assert server.auth_failures == 1  # no retry with a password known to be wrong
    assert not missing.reachable
    assert "asks for a PJLink password and none is set" in (missing.error or "")


@aio
async def test_no_password_projector_needs_none() -> None:
    async with projector(password=None) as server:
        reading = await poll(server, password=None)
    assert reading.reachable and reading.power == Power.off


@aio
async def test_class1_projector_is_not_asked_class2_queries() -> None:
    async with projector(quirks=PjlinkQuirks(pjlink_class=1, slow_reply_chance=0)) as server:
        server.behaviour.on = True
        reading = await poll(server)
        assert server.reply("%2FILT ?") == "%2FILT=ERR1"
    assert reading.reachable and reading.error is None
    assert reading.metrics["pjlink_class"] == 1
    assert reading.firmware is None and reading.filter_hours is None  # class 2 only
    assert reading.lamp_hours == 1800


@aio
async def test_slow_reply_within_the_timeout_is_still_read() -> None:
    quirks = PjlinkQuirks(slow_reply_chance=1.0, slow_reply_s=0.02)
    async with projector(quirks=quirks) as server:
        reading = await poll(server)
    assert reading.reachable and reading.error is None


@aio
async def test_idle_connection_is_dropped_by_the_projector() -> None:
    async with projector(quirks=PjlinkQuirks(idle_drop_s=0.2)) as server:
        reader, writer = await asyncio.open_connection(*server.address)
        greeting = await asyncio.wait_for(reader.readuntil(b"\r"), 2)
        assert greeting.startswith(b"PJLINK 1 ")
        # The projector closes after 0.2 s of silence: EOF arrives well within 2 s.
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        assert server.idle_drops == 1
        # And a new connection (as each poll makes) works as before.
        assert (await poll(server)).reachable


def test_auth_digest_is_md5_of_random_and_password() -> None:
    # The PJLink specification's own example.
    assert auth_digest("498e4a67", "JBMIAProjectorLink") == "5d8409bc1c3fa39749434aa3a5c38682"


@pytest.mark.parametrize(
    ("misbehaviour", "expect"),
    [
        ("garbage_greeting", "not 'pjlink 0'"),
        ("half", "no complete pjlink answer|timeout"),
        ("silent", "no complete pjlink answer|timeout"),
        ("reset", "reset|closed the connection"),
    ],
)
@aio
async def test_bad_answers_give_unreachable_fast(misbehaviour: str, expect: str) -> None:
    async with projector() as server:
        server.misbehave = misbehaviour  # type: ignore[assignment]
        started = time.monotonic()
        reading = await poll(server)
        took = time.monotonic() - started
    assert not reading.reachable
    assert re.search(expect, (reading.error or "").lower()), reading.error
    # Never longer than the collector's own budget (timeout x tries), well inside the
    # poller's deadline.
    assert took < FAST["timeout_s"] * (FAST["retries"] + 1) + 0.5


@aio
async def test_refused_connection_says_enable_pjlink() -> None:
    async with projector() as server:
        address = server.address
    target = target_for(
        DeviceConfig(id="gone", profile="pjlink-projector", address="192.0.2.9"), profile(), address
    )
    reading = await PjlinkCollector().poll(target)
    assert not reading.reachable
    assert "connection refused" in (reading.error or "")
    assert "enable PJLink" in (reading.error or "")


@aio
async def test_poller_keeps_polling_through_a_misbehaving_projector() -> None:
    async with projector() as good, projector() as bad:
        bad.misbehave = "half"
        targets = [
            target_for(s.behaviour.device, s.behaviour.profile, s.address) for s in (good, bad)
        ]
        readings = await Poller(targets, lambda r: None).poll_all_once()
    assert [r.reachable for r in readings] == [True, False]


def test_answers_map_onto_a_reading() -> None:
    prof = profile()
    device = DeviceConfig(id="p", profile=prof.id, address="192.0.2.1")
    target = target_for(device, prof)
    got = ProjectorAnswers(pjlink_class=2)
    got.answers = {
        "POWR": Answer("POWR", "1"),
        "ERST": Answer("ERST", "021000"),
        "LAMP": Answer("LAMP", "1200 1 3400 0"),
        "INPT": Answer("INPT", "3a"),
        "FILT": Answer("FILT", "ERR4", "ERR4"),
        "SVER": Answer("SVER", "ERR1", "ERR1"),
    }
    reading = reading_from_answers(target, got, NOW)
    assert reading.reachable and reading.power == Power.on
    assert reading.errors is not None
    assert (reading.errors.fan, reading.errors.lamp, reading.errors.temperature) == (
        Flag.ok,
        Flag.error,
        Flag.warning,
    )
    assert reading.lamp_hours == 3400  # the most worn lamp
    assert reading.metrics["lamp2_on"] is False
    assert reading.input == "digitala"
    assert "failure (ERR4) to FILT" in (reading.error or "")
    assert reading.firmware is None  # ERR1: the model lacks it, no complaint

    got.answers = {"POWR": Answer("POWR", "7"), "ERST": Answer("ERST", "0x0000")}
    odd = reading_from_answers(target, got, NOW)
    assert odd.reachable and odd.power == Power.unknown and odd.errors is None
    assert "POWR answered '7'" in (odd.error or "") and "ERST answered" in (odd.error or "")
