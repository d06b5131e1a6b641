"""`fleet-agent discover`: what answers on a classroom network, and which profile fits it.

Probes SNMP (sysDescr, sysObjectID, sysName), PJLink (CLSS, INF1, INF2, NAME) and MAXHUB's LAN
control (its power and video source queries, TCP 4664) on exactly
the addresses and ports the technician listed, with bounded concurrency, matches each answer
to a firmware profile's `match` rules; agent.discovery_report drafts a site config `devices:`
section to review from what answered (and, with --publish, the event for the controller).
Nothing else is probed: the probe list is built from the targets alone, and large ranges are
refused unless forced, so a typo cannot sweep a campus network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from agent.collectors import DEFAULT_PORTS
from agent.collectors.pjlink import PjlinkAuthError, PjlinkError, pjlink_session
from fleet.protocol.profiles import Profile
from fleet.protocol.site_config import LoadedSite

Protocol = Literal["snmp", "pjlink", "maxhub-lan"]
PROTOCOLS: tuple[Protocol, ...] = ("snmp", "pjlink", "maxhub-lan")
MAX_ADDRESSES = 1024  # a /22: a building's classroom network, not a campus
# Each wrong PJLink password is a failed login on the projector: some lock out after a few.
MAX_PASSWORDS = 3
SYS_DESCR = "1.3.6.1.2.1.1.1.0"
SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
PJLINK_FACTS = (
    ("CLSS", "pjlink_class"),
    ("INF1", "pjlink_inf1"),
    ("INF2", "pjlink_inf2"),
    ("NAME", "name"),
)


class DiscoveryError(ValueError):
    """Bad targets or ports; the message says what to type instead."""


@dataclass(frozen=True)
class Probe:
    """One address, protocol and port to ask; discovery sends to nothing else."""

    host: str
    protocol: Protocol
    port: int


@dataclass
class Finding:
    """A device that answered one probe, what it said, and the profile that fits it."""

    probe: Probe
    facts: dict[str, str] = field(default_factory=dict)
    profile: str | None = None
    note: str = ""


def parse_targets(specs: Iterable[str], *, force: bool = False) -> list[str]:
    """Addresses from `192.0.2.10`, `192.0.2.0/28` or comma-separated lists of them."""
    hosts: list[str] = []
    for spec in (part.strip() for text in specs for part in text.split(",")):
        if not spec:
            continue
        try:
            network = ipaddress.ip_network(spec, strict=False)
        except ValueError:
            raise DiscoveryError(
                f"{spec!r} is not an IP address or CIDR range. Fix: write e.g. 192.0.2.10 or "
                "192.0.2.0/24 (host names are not probed)"
            ) from None
        if network.num_addresses > MAX_ADDRESSES and not force:
            raise DiscoveryError(
                f"{spec} holds {network.num_addresses} addresses, more than {MAX_ADDRESSES} (a "
                "/22). Fix: probe the classroom subnet only, or pass --force if you mean it"
            )
        addresses = network.hosts() if network.num_addresses > 2 else iter(network)
        hosts.extend(str(a) for a in addresses)
    unique = list(dict.fromkeys(hosts))
    if len(unique) > MAX_ADDRESSES and not force:
        raise DiscoveryError(
            f"the targets hold {len(unique)} addresses, more than {MAX_ADDRESSES}. Fix: fewer "
            "targets, or --force"
        )
    if not unique:
        raise DiscoveryError("no targets. Fix: pass --targets 192.0.2.0/24 (or addresses)")
    return unique


def parse_ports(specs: Iterable[str]) -> dict[Protocol, list[int]]:
    """`snmp=161,40001-40003 pjlink=4352` (spaces or separate --ports); default the standard."""
    ports: dict[Protocol, list[int]] = {}
    for spec in (part for text in specs for part in re.split(r"[\s;]+", text) if part):
        protocol, sep, numbers = spec.partition("=")
        if not sep or protocol not in PROTOCOLS:
            raise DiscoveryError(
                f"{spec!r} is not protocol=ports. Fix: write e.g. snmp=161, "
                "pjlink=4352,40003-40005 or maxhub-lan=4664"
            )
        found = ports.setdefault(cast(Protocol, protocol), [])
        for item in numbers.split(","):
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise DiscoveryError(
                    f"{item!r} in {spec!r} is not a port or a range like 40001-40005"
                )
            first, last = int(low), int(high or low)
            if not 0 < first <= last < 65536 or last - first > 1000:
                raise DiscoveryError(
                    f"{item!r} in {spec!r}: ports are 1-65535, ranges at most 1000"
                )
            found.extend(range(first, last + 1))
    if not ports:
        return {p: [DEFAULT_PORTS[p]] for p in PROTOCOLS}
    return {p: list(dict.fromkeys(v)) for p, v in ports.items()}


def plan_probes(hosts: list[str], ports: dict[Protocol, list[int]]) -> list[Probe]:
    """Every probe to make: each host with each port listed for each protocol."""
    return [Probe(h, proto, port) for h in hosts for proto, nums in ports.items() for port in nums]


# --- probing ------------------------------------------------------------------------------


async def probe_pjlink(probe: Probe, passwords: list[str | None], timeout: float) -> Finding | None:
    """CLSS, INF1, INF2 and NAME; tries the site's passwords in turn if it asks for one."""
    tried_auth = False
    for password in passwords:
        facts: dict[str, str] = {}
        try:
            async with pjlink_session(probe.host, probe.port, password, timeout) as session:
                facts["pjlink_auth"] = "yes" if session.auth_required else "no"
                for command, key in PJLINK_FACTS:
                    answer = await session.query(command)
                    if answer.ok:
                        facts[key] = answer.value.strip()
                return Finding(probe, facts)
        except PjlinkAuthError:
            tried_auth = True
            continue  # the next password, if any
        except (PjlinkError, OSError, TimeoutError) as exc:
            if not facts:
                return None  # not PJLink, or nothing there
            # It greeted in PJLink, then stalled or broke: still a projector to list.
            return Finding(probe, facts, note=f"answered partly ({type(exc).__name__})")
    if tried_auth:
        return Finding(
            probe,
            {"pjlink_auth": "yes"},
            note="PJLink asks for a password that the site config does not have: add password:",
        )
    return None


