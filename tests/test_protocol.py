"""The wire contract: what is accepted, what is refused, and the topics."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError
from ulid import ULID

from fleet.protocol.messages import (
    AgentState,
    ErrorFlags,
    Flag,
    HealthBatch,
    Reading,
    TopicError,
    TopicKind,
    Topics,
    describe_validation_error,
    parse_topic,
)

NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)


def batch(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "schema": 1,
        "msg_id": str(ULID()),
        "site": "upm",
        "agent_id": "upm-agent-1",
        "seq": 7,
        "sent_at": NOW.isoformat(),
        "readings": [
            {
                "device": "upm-sc1-panel-1",
                "ts": NOW.isoformat(),
                "reachable": True,
                "power": "on",
                "errors": {"lamp": "warning"},
            }
        ],
    }
    data.update(overrides)
    return data


def test_batch_round_trips_as_on_the_wire() -> None:
    parsed = HealthBatch.model_validate_json(json.dumps(batch()))
    wire = json.loads(parsed.to_json())
    assert wire["schema"] == 1
    assert wire["readings"][0]["errors"]["lamp"] == "warning"
    assert HealthBatch.model_validate(wire) == parsed


def test_timestamps_are_utc_and_must_carry_a_zone() -> None:
    later = datetime(2026, 3, 2, 8, 45, tzinfo=timezone(timedelta(hours=5, minutes=45)))
    reading = Reading(device="tu-sc1-panel-1", ts=later, reachable=True)
    assert reading.ts == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
    with pytest.raises(ValidationError) as caught:
        Reading.model_validate({"device": "x1", "ts": "2026-03-02T03:00:00", "reachable": True})
    assert "timezone" in describe_validation_error(caught.value)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"schema": 2}, "schema"),
        ({"msg_id": "not-a-ulid"}, "msg_id"),
        ({"site": "UPM"}, "site"),
        (
            {
                "readings": [
                    {"device": "d1", "ts": NOW.isoformat(), "reachable": True, "power": "exploded"}
                ]
            },
            "readings.0.power",
        ),
        (
            {
                "readings": [
                    {"device": "d1", "ts": NOW.isoformat(), "reachable": True, "colour": "red"}
                ]
            },
            "readings.0.colour",
        ),
    ],
)
def test_wrong_schema_is_refused_with_where(change: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        HealthBatch.model_validate(batch(**change))
    assert describe_validation_error(caught.value).startswith(where)


def test_error_flags_worst() -> None:
    assert ErrorFlags().worst() == Flag.ok
    assert ErrorFlags(fan=Flag.warning).worst() == Flag.warning
    assert ErrorFlags(fan=Flag.warning, lamp=Flag.error).worst() == Flag.error


def test_topics_and_parsing() -> None:
    topics = Topics()
    assert topics.health("upm") == "fleet/v1/upm/health"
    assert parse_topic(topics.agent_state("ugb")).kind == TopicKind.agent_state
    native = parse_topic(topics.device_health("usthb", "usthb-sc1-panel-1"))
    assert (native.kind, native.site, native.device) == (
        TopicKind.device_health,
        "usthb",
        "usthb-sc1-panel-1",
    )
    assert parse_topic("t1/fleet/v1/upm/health", root="t1/fleet/v1").site == "upm"
    for bad in (
        "fleet/v1/upm/health/extra",
        "fleet/v2/upm/health",
        "fleet/v1/UPM/health",
        "fleet/v1/upm/devices/A B/health",
        "",
    ):
        with pytest.raises(TopicError):
            parse_topic(bad)


def test_agent_state_is_the_will_shape() -> None:
    state = AgentState.model_validate(
        {
            "state": "offline",
            "agent_id": "a",
            "version": "0.1.0",
            "boot_id": "b",
            "ts": NOW.isoformat(),
        }
    )
    assert json.loads(state.to_json())["state"] == "offline"
