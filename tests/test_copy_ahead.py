"""A group's readings COPYed while the group is gathered (PostgreSQL, `SampleCopy`): whatever
the group holds, the same outcomes, samples, dead letters and device states as the same group
written only at its close, and each kind of group takes the path it should (its COPY kept, or
rolled back and the group written as any other)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from fleet.db import is_database_fault, make_engine
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import IncomingMessage, Ingest, OutcomeStatus
from fleet.ingest.store import CopyAhead
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import Topics
from fleet.protocol.site_config import LoadedSite
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker, session_subscriber
from tests.fixtures_db import (
    RECEIVED,
    _postgres_clone_url,
    agent_state,
    batch,
    health,
    message,
    reading,
)
from tests.procs import wait_for

pytestmark = pytest.mark.postgres

T0 = RECEIVED - timedelta(minutes=5)
UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc"]
TU = "tu-sc1-panel-1"

# What is compared between the two ways of writing a group: every column that the group
# decides (not row ids, nor times the database stamps itself).
SNAPSHOT = {
    "sample": "SELECT device_id, ts, received_at, msg_id, reachable, power, input, "
    "temperature_c, lamp_hours, filter_hours, uptime_s, firmware, errors::text, error, "
    "metrics::text FROM sample ORDER BY device_id, ts",
    "dead_letter": "SELECT topic, reason, detail, payload, size, truncated FROM dead_letter "
    "ORDER BY topic, reason, detail, payload",
    "ingested_message": "SELECT msg_id, site_code, agent_id, seq, readings "
    "FROM ingested_message ORDER BY msg_id",
    "device": "SELECT id, state, state_reason, state_since, last_seen_at, firmware, power, "
    "reachable, last_reading::text FROM device ORDER BY id",
}


@pytest.fixture
def clone(postgres_template: str, loaded_sites: list[LoadedSite]) -> Iterator[Callable[[], Engine]]:
    """Makes registered PostgreSQL databases of the test's own, as many as it asks for."""
    with contextlib.ExitStack() as stack:

        def make() -> Engine:
            url = stack.enter_context(
                contextlib.contextmanager(_postgres_clone_url)(postgres_template)
            )
            engine = make_engine(url)
            stack.callback(engine.dispose)
            sync_registry(engine, loaded_sites)
            return engine

        yield make


def gathered(ingest: Ingest, group: list[IncomingMessage]) -> tuple[list[Any], CopyAhead | None]:
    """The group as the subscriber's writer stores it: each message checked and its readings
    COPYed as it arrives, then the group handled with that COPY. Its outcomes, and how the
    COPY ended."""
    copy = ingest.open_copy()
    assert copy is not None, "PostgreSQL over psycopg copies ahead"
    checked = []
    for m in group:
        c = ingest.check(m)
        checked.append(c)
        if c is not None:
            copy.feed(m, c.parsed)
    outcomes = ingest.handle(group, checked, copy)
    return outcomes, copy.outcome


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {name: [tuple(r) for r in conn.execute(text(sql))] for name, sql in SNAPSHOT.items()}


def summary(outcomes: list[Any]) -> list[tuple[Any, ...]]:
    return [(o.status, o.reason, o.readings, o.refused_readings) for o in outcomes]


def ulid_like(n: int) -> str:
    return f"01JC{n:022d}"


def bad_json(site: str = "upm") -> IncomingMessage:
    return message(f"fleet/v1/{site}/health", b'{"schema": 1, "msg_id": ')


# Each case: the groups stored before (written as usual), the group under test, and how its
# COPY must end.
Case = tuple[list[list[IncomingMessage]], list[IncomingMessage], CopyAhead]


