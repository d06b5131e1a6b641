"""The SNMP collector against simulated devices over real UDP on loopback, and the simulation."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest

from agent.collectors import Target, UnknownProtocolError, make_collector, target_for
from agent.collectors.snmp import SnmpCollector
from agent.simulator import (
    SimulatedSite,
    read_address_map,
    start_devices,
    start_site,
    write_address_map,
)
from agent.simulator import behaviour as behaviour_module
from agent.simulator.behaviour import DeviceBehaviour
from fleet.protocol.messages import Flag, Power
from fleet.protocol.profiles import PollSettings, Profile
from fleet.protocol.site_config import DEFAULT_SITES_DIR, DeviceConfig, LoadedSite, load_site

T = TypeVar("T")
KATHMANDU = ZoneInfo("Asia/Kathmandu")
# Monday 2024-10-07, 08:00 in Kathmandu (UTC+05:45): inside the 07:00-09:00 class.
MONDAY_0800_KATHMANDU = datetime(2024, 10, 7, 8, 0, tzinfo=KATHMANDU).astimezone(UTC)


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def tribhuvan() -> LoadedSite:
    return load_site(DEFAULT_SITES_DIR / "tribhuvan.yaml")


@pytest.fixture
def no_quirks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Devices follow the timetable exactly (no panel left on, none off during class)."""
    monkeypatch.setattr(behaviour_module, "LEFT_ON_CHANCE", 0.0)
    monkeypatch.setattr(behaviour_module, "OFF_IN_CLASS_CHANCE", 0.0)


def sim_target(site: LoadedSite, simulated: SimulatedSite, device_id: str, **poll: float) -> Target:
    device = next(d for _, d in site.config.devices() if d.id == device_id)
    profile = site.profile_of(device)
    if poll:
        profile = profile.model_copy(update={"poll": PollSettings(**poll)})
    return target_for(device, profile, simulated.address_map[device_id])


def fast_failing(profile: Profile) -> Profile:
    return profile.model_copy(update={"poll": PollSettings(timeout_s=0.5, retries=1)})


# --- the collector over UDP ---------------------------------------------------------------


def test_collector_reads_what_the_simulated_devices_report(
    tribhuvan: LoadedSite, no_quirks: None
) -> None:
    clock = Clock(MONDAY_0800_KATHMANDU)

    async def scenario() -> None:
        simulated = await start_site(tribhuvan, clock=clock, seed=7)
        collector = SnmpCollector()
        try:
            projector = simulated.device("tu-sc1-projector").behaviour
            projector.faults["lamp"] = (Flag.error, clock.now + timedelta(hours=1))
            for _, device in tribhuvan.config.devices():
                reading = await collector.poll(sim_target(tribhuvan, simulated, device.id))
                model = simulated.device(device.id).behaviour
                assert reading.reachable, reading.error
                assert reading.device == device.id
                assert reading.power == Power.on
                assert reading.temperature_c == model.field_value("temperature_c")
                assert reading.temperature_c is not None and 30 < reading.temperature_c < 60
                assert reading.uptime_s == pytest.approx(model.uptime_s(clock.now), abs=0.01)
                assert reading.firmware == device_profile_firmware(tribhuvan, device)
                assert reading.input in tribhuvan.profile_of(device).simulation.inputs
                assert reading.metrics["sys_name"] == device.id
                assert reading.ts.tzinfo is not None
                assert abs(reading.ts - datetime.now(UTC)) < timedelta(seconds=10)
            reading = await collector.poll(sim_target(tribhuvan, simulated, "tu-sc1-projector"))
            assert reading.errors is not None
            assert reading.errors.lamp == Flag.error
            assert reading.errors.fan == Flag.ok
            assert reading.lamp_hours == 1200
            assert reading.filter_hours == 300
            panel = await collector.poll(sim_target(tribhuvan, simulated, "tu-sc1-panel-1"))
            assert panel.metrics["brightness_pct"] == 80
        finally:
            await collector.close()
            await simulated.close()

    run(scenario())


