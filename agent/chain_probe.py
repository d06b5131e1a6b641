"""Which ways of reading each configured device work: every collector its profile lists.

`fleet-agent check` shows them per device; `fleet-agent discover --chains` proposes, from
them, the chain to run and the `agent.enable_collectors` the site config needs. Every
collector of a profile is tried, the site-enabled ones (PJLink on panels) whether or not the
site enabled them, so that a technician sees what enabling would give. Only the addresses of
the site config (or, with an address map, the simulated devices') are sent to.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from agent.collectors import Collectors, Step, Target, steps_for
from agent.collectors.chain import poll_step
from agent.poller import build_targets
from fleet.protocol.messages import Reading
from fleet.protocol.site_config import LoadedSite


@dataclass
class WayResult:
    """One collector tried on one device: did it answer, and what it said or why not."""

    collector: str
    where: str
    answered: bool
    detail: str


@dataclass
class ChainProposal:
    """What probing one device gave: each way its profile lists, as tried, and from them the chain
    to run and the collectors the site would have to enable."""

    device: str
    profile: str
    ways: list[WayResult] = field(default_factory=list)
    # Collectors that answered, in profile order: the chain to run.
    proposed: list[str] = field(default_factory=list)
    # `where_enabled` collectors that answered but the site has not enabled.
    to_enable: list[str] = field(default_factory=list)


def _describe(reading: Reading) -> str:
    if not reading.reachable:
        return reading.error or "no answer"
    parts = [f"power {reading.power.value}"]
    if reading.input:
        parts.append(f"input {reading.input}")
    if reading.firmware:
        parts.append(f"firmware {reading.firmware}")
    if "rtt_ms" in reading.metrics:
        parts.append(f"{reading.metrics['rtt_ms']} ms")
    return ", ".join(parts)


async def probe_chains(
    site: LoadedSite, address_map: dict[str, tuple[str, int]] | None = None
) -> list[ChainProposal]:
    """Each device of `site` (MQTT-native ones aside), every way its profile lists, tried."""
    every = frozenset({"pjlink", "maxhub-lan", "snmp"})
    enabled = set(site.config.agent.enable_collectors)
    collectors = Collectors()
    targets: list[tuple[Target, tuple[Step, ...]]] = []
    for target in build_targets(site, address_map):
        address = address_map.get(target.device.id) if address_map is not None else None
        all_steps = steps_for(target.device, target.profile, address, every)
        targets.append((replace(target, steps=all_steps), all_steps))
    try:
        answers = await asyncio.gather(
            *(
                asyncio.gather(*(poll_step(t, step, collectors.for_protocol) for step in steps))
                for t, steps in targets
            )
        )
    finally:
        await collectors.close()
    proposals = []
    for (target, steps), readings in zip(targets, answers, strict=True):
        proposal = ChainProposal(target.device.id, target.profile.id)
        optional = {s.collector for s in target.profile.chain() if s.where_enabled}
        for step, reading in zip(steps, readings, strict=True):
            where = target.at(step).where
            proposal.ways.append(
                WayResult(step.collector, where, reading.reachable, _describe(reading))
            )
            if reading.reachable:
                proposal.proposed.append(step.collector)
                if step.collector in optional and step.collector not in enabled:
                    proposal.to_enable.append(step.collector)
        proposals.append(proposal)
    return proposals


def proposals_yaml(site: LoadedSite, proposals: list[ChainProposal]) -> str:
    """The proposal as YAML comments and the `agent.enable_collectors` line to review."""
    lines = [f"# Collector chains that answered at site {site.config.code}:"]
    for p in proposals:
        ways = ", ".join(f"{w.collector} {'ok' if w.answered else 'no'}" for w in p.ways)
        chain = " -> ".join(p.proposed) or "nothing answered"
        lines.append(f"#   {p.device} ({p.profile}): {chain}  [{ways}]")
    enable = sorted(
        set(site.config.agent.enable_collectors) | {c for p in proposals for c in p.to_enable}
    )
    lines.append("agent:")
    lines.append(f"  enable_collectors: [{', '.join(enable)}]")
    return "\n".join(lines) + "\n"
