"""Simulated classroom devices on loopback, for `fleet-agent simulate`, tests and benchmarks.

`start_site` brings up one SNMP responder per SNMP device of a site config, each on its own
loopback UDP port, and one PJLink server per PJLink projector on a loopback TCP port; the agent
polls them through the address map (`write_address_map`), never through the config's
documentation addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from agent.simulator.address_map import Address, read_address_map, write_address_map
from agent.simulator.behaviour import TRANSITION_S, Clock, DeviceBehaviour
from agent.simulator.maxhub_server import MaxhubPanelServer, MaxhubQuirks, ReachableHost
from agent.simulator.pjlink_server import PjlinkQuirks, ProjectorServer
from agent.simulator.snmp_responder import DeviceResponder, ObjectTable, serve_device
from agent.simulator.switched_port import SwitchedPort
from fleet.protocol.messages import utcnow
from fleet.protocol.profiles import Profile
from fleet.protocol.site_config import DeviceConfig, LoadedSite
from fleet.protocol.timetable import Timetable

__all__ = [
    "DeviceBehaviour",
    "DeviceResponder",
    "MaxhubPanelServer",
    "MaxhubQuirks",
    "PjlinkQuirks",
    "ProjectorServer",
    "ReachableHost",
    "SimulatedSite",
    "read_address_map",
    "start_devices",
    "start_site",
    "write_address_map",
]


@dataclass
class SimulatedSite:
    """Running simulated devices; `device(id).alive = False` makes one stop answering."""

    responders: dict[str, DeviceResponder] = field(default_factory=dict)
    projectors: dict[str, ProjectorServer] = field(default_factory=dict)  # PJLink
    # Panels on a TCP port: MAXHUB LAN control, and reachability-only ones.
    panels: dict[str, SwitchedPort] = field(default_factory=dict)

    @property
    def address_map(self) -> dict[str, Address]:
        """Where each simulated device listens, by device id: what `write_address_map` writes for
        the agent."""
        addresses = {device_id: r.address for device_id, r in self.responders.items()}
        addresses |= {device_id: p.address for device_id, p in self.panels.items()}
        return addresses | {device_id: p.address for device_id, p in self.projectors.items()}

    def panel(self, device_id: str) -> SwitchedPort:
        """The running MAXHUB LAN or reachability-only panel `device_id`; KeyError if there is
        none."""
        try:
            return self.panels[device_id]
        except KeyError:
            raise KeyError(f"no simulated LAN or reachability-only panel {device_id!r}") from None

    def projector(self, device_id: str) -> ProjectorServer:
        """The running PJLink projector `device_id`; KeyError if there is none."""
        try:
            return self.projectors[device_id]
        except KeyError:
            raise KeyError(f"no simulated PJLink projector {device_id!r}") from None

    def device(self, device_id: str) -> DeviceResponder:
        """The SNMP responder of `device_id`; KeyError if there is none."""
        try:
            return self.responders[device_id]
        except KeyError:
            raise KeyError(f"no simulated device {device_id!r}") from None

    async def close(self) -> None:
        """Stop every simulated device and close its socket."""
        for responder in self.responders.values():
            responder.close()
        for projector in self.projectors.values():
            projector.close()
        for panel in self.panels.values():
            panel.close()
        await asyncio.sleep(0)  # let the transports finish closing their sockets

    async def __aenter__(self) -> SimulatedSite:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _loopback(host: str) -> str:
    # Simulated devices are for this machine only: never listen on a real network.
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"simulated devices listen on loopback only, not {host!r}. Fix: use 127.0.0.1")


def _allow_sockets(count: int) -> None:
    """Raise the open-files soft limit (often 1024) so that `count` sockets fit, if allowed."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 256  # the process's other files and sockets
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    # If refused, binding fails with "Too many open files", which says what to raise.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def _start(
    simulated: SimulatedSite,
    behaviours: list[DeviceBehaviour],
    community_of: dict[str, str],
    host: str,
    base_port: int | None,
) -> SimulatedSite:
    tables: dict[str, ObjectTable] = {}
    _allow_sockets(len(behaviours))
    try:
        for index, behaviour in enumerate(behaviours):
            profile = behaviour.profile
            table = tables.get(profile.id)
            if table is None:
                table = tables[profile.id] = ObjectTable.for_profile(profile)
            responder = DeviceResponder(behaviour, table, community_of[behaviour.device.id])
            port = 0 if base_port is None else base_port + index
            await serve_device(responder, host, port)
            simulated.responders[behaviour.device.id] = responder
    except BaseException:
        await simulated.close()
        raise
    return simulated


