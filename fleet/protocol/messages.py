"""The wire contract between site agents and the controller.

Pydantic only: no FastAPI, no SQL. This is the one module of `fleet` that `agent` imports,
so both sides validate the same shapes. A change that breaks old agents bumps SCHEMA.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

SCHEMA = 1
TOPIC_ROOT = "fleet/v1"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS_PER_BATCH = 1000
# The most one health batch's payload may hold, in bytes: the one number the agent's batches,
# the site config's batch_size check and the shipped broker config are held to. It sits under
# the smallest limit on the way: the controller's MAX_PAYLOAD_BYTES (16 KiB to spare), and the
# broker's `max_packet_size 300000` in deploy/mosquitto/fleet-queues.conf, which counts the
# whole PUBLISH packet (fixed header, topic, packet id, properties) and not the payload alone.
# A batch is cut by bytes as well as by count: over MQTT 3.1.1 a broker cannot refuse a
# message, so one over its limit is dropped or closes the connection, never answered.
MAX_BATCH_BYTES = 240 * 1024

SITE_CODE_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# A command's id, and the campaign (a rollout: `rollout-12`) it belongs to.
CMD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
CAMPAIGN_PATTERN = r"^[a-z][a-z0-9_]{0,30}-[0-9]{1,18}$"
_SITE_RE = re.compile(SITE_CODE_PATTERN)
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)

# Characters no text in a message may hold: the C0 controls but tab, LF and CR; DEL; the C1
# controls. PostgreSQL's text cannot hold NUL at all, and the others end up in terminals, CSV
# cells and logs, where they rewrite what a reader sees. The agent removes them from what a
# device says before anything is queued (agent/collectors/cleaning.py); the controller refuses
# them, reading by reading.
CONTROL_CHARACTERS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
CONTROL_RE = re.compile(f"[{CONTROL_CHARACTERS}]")
TEXT_PATTERN = f"^[^{CONTROL_CHARACTERS}]*$"

# The instants a message may carry. Before 2000 is a device or agent clock that was never set
# (the epoch, 1970, is the usual one); past 2100 is no clock at all, and such values overflow
# the conversions later steps make (a site's local time, 9999-12-31 plus an offset). How far
# ahead of the controller's own clock a reading may be is judged on arrival (fleet/ingest).
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TS = datetime(2100, 1, 1, tzinfo=UTC)
# What a 64-bit integer column (and PostgreSQL's jsonb, and a report's arithmetic) holds.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (UTC, ISO 8601 with 'Z' or '+00:00')")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"timestamp {value.isoformat()} is out of range in UTC") from None
    if not EARLIEST_TS <= value < LATEST_TS:
        raise ValueError(
            f"timestamp {value.isoformat()} is outside {EARLIEST_TS.year}-{LATEST_TS.year}: "
            "the clock that stamped it is not set (check NTP on the agent's host)"
        )
    return value


def lowercase_site_hint(value: Any) -> Any:
    """Before the pattern: a site code typed in capitals (`UPM`) is told as such, with the
    code meant, rather than as a pattern mismatch or, further on, as someone else's site.
    Raises ValueError for that case; passes anything else on to the pattern."""
    if isinstance(value, str) and value != value.lower():
        meant = value.lower()
        if re.fullmatch(SITE_CODE_PATTERN, meant):
            raise ValueError(f"site codes are lowercase: did you mean {meant!r}?")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
# `UtcDatetime` as the controller checks a whole batch in one call: inside pydantic-core, with
# no Python call a reading (that call was a tenth of a batch's validation). It takes the
# instants stamped in UTC ('Z', '+00:00') within the same years; one stamped with another
# offset is refused here, and its batch is judged again reading by reading with `Reading`,
# which converts it. Its values carry pydantic-core's own zone of offset 0 (`TzInfo(0)`) rather
# than `datetime.UTC`: the same instants, equal, hashed and dumped ("Z") alike.
BatchUtcDatetime = Annotated[
    datetime,
    GetPydanticSchema(
        lambda _source, _handler: core_schema.datetime_schema(
            tz_constraint=0, ge=EARLIEST_TS, lt=LATEST_TS
        )
    ),
]
SiteCode = Annotated[str, BeforeValidator(lowercase_site_hint), Field(pattern=SITE_CODE_PATTERN)]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
# Text from outside, with its length capped by each field.
Text = Annotated[str, Field(pattern=TEXT_PATTERN)]
# A measurement: a finite number (NaN and Infinity are refused: no column, chart or sum can
# use them) within what the quantity can physically be.
Hours = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]  # 114 years
Seconds = Annotated[float, Field(ge=0, le=100 * 365 * 86400, allow_inf_nan=False)]
Celsius = Annotated[float, Field(ge=-50, le=200, allow_inf_nan=False)]
MetricName = Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT_PATTERN)]
# Each kind strict, so that the union never turns one into another ("0012" stays text, an
# integer past 64 bits is not taken as a float).
MetricText = Annotated[str, Field(strict=True, max_length=256, pattern=TEXT_PATTERN)]
MetricInt = Annotated[int, Field(strict=True, ge=INT64_MIN, le=INT64_MAX)]
MetricFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MetricValue = StrictBool | MetricInt | MetricFloat | MetricText | None
MAX_METRICS = 64


def _metric_values_in_range(value: object) -> object:
    """Say plainly which metric is out of range, before the union of types does so in four
    messages; and refuse an integer past 64 bits, which the union would take as a float."""
    if not isinstance(value, dict):
        return value
    for name, item in value.items():
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int) and not INT64_MIN <= item <= INT64_MAX:
            raise ValueError(f"metric {name!r}: integer {item} does not fit in 64 bits")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"metric {name!r}: {item} is not a finite number")
        if isinstance(item, str):
            problem = control_character_problem(item)
            if problem:
                raise ValueError(f"metric {name!r}: {problem}")
    return value


Metrics = Annotated[
    dict[MetricName, MetricValue],
    BeforeValidator(_metric_values_in_range),
    Field(max_length=MAX_METRICS),
]


# `Metrics` as the controller checks a whole batch in one call: the same values taken and
# refused, checked inside pydantic-core, but for the integer bound, checked once for the whole
# batch (`CheckedBatch`; an unbounded int stays an int in the union, where a bounded one would
# turn into a float). A before-validator makes pydantic-core build Python objects of the JSON
# first and validate those again: half of a batch's validation time; an after-validator here is
# a Python call for every reading. What it refuses is judged again reading by reading with
# `Metrics`, whose words say which metric is wrong.
BatchMetrics = Annotated[
    dict[
        MetricName,
        StrictBool | Annotated[int, Field(strict=True)] | MetricFloat | MetricText | None,
    ],
    Field(max_length=MAX_METRICS),
]


JSON_MAX_DEPTH = 8


def _json_safe(value: Any, depth: int = 0) -> None:
    """Raise ValueError unless `value` is JSON every store and later step can hold: finite
    numbers, 64-bit integers, text without control characters, nested at most 8 deep."""
    if depth > JSON_MAX_DEPTH:
        raise ValueError(f"nested more than {JSON_MAX_DEPTH} deep")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"integer {value} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
    elif isinstance(value, str):
        _check_text(value)
    elif isinstance(value, list):
        for item in value:
            _json_safe(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(str(key))
            _json_safe(item, depth + 1)
    else:
        raise ValueError(f"{type(value).__name__} is not a JSON value")


def control_character_problem(value: str) -> str | None:
    """What is wrong with `value` if it holds a control character (the first one, as
    "text holds control character U+001B at 4"), or None."""
    found = CONTROL_RE.search(value)
    if found is None:
        return None
    return f"text holds control character U+{ord(found.group()):04X} at {found.start()}"


def _check_text(value: str) -> None:
    problem = control_character_problem(value)
    if problem:
        raise ValueError(problem)


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    _json_safe(value)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


def utcnow() -> datetime:
    """The current instant, timezone-aware UTC: what messages are stamped with."""
    return datetime.now(UTC)


CollectorKey = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")]
CollectorAnswers = Annotated[dict[CollectorKey, StrictBool], Field(max_length=8)]


class Power(StrEnum):
    """A device's power state in a reading; `unknown` when its collectors could not tell."""

    on = "on"
    standby = "standby"
    off = "off"
    warming = "warming"
    cooling = "cooling"
    unknown = "unknown"