def device_profile_firmware(site: LoadedSite, device: DeviceConfig) -> str:
    return site.profile_of(device).simulation.firmware


def test_dead_device_is_unreachable_with_an_actionable_error(tribhuvan: LoadedSite) -> None:
    async def scenario() -> None:
        simulated = await start_site(tribhuvan)
        collector = SnmpCollector()
        try:
            target = sim_target(tribhuvan, simulated, "tu-sc1-panel-1", timeout_s=0.5, retries=1)
            assert (await collector.poll(target)).reachable
            simulated.device("tu-sc1-panel-1").alive = False
            started = time.monotonic()
            reading = await collector.poll(target)
            elapsed = time.monotonic() - started
            assert not reading.reachable
            assert reading.power == Power.unknown
            assert reading.error == (
                f"cannot reach {target.host}:{target.port} (SNMP timeout after 2 tries): "
                "check the address and the community in the site config"
            )
            # timeout * (retries + 1), plus pysnmp's timer resolution as slack
            assert elapsed < 0.5 * 2 + 1.5
            simulated.device("tu-sc1-panel-1").alive = True
            assert (await collector.poll(target)).reachable
        finally:
            await collector.close()
            await simulated.close()

    run(scenario())


def test_wrong_community_gets_no_answer(tribhuvan: LoadedSite) -> None:
    async def scenario() -> None:
        simulated = await start_site(tribhuvan)
        collector = SnmpCollector()
        try:
            right = sim_target(tribhuvan, simulated, "tu-sc1-panel-2", timeout_s=0.5, retries=0)
            wrong = Target(right.device, right.profile, right.host, right.port, "not-public")
            reading = await collector.poll(wrong)
            assert not reading.reachable
            assert reading.error is not None and "community" in reading.error
            # It arrived, then silence; then one OID alone (an agent that takes only one per
            # request is silent on more), then silence again.
            assert simulated.device("tu-sc1-panel-2").requests == 2
            assert (await collector.poll(right)).reachable  # the engine still works after it
        finally:
            await collector.close()
            await simulated.close()

    run(scenario())


class GarbageResponder(asyncio.DatagramProtocol):
    """Answers every datagram with random bytes, like a broken device or a non-SNMP service."""

    def __init__(self) -> None:
        self.random = random.Random(1)
        self.transport: asyncio.DatagramTransport | None = None
        self.requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.requests += 1
        assert self.transport is not None
        size = self.random.randint(1, 300)
        self.transport.sendto(bytes(self.random.getrandbits(8) for _ in range(size)), addr)
        # and a truncated copy of a plausible BER header, which is worse than noise
        self.transport.sendto(b"\x30\x82\xff\xff\x02\x01\x01" + data[:5], addr)


def test_garbage_answers_give_unreachable_not_an_exception(tribhuvan: LoadedSite) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        garbage = GarbageResponder()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: garbage, local_addr=("127.0.0.1", 0)
        )
        host, port = transport.get_extra_info("sockname")[:2]
        collector = SnmpCollector()
        try:
            device = tribhuvan.config.rooms[0].devices[0]
            profile = fast_failing(tribhuvan.profile_of(device))
            reading = await collector.poll(target_for(device, profile, (host, port)))
            assert not reading.reachable
            assert reading.error is not None and f"{host}:{port}" in reading.error
            assert garbage.requests >= 1
        finally:
            await collector.close()
            transport.close()

    run(scenario())