async def start_site(
    site: LoadedSite,
    host: str = "127.0.0.1",
    *,
    clock: Clock | None = None,
    seed: int = 0,
    transition_s: float = TRANSITION_S,
    base_port: int | None = None,
    pjlink_quirks: PjlinkQuirks | None = None,
    maxhub_quirks: MaxhubQuirks | None = None,
) -> SimulatedSite:
    """Responders for every SNMP device of `site`, PJLink servers for its PJLink projectors
    (MQTT-native devices publish by themselves: not simulated here). `pjlink_quirks`, if
    given, applies to every projector; by default about a third reply in lowercase. MAXHUB
    panels speak their LAN protocol (`maxhub_quirks`, by default split replies and 3 s busy
    after power-on); reachability-only panels serve a TCP port while on. Projectors warm up
    and cool down for `transition_s` seconds around each power change."""
    host = _loopback(host)
    clock = clock or utcnow
    config = site.config
    behaviours: list[DeviceBehaviour] = []
    projectors: list[ProjectorServer] = []
    panels: list[SwitchedPort] = []
    community_of: dict[str, str] = {}
    for room, device in config.devices():
        profile = site.profile_of(device)
        if profile.protocol in ("maxhub-lan", "reachability"):
            behaviour = DeviceBehaviour(
                device,
                profile,
                timetable=config.timetable,
                tz=config.tz,
                room_name=room.name,
                clock=clock,
                transition_s=transition_s,
                rng=random.Random(f"{seed}:{config.code}:{device.id}"),
            )
            if profile.protocol == "maxhub-lan":
                lan = maxhub_quirks or MaxhubQuirks(busy_after_power_on_s=3.0)
                panels.append(MaxhubPanelServer(behaviour, lan))
            else:
                # Its network is up 20 s after it is switched on (the panel's OS boots).
                panels.append(ReachableHost(behaviour, boot_s=20.0))
            continue
        if profile.protocol == "pjlink":
            behaviour = DeviceBehaviour(
                device,
                profile,
                timetable=config.timetable,
                tz=config.tz,
                room_name=room.name,
                clock=clock,
                transition_s=transition_s,
                rng=random.Random(f"{seed}:{config.code}:{device.id}"),
            )
            quirk_rng = random.Random(f"{seed}:{config.code}:{device.id}:pjlink")
            quirks = pjlink_quirks or PjlinkQuirks(lowercase=quirk_rng.random() < 1 / 3)
            projectors.append(ProjectorServer(behaviour, device.password, quirks, quirk_rng))
            continue
        if profile.protocol not in ("snmp", "simulated") or profile.snmp is None:
            continue
        behaviours.append(
            DeviceBehaviour(
                device,
                profile,
                timetable=config.timetable,
                tz=config.tz,
                room_name=room.name,
                clock=clock,
                transition_s=transition_s,
                # Seeded per device, so one device's behaviour does not depend on the others.
                rng=random.Random(f"{seed}:{config.code}:{device.id}"),
            )
        )
        community_of[device.id] = device.community or profile.snmp.community
    simulated = await _start(SimulatedSite(), behaviours, community_of, host, base_port)
    try:
        for index, projector in enumerate(projectors, start=len(behaviours)):
            port = 0 if base_port is None else base_port + index
            await projector.start(host, port)
            simulated.projectors[projector.device_id] = projector
        for index, panel in enumerate(panels, start=len(behaviours) + len(projectors)):
            port = 0 if base_port is None else base_port + index
            await panel.start(host, port)
            simulated.panels[panel.device_id] = panel
    except BaseException:
        await simulated.close()
        raise
    return simulated


async def start_devices(
    count: int,
    profile: Profile,
    host: str = "127.0.0.1",
    *,
    clock: Clock | None = None,
    seed: int = 0,
    timetable: Timetable | None = None,
    tz: ZoneInfo | None = None,
    base_port: int | None = None,
) -> SimulatedSite:
    """`count` devices of one profile (ids `sim-0000`, ...), for benchmarks and load tests."""
    if profile.snmp is None:
        raise ValueError(f"profile {profile.id!r} is not an SNMP profile. Fix: pick one that is")
    host = _loopback(host)
    clock = clock or utcnow
    behaviours = []
    community_of = {}
    for index in range(count):
        device = DeviceConfig(id=f"sim-{index:04d}", profile=profile.id, address=host)
        behaviours.append(
            DeviceBehaviour(
                device,
                profile,
                timetable=timetable or Timetable(),
                tz=tz or ZoneInfo("UTC"),
                room_name=f"Simulated room {index // 4 + 1}",
                clock=clock,
                rng=random.Random(f"{seed}:{device.id}"),
            )
        )
        community_of[device.id] = profile.snmp.community
    return await _start(SimulatedSite(), behaviours, community_of, host, base_port)
