"""The controller's ingest subscriber on a real Mosquitto, on each database: every message it
received is stored once and acknowledged, even when it is stopped right after the last one
arrived, most of them still queued for the writer."""

from __future__ import annotations

import json
from datetime import timedelta

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, select

from fleet.ingest.pipeline import Ingest
from fleet.models import Sample
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import Topics
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker, session_subscriber
from tests.fixtures_db import RECEIVED, batch, reading
from tests.procs import wait_for

DEVICES = ["upm-sc1-panel-1", "upm-sc2-projector"]
BATCHES, PER_BATCH = 120, 5


def _client(client_id: str = "") -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    return client


def _batch(n: int) -> bytes:
    readings = [
        reading(DEVICES[i % 2], RECEIVED - timedelta(seconds=n * PER_BATCH + i))
        for i in range(PER_BATCH)
    ]
    return json.dumps(batch("upm", readings, seq=n + 1)).encode()


@MOSQUITTO_ONLY
def test_a_stop_right_after_the_last_message_stores_every_one(
    registered: Engine, broker: TestBroker
) -> None:
    ingest = Ingest(registered, topic_root=broker.topic_root)
    # Twelve groups: the stop comes while most wait their turn.
    subscriber = session_subscriber(ingest, broker, batch_max=10)
    publisher = _client()
    address = parse_mqtt_url(broker.url)
    publisher.connect(address.host, address.port)
    publisher.loop_start()
    topic = Topics(broker.topic_root).health("upm")
    try:
        infos = [publisher.publish(topic, _batch(n), qos=1) for n in range(BATCHES)]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()
    finally:
        publisher.disconnect()
        publisher.loop_stop()

    # The broker holds them all for the session: the subscriber gets them at once, and is
    # stopped as soon as the last one is in, most still queued on their way to the store.
    subscriber.start()
    try:
        wait_for(lambda: subscriber.stats.received >= BATCHES, 30, "every batch received", 0.001)
    finally:
        subscriber.stop(timeout=30)

    expected = BATCHES * PER_BATCH
    assert subscriber.stats.received == BATCHES, subscriber.status()
    assert ingest.readings == expected, subscriber.status()
    assert subscriber.stats.acked == BATCHES, subscriber.status()
    with registered.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar_one() == expected
