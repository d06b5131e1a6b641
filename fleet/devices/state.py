"""A device's state and the reason for it, derived from plain data (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from fleet.protocol.messages import Flag, Power, Reading


class DeviceState(StrEnum):
    """A device's derived state, stored on its row with the reason: online, standby, unreachable,
    site_offline (the link, not the device), faulty, or unknown (never heard)."""

    online = "online"
    standby = "standby"
    unreachable = "unreachable"
    site_offline = "site_offline"
    faulty = "faulty"
    unknown = "unknown"


NEVER_HEARD = "never heard"
_POWERED = {Power.on, Power.warming}
_POWERED_DOWN = {Power.standby, Power.off, Power.cooling}


def derive_state(reading: Reading, *, in_class: bool) -> tuple[DeviceState, str]:
    """What one reading says about its device; `in_class` is the site's timetable at reading.ts."""
    if not reading.reachable:
        why = reading.error or "the agent gave no reason"
        if not in_class and _reachability_tried(reading):
            # A panel is switched off after class: no answer to ICMP or TCP then is what
            # an off panel gives, not a fault. During class the same is `unreachable`.
            return DeviceState.standby, (
                f"no answer outside class hours: taken as switched off (expected) ({why})"
            )
        return DeviceState.unreachable, f"cannot reach {reading.device}: {why}"
    flags = _flags(reading, Flag.error)
    if flags:
        return DeviceState.faulty, f"error flags: {flags}"
    warnings = _flags(reading, Flag.warning)
    suffix = f"; warnings: {warnings}" if warnings else ""
    if reading.power in _POWERED_DOWN:
        what = "standby" if reading.power == Power.standby else f"power {reading.power.value}"
        if in_class:
            return DeviceState.standby, f"{what} during class hours{suffix}"
        return DeviceState.standby, f"{what} outside class hours (expected){suffix}"
    if reading.power in _POWERED:
        reason = f"reachable, power {reading.power.value}"
    else:
        # It answered, so it is powered; its profile just has no power object.
        reason = "reachable, power not reported"
    if reading.input:
        reason += f", input {reading.input}"
    return DeviceState.online, reason + suffix


def _reachability_tried(reading: Reading) -> bool:
    """The reading's chain asked `reachability`: an answer from nothing means nothing of the
    device was up, rather than one protocol failing (an SNMP community, a PJLink password)."""
    return reading.collectors is not None and "reachability" in reading.collectors