def cases() -> dict[str, Case]:
    a = health("upm", [reading(d, T0, temperature_c=40.5) for d in UPM], msg_id=ulid_like(1))
    b = health("tribhuvan", [reading(TU, T0, lamp_hours=1200)], msg_id=ulid_like(2))
    later = health("upm", [reading(UPM[0], T0 + timedelta(seconds=30))], msg_id=ulid_like(3))
    on = health("upm", [reading(UPM[1], T0, power="on")], msg_id=ulid_like(4))
    off = health("upm", [reading(UPM[1], T0, power="off")], msg_id=ulid_like(5))
    resent = health(
        "upm",
        [reading(UPM[0], T0), reading(UPM[0], T0 + timedelta(minutes=1))],
        msg_id=ulid_like(6),
    )
    mixed = message(
        "fleet/v1/upm/health",
        {
            **batch("upm", [reading(UPM[2], T0 + timedelta(minutes=2))], msg_id=ulid_like(7)),
            "readings": [
                reading(UPM[2], T0 + timedelta(minutes=2)),
                reading(UPM[2], datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
                reading("ghost-device", T0),
                {"device": UPM[2], "ts": "yesterday", "reachable": True},
            ],
        },
    )
    device_topic = message(
        f"fleet/v1/upm/devices/{UPM[0]}/health",
        {"device": UPM[0], "ts": (T0 + timedelta(minutes=3)).isoformat(), "reachable": True},
    )
    return {
        "new readings from two sites": ([], [a, b, later], CopyAhead.kept),
        "a batch twice in the group": ([], [a, b, a], CopyAhead.kept),
        "a batch stored before, delivered again": ([[a]], [b, a], CopyAhead.already_stored),
        "a reading stored before, sent again under a new msg_id": (
            [[a]],
            [resent],
            CopyAhead.already_stored,
        ),
        "one reading twice in the group, the later kept": (
            [],
            [on, b, off],
            CopyAhead.reading_twice,
        ),
        "bad messages and readings beside good ones": (
            [],
            [bad_json(), a, message("fleet/v1/nowhere/health", batch("nowhere", [])), mixed],
            CopyAhead.kept,
        ),
        "agent state, a device's own topic, and readings": (
            [],
            [
                agent_state("upm", "online", T0, RECEIVED),
                device_topic,
                b,
                agent_state("upm", "offline", T0 + timedelta(seconds=1), RECEIVED),
            ],
            CopyAhead.kept,
        ),
        "a group with no readings": ([], [bad_json(), bad_json("tribhuvan")], CopyAhead.kept),
    }


@pytest.mark.parametrize("name", list(cases()))
def test_a_group_copied_ahead_is_stored_as_the_group_written_at_its_close(
    name: str, clone: Callable[[], Engine]
) -> None:
    before, group, expected = cases()[name]
    ahead, at_close = clone(), clone()
    ingest_ahead, ingest_at_close = Ingest(ahead), Ingest(at_close)
    for earlier in before:
        ingest_ahead.handle(earlier)
        ingest_at_close.handle(earlier)

    outcomes, how = gathered(ingest_ahead, group)
    plain = ingest_at_close.handle(group)

    assert how == expected
    assert summary(outcomes) == summary(plain)
    assert snapshot(ahead) == snapshot(at_close)
    assert ingest_ahead.readings == ingest_at_close.readings
    assert dict(ingest_ahead.rejected) == dict(ingest_at_close.rejected)


def test_the_later_of_two_copies_of_a_reading_is_the_one_stored(
    clone: Callable[[], Engine],
) -> None:
    engine = clone()
    on = health("upm", [reading(UPM[1], T0, power="on")])
    off = health("upm", [reading(UPM[1], T0, power="off")])
    _, how = gathered(Ingest(engine), [on, off])
    assert how == CopyAhead.reading_twice
    with engine.connect() as conn:
        assert conn.execute(text("SELECT power FROM sample")).scalars().all() == ["off"]


def test_a_batch_whose_samples_were_rolled_up_is_still_a_duplicate(
    clone: Callable[[], Engine],
) -> None:
    """A batch delivered again after its samples were rolled up and deleted: its msg_id is
    still in the ledger, so it is a duplicate and stores nothing, though its readings would
    COPY without a conflict."""
    engine = clone()
    ingest = Ingest(engine)
    a = health("upm", [reading(d, T0) for d in UPM])
    ingest.handle([a])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM sample"))  # as the roll-up does
    outcomes, how = gathered(ingest, [a])
    assert how == CopyAhead.already_stored
    assert [o.status for o in outcomes] == [OutcomeStatus.duplicate]
    assert snapshot(engine)["sample"] == []


def test_a_stored_msg_id_past_the_first_in_list_is_found(clone: Callable[[], Engine]) -> None:
    """A group of 600 one-reading batches, more ids than one IN list of the ledger check
    holds (500), the 551st stored before and its samples rolled up: found all the same."""
    engine = clone()
    ingest = Ingest(engine)
    group = [
        health("upm", [reading(UPM[i % 3], T0 + timedelta(seconds=i))], msg_id=ulid_like(1000 + i))
        for i in range(600)
    ]
    ingest.handle([group[550]])
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM sample"))
    outcomes, how = gathered(ingest, group)
    assert how == CopyAhead.already_stored
    assert [o.status for o in outcomes].count(OutcomeStatus.duplicate) == 1
    assert outcomes[550].status == OutcomeStatus.duplicate
    assert len(snapshot(engine)["sample"]) == 599


def test_a_message_checked_before_the_registry_was_reloaded_is_written_at_the_close(
    clone: Callable[[], Engine],
) -> None:
    """The registry reloaded between a message's check and its group (a site synced): the
    message is checked again at the group, and what was COPYed of it is not kept."""
    engine = clone()
    ingest = Ingest(engine)
    group = [health("upm", [reading(d, T0) for d in UPM])]
    copy = ingest.open_copy()
    assert copy is not None
    checked = [ingest.check(m) for m in group]
    for m, c in zip(group, checked, strict=True):
        assert c is not None
        copy.feed(m, c.parsed)
    ingest.refresh_registry()
    outcomes = ingest.handle(group, checked, copy)
    assert copy.outcome == CopyAhead.checked_again
    assert [o.status for o in outcomes] == [OutcomeStatus.stored]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sample")).scalar_one() == 3


def test_a_row_the_database_refuses_is_dead_lettered_alone(clone: Callable[[], Engine]) -> None:
    """A device deleted behind the registry cache's back: its reading breaks the foreign key
    when the COPY ends. The COPY is rolled back, the group written one message at a time, and
    only that message is dead-lettered."""
    engine = clone()
    ingest = Ingest(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM device WHERE id = 'upm-sc1-pc'"))
    group = [health("upm", [reading("upm-sc1-pc", T0)]), health("upm", [reading(UPM[1], T0)])]
    outcomes, how = gathered(ingest, group)
    assert how == CopyAhead.refused
    assert [o.status for o in outcomes] == [OutcomeStatus.rejected, OutcomeStatus.stored]
    assert snapshot(engine)["dead_letter"][0][1] == "db_rejected"
    assert len(snapshot(engine)["sample"]) == 1


def test_the_database_lost_while_a_group_is_copied_loses_nothing(
    clone: Callable[[], Engine],
) -> None:
    """The COPY's connection is killed while the group is gathered (the database restarted):
    the group raises a database fault, stores nothing, and is stored whole when tried again
    without its COPY, as the subscriber does."""
    engine = clone()
    ingest = Ingest(engine)
    group = [health("upm", [reading(d, T0) for d in UPM]), health("tribhuvan", [reading(TU, T0)])]
    copy = ingest.open_copy()
    assert copy is not None
    checked = []
    for i, m in enumerate(group):
        c = ingest.check(m)
        checked.append(c)
        assert c is not None
        copy.feed(m, c.parsed)
        if i == 0:  # the COPY's server process, found from another connection
            with engine.connect() as admin:
                killed = admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE :copy"
                    ),
                    {"copy": "COPY sample %"},
                ).scalars()
                assert list(killed) == [True]
    with pytest.raises(Exception) as raised:
        ingest.handle(group, checked, copy)
    assert is_database_fault(raised.value), raised.value
    assert len(snapshot(engine)["sample"]) == 0
    assert ingest.readings == 0

    outcomes = ingest.handle(group, checked)
    assert [o.status for o in outcomes] == [OutcomeStatus.stored, OutcomeStatus.stored]
    assert len(snapshot(engine)["sample"]) == 4
    assert ingest.readings == 4


