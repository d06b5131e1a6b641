"""What `fleet-agent discover` makes of its findings: a draft `devices:` section for the
technician to review, and the discovery event `--publish` sends to the controller."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import yaml

from agent.collectors import DEFAULT_PORTS
from agent.discover import Finding
from fleet.protocol.messages import DEVICE_ID_PATTERN, AgentEvent, EventKind, utcnow
from fleet.protocol.profiles import Profile
from fleet.protocol.site_config import LoadedSite

DEVICE_RE = re.compile(DEVICE_ID_PATTERN)

MAX_EVENT_DEVICES = 400  # keeps the event well under the controller's 256 KiB message cap


def discovery_event(
    findings: list[Finding], site: LoadedSite, targets: list[str], probes: int
) -> AgentEvent:
    """What `discover --publish` sends on `fleet/v1/<site>/events`: every device that
    answered, the profile that fits it and, if the site config has it already, its id; so
    ops see what a technician found, and what is on the network but not in the registry."""
    known = _known_addresses(site)
    devices = []
    for finding in sorted(findings, key=lambda f: (_sort_key(f.probe.host), f.probe.port))[
        :MAX_EVENT_DEVICES
    ]:
        probe = finding.probe
        entry: dict[str, Any] = {
            "host": probe.host,
            "port": probe.port,
            "protocol": probe.protocol,
            "profile": finding.profile,
            "known_as": known.get((probe.host, probe.port)),
            # What a device says is untrusted text: printable and bounded.
            "facts": {k: _printable(v)[:200] for k, v in finding.facts.items()},
        }
        devices.append(entry)
    unregistered = sum(1 for d in devices if d["known_as"] is None)
    return AgentEvent(
        kind=EventKind.discovery,
        site=site.config.code,
        agent_id=site.config.agent_id,
        ts=utcnow(),
        message=(
            f"{len(findings)} of {probes} probes answered on {', '.join(targets)[:200]}; "
            f"{unregistered} not in the site config"
        )[:2000],
        data={
            "targets": [t[:100] for t in targets[:50]],
            "probes": probes,
            "answered": len(findings),
            "devices": devices,
            "truncated": len(findings) > MAX_EVENT_DEVICES,
        },
    )


def _known_addresses(site: LoadedSite) -> dict[tuple[str, int | None], str]:
    return {
        (d.address, d.port or DEFAULT_PORTS.get(site.profile_of(d).protocol)): d.id
        for _, d in site.config.devices()
    }


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def draft_devices_yaml(
    findings: list[Finding], site: LoadedSite, profiles: dict[str, Profile], targets: list[str]
) -> str:
    """A `devices:` section to review and paste under a room of the site config."""
    code = site.config.code
    known = _known_addresses(site)
    configured = {d.id for _, d in site.config.devices()}
    taken = set(configured)
    lines = [
        f"# Draft from `fleet-agent discover` at {utcnow().isoformat(timespec='seconds')} "
        f"(targets: {', '.join(targets)[:200]}).",
        "# Review every entry: give it a meaningful id and name, move it under its room in",
        f"# site_configs/{code}.yaml, and delete what is not a classroom device.",
        "devices:",
    ]
    if not findings:
        lines.append(
            "  []  # nothing answered SNMP, PJLink or MAXHUB LAN on the given targets and ports"
        )
    for finding in sorted(findings, key=lambda f: (_sort_key(f.probe.host), f.probe.port)):
        probe = finding.probe
        device_id = _device_id(finding, code, taken)
        taken.add(device_id)
        entry: dict[str, Any] = {"id": device_id, "profile": finding.profile or "CHOOSE-A-PROFILE"}
        entry["address"] = probe.host
        if probe.port != DEFAULT_PORTS[probe.protocol]:
            entry["port"] = probe.port
        if "name" in finding.facts:
            entry["name"] = finding.facts["name"][:64]
        community = finding.facts.get("snmp_community")
        if community and finding.profile and community != _profile_community(profiles, finding):
            entry["community"] = community
        known_as = known.get((probe.host, probe.port))
        if known_as is None and finding.facts.get("name") in configured:
            known_as = f"{finding.facts['name']}? (same name)"
        comment = _comment(finding, known_as)
        flow = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000)
        lines.append(f"  # {comment}")
        lines.append(f"  - {flow.strip()}")
    return "\n".join(lines) + "\n"


def _profile_community(profiles: dict[str, Profile], finding: Finding) -> str | None:
    profile = profiles.get(finding.profile or "")
    return profile.snmp.community if profile and profile.snmp else "public"


def _comment(finding: Finding, known_as: str | None) -> str:
    facts = finding.facts
    if finding.probe.protocol == "snmp":
        what = f"SNMP: sysDescr {facts.get('sys_descr', '?')!r}"
        if "sys_object_id" in facts:
            what += f", sysObjectID {facts['sys_object_id']}"
    elif finding.probe.protocol == "maxhub-lan":
        what = (
            f"MAXHUB LAN control: power {facts.get('maxhub_power', 'not answered')}, "
            f"video source {facts.get('maxhub_input', 'not answered')}"
        )
    else:
        what = (
            f"PJLink class {facts.get('pjlink_class', '?')}: {facts.get('pjlink_inf1', '?')!r} "
            f"{facts.get('pjlink_inf2', '?')!r}"
        )
        if facts.get("pjlink_auth") == "yes":
            what += "; needs its PJLink password as password:"
    if finding.note:
        what += f"; {finding.note}"
    if finding.profile is None:
        what += "; no profile's match rules fit: pick one or add a profile"
    if known_as:
        what += f"; already in the site config as {known_as}"
    # One line, printable: what a device says is untrusted text.
    return _printable(what)[:300]


def _device_id(finding: Finding, code: str, taken: set[str]) -> str:
    name = finding.facts.get("name", "").strip().lower().replace(" ", "-")
    if DEVICE_RE.match(name) and name not in taken:
        return name
    kinds = {"pjlink": "projector", "maxhub-lan": "panel"}
    kind = kinds.get(finding.probe.protocol, "device")
    base = f"{code}-{kind}-{finding.probe.host.replace('.', '-').replace(':', '-')}"
    if finding.probe.port != DEFAULT_PORTS[finding.probe.protocol]:
        base += f"-{finding.probe.port}"
    device_id, n = base[:64], 2
    while device_id in taken:
        device_id, n = f"{base[:60]}-{n}", n + 1
    return device_id


def _sort_key(host: str) -> tuple[int, int]:
    address = ipaddress.ip_address(host)
    return (address.version, int(address))
