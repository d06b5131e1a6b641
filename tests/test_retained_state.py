"""Retained state replayed is not news: a real agent killed on a real Mosquitto leaves its will
retained, and a real controller restarted under it changes nothing.

The field's example: the agent is killed, its will ("offline") stands retained, the
`site_offline` alert opens with a webhook. The controller restarts; the broker sends the
retained will again on its subscription. Before, the controller stored it as new: it resolved
the alert ("condition cleared", an `alert.resolved` webhook) though the agent was still dead,
moved the devices' "offline since" to the restart, and opened a second alert 5.5 min later.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, create_engine, text

from fleet.protocol.messages import AgentState, AgentStateValue, Topics
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_broker import OwnMosquitto
from tests.procs import Stack, wait_for
from tests.webhook_receiver import Receiver, running_receiver

SECRET = "retained-state-test-secret"
# Well past the 5 min an outage must last before `site_offline` opens.
OUTAGE = timedelta(minutes=10)


@pytest.fixture
def fast_profiles(tmp_path: Path) -> Path:
    """The shipped profiles polled every second, so the agent reports at once."""
    out = tmp_path / "firmware_profiles"
    out.mkdir()
    for path in DEFAULT_PROFILES_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.setdefault("poll", {}).update(interval_s=1, timeout_s=0.5, retries=0)
        (out / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


@pytest.fixture
def stack(
    tmp_path: Path, own_mosquitto: OwnMosquitto, fast_profiles: Path, receiver: Receiver
) -> Iterator[Stack]:
    s = Stack(
        tmp_path,
        own_mosquitto.url,
        f"t{uuid.uuid4().hex[:10]}/fleet/v1",
        f"sqlite:///{tmp_path / 'fleet.db'}",
        profiles_dir=fast_profiles,
    )
    yield s
    s.stop_all()


def rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def job_ran_since(stack: Stack, job: str, since: datetime) -> bool:
    """True once a run of `job` that began after `since` has finished (read off /metrics)."""
    with urllib.request.urlopen(stack.base + "/metrics", timeout=5) as resp:
        body = resp.read().decode()
    pattern = rf'^fleet_job_last_success_timestamp_seconds\{{job="{job}"\}} (\S+)$'
    match = re.search(pattern, body, re.MULTILINE)
    return match is not None and float(match.group(1)) > since.timestamp()


def site_events(receiver: Receiver) -> list[dict[str, Any]]:
    return [e for e in receiver.events() if e["alert"]["kind"] == "site_offline"]


def controller(stack: Stack, receiver: Receiver) -> None:
    stack.controller(FLEET_WEBHOOK_URL=receiver.url, FLEET_WEBHOOK_SECRET=SECRET)


@pytest.mark.timeout(240)
def test_controller_restarted_under_a_retained_will_changes_nothing(
    stack: Stack, receiver: Receiver
) -> None:
    engine = create_engine(stack.database_url)
    try:
        stack.simulate()
        controller(stack, receiver)
        agent = stack.agent()
        wait_for(
            lambda: rows(engine, "SELECT state FROM agent_status WHERE state = 'online'"),
            60,
            "the agent to say online",
        )
        wait_for(
            lambda: rows(engine, "SELECT id FROM device WHERE state = 'online'"),
            60,
            "a device online from the agent's readings",
        )

        agent.kill9()  # the broker publishes its will, retained
        wait_for(
            lambda: rows(engine, "SELECT state FROM agent_status WHERE state = 'offline'"),
            30,
            "the agent's will to reach the controller",
        )
        # The agent died ten minutes ago, as far as the controller knows: shift the outage's
        # start back rather than wait out the five minutes before `site_offline` opens.
        with engine.begin() as conn:
            for table, columns in (
                ("agent_status", ("received_at", "last_message_at")),
                ("device", ("state_since",)),
            ):
                for column in columns:
                    for row in conn.execute(text(f"SELECT rowid, {column} FROM {table}")):
                        if row[1] is None:
                            continue
                        shifted = datetime.fromisoformat(str(row[1])) - OUTAGE
                        conn.execute(
                            text(f"UPDATE {table} SET {column} = :v WHERE rowid = :r"),
                            {"v": shifted.strftime("%Y-%m-%d %H:%M:%S.%f"), "r": row[0]},
                        )

        wait_for(lambda: site_events(receiver), 60, "the site_offline alert's webhook")
        [opened] = site_events(receiver)
        assert opened["event"] == "alert.opened"
        [alert] = rows(engine, "SELECT * FROM alert WHERE kind = 'site_offline'")
        sent_before = len(receiver.events())
        devices = rows(
            engine, "SELECT id, state, state_since, state_reason FROM device ORDER BY id"
        )
        agent_row = rows(engine, "SELECT * FROM agent_status")
        assert {d["state"] for d in devices} == {"site_offline"}

        # The controller restarts; the will still stands retained on the broker.
        assert stack.procs[1].name == "controller"
        stack.procs[1].stop()
        restarted = datetime.now(UTC)
        controller(stack, receiver)

        def replay_handled() -> dict[str, int] | None:
            outcomes: dict[str, int] = stack.get("/healthz")["ingest"]["outcomes"]
            return outcomes if sum(outcomes.values()) >= 1 else None

        outcomes = wait_for(replay_handled, 30, "the retained will to reach the new controller")
        handled = datetime.now(UTC)
        for job in ("liveness", "alerts"):
            wait_for(lambda job=job: job_ran_since(stack, job, handled), 60, f"a {job} run")
        judged = datetime.now(UTC)
        wait_for(lambda: job_ran_since(stack, "webhook", judged), 10, "a webhook run")

        print(f"\n[retained will] restarted {restarted:%H:%M:%S}, replay outcomes {outcomes}")
        assert rows(engine, "SELECT * FROM alert WHERE kind = 'site_offline'") == [alert]
        assert alert["state"] == "open" and alert["resolved_at"] is None
        assert site_events(receiver) == [opened]
        assert len(receiver.events()) == sent_before  # nor any other alert moved by the replay
        deliveries = rows(
            engine, "SELECT event FROM webhook_delivery WHERE alert_id = :a", a=alert["id"]
        )
        assert deliveries == [{"event": "alert.opened"}]
        assert (
            rows(engine, "SELECT id, state, state_since, state_reason FROM device ORDER BY id")
            == devices
        )
        assert rows(engine, "SELECT * FROM agent_status") == agent_row
        assert outcomes == {"duplicate": 1}  # acknowledged, and nothing changed
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_another_clients_retained_offline_leaves_a_reporting_site_online(
    stack: Stack, receiver: Receiver, own_mosquitto: OwnMosquitto
) -> None:
    """An old install's will stands retained on the site's topic (another agent id) while the
    site's agent reports: neither its arrival nor its replay to a restarted controller takes
    the site offline."""
    engine = create_engine(stack.database_url)
    try:
        stack.simulate()
        controller(stack, receiver)
        stack.agent()
        wait_for(
            lambda: rows(engine, "SELECT id FROM device WHERE state = 'online'"),
            60,
            "a device online from the agent's readings",
        )
        leftover = AgentState(
            state=AgentStateValue.offline,
            agent_id="upm-agent-old",
            version="0.9",
            boot_id="old-boot",
            ts=datetime.now(UTC),
        )
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", own_mosquitto.port)
        client.loop_start()
        topic = Topics(stack.topic_root).agent_state("upm")
        client.publish(topic, leftover.to_json(), qos=1, retain=True).wait_for_publish(10)
        client.loop_stop()
        client.disconnect()
        wait_for(
            lambda: stack.get("/healthz")["ingest"]["outcomes"].get("duplicate"),
            30,
            "the leftover will to reach the controller",
        )

        stack.procs[1].stop()
        controller(stack, receiver)
        wait_for(
            lambda: stack.get("/healthz")["ingest"]["outcomes"].get("duplicate"),
            30,
            "the leftover will, replayed, to reach the restarted controller",
        )
        handled = datetime.now(UTC)
        for job in ("liveness", "alerts"):
            wait_for(lambda job=job: job_ran_since(stack, job, handled), 60, f"a {job} run")

        assert rows(engine, "SELECT state, agent_id FROM agent_status") == [
            {"state": "online", "agent_id": "upm-agent-1"}
        ]
        assert rows(engine, "SELECT id FROM device WHERE state = 'site_offline'") == []
        assert rows(engine, "SELECT id FROM alert WHERE kind = 'site_offline'") == []
        assert site_events(receiver) == []
    finally:
        engine.dispose()