def site_offline_reason(
    agent_id: str, since: datetime, *, silent_for: timedelta | None = None
) -> str:
    """Why every device of a site is `site_offline`: the link or the agent, not the devices."""
    at = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if silent_for is not None:
        minutes = int(silent_for.total_seconds() // 60)
        return f"site agent {agent_id} silent for {minutes} min (last heard at {at})"
    return f"site agent {agent_id} offline since {at} (will fired or it said offline)"


def _flags(reading: Reading, level: Flag) -> str:
    if reading.errors is None:
        return ""
    named = [f"{name}={level.value}" for name, flag in reading.errors if flag == level]
    return ", ".join(named)


# --- silence: a site agent or a device not heard for too long
# (pure; the job is fleet.devices.liveness)

SILENCE_POLLS = 3  # polls missed before silence means something
SITE_SILENCE_MIN = timedelta(minutes=3)  # a fast-polling site still gets a link blip's grace


def device_silence_threshold(poll_interval_s: float) -> timedelta:
    """How long a device polled every `poll_interval_s` seconds may go without a reading before it
    counts as silent: SILENCE_POLLS polls."""
    return timedelta(seconds=SILENCE_POLLS * poll_interval_s)


def site_silence_threshold(poll_intervals_s: Iterable[float]) -> timedelta:
    """The agent sends at least once per its slowest poll; missing three of those is silence."""
    slowest = max(poll_intervals_s, default=0.0)
    return max(timedelta(seconds=SILENCE_POLLS * slowest), SITE_SILENCE_MIN)


@dataclass(frozen=True)
class AgentFacts:
    """What the controller last heard from a site's agent, as silence judges it; times UTC."""

    site: str
    agent_id: str
    state: str  # AgentStateValue: what the agent (or its will) last said
    state_received_at: datetime
    last_message_at: datetime | None  # anything at all from it: health or agent/state


@dataclass(frozen=True)
class DeviceFacts:
    """A device's row as liveness and the alert rules judge it: its state, when it last reported,
    and its profile's poll interval in seconds."""

    id: str
    site: str
    state: str
    state_since: datetime | None
    last_seen_at: datetime | None  # ts of its newest reading
    poll_interval_s: float


@dataclass(frozen=True)
class StateChange:
    """A new state for one device, with the reason to store."""

    device: str
    state: DeviceState
    reason: str


def site_offline_since(
    agent: AgentFacts, silence: timedelta, now: datetime, watching_since: datetime | None = None
) -> tuple[datetime, str] | None:
    """When the site went offline and why, or None while its agent is alive, or while the
    controller has not watched long enough to tell (see `silence_unjudged`)."""
    if agent.state == "offline":
        return agent.state_received_at, site_offline_reason(agent.agent_id, agent.state_received_at)
    heard = agent.last_message_at or agent.state_received_at
    silent_for = now - heard
    if silent_for > silence and not silence_unjudged(agent, silence, now, watching_since):
        return heard, site_offline_reason(agent.agent_id, heard, silent_for=silent_for)
    return None


def silence_unjudged(
    agent: AgentFacts, silence: timedelta, now: datetime, watching_since: datetime | None
) -> bool:
    """True when a site looks silent only because the controller itself was not listening.

    A controller back from an outage has heard nothing from anyone for as long as it was
    down; the agents' queued messages arrive in the seconds after. So a silence that began
    before `watching_since` (when this controller started running the schedule) is judged
    only once the controller has itself listened for the whole threshold."""
    if watching_since is None or agent.state == "offline":
        return False
    heard = agent.last_message_at or agent.state_received_at
    return heard < watching_since and now - watching_since <= silence


def silence_changes(
    agents: Mapping[str, AgentFacts],
    devices: Iterable[DeviceFacts],
    now: datetime,
    watching_since: datetime | None = None,
) -> list[StateChange]:
    """Devices whose state silence changes: a silent site's all go `site_offline`; at a live
    site, a device left behind by its site's other readings goes `unreachable`.

    A site that was never heard from (no agent facts) keeps its devices `unknown`. A will
    (agent said offline) is already applied by ingest; this repeats it only for stragglers.
    """
    by_site: dict[str, list[DeviceFacts]] = {}
    for device in devices:
        by_site.setdefault(device.site, []).append(device)
    changes: list[StateChange] = []
    for site, members in by_site.items():
        agent = agents.get(site)
        if agent is None:
            continue
        silence = site_silence_threshold(d.poll_interval_s for d in members)
        offline = site_offline_since(agent, silence, now, watching_since)
        if offline is not None:
            reason = offline[1]
            changes += [
                StateChange(d.id, DeviceState.site_offline, reason)
                for d in members
                if d.state != DeviceState.site_offline
            ]
            continue
        changes += _left_behind(members, now)
    return changes


def _left_behind(members: list[DeviceFacts], now: datetime) -> list[StateChange]:
    # Judged against the site's newest reading as well as the clock: an agent draining its
    # outbox after an outage sends old readings for every device, and none of them is lagging.
    newest = max((d.last_seen_at for d in members if d.last_seen_at is not None), default=None)
    if newest is None:
        return []
    out = []
    for device in members:
        if device.last_seen_at is None or device.state == DeviceState.unreachable:
            continue  # never heard stays unknown; a reading-derived reason is more precise
        limit = device_silence_threshold(device.poll_interval_s)
        silent_for = now - device.last_seen_at
        if silent_for > limit and newest - device.last_seen_at > limit:
            minutes = int(silent_for.total_seconds() // 60)
            reason = f"no reading for {minutes} min while its site agent reports other devices"
            out.append(StateChange(device.id, DeviceState.unreachable, reason))
    return out
