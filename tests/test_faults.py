"""Nothing lost, nothing twice: real broker, controller and agent processes, real faults.

Each test prints sent (readings the agent took into its outbox), stored (sample rows),
duplicates (rows beyond one per device and timestamp) and lost, and asserts lost = 0 and
duplicates = 0. Devices are polled every second so a stream builds up quickly.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from ulid import ULID

from fleet.protocol.messages import HealthBatch, Power, Reading, Topics
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_broker import MOSQUITTO_ONLY, OwnMosquitto, TestBroker
from tests.procs import Stack, sample_counts, wait_for

FAST_POLL_S = 1


@pytest.fixture
def fast_profiles(tmp_path: Path) -> Path:
    """The shipped profiles, polled every second instead of every minute."""
    out = tmp_path / "firmware_profiles"
    out.mkdir()
    for path in DEFAULT_PROFILES_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.setdefault("poll", {}).update(interval_s=FAST_POLL_S, timeout_s=0.5, retries=0)
        (out / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@pytest.fixture
def stack(tmp_path: Path, own_mosquitto: OwnMosquitto, fast_profiles: Path) -> Iterator[Stack]:
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    s = Stack(
        tmp_path,
        own_mosquitto.url,
        root,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        profiles_dir=fast_profiles,
    )
    yield s
    s.stop_all()


def stored_counts(stack: Stack) -> tuple[int, int]:
    return sample_counts(stack.database_url)


def stored(stack: Stack) -> int:
    return stored_counts(stack)[0]


def settle_and_account(stack: Stack, name: str) -> None:
    """Stop the agent cleanly, let everything drain, then count."""
    agent = next(p for p in stack.procs if p.name == "agent" and p.alive())
    assert agent.stop() == 0, stack.logs()

    def drained() -> dict[str, int] | None:
        status = stack.agent_status()
        total, _ = stored_counts(stack)
        expected = status["readings_taken"] - status["dropped"]
        return status if status["outbox_depth"] == 0 and total >= expected else None

    # On a timeout, fall through to the accounting, which says what is missing.
    with contextlib.suppress(TimeoutError):
        wait_for(drained, 60, "the outbox to drain and every reading to be stored")
    status = stack.agent_status()
    total, distinct = stored_counts(stack)
    sent = status["readings_taken"]
    duplicates = total - distinct
    lost = sent - status["dropped"] - distinct
    print(
        f"\n[{name}] sent {sent}, stored {total}, duplicates {duplicates}, lost {lost}, "
        f"dropped by bound {status['dropped']}, outbox depth {status['outbox_depth']}"
    )
    assert status["dropped"] == 0
    assert duplicates == 0
    assert lost == 0, stack.logs()


def start_stream(stack: Stack, min_stored: int = 15) -> None:
    stack.simulate()
    stack.controller()
    stack.agent("--linger", "0.3", "--max-batches-per-s", "50")
    wait_for(lambda: stored(stack) >= min_stored, 60, f"{min_stored} readings stored")


@pytest.mark.timeout(180)
def test_broker_outage_mid_stream_loses_nothing(stack: Stack, own_mosquitto: OwnMosquitto) -> None:
    start_stream(stack)
    own_mosquitto.stop()
    before = stack.agent_status()["outbox_depth"]
    # The agent keeps polling into its outbox while the broker is away.
    wait_for(
        lambda: stack.agent_status()["outbox_depth"] >= before + 15,
        60,
        "readings to pile up in the outbox during the outage",
    )
    own_mosquitto.start()
    at_restart = stored(stack)
    wait_for(lambda: stored(stack) > at_restart + 15, 90, "ingest to resume after the outage")
    settle_and_account(stack, "broker outage")


@pytest.mark.timeout(180)
def test_agent_killed_mid_stream_loses_nothing(stack: Stack) -> None:
    start_stream(stack)
    agent = next(p for p in stack.procs if p.name == "agent")
    agent.kill9()
    taken_at_kill = stack.agent_status()["readings_taken"]
    stack.agent("--linger", "0.3", "--max-batches-per-s", "50")
    wait_for(
        lambda: stack.agent_status()["readings_taken"] >= taken_at_kill + 15,
        60,
        "the restarted agent to take new readings",
    )
    settle_and_account(stack, "agent kill -9")


@pytest.mark.timeout(180)
def test_controller_down_while_agents_publish_loses_nothing(stack: Stack) -> None:
    start_stream(stack)
    controller = next(p for p in stack.procs if p.name == "controller")
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert controller.stop() in (0, -signal.SIGTERM)
    acked_at_stop = stack.agent_status()["readings_acked"]
    # The broker accepts (PUBACK) what the agent sends, and queues it for the controller.
    wait_for(
        lambda: stack.agent_status()["readings_acked"] >= acked_at_stop + 20,
        60,
        "the broker to take readings while the controller is down",
    )
    stored_while_down = stored(stack)
    stack.controller()
    wait_for(
        lambda: stored(stack) > stored_while_down + 20,
        60,
        "the restarted controller to ingest what was queued",
    )
    settle_and_account(stack, "controller down")


@MOSQUITTO_ONLY
def test_same_batch_published_twice_is_stored_once(tmp_path: Path, broker: TestBroker) -> None:
    stack = Stack(tmp_path, broker.url, broker.topic_root, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        stack.controller()
        now = datetime.now(UTC)
        batch = HealthBatch(
            msg_id=str(ULID()),
            site="upm",
            agent_id="upm-agent-1",
            seq=1,
            sent_at=now,
            readings=[
                Reading(device=d, ts=now, reachable=True, power=Power.on)
                for d in ("upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc2-panel-1")
            ],
        )
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        host, port = broker.url.removeprefix("mqtt://").split("?")[0].split(":")
        client.connect(host, int(port))
        client.loop_start()
        topic = Topics(broker.topic_root).health("upm")
        for _ in range(2):
            client.publish(topic, batch.to_json(), qos=1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()

        def both_handled() -> dict[str, int] | None:
            outcomes = stack.get("/healthz")["ingest"]["outcomes"]
            return outcomes if outcomes.get("duplicate") == 1 else None

        outcomes = wait_for(both_handled, 30, "ingest to handle both copies")
        total, distinct = stored_counts(stack)
        print(
            f"\n[same batch twice] sent 3, stored {total}, duplicates {total - distinct}, "
            f"lost {3 - distinct}; outcomes {outcomes}"
        )
        assert outcomes["stored"] == 1
        assert (total, distinct) == (3, 3)
    finally:
        stack.stop_all()


@MOSQUITTO_ONLY
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_reading_no_store_can_hold_is_refused_and_ingest_goes_on(
    tmp_path: Path, broker: TestBroker, store: str, request: pytest.FixtureRequest
) -> None:
    """The field's example: one batch on upm's health topic holds a reading stamped
    9999-12-31T23:59:59Z beside a good one. The good reading is stored, the bad one is
    dead-lettered and counted, /healthz stays 200, and the batch behind it is stored."""
    database = (
        f"sqlite:///{tmp_path / 'fleet.db'}"
        if store == "sqlite"
        else request.getfixturevalue("migrated_postgres_url")
    )
    stack = Stack(tmp_path, broker.url, broker.topic_root, database)
    try:
        stack.controller()
        wait_for(lambda: stack.get("/healthz"), 30, "the controller to be healthy")
        now = datetime.now(UTC)
        good = Reading(device="upm-sc1-panel-1", ts=now, reachable=True, power=Power.on)
        upm = HealthBatch(
            msg_id=str(ULID()),
            site="upm",
            agent_id="upm-agent-1",
            seq=1,
            sent_at=now,
            readings=[good],
        ).model_dump(mode="json", by_alias=True)
        upm["readings"].append({**upm["readings"][0], "ts": "9999-12-31T23:59:59Z"})
        behind = HealthBatch(
            msg_id=str(ULID()),
            site="upm",
            agent_id="upm-agent-1",
            seq=2,
            sent_at=now,
            readings=[Reading(device="upm-sc1-panel-2", ts=now, reachable=True)],
        )
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        host, port = broker.url.removeprefix("mqtt://").split("?")[0].split(":")
        client.connect(host, int(port))
        client.loop_start()
        topics = Topics(broker.topic_root)
        client.publish(topics.health("upm"), json.dumps(upm), qos=1).wait_for_publish(10)
        client.publish(topics.health("upm"), behind.to_json(), qos=1).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()

        def both_stored() -> dict[str, Any] | None:
            health = stack.get("/healthz")
            return health if health and health["ingest"]["outcomes"].get("stored") == 2 else None

        health = wait_for(both_stored, 30, "ingest to store both batches")
        assert health["ingest"]["readings_refused"] == {"invalid": 1}
        assert health["ingest"]["readings"] == 2
        assert sample_counts(database) == (2, 2)
    finally:
        stack.stop_all()