async def probe_maxhub(probe: Probe, timeout: float) -> Finding | None:
    """MAXHUB LAN control: the power and video source queries (agent/collectors/maxhub_lan.py).
    A reply frame or the table's failure ack is MAXHUB's; anything else is not."""
    from agent.collectors.maxhub_lan import ACK_FAIL, POWER, VIDEO_SOURCE, parse_reply, query_frame

    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(probe.host, probe.port), timeout
    )
    facts: dict[str, str] = {}
    try:
        for command, key in ((POWER, "maxhub_power"), (VIDEO_SOURCE, "maxhub_input")):
            writer.write(query_frame(command))
            await writer.drain()
            data = b""
            try:
                while b"\r" not in data and len(data) < 64:
                    chunk = await asyncio.wait_for(reader.read(64), timeout)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError:
                break
            digits = parse_reply(data, command)
            if digits is not None:
                facts[key] = digits
            elif ACK_FAIL in data:
                facts.setdefault("maxhub_lan", "answers, not this query")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Finding(probe, facts) if facts else None


class SnmpProber:
    """One SNMP engine for every probe, as the collector does."""

    def __init__(self, communities: list[str], timeout: float) -> None:
        """Try `communities` in turn (SNMPv2c), each with one try of `timeout` seconds."""
        self.communities = communities
        self.timeout = timeout
        self._engine: Any = None

    async def probe(self, probe: Probe) -> Finding | None:
        """sysDescr, sysObjectID and sysName of the probe's host, read with the first community it
        answers; None if it answers none."""
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            SnmpEngine,
            UdpTransportTarget,
            get_cmd,
        )

        if self._engine is None:
            self._engine = SnmpEngine()
        transport = await UdpTransportTarget.create(
            (probe.host, probe.port), timeout=self.timeout, retries=0
        )
        for community in self.communities:
            error_indication, _status, _index, answers = await get_cmd(
                self._engine,
                CommunityData(community, mpModel=1),  # noqa: S508  (v2c: what the site's devices speak)
                transport,
                ContextData(),
                *(ObjectType(ObjectIdentity(oid)) for oid in (SYS_DESCR, SYS_OBJECT_ID, SYS_NAME)),
                lookupMib=False,
            )
            if error_indication:
                continue  # a wrong community gets no answer at all: try the next
            facts = {"snmp_community": community}
            for key, (_, value) in zip(
                ("sys_descr", "sys_object_id", "name"), answers, strict=False
            ):
                text = _snmp_text(value)
                if text:
                    facts[key] = text
            return Finding(probe, facts)
        return None

    def close(self) -> None:
        """Close the SNMP engine, if a probe made one."""
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None


