"""One incoming MQTT message checked against the contract and the registry: no I/O.

Everything here turns bad input into a `Rejected` with a reason; nothing raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from fleet.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    AgentEvent,
    AgentState,
    CommandAck,
    HealthBatch,
    ParsedTopic,
    Reading,
    TopicError,
    TopicKind,
    describe_validation_error,
    parse_topic,
)
from fleet.protocol.timetable import Timetable

M = TypeVar("M", bound=BaseModel)
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True)
class IncomingMessage:
    topic: str
    payload: bytes | bytearray  # as paho hands it over
    received_at: datetime  # aware UTC, when the broker handed it to us


class RejectReason(StrEnum):
    oversize = "oversize"
    not_json = "not_json"
    invalid = "invalid"  # JSON, but not the contract's schema
    topic = "topic"  # not one of the contract's topics
    unknown_site = "unknown_site"
    site_mismatch = "site_mismatch"  # payload `site` is not the topic's site
    device_mismatch = "device_mismatch"  # reading `device` is not the topic's device
    unknown_device = "unknown_device"  # not registered (or retired) at the topic's site
    db_rejected = "db_rejected"  # the database refused this message's values


class OutcomeStatus(StrEnum):
    stored = "stored"
    duplicate = "duplicate"  # already stored (or stale): acknowledged, nothing changed
    rejected = "rejected"  # bad input: dead-lettered, acknowledged


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    reason: RejectReason | None = None
    detail: str = ""
    readings: int = 0

    @classmethod
    def rejected(cls, reason: RejectReason, detail: str) -> Outcome:
        return cls(OutcomeStatus.rejected, reason, detail)


@dataclass(frozen=True)
class SiteEntry:
    devices: frozenset[str]
    timetable: Timetable
    tz: ZoneInfo


@dataclass(frozen=True)
class RegistrySnapshot:
    """Which devices each site may report, from the device table (or given by a caller)."""

    sites: dict[str, SiteEntry] = field(default_factory=dict)
    device_site: dict[str, str] = field(default_factory=dict)  # every registered device
    retired: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rejected:
    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class HealthMessage:
    site: str
    readings: list[Reading]
    batch: HealthBatch | None  # None: one reading from a device's own topic


@dataclass(frozen=True)
class AgentStateMessage:
    site: str
    state: AgentState


@dataclass(frozen=True)
class AgentNoteMessage:
    site: str
    kind: str  # "event" or "cmd_ack"
    ts: datetime
    body: dict[str, object]


Parsed = Rejected | HealthMessage | AgentStateMessage | AgentNoteMessage


# A device publishing on its own topic sends one reading a message: its topic, parsed once,
# is asked for again on every reading. Only good topics are kept (a TopicError is not cached).
_parsed_topic = lru_cache(maxsize=16_384)(parse_topic)


def parse_message(message: IncomingMessage, root: str, registry: RegistrySnapshot) -> Parsed:
    size = len(message.payload)
    if size > MAX_PAYLOAD_BYTES:
        return Rejected(
            RejectReason.oversize,
            f"payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit: "
            "the agent should publish smaller batches",
        )
    try:
        topic = _parsed_topic(message.topic, root)
    except TopicError as exc:
        return Rejected(RejectReason.topic, str(exc))
    if topic.kind == TopicKind.cmd:
        return Rejected(RejectReason.topic, f"{message.topic} is the controller's command topic")
    if topic.site not in registry.sites:
        return Rejected(
            RejectReason.unknown_site,
            f"site {topic.site!r} is not registered: add site_configs/{topic.site}.yaml "
            "and sync the registry",
        )
    if b"\\u0000" in message.payload:
        return Rejected(RejectReason.invalid, "payload contains a NUL character (\\u0000)")
    if topic.kind == TopicKind.health:
        return _parse_health(message.payload, topic, registry)
    if topic.kind == TopicKind.device_health:
        return _parse_device_health(message.payload, topic, registry)
    if topic.kind == TopicKind.agent_state:
        state = _validate(AgentState, message.payload)
        if isinstance(state, Rejected):
            return state
        return AgentStateMessage(topic.site, state)
    return _parse_note(message.payload, topic)


def _parse_health(
    payload: bytes | bytearray, topic: ParsedTopic, registry: RegistrySnapshot
) -> Parsed:
    batch = _validate(HealthBatch, payload)
    if isinstance(batch, Rejected):
        return batch
    if batch.seq > MAX_SEQ:
        return Rejected(
            RejectReason.invalid, f"seq {batch.seq} is over {MAX_SEQ} (a 64-bit column)"
        )
    if batch.site != topic.site:
        return Rejected(
            RejectReason.site_mismatch,
            f"batch {batch.msg_id} says site {batch.site!r} on {topic.site!r}'s topic: "
            "check the agent's site code and broker credential",
        )
    problem = _foreign_devices([r.device for r in batch.readings], topic.site, registry)
    if problem:
        return Rejected(RejectReason.unknown_device, f"batch {batch.msg_id}: {problem}")
    return HealthMessage(topic.site, batch.readings, batch)


def _parse_device_health(
    payload: bytes | bytearray, topic: ParsedTopic, registry: RegistrySnapshot
) -> Parsed:
    reading = _validate(Reading, payload)
    if isinstance(reading, Rejected):
        return reading
    if reading.device != topic.device:
        return Rejected(
            RejectReason.device_mismatch,
            f"reading for {reading.device!r} on device {topic.device!r}'s topic",
        )
    problem = _foreign_devices([reading.device], topic.site, registry)
    if problem:
        return Rejected(RejectReason.unknown_device, problem)
    return HealthMessage(topic.site, [reading], None)


def _parse_note(payload: bytes | bytearray, topic: ParsedTopic) -> Parsed:
    model: type[AgentEvent] | type[CommandAck]
    model, kind = (
        (AgentEvent, "event") if topic.kind == TopicKind.events else (CommandAck, "cmd_ack")
    )
    note = _validate(model, payload)
    if isinstance(note, Rejected):
        return note
    if note.site != topic.site:
        return Rejected(
            RejectReason.site_mismatch, f"{kind} says site {note.site!r} on {topic.site!r}'s topic"
        )
    return AgentNoteMessage(topic.site, kind, note.ts, note.model_dump(mode="json"))


def _validate(model: type[M], payload: bytes | bytearray) -> M | Rejected:
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            return Rejected(RejectReason.not_json, f"not JSON: {exc.errors()[0]['msg']}")
        return Rejected(
            RejectReason.invalid, f"not a {model.__name__}: {describe_validation_error(exc)}"
        )


def _foreign_devices(devices: list[str], site: str, registry: RegistrySnapshot) -> str:
    allowed = registry.sites[site].devices
    bad = sorted({d for d in devices if d not in allowed})
    if not bad:
        return ""
    words = []
    for device in bad[:5]:
        owner = registry.device_site.get(device)
        if device in registry.retired:
            words.append(f"{device} is retired (removed from site_configs/{owner}.yaml)")
        elif owner:
            words.append(f"{device} belongs to site {owner}")
        else:
            words.append(f"{device} is not registered")
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (
        f"{'; '.join(words)}{more}: readings are accepted only for devices listed in "
        f"site_configs/{site}.yaml"
    )
