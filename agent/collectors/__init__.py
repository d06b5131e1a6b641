"""Collectors: one small interface per protocol, a device and its profile in, a Reading out.

Each protocol is one module that registers its collector class under the profile's
`protocol` name (Telegraf-style), so the agent loop knows nothing of SNMP or PJLink. A poll
never raises for device trouble: an unreachable or misbehaving device gives a Reading with
`reachable=False` and an `error` a technician can act on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol, TypeVar

from agent.collectors.cleaning import make_reading
from agent.secrets import Secrets
from fleet.protocol.messages import Reading, utcnow
from fleet.protocol.profiles import SIMULATION_ONLY, Profile
from fleet.protocol.secret_refs import is_reference
from fleet.protocol.site_config import DeviceConfig
from fleet.protocol.snmpv3 import SnmpV3Settings

# reachability's 0: ICMP echo, no port (a profile may name a TCP port instead).
DEFAULT_PORTS = {
    "snmp": 161,
    "simulated": 161,
    "pjlink": 4352,
    "maxhub-lan": 4664,
    "reachability": 0,
}


TCP_PROTOCOLS = {"pjlink", "maxhub-lan", "reachability"}


@dataclass(frozen=True)
class Step:
    """One collector of a device's chain and where it reads the device."""

    collector: str
    host: str
    port: int


@dataclass(frozen=True)
class Target:
    """Where and how to poll one device: the config's address, or a simulator's stand-in."""

    device: DeviceConfig
    profile: Profile
    host: str
    port: int
    # Resolved secrets (agent/secrets.py): repr=False keeps them out of logs and errors.
    community: str = field(repr=False)
    # SNMPv3 (when the device or its profile uses version 3): settings with resolved keys.
    snmp_v3: SnmpV3Settings | None = field(default=None, repr=False)
    # The profile's collector chain as it applies here (agent/collectors/chain.py); None:
    # the profile's protocol alone, at host:port; empty: none of its collectors runs here.
    steps: tuple[Step, ...] | None = None

    @property
    def where(self) -> str:
        """The device's address as errors show it: `host:port`, or the host alone for ICMP."""
        if self.port == 0:
            return self.host  # ICMP: no port
        return f"{self.host}:{self.port}"

    def at(self, step: Step) -> Target:
        """This target as one collector of its chain reads it."""
        return replace(self, host=step.host, port=step.port, steps=None)


def steps_for(
    device: DeviceConfig,
    profile: Profile,
    address: tuple[str, int] | None = None,
    enabled: frozenset[str] = frozenset(),
) -> tuple[Step, ...]:
    """The collectors that read `device`, in its profile's order, and where each reads it.

    A `where_enabled` step runs only if the site enabled it (`enabled`). A simulation-only
    step (`simulated`) runs only against a simulated device, that is with an `address`
    from the address map. With an address map, only the primary collector and
    reachability (a TCP connect to the mapped port) are used: the config's addresses are
    documentation addresses, never sent to."""
    steps = []
    for index, step in enumerate(profile.chain()):
        name = step.collector
        if step.where_enabled and name not in enabled:
            continue
        if name in SIMULATION_ONLY and address is None:
            continue
        if address is not None:
            host, port = address
            # A TCP connect says something of a simulated device only on its TCP port.
            tcp_primary = profile.protocol in TCP_PROTOCOLS
            if name != profile.protocol and not (name == "reachability" and tcp_primary):
                continue
            steps.append(Step(name, host, port))
            continue
        if name == "reachability":
            port = profile.reachability.tcp_port or 0
        elif index == 0 or name == profile.protocol:
            port = device.port or DEFAULT_PORTS[name]
        else:
            port = DEFAULT_PORTS[name]
        steps.append(Step(name, device.address, port))
    return tuple(steps)