# Hostile groups: any mix of good batches, the same batch again, a reading sent again under a
# new msg_id, readings far in the past or future, unknown devices, broken JSON and control
# characters, in any order.
def _pool() -> list[IncomingMessage]:
    far = datetime(1970, 1, 1, tzinfo=UTC)
    return [
        health("upm", [reading(d, T0) for d in UPM], msg_id=ulid_like(11)),
        health("upm", [reading(UPM[0], T0)], msg_id=ulid_like(12)),  # T0 again, new msg_id
        health("upm", [reading(UPM[0], T0 + timedelta(seconds=1), power="off")]),
        health("tribhuvan", [reading(TU, far), reading(TU, T0, temperature_c=-273.15)]),
        health("upm", [reading(UPM[1], T0, firmware="3.2\x00.1")]),
        health("upm", [reading(UPM[2], T0, input="hdmi\u202e1", metrics={"k": "é" * 300})]),
        health("upm", [reading("ghost-device", T0), reading(UPM[2], T0 + timedelta(hours=1))]),
        health("upm", [reading(UPM[1], datetime(2200, 1, 1, tzinfo=UTC))]),
        bad_json(),
        message("fleet/v1/upm/health", "ü".encode("latin-1")),
        message("fleet/v1/upm/health", json.dumps([1, 2, 3]).encode()),
        agent_state("upm", "offline", T0 + timedelta(seconds=2), RECEIVED),
    ]


