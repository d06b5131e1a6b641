"""One incoming MQTT message checked against the contract and the registry: no I/O.

Everything here turns bad input into a `Rejected` with a reason; nothing raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from operator import attrgetter
from typing import TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from fleet.protocol.messages import (
    MAX_PAYLOAD_BYTES,
    AgentEvent,
    AgentState,
    CheckedBatch,
    CommandAck,
    HealthBatch,
    HealthEnvelope,
    ParsedTopic,
    Reading,
    TopicError,
    TopicKind,
    describe_validation_error,
    parse_topic,
)
from fleet.protocol.timetable import Timetable

M = TypeVar("M", bound=BaseModel)
# How far ahead of the controller's clock a reading may be stamped: a device or agent clock a
# little fast is kept; a day ahead is a clock that is wrong, whose readings would sort after
# every true one and keep a device's state stuck on them.
MAX_AHEAD = timedelta(days=1)


@dataclass(frozen=True)
class IncomingMessage:
    """One MQTT message as the broker delivered it: topic, raw payload and when it arrived."""

    topic: str
    payload: bytes | bytearray  # as paho hands it over
    received_at: datetime  # aware UTC, when the broker handed it to us


class RejectReason(StrEnum):
    """Why a message or a reading was refused; the value is counted and kept on its dead-letter
    row."""

    oversize = "oversize"
    not_json = "not_json"
    invalid = "invalid"  # JSON, but not the contract's schema
    topic = "topic"  # not one of the contract's topics
    unknown_site = "unknown_site"
    site_mismatch = "site_mismatch"  # payload `site` is not the topic's site
    device_mismatch = "device_mismatch"  # reading `device` is not the topic's device
    unknown_device = "unknown_device"  # not registered (or retired) at the topic's site
    db_rejected = "db_rejected"  # the database refused this message's values
    clock = "clock"  # stamped too far ahead of the controller's clock


class OutcomeStatus(StrEnum):
    """What became of a message: stored, a duplicate (nothing changed), or rejected; the caller
    acknowledges all three."""

    stored = "stored"
    duplicate = "duplicate"  # already stored (or stale): acknowledged, nothing changed
    rejected = "rejected"  # bad input: dead-lettered, acknowledged


@dataclass(frozen=True)
class Outcome:
    """What became of one message: `readings` stored, and for a batch judged reading by
    reading, the reason of each reading refused (each one dead-lettered on its own)."""

    status: OutcomeStatus
    reason: RejectReason | None = None
    detail: str = ""
    readings: int = 0
    refused_readings: tuple[RejectReason, ...] = ()

    @classmethod
    def rejected(cls, reason: RejectReason, detail: str) -> Outcome:
        """The outcome of a message refused as a whole, with the reason and what was wrong."""
        return cls(OutcomeStatus.rejected, reason, detail)


@dataclass(frozen=True)
class SiteEntry:
    """What ingest knows of one site: the devices it may report, its timetable and its time zone."""

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
    """A message refused as a whole: the reason, and a detail that says what was wrong."""

    reason: RejectReason
    detail: str


@dataclass(frozen=True)
class BadReading:
    """One reading of a batch refused while the rest of its batch is stored."""

    index: int  # its place in the batch's readings
    reason: RejectReason
    detail: str
    raw: object  # the reading as it came, for the dead-letter table


@dataclass(frozen=True)
class HealthMessage:
    """A checked health message: the site, its good readings, the batch envelope (None for a
    device's own topic) and the readings refused."""

    site: str
    readings: list[Reading]
    batch: HealthEnvelope | None  # None: one reading from a device's own topic
    refused: tuple[BadReading, ...] = ()


@dataclass(frozen=True)
class AgentStateMessage:
    """A checked agent/state message of one site's agent (its will says offline)."""

    site: str
    state: AgentState


@dataclass(frozen=True)
class AgentNoteMessage:
    """A checked agent event or command ack (`kind` "event" or "cmd_ack"), its time, and its body as
    JSON."""

    site: str
    kind: str  # "event" or "cmd_ack"
    ts: datetime
    body: dict[str, object]


Parsed = Rejected | HealthMessage | AgentStateMessage | AgentNoteMessage


_TS = attrgetter("ts")
_DEVICE = attrgetter("device")

# A device publishing on its own topic sends one reading a message: its topic, parsed once,
# is asked for again on every reading. Only good topics are kept (a TopicError is not cached).
_parsed_topic = lru_cache(maxsize=16_384)(parse_topic)


def parse_message(message: IncomingMessage, root: str, registry: RegistrySnapshot) -> Parsed:
    """Check one message against the contract (size, topic, schema, clock) and `registry` (site and
    devices) under the topic root `root`; gives what it carries, or a `Rejected` with the reason.
    Never raises."""
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
    if topic.kind == TopicKind.health:
        return _parse_health(message.payload, topic, registry, message.received_at)
    if topic.kind == TopicKind.device_health:
        return _parse_device_health(message.payload, topic, registry, message.received_at)
    if topic.kind == TopicKind.agent_state:
        state = _validate(AgentState, message.payload)
        if isinstance(state, Rejected):
            return state
        return AgentStateMessage(topic.site, state)
    return _parse_note(message.payload, topic)


def _parse_health(
    payload: bytes | bytearray,
    topic: ParsedTopic,
    registry: RegistrySnapshot,
    received_at: datetime,
) -> Parsed:
    """A batch, judged reading by reading: the envelope (msg_id, site, agent) decides for the
    whole message; each reading is then stored or refused on its own, so one device's bad
    value never costs the others theirs."""
    readings: list[Reading | Rejected]
    try:
        # The common case, a batch good throughout, in one call inside pydantic-core.
        envelope: HealthEnvelope = CheckedBatch.model_validate_json(payload)
        readings = list(envelope.readings)
        valid = True
    except ValidationError:
        judged = _judge_batch(payload)
        if isinstance(judged, Rejected):
            return judged
        envelope, readings = judged
        valid = all(isinstance(r, Reading) for r in readings)
    if envelope.site != topic.site:
        return Rejected(
            RejectReason.site_mismatch,
            f"batch {envelope.msg_id} says site {envelope.site!r} on {topic.site!r}'s topic: "
            "check the agent's site code and broker credential",
        )
    allowed = registry.sites[topic.site].devices
    if readings and valid:
        # The usual batch: every reading valid. Its devices and newest stamp judged at once
        # (map with attrgetter: no Python frame a reading); only a batch with something to
        # refuse is judged reading by reading below.
        whole: list[Reading] = readings  # type: ignore[assignment]
        newest = max(map(_TS, whole))
        if allowed.issuperset(map(_DEVICE, whole)) and newest - received_at <= MAX_AHEAD:
            return HealthMessage(topic.site, whole, envelope, ())
    good: list[Reading] = []
    refused: list[BadReading] = []
    for index, reading in enumerate(readings):
        if isinstance(reading, Rejected):
            problem: Rejected | None = reading
        elif reading.device not in allowed:
            problem = Rejected(
                RejectReason.unknown_device,
                _foreign_devices([reading.device], topic.site, registry),
            )
        else:
            problem = _clock_problem(reading, received_at)
        if problem is None:
            good.append(reading)  # type: ignore[arg-type]
            continue
        raw = envelope.readings[index]
        device = repr(raw.device) if isinstance(raw, Reading) else _device_of(raw)
        refused.append(
            BadReading(
                index,
                problem.reason,
                f"batch {envelope.msg_id} reading {index} ({device}): {problem.detail}",
                raw.model_dump(mode="json") if isinstance(raw, Reading) else raw,
            )
        )
    return HealthMessage(topic.site, good, envelope, tuple(refused))


def _judge_batch(
    payload: bytes | bytearray,
) -> tuple[HealthEnvelope, list[Reading | Rejected]] | Rejected:
    """The envelope of a batch that failed as a whole, and each reading or why it is refused."""
    try:
        envelope = HealthEnvelope.model_validate_json(payload)
    except ValidationError as exc:
        if exc.errors()[0]["type"] != "json_invalid":
            return _invalid(HealthBatch, exc)
        # JSON that pydantic-core refuses but the standard allows (an escaped lone surrogate
        # in one device's text): judged like any other, reading by reading. UTF-8 only, as
        # the contract says: json.loads would also take UTF-16 and UTF-32.
        try:
            envelope = HealthEnvelope.model_validate(json.loads(bytes(payload).decode("utf-8")))
        except (ValueError, RecursionError):
            return Rejected(RejectReason.not_json, f"not JSON: {exc.errors()[0]['msg']}")
        except ValidationError as inner:
            return _invalid(HealthBatch, inner)
    readings: list[Reading | Rejected] = []
    for item in envelope.readings:
        try:
            readings.append(Reading.model_validate(item))
        except ValidationError as exc:
            readings.append(
                Rejected(RejectReason.invalid, f"not a Reading: {describe_validation_error(exc)}")
            )
    return envelope, readings


def _device_of(raw: object) -> str:
    device = raw.get("device") if isinstance(raw, dict) else None
    return repr(device)[:80] if device is not None else "no device"


def _clock_problem(reading: Reading, received_at: datetime) -> Rejected | None:
    if reading.ts - received_at <= MAX_AHEAD:
        return None
    return Rejected(
        RejectReason.clock,
        f"ts {reading.ts.isoformat()} is more than {MAX_AHEAD} ahead of the controller's "
        f"clock ({received_at.isoformat()}): check NTP on the agent's host and the device",
    )


def _parse_device_health(
    payload: bytes | bytearray,
    topic: ParsedTopic,
    registry: RegistrySnapshot,
    received_at: datetime,
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
    return _clock_problem(reading, received_at) or HealthMessage(topic.site, [reading], None)


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
        return _invalid(model, exc)


def _invalid(model: type[BaseModel], exc: ValidationError) -> Rejected:
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