def target_for(
    device: DeviceConfig,
    profile: Profile,
    address: tuple[str, int] | None = None,
    enabled: frozenset[str] = frozenset(),
) -> Target:
    """The Target for a device; `address` overrides the config's (simulated devices);
    `enabled`: the `where_enabled` collectors the site turned on."""
    if address is not None:
        host, port = address
    else:
        host = device.address
        port = device.port or DEFAULT_PORTS.get(profile.protocol, 0)
    secrets = default_secrets()
    community = secrets.resolve(
        device.community or (profile.snmp.community if profile.snmp else ""),
        f"the SNMP community of device {device.id}",
    )
    if is_reference(device.password):
        password = secrets.resolve(device.password, f"the PJLink password of device {device.id}")
        device = device.model_copy(update={"password": password})
    v3 = device.snmp_v3 or (profile.snmp.v3 if profile.snmp else None)
    profile_v3 = profile.snmp is not None and profile.snmp.version == "3"
    uses_v3 = device.snmp_v3 is not None or profile_v3
    if v3 is not None and uses_v3:
        v3 = v3.model_copy(
            update={
                key: secrets.resolve(getattr(v3, key), f"the SNMPv3 {key} of device {device.id}")
                for key in ("auth_key", "priv_key")
            }
        )
    return Target(
        device=device,
        profile=profile,
        host=host,
        port=port,
        community=community or "",
        snmp_v3=v3 if uses_v3 else None,
        steps=steps_for(device, profile, address, enabled),
    )


_SECRETS: list[Secrets] = []


def default_secrets() -> Secrets:
    """The agent's secrets (environment, then FLEET_AGENT_SECRETS_FILE), read once."""
    if not _SECRETS:
        _SECRETS.append(Secrets.from_environment())
    return _SECRETS[0]


class Collector(Protocol):
    """What a protocol module implements to read devices; one instance serves every device of that
    protocol."""

    async def poll(self, target: Target) -> Reading:
        """One Reading of `target`; device trouble gives `reachable=False` and an `error`, not an
        exception."""
        ...

    async def close(self) -> None:
        """Release what the collector holds (sockets, the SNMP engine) when the agent stops."""
        ...


class UnknownProtocolError(LookupError):
    """No collector is registered for a profile's `protocol`, and no module
    agent/collectors/<protocol>.py provides one."""


_C = TypeVar("_C")
_REGISTRY: dict[str, Callable[[], Collector]] = {}


def register(protocol: str) -> Callable[[type[_C]], type[_C]]:
    """Class decorator: the collector for profiles whose `protocol` is this name."""

    def decorate(cls: type[_C]) -> type[_C]:
        _REGISTRY[protocol] = cls  # type: ignore[assignment]
        return cls

    return decorate


def make_collector(protocol: str) -> Collector:
    """A new collector for `protocol`. Keep one per agent per protocol: it owns shared state
    (the SNMP engine and its socket), which is what makes polling hundreds of devices cheap."""
    if protocol not in _REGISTRY:
        # A protocol's module registers itself on import: agent/collectors/<protocol>.py.
        try:
            importlib.import_module(f"{__name__}.{protocol}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{protocol}":
                raise
    factory = _REGISTRY.get(protocol)
    if factory is None:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownProtocolError(
            f"no collector for protocol {protocol!r} (collectors: {known}). Fix: use a profile "
            f"whose protocol has a collector, or add agent/collectors/{protocol}.py"
        )
    return factory()


class Collectors:
    """One collector per protocol, made on first use, closed together."""

    def __init__(self) -> None:
        """Start with no collectors; each is made when a protocol is first asked for."""
        self._by_protocol: dict[str, Collector] = {}

    def for_protocol(self, protocol: str) -> Collector:
        """The collector of `protocol`, made on first use; raises UnknownProtocolError when there is
        none."""
        collector = self._by_protocol.get(protocol)
        if collector is None:
            collector = self._by_protocol[protocol] = make_collector(protocol)
        return collector

    async def poll(self, target: Target) -> Reading:
        """One Reading of `target` by its profile's `protocol` alone (not the profile's chain)."""
        return await self.for_protocol(target.profile.protocol).poll(target)

    async def close(self) -> None:
        """Close every collector made so far; the next use makes new ones."""
        collectors, self._by_protocol = list(self._by_protocol.values()), {}
        for collector in collectors:
            await collector.close()


def unreachable(
    target: Target, problem: str, ts: datetime | None = None, fix: str | None = None
) -> Reading:
    """The Reading of a device that could not be read, saying what happened and what to do."""
    fix = fix or "check the address and the community in the site config"
    text = f"cannot reach {target.where} ({problem}): {fix}"
    return make_reading(target.device.id, ts or utcnow(), False, error=text)
