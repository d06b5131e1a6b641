"""Beyond one process: ingest workers splitting the health stream on an MQTT v5 shared
subscription in front of PostgreSQL. (Exactly one scheduler: tests/test_leader.py.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from ulid import ULID

from bench.brokers import OwnMosquitto
from fleet.protocol.messages import HealthBatch, Power, Reading, Topics
from tests.procs import Stack, sample_counts, wait_for

DEVICES = [
    "upm-sc1-panel-1",
    "upm-sc1-panel-2",
    "upm-sc1-pc",
    "upm-sc2-panel-1",
    "upm-sc2-projector",
]
T0 = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def batches(count: int) -> list[bytes]:
    out = []
    for b in range(count):
        ts = T0 + timedelta(minutes=b)
        readings = [Reading(device=d, ts=ts, reachable=True, power=Power.on) for d in DEVICES]
        out.append(
            HealthBatch(
                msg_id=str(ULID()),
                site="upm",
                agent_id="upm-agent-1",
                seq=b,
                sent_at=ts,
                readings=readings,
            ).to_json()
        )
    return out


@pytest.mark.timeout(240)
def test_two_ingest_workers_split_the_load_and_a_killed_one_loses_nothing(
    tmp_path: Path, migrated_postgres_url: str
) -> None:
    db_url = migrated_postgres_url
    broker = OwnMosquitto(tmp_path / "broker")
    broker.start()
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    workers = [
        Stack(tmp_path, broker.url, root, db_url, client_id=f"ingest-{name}-{uuid.uuid4().hex[:6]}")
        for name in ("a", "b")
    ]
    shared = {"FLEET_ROLE": "ingest", "FLEET_INGEST_SHARED_GROUP": "fleet"}
    try:
        workers[0].controller(**shared)
        workers[1].ops_token = workers[0].ops_token  # one ops user for the shared database
        workers[1].controller(**shared)
        payloads = batches(300)
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        topic = Topics(root).health("upm")
        for payload in payloads[:150]:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
        received_a = workers[0].get("/healthz")["ingest"]["received"]
        # Kill worker A in the middle of the stream; B goes on, A comes back to its session.
        killed = next(p for p in workers[0].procs if p.name == "controller")
        killed.kill9()
        for payload in payloads[150:]:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
        workers[0].controller(**shared)  # the same client id: its session, its queue
        expected = len(payloads) * len(DEVICES)
        wait_for(lambda: sample_counts(db_url)[0] >= expected, 90, f"{expected} readings stored")
        client.loop_stop()
        client.disconnect()
        received_b = workers[1].get("/healthz")["ingest"]["received"]
        total, distinct = sample_counts(db_url)
        print(
            f"\n[shared subscription] sent {expected}, stored {total}, duplicates "
            f"{total - distinct}, lost {expected - distinct}; worker a took {received_a} "
            f"messages before it was killed, worker b {received_b}"
        )
        assert received_a > 0 and received_b > 0, "both workers must take a share"
        assert total == distinct == expected
    finally:
        for worker in workers:
            worker.stop_all()
        broker.stop()