def test_missing_object_drops_only_that_field(tribhuvan: LoadedSite) -> None:
    async def scenario() -> None:
        simulated = await start_site(tribhuvan)
        collector = SnmpCollector()
        try:
            target = sim_target(tribhuvan, simulated, "tu-sc1-panel-1")
            assert target.profile.snmp is not None
            temperature = next(o for o in target.profile.snmp.objects if o.field == "temperature_c")
            simulated.device("tu-sc1-panel-1").missing.add(temperature.oid)
            reading = await collector.poll(target)
            assert reading.reachable
            assert reading.temperature_c is None
            assert reading.firmware == "3.2.1"
            assert reading.uptime_s is not None
            # SNMPv1 answers noSuchName for the whole request: the collector asks again without it
            snmp_v1 = target.profile.snmp.model_copy(update={"version": "1"})
            v1_profile = target.profile.model_copy(update={"snmp": snmp_v1})
            v1 = Target(target.device, v1_profile, target.host, target.port, target.community)
            reading = await collector.poll(v1)
            assert reading.reachable, reading.error
            assert reading.temperature_c is None
            assert reading.firmware == "3.2.1"
        finally:
            await collector.close()
            await simulated.close()

    run(scenario())


def test_device_name_reaches_sys_name_verbatim(tribhuvan: LoadedSite) -> None:
    """Untrusted text from a device is carried as is; escaping is the web layer's job."""
    hostile = "<script>alert(1)</script>"
    device = tribhuvan.config.rooms[0].devices[0].model_copy(update={"name": hostile})
    profile = tribhuvan.profile_of(device)

    async def scenario() -> None:
        simulated = await start_devices(1, profile)
        simulated.device("sim-0000").behaviour.device = device
        collector = SnmpCollector()
        try:
            address = simulated.address_map["sim-0000"]
            reading = await collector.poll(target_for(device, profile, address))
            assert reading.metrics["sys_name"] == hostile
        finally:
            await collector.close()
            await simulated.close()

    run(scenario())


def test_collectors_are_registered_by_protocol() -> None:
    assert isinstance(make_collector("snmp"), SnmpCollector)
    with pytest.raises(UnknownProtocolError, match=r"add agent/collectors/carrier_pigeon\.py"):
        make_collector("carrier_pigeon")


def test_target_defaults_to_the_config_address_port_161_and_profile_community(
    tribhuvan: LoadedSite,
) -> None:
    device = tribhuvan.config.rooms[0].devices[0]
    target = target_for(device, tribhuvan.profile_of(device))
    assert (target.host, target.port, target.community) == ("192.0.2.41", 161, "public")
    custom = device.model_copy(update={"community": "s3cret", "port": 1161})
    target = target_for(custom, tribhuvan.profile_of(device))
    assert (target.port, target.community) == (1161, "s3cret")


def test_address_map_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    write_address_map(path, {"a-1": ("127.0.0.1", 40123)}, {"b-2": ("127.0.0.1", 40124)})
    assert read_address_map(path) == {"a-1": ("127.0.0.1", 40123), "b-2": ("127.0.0.1", 40124)}
    path.write_text('{"a-1": "127.0.0.1"}')
    with pytest.raises(ValueError, match="not host:port"):
        read_address_map(path)
    with pytest.raises(ValueError, match="fleet-agent simulate"):
        read_address_map(tmp_path / "missing.json")


def test_simulated_devices_listen_on_loopback_only(tribhuvan: LoadedSite) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        run(start_site(tribhuvan, host="0.0.0.0"))


# --- the device model ---------------------------------------------------------------------


def behaviour_of(site: LoadedSite, device_id: str, clock: Clock, seed: int = 0) -> DeviceBehaviour:
    room, device = next((r, d) for r, d in site.config.devices() if d.id == device_id)
    return DeviceBehaviour(
        device,
        site.profile_of(device),
        timetable=site.config.timetable,
        tz=site.config.tz,
        room_name=room.name,
        clock=clock,
        rng=random.Random(seed),
    )


def test_kathmandu_panel_is_on_in_local_class_time_and_standby_at_local_evening(
    tribhuvan: LoadedSite, no_quirks: None
) -> None:
    clock = Clock(MONDAY_0800_KATHMANDU)  # 02:15 UTC: outside class if read as UTC
    panel = behaviour_of(tribhuvan, "tu-sc1-panel-1", clock)
    assert panel.power() == Power.on
    clock.now = datetime(2024, 10, 7, 20, 0, tzinfo=KATHMANDU).astimezone(UTC)
    assert panel.power() == Power.standby
    assert panel.field_value("input") is None  # no input while in standby