POOL = _pool()


@pytest.fixture
def twins(clone: Callable[[], Engine]) -> tuple[Engine, Engine]:
    return clone(), clone()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(groups=st.lists(st.lists(st.sampled_from(POOL), max_size=8), min_size=1, max_size=3))
def test_any_mix_is_stored_alike_copied_ahead_or_not(
    twins: tuple[Engine, Engine], groups: list[list[IncomingMessage]]
) -> None:
    """One pair of databases for the whole run, fed the same groups: if the two ways ever
    store differently, the snapshots part and stay parted."""
    ahead, at_close = twins
    ingest_ahead, ingest_at_close = Ingest(ahead), Ingest(at_close)
    for group in groups:
        outcomes, _ = gathered(ingest_ahead, group)
        assert summary(outcomes) == summary(ingest_at_close.handle(group))
    assert snapshot(ahead) == snapshot(at_close)


@MOSQUITTO_ONLY
def test_the_subscriber_copies_ahead_through_a_real_broker(
    clone: Callable[[], Engine], broker: TestBroker
) -> None:
    """Through Mosquitto and the real subscriber: 60 batches, and 10 of them sent twice, held
    by the broker for the subscriber's session and so taken in large groups. Every reading
    is stored once, every copy counted a duplicate, and the groups' COPYs kept."""
    engine = clone()
    ingest = Ingest(engine, topic_root=broker.topic_root)
    subscriber = session_subscriber(ingest, broker)
    payloads = [
        json.dumps(
            batch(
                "upm",
                [reading(d, T0 + timedelta(seconds=i)) for d in UPM],
                msg_id=ulid_like(100 + i),
                seq=i + 1,
            )
        ).encode()
        for i in range(60)
    ]
    publisher = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    address = parse_mqtt_url(broker.url)
    publisher.connect(address.host, address.port)
    publisher.loop_start()
    topic = Topics(broker.topic_root).health("upm")
    try:
        for info in [publisher.publish(topic, p, qos=1) for p in payloads + payloads[:10]]:
            info.wait_for_publish(30)
    finally:
        publisher.disconnect()
        publisher.loop_stop()

    kept_before = kept()
    subscriber.start()
    try:
        wait_for(lambda: subscriber.stats.acked >= 70 or None, 30, "every message stored")
    finally:
        subscriber.stop()
    assert (ingest.outcomes["stored"], ingest.outcomes["duplicate"]) == (60, 10)
    samples = snapshot(engine)["sample"]
    assert len(samples) == len({(r[0], r[1]) for r in samples}) == 180
    assert kept() > kept_before


def kept() -> float:
    value = REGISTRY.get_sample_value("fleet_ingest_copy_ahead_total", {"outcome": "kept"})
    return value or 0.0


def test_psycopg_errors_from_a_raw_cursor_are_told_apart_as_sqlalchemys_are(
    clone: Callable[[], Engine],
) -> None:
    """The COPY's cursor is psycopg's own, so its errors come unwrapped: the database away or
    the deployment wrong is a fault to retry, a value the store refuses is not."""
    import psycopg

    engine = clone()

    def raised(sql: str) -> BaseException:
        with engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            with pytest.raises(psycopg.Error) as caught:
                cursor.execute(sql)
            return caught.value

    assert not is_database_fault(raised("SELECT 1 / 0"))
    assert not is_database_fault(raised("INSERT INTO site (code) VALUES (NULL)"))
    assert is_database_fault(raised("SELECT * FROM no_such_table"))
    assert is_database_fault(raised("SELECT pg_terminate_backend(pg_backend_pid())"))
    assert not is_database_fault(psycopg.errors.ProgramLimitExceeded("index row too big"))