class Flag(StrEnum):
    """The state of one error flag in `ErrorFlags`."""

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
        """The device's error state as a whole: the most serious of the six flags."""
        flags = {self.fan, self.lamp, self.temperature, self.cover, self.filter, self.other}
        if Flag.error in flags:
            return Flag.error
        if Flag.warning in flags:
            return Flag.warning
        return Flag.ok


class Reading(BaseModel):
    """One poll of one device."""

    model_config = ConfigDict(extra="forbid")

    device: DeviceId
    ts: UtcDatetime
    reachable: bool
    power: Power = Power.unknown
    input: Text | None = Field(default=None, max_length=64)
    temperature_c: Celsius | None = None
    lamp_hours: Hours | None = None
    filter_hours: Hours | None = None
    uptime_s: Seconds | None = None
    firmware: Text | None = Field(default=None, max_length=64)
    errors: ErrorFlags | None = None
    # Why the device could not be read, in words a technician can act on.
    error: Text | None = Field(default=None, max_length=500)
    metrics: Metrics = Field(default_factory=dict)
    # Which of the device's collectors (its profile's chain, in order) answered this poll,
    # e.g. {"maxhub-lan": true, "reachability": true}. Absent from agents before chains.
    collectors: CollectorAnswers | None = None


class HealthEnvelope(BaseModel):
    """A health batch with its readings not yet judged: how the controller reads a batch that
    failed as a whole, so that each reading is stored or refused on its own."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal[1] = Field(default=1, alias="schema")
    msg_id: str = Field(min_length=26, max_length=26, pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")
    site: SiteCode
    agent_id: Text = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0, le=INT64_MAX)
    sent_at: UtcDatetime
    readings: list[Any] = Field(max_length=MAX_READINGS_PER_BATCH)


class HealthBatch(HealthEnvelope):
    """What an agent publishes on `fleet/v1/<site>/health`."""

    readings: list[Reading] = Field(max_length=MAX_READINGS_PER_BATCH)

    def to_json(self) -> bytes:
        """The MQTT payload: UTF-8 JSON, `schema` under its wire name, None fields left out."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class BatchReading(Reading):
    """A `Reading` as the controller validates a whole batch at once (`CheckedBatch`): the
    same fields and values, with `BatchUtcDatetime` and `BatchMetrics`. It takes nothing that
    `Reading` refuses; what it refuses besides (a stamp with an offset other than UTC's) is
    taken by `Reading` when the batch is judged reading by reading."""

    ts: BatchUtcDatetime
    metrics: BatchMetrics = Field(default_factory=dict)