def test_projector_warms_up_and_cools_down_around_a_class(
    tribhuvan: LoadedSite, no_quirks: None
) -> None:
    clock = Clock(datetime(2024, 10, 7, 6, 58, tzinfo=KATHMANDU).astimezone(UTC))
    projector = behaviour_of(tribhuvan, "tu-sc1-projector", clock)
    assert projector.power() == Power.standby
    lamp_before = projector.lamp_hours or 0
    clock.now = datetime(2024, 10, 7, 7, 0, 30, tzinfo=KATHMANDU).astimezone(UTC)
    assert projector.power() == Power.warming
    clock.now += timedelta(minutes=2)
    assert projector.power() == Power.on
    clock.now = datetime(2024, 10, 7, 9, 0, 30, tzinfo=KATHMANDU).astimezone(UTC)
    assert projector.power() == Power.cooling
    assert projector.lamp_hours == pytest.approx(lamp_before + 2, abs=0.05)  # on 07:00-09:00
    clock.now += timedelta(minutes=2)
    assert projector.power() == Power.standby


def test_temperature_moves_towards_the_profile_figure_while_on(
    tribhuvan: LoadedSite, no_quirks: None
) -> None:
    clock = Clock(datetime(2024, 10, 7, 6, 0, tzinfo=KATHMANDU).astimezone(UTC))
    panel = behaviour_of(tribhuvan, "tu-sc1-panel-1", clock)
    hints = panel.profile.simulation
    assert abs(panel.temperature_c - hints.temperature_standby_c) < 3
    clock.now = datetime(2024, 10, 7, 8, 30, tzinfo=KATHMANDU).astimezone(UTC)
    panel.advance()
    assert abs(panel.temperature_c - hints.temperature_on_c) < 3


def test_value_for_inverts_the_profile_mapping(tribhuvan: LoadedSite, no_quirks: None) -> None:
    clock = Clock(MONDAY_0800_KATHMANDU)
    panel = behaviour_of(tribhuvan, "tu-sc1-panel-1", clock)
    assert panel.profile.snmp is not None
    by_field = {o.field: o for o in panel.profile.snmp.objects}
    assert panel.value_for(by_field["power"]) == 1  # map {1: "on"}
    assert panel.value_for(by_field["errors.fan"]) == 0  # map {0: ok}
    temperature = panel.field_value("temperature_c")
    assert isinstance(temperature, float)
    assert panel.value_for(by_field["temperature_c"]) == round(temperature * 10)  # scale 0.1
    assert panel.value_for(by_field["uptime_s"]) == round(panel.uptime_s() * 100)  # timeticks
    assert panel.value_for(by_field["firmware"]) == "3.2.1"


def test_same_seed_same_device_history(tribhuvan: LoadedSite) -> None:
    def history(seed: int) -> list[tuple[str, float | str | None]]:
        clock = Clock(MONDAY_0800_KATHMANDU)
        panel = behaviour_of(tribhuvan, "tu-sc1-panel-1", clock, seed=seed)
        out = []
        for _ in range(48):
            clock.now += timedelta(minutes=30)
            out.append((panel.power().value, panel.field_value("temperature_c")))
        return out

    assert history(3) == history(3)
    assert history(3) != history(4)


def test_a_host_name_that_does_not_resolve_is_unreachable(tribhuvan: LoadedSite) -> None:
    device = tribhuvan.config.rooms[0].devices[0]
    profile = fast_failing(tribhuvan.profile_of(device))

    async def no_such_host(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def scenario() -> None:
        # The resolver is faked: a real lookup would send a DNS query off this machine.
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = no_such_host  # type: ignore[method-assign, assignment]
        collector = SnmpCollector()
        try:
            target = target_for(device, profile, ("panel.invalid", 161))
            reading = await collector.poll(target)
            assert not reading.reachable
            assert reading.error == (
                "cannot reach panel.invalid:161 (the host name does not resolve): "
                "check the address and the community in the site config"
            )
        finally:
            await collector.close()

    run(scenario())