def _snmp_text(value: Any) -> str:
    from pysnmp.proto.rfc1902 import OctetString
    from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

    if isinstance(value, NoSuchObject | NoSuchInstance | EndOfMibView):
        return ""
    if isinstance(value, OctetString):
        return str(value.asOctets().decode("utf-8", "replace")).strip()
    return str(value.prettyPrint()).strip()


async def discover(
    probes: list[Probe],
    profiles: dict[str, Profile],
    *,
    communities: list[str],
    passwords: list[str | None],
    concurrency: int = 32,
    timeout: float = 1.0,
    on_done: Callable[[Probe], None] = lambda probe: None,
) -> list[Finding]:
    """Run every probe (at most `concurrency` at once); what answered, each with a profile."""
    semaphore = asyncio.Semaphore(concurrency)
    snmp = SnmpProber(communities, timeout)

    async def run(probe: Probe) -> Finding | None:
        async with semaphore:
            try:
                if probe.protocol == "maxhub-lan":
                    return await asyncio.wait_for(probe_maxhub(probe, timeout), timeout * 4)
                if probe.protocol == "snmp":
                    # Bounded here too: pysnmp's own timer is per try, not per probe.
                    budget = timeout * len(communities) + 1
                    return await asyncio.wait_for(snmp.probe(probe), budget)
                return await asyncio.wait_for(
                    probe_pjlink(probe, passwords, timeout), timeout * (len(passwords) + 2)
                )
            except Exception:  # one odd host must not stop the sweep
                return None
            finally:
                on_done(probe)

    try:
        results = await asyncio.gather(*(run(p) for p in probes))
    finally:
        snmp.close()
    findings = [f for f in results if f is not None]
    for finding in findings:
        finding.profile = match_profile(finding, profiles)
    return findings


def match_profile(finding: Finding, profiles: dict[str, Profile]) -> str | None:
    """The profile whose `match` rules all hold, the one with most rules winning; a profile
    with an empty `match` is the fallback for its protocol."""
    best: tuple[int, str] | None = None
    for profile in profiles.values():
        # A `simulated` profile's illustrative objects answer over SNMP (simulated devices).
        wire = "snmp" if profile.protocol == "simulated" else profile.protocol
        if wire != finding.probe.protocol or profile.match is None:
            continue
        rules = profile.match.rules()
        if all(
            key in finding.facts and re.search(pattern, finding.facts[key], re.IGNORECASE)
            for key, pattern in rules.items()
        ):
            candidate = (len(rules), profile.id)
            if best is None or candidate[0] > best[0]:
                best = candidate
    return best[1] if best else None


def site_secrets(site: LoadedSite) -> tuple[list[str], list[str | None]]:
    """SNMP communities and PJLink passwords the site config uses: what discovery may try."""
    communities: list[str] = []
    passwords: list[str | None] = [None]
    for _, device in site.config.devices():
        profile = site.profile_of(device)
        if profile.protocol in ("snmp", "simulated") and profile.snmp is not None:
            communities.append(device.community or profile.snmp.community)
        if device.password:
            passwords.append(device.password)
    unique = list(dict.fromkeys(passwords))
    return list(dict.fromkeys(communities or ["public"])), unique[: MAX_PASSWORDS + 1]