class CheckedBatch(HealthEnvelope):
    """A health batch validated whole, in one pydantic-core call, by the controller. A batch
    it refuses is judged again reading by reading (fleet.ingest.parse), with the words of
    `Reading`."""

    readings: list[BatchReading] = Field(max_length=MAX_READINGS_PER_BATCH)

    @model_validator(mode="after")
    def _metric_ints_in_range(self) -> CheckedBatch:
        # The bound `BatchMetrics` leaves out: one Python call a batch, not one a reading.
        for reading in self.readings:
            for name, item in reading.metrics.items():
                if type(item) is int and not INT64_MIN <= item <= INT64_MAX:
                    raise ValueError(f"metric {name!r}: integer {item} does not fit in 64 bits")
        return self


class AgentStateValue(StrEnum):
    """Whether a site's agent is connected to the broker; `offline` is also its MQTT will."""

    online = "online"
    offline = "offline"


class AgentState(BaseModel):
    """Retained on `fleet/v1/<site>/agent/state`; the offline form is also the MQTT will."""

    model_config = ConfigDict(extra="forbid")

    state: AgentStateValue
    agent_id: Text = Field(min_length=1, max_length=64)
    version: Text = Field(max_length=32)
    boot_id: Text = Field(max_length=64)
    ts: UtcDatetime

    def to_json(self) -> bytes:
        """The MQTT payload (and will): UTF-8 JSON."""
        return self.model_dump_json().encode()


class EventKind(StrEnum):
    """What an agent event reports: firmware update progress, discovery results, an agent
    error, or readings dropped because the agent's outbox hit its bound."""

    update_progress = "update_progress"
    discovery = "discovery"
    agent_error = "agent_error"
    outbox_dropped = "outbox_dropped"


