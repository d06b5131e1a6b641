"""The reachability collector on loopback: ICMP echo (unprivileged socket, or raw as root)
and TCP connect; a reachability-only panel that serves its port while on; and what the
controller makes of no answer outside class and during class."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.collectors import reachability as reach_module
from agent.collectors import target_for
from agent.collectors.reachability import ICMP_FIX, ReachabilityCollector
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.maxhub_server import ReachableHost
from fleet.devices.state import DeviceState, derive_state
from fleet.embedded_broker import free_port
from fleet.protocol.messages import Power, Reading
from fleet.protocol.profiles import Profile, load_profile
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from fleet.protocol.timetable import Timetable

PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")
BEFORE_CLASS = datetime(2025, 3, 3, 7, 0, tzinfo=UTC)
IN_CLASS = datetime(2025, 3, 3, 8, 30, tzinfo=UTC)
TIMETABLE = Timetable.model_validate({"weekly": {"mon": ["08:00-10:00"]}})


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 20))

    return run


def profile(tcp_port: int | None = None) -> Profile:
    data = load_profile(DEFAULT_PROFILES_DIR / "maxhub-panel-unmanaged.yaml").model_dump()
    data["poll"].update({"timeout_s": 0.5, "retries": 0})
    data["reachability"] = {"tcp_port": tcp_port, "count": 2}
    data["simulation"].update({"off_in_class_share": 0.0, "left_on_share": 0.0})
    return Profile.model_validate(data)


def device() -> DeviceConfig:
    return DeviceConfig(id="room-panel", profile="maxhub-panel-unmanaged", address="127.0.0.1")


async def poll(prof: Profile, address: tuple[str, int] | None = None) -> Reading:
    collector = ReachabilityCollector()
    target = target_for(device(), prof, address)
    if address is None:
        target = target.at(target.steps[-1])
    return await collector.poll(target)


@aio
async def test_icmp_echo_to_loopback_is_reachable() -> None:
    # Unprivileged ICMP where ping_group_range allows it, else the raw socket (root in CI).
    reading = await poll(profile())
    assert reading.reachable, reading
    assert reading.power == Power.unknown  # reachability says nothing of power
    assert reading.metrics["rtt_ms"] >= 0
    # This host's kernel (ping_group_range "1 0" by default) allows no unprivileged ICMP
    # to root's group: the raw socket it is, as root.
    allowed = PING_GROUP_RANGE.read_text().split()  # noqa: ASYNC240 (procfs: instant)
    unprivileged = int(allowed[0]) <= os.getgid() <= int(allowed[1])
    assert reading.metrics["icmp_socket"] == ("unprivileged" if unprivileged else "raw")


def test_unprivileged_icmp_is_used_where_the_kernel_allows_it() -> None:
    """In a network namespace of its own whose ping_group_range admits our group, the
    datagram socket is taken first (no raw socket, no CAP_NET_RAW needed)."""
    script = (
        "import asyncio; from agent.collectors.reachability import icmp_echo; "
        "print(asyncio.run(icmp_echo('127.0.0.1', 2, 1.0))[1])"
    )
    shell = (
        "ip link set lo up && sysctl -q -w net.ipv4.ping_group_range='0 2147483647' && "
        f'{sys.executable} -c "{script}"'
    )
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unprivileged"


@aio
async def test_icmp_refused_by_the_kernel_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cannot be had here as root: the kernel refusing both ICMP sockets to the agent.
    from icmplib.exceptions import SocketPermissionError

    async def refused(*_args: Any, privileged: bool, **_kwargs: Any) -> Any:
        raise SocketPermissionError(privileged)

    monkeypatch.setattr("icmplib.async_ping", refused)
    reading = await poll(profile())
    assert not reading.reachable
    assert "ICMP echo not permitted" in (reading.error or "")
    assert ICMP_FIX in (reading.error or "")


@aio
async def test_tcp_connect_to_a_listening_port_is_reachable() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reading = await poll(profile(tcp_port=port))
    finally:
        server.close()
    assert reading.reachable and reading.metrics["rtt_ms"] >= 0, reading


@aio
async def test_tcp_connect_refused_is_unreachable_with_the_reason() -> None:
    # A port nothing listens on: free a moment ago, and from this worker's own part of the
    # range (free_port), where no other worker's server binds meanwhile.
    port = free_port()
    reading = await poll(profile(tcp_port=port))
    assert not reading.reachable
    assert f"TCP connect to port {port} refused" in (reading.error or "")


@aio
async def test_tcp_connect_with_no_answer_times_out_per_try() -> None:
    # A listener whose backlog is full answers no further SYN: a silent device.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = sock.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            reading = await poll(profile(tcp_port=port))
        finally:
            for filler in fillers:
                filler.close()
    assert not reading.reachable
    assert f"no TCP answer on port {port}" in (reading.error or ""), reading


@aio
async def test_reachability_only_panel_follows_its_power() -> None:
    prof = profile()
    now = [BEFORE_CLASS]
    behaviour = DeviceBehaviour(
        device(),
        prof,
        timetable=TIMETABLE,
        tz=ZoneInfo("UTC"),
        room_name="Room 1",
        clock=lambda: now[0],
        rng=random.Random(3),
    )
    host = await ReachableHost(behaviour, boot_s=30).start()
    try:
        off = await poll(prof, host.address)
        now[0] = IN_CLASS  # switched on: its network is up once it has booted, 30 s on
        await host.sync()
        booting = await poll(prof, host.address)
        now[0] = IN_CLASS + timedelta(seconds=31)
        await host.sync()
        on = await poll(prof, host.address)
        host.alive = False  # unplugged during class
        await host.sync()
        unplugged = await poll(prof, host.address)
    finally:
        host.close()
    assert not off.reachable and not booting.reachable
    assert on.reachable and not unplugged.reachable
    # The controller's view: off outside class is expected; the same during class is not.
    assert off.collectors is None  # one collector alone: the chain adds this
    chained = off.model_copy(update={"collectors": {"reachability": False}})
    state, reason = derive_state(chained, in_class=False)
    assert state == DeviceState.standby and "switched off (expected)" in reason
    state, reason = derive_state(chained, in_class=True)
    assert state == DeviceState.unreachable and "cannot reach" in reason


def test_unreachable_without_reachability_stays_unreachable_outside_class() -> None:
    """An SNMP device (or an agent from before chains) with no answer is unreachable at any
    hour: a wrong community is not a panel switched off."""
    base = Reading(device="d-1", ts=IN_CLASS, reachable=False, error="SNMP timeout")
    for reading in (base, base.model_copy(update={"collectors": {"snmp": False}})):
        state, _ = derive_state(reading, in_class=False)
        assert state == DeviceState.unreachable


def test_module_names_its_fix() -> None:
    assert "ping_group_range" in reach_module.ICMP_FIX
