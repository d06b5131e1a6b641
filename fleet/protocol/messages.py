"""The wire contract between site agents and the controller.

Pydantic only: no FastAPI, no SQL. This is the one module of `fleet` that `agent` imports,
so both sides validate the same shapes. A change that breaks old agents bumps SCHEMA.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

SCHEMA = 1
TOPIC_ROOT = "fleet/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS_PER_BATCH = 1000

SITE_CODE_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_SITE_RE = re.compile(SITE_CODE_PATTERN)
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (UTC, ISO 8601 with 'Z' or '+00:00')")
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
SiteCode = Annotated[str, Field(pattern=SITE_CODE_PATTERN)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Power(StrEnum):
    on = "on"
    standby = "standby"
    off = "off"
    warming = "warming"
    cooling = "cooling"
    unknown = "unknown"


class Flag(StrEnum):
    ok = "ok"
    warning = "warning"
    error = "error"


class ErrorFlags(BaseModel):
    """PJLink's six error flags (ERST); SNMP profiles map their own status objects onto them."""

    model_config = ConfigDict(extra="forbid")

    fan: Flag = Flag.ok
    lamp: Flag = Flag.ok
    temperature: Flag = Flag.ok
    cover: Flag = Flag.ok
    filter: Flag = Flag.ok
    other: Flag = Flag.ok

    def worst(self) -> Flag:
        flags = {self.fan, self.lamp, self.temperature, self.cover, self.filter, self.other}
        if Flag.error in flags:
            return Flag.error
        if Flag.warning in flags:
            return Flag.warning
        return Flag.ok


MetricValue = float | int | str | bool | None


class Reading(BaseModel):
    """One poll of one device."""

    model_config = ConfigDict(extra="forbid")

    device: DeviceId
    ts: UtcDatetime
    reachable: bool
    power: Power = Power.unknown
    input: str | None = Field(default=None, max_length=64)
    temperature_c: float | None = Field(default=None, ge=-50, le=200)
    lamp_hours: float | None = Field(default=None, ge=0)
    filter_hours: float | None = Field(default=None, ge=0)
    uptime_s: float | None = Field(default=None, ge=0)
    firmware: str | None = Field(default=None, max_length=64)
    errors: ErrorFlags | None = None
    # Why the device could not be read, in words a technician can act on.
    error: str | None = Field(default=None, max_length=500)
    metrics: dict[str, MetricValue] = Field(default_factory=dict, max_length=64)


class HealthBatch(BaseModel):
    """What an agent publishes on `fleet/v1/<site>/health`."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal[1] = Field(default=1, alias="schema")
    msg_id: str = Field(min_length=26, max_length=26, pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")
    site: SiteCode
    agent_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    sent_at: UtcDatetime
    readings: list[Reading] = Field(max_length=MAX_READINGS_PER_BATCH)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class AgentStateValue(StrEnum):
    online = "online"
    offline = "offline"


class AgentState(BaseModel):
    """Retained on `fleet/v1/<site>/agent/state`; the offline form is also the MQTT will."""

    model_config = ConfigDict(extra="forbid")

    state: AgentStateValue
    agent_id: str = Field(min_length=1, max_length=64)
    version: str = Field(max_length=32)
    boot_id: str = Field(max_length=64)
    ts: UtcDatetime

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class EventKind(StrEnum):
    update_progress = "update_progress"
    discovery = "discovery"
    agent_error = "agent_error"
    outbox_dropped = "outbox_dropped"


class AgentEvent(BaseModel):
    """Published on `fleet/v1/<site>/events`."""

    model_config = ConfigDict(extra="forbid")

    kind: EventKind
    site: SiteCode
    agent_id: str
    ts: UtcDatetime
    device: DeviceId | None = None
    message: str = Field(default="", max_length=2000)
    data: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class CommandKind(StrEnum):
    firmware_update = "firmware_update"
    config_reload = "config_reload"
    poll_now = "poll_now"


class Command(BaseModel):
    """Published by the controller on `fleet/v1/<site>/cmd`."""

    model_config = ConfigDict(extra="forbid")

    cmd_id: str = Field(min_length=1, max_length=64)
    kind: CommandKind
    site: SiteCode
    issued_at: UtcDatetime
    devices: list[DeviceId] = Field(default_factory=list)
    args: dict[str, Any] = Field(default_factory=dict)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class CommandAck(BaseModel):
    """Published by the agent on `fleet/v1/<site>/cmd/ack`."""

    model_config = ConfigDict(extra="forbid")

    cmd_id: str = Field(min_length=1, max_length=64)
    site: SiteCode
    agent_id: str
    ok: bool
    ts: UtcDatetime
    message: str = Field(default="", max_length=2000)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# --- topics -----------------------------------------------------------------------------


class Topics:
    """Topic names under a root (`fleet/v1` unless a deployment shares its broker)."""

    def __init__(self, root: str = TOPIC_ROOT) -> None:
        self.root = root.rstrip("/")

    def agent_state(self, site: str) -> str:
        return f"{self.root}/{site}/agent/state"

    def health(self, site: str) -> str:
        return f"{self.root}/{site}/health"

    def device_health(self, site: str, device: str) -> str:
        return f"{self.root}/{site}/devices/{device}/health"

    def events(self, site: str) -> str:
        return f"{self.root}/{site}/events"

    def cmd(self, site: str) -> str:
        return f"{self.root}/{site}/cmd"

    def cmd_ack(self, site: str) -> str:
        return f"{self.root}/{site}/cmd/ack"

    def subscriptions(self) -> list[str]:
        """What the controller ingests."""
        return [
            f"{self.root}/+/health",
            f"{self.root}/+/devices/+/health",
            f"{self.root}/+/agent/state",
            f"{self.root}/+/events",
            f"{self.root}/+/cmd/ack",
        ]


class TopicKind(StrEnum):
    health = "health"
    device_health = "device_health"
    agent_state = "agent_state"
    events = "events"
    cmd = "cmd"
    cmd_ack = "cmd_ack"


class ParsedTopic(BaseModel):
    kind: TopicKind
    site: str
    device: str | None = None


class TopicError(ValueError):
    pass


def parse_topic(topic: str, root: str = TOPIC_ROOT) -> ParsedTopic:
    """Split a topic into kind, site and device; raise TopicError on anything off-contract."""
    prefix = root.rstrip("/") + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic {topic!r} is not under {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    site = parts[0]
    if not _SITE_RE.match(site):
        raise TopicError(f"topic {topic!r}: {site!r} is not a site code")
    rest = parts[1:]
    if rest == ["health"]:
        return ParsedTopic(kind=TopicKind.health, site=site)
    if rest == ["agent", "state"]:
        return ParsedTopic(kind=TopicKind.agent_state, site=site)
    if rest == ["events"]:
        return ParsedTopic(kind=TopicKind.events, site=site)
    if rest == ["cmd"]:
        return ParsedTopic(kind=TopicKind.cmd, site=site)
    if rest == ["cmd", "ack"]:
        return ParsedTopic(kind=TopicKind.cmd_ack, site=site)
    if len(rest) == 3 and rest[0] == "devices" and rest[2] == "health":
        if not _DEVICE_RE.match(rest[1]):
            raise TopicError(f"topic {topic!r}: {rest[1]!r} is not a device id")
        return ParsedTopic(kind=TopicKind.device_health, site=site, device=rest[1])
    raise TopicError(f"topic {topic!r} is not one of the contract's topics")


def describe_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """A short, one-line account of what was wrong, for logs and the dead-letter table."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