class AgentEvent(BaseModel):
    """Published on `fleet/v1/<site>/events`."""

    model_config = ConfigDict(extra="forbid")

    kind: EventKind
    site: SiteCode
    agent_id: Text = Field(min_length=1, max_length=64)
    ts: UtcDatetime
    device: DeviceId | None = None
    message: Text = Field(default="", max_length=2000)
    data: JsonObject = Field(default_factory=dict)

    def to_json(self) -> bytes:
        """The MQTT payload: UTF-8 JSON, None fields left out (`device`, when it names none)."""
        return self.model_dump_json(exclude_none=True).encode()


class CommandKind(StrEnum):
    """What a command asks a site's agent to do. Each kind's `args` model is in
    fleet.protocol.commands; `config_reload` has none."""

    firmware_update = "firmware_update"
    config_reload = "config_reload"
    poll_now = "poll_now"
    # The controller's word: what it has revoked (fleet/protocol/commands.py).
    cancel = "cancel"
    power = "power"
    input = "input"


class Command(BaseModel):
    """Published by the controller on `fleet/v1/<site>/cmd`. Each kind's `args` are checked
    by fleet.protocol.commands. `campaign` names the work the command belongs to (a rollout),
    which a `cancel` revokes as a whole; `expires_at` (the controller's clock) is when it is
    no longer to be started."""

    model_config = ConfigDict(extra="forbid")

    cmd_id: str = Field(min_length=1, max_length=64, pattern=CMD_ID_PATTERN)
    kind: CommandKind
    site: SiteCode
    issued_at: UtcDatetime
    devices: list[DeviceId] = Field(default_factory=list, max_length=1000)
    args: JsonObject = Field(default_factory=dict)
    campaign: str | None = Field(default=None, max_length=50, pattern=CAMPAIGN_PATTERN)
    expires_at: UtcDatetime | None = None

    def to_json(self) -> bytes:
        """The MQTT payload: UTF-8 JSON."""
        return self.model_dump_json().encode()


class CommandAck(BaseModel):
    """Published by the agent on `fleet/v1/<site>/cmd/ack`."""

    model_config = ConfigDict(extra="forbid")

    cmd_id: Text = Field(min_length=1, max_length=64)
    site: SiteCode
    agent_id: Text = Field(min_length=1, max_length=64)
    ok: bool
    ts: UtcDatetime
    message: Text = Field(default="", max_length=2000)

    def to_json(self) -> bytes:
        """The MQTT payload: UTF-8 JSON."""
        return self.model_dump_json().encode()


# --- topics -----------------------------------------------------------------------------


class Topics:
    """Topic names under a root (`fleet/v1` unless a deployment shares its broker)."""

    def __init__(self, root: str = TOPIC_ROOT) -> None:
        """`root` without a trailing slash, e.g. `fleet/v1`."""
        self.root = root.rstrip("/")

    def agent_state(self, site: str) -> str:
        """Where the site's agent keeps its retained online/offline state (and its will)."""
        return f"{self.root}/{site}/agent/state"

    def health(self, site: str) -> str:
        """Where the site's agent publishes health batches."""
        return f"{self.root}/{site}/health"

    def device_health(self, site: str, device: str) -> str:
        """Where an MQTT-native device of the site publishes its own readings, one a message."""
        return f"{self.root}/{site}/devices/{device}/health"

    def events(self, site: str) -> str:
        """Where the site's agent publishes events (update progress, discovery, errors)."""
        return f"{self.root}/{site}/events"

    def cmd(self, site: str) -> str:
        """Where the controller publishes commands to the site's agent."""
        return f"{self.root}/{site}/cmd"

    def cmd_ack(self, site: str) -> str:
        """Where the site's agent publishes command results."""
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
    """Which of the contract's topics a topic is, as `parse_topic` tells it."""

    health = "health"
    device_health = "device_health"
    agent_state = "agent_state"
    events = "events"
    cmd = "cmd"
    cmd_ack = "cmd_ack"


class ParsedTopic(BaseModel):
    """A received topic taken apart by `parse_topic`: its kind, its site code, and the device
    id of a device's own health topic."""

    kind: TopicKind
    site: str
    device: str | None = None


class TopicError(ValueError):
    """A topic outside the contract: wrong root, a bad site code or device id, or an unknown
    shape. The controller rejects its message with this reason."""


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
        message = err["msg"]
        if err["type"] == "string_pattern_mismatch" and isinstance(err["input"], str):
            # The pattern itself would print the control characters it refuses.
            message = control_character_problem(err["input"]) or message
        parts.append(f"{where}: {message.removeprefix('Value error, ')}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
