"""Real MQTT brokers for tests: the embedded amqtt (always) and the system Mosquitto
(127.0.0.1:1883; required when CI=true). Each test gets its own topic root, so tests that
share the system broker never see each other's messages."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.brokers import MosquittoMissing, OwnMosquitto, port_open
from fleet.embedded_broker import EmbeddedBroker
from fleet.ingest.pipeline import Ingest
from fleet.ingest.subscriber import Subscriber
from fleet.protocol.broker_url import parse_mqtt_url
from tests.conftest import need

MOSQUITTO = ("127.0.0.1", 1883)


class BrokerThread:
    """The embedded broker on its own event loop in a thread, for synchronous tests."""

    def __init__(self) -> None:
        self.broker = EmbeddedBroker()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return self.broker.url


@dataclass(frozen=True)
class TestBroker:
    kind: str
    url: str
    topic_root: str

    __test__ = False  # not a test class


# For tests where which broker carries the messages is not what they pin: Mosquitto, the broker
# sites run, and not the embedded amqtt too. Each test that runs on both starts its processes
# twice; keep that for what the two brokers do differently (sessions, QoS, protocol versions).
MOSQUITTO_ONLY = pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    if request.param == "mosquitto":
        if not port_open(*MOSQUITTO):
            need(
                "Mosquitto at 127.0.0.1:1883",
                "start it with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`",
            )
        yield TestBroker("mosquitto", "mqtt://127.0.0.1:1883?protocol=5", root)
        return
    thread = BrokerThread()
    thread.start()
    try:
        yield TestBroker("embedded", thread.url, root)
    finally:
        thread.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[OwnMosquitto]:
    broker = OwnMosquitto(tmp_path / "broker")
    try:
        broker.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    yield broker
    broker.stop()


def make_session(url: str, client_id: str, topics: list[str]) -> None:
    """The subscriber's persistent session, made on the broker ahead of it: its subscriptions
    acknowledged (SUBACK), then left, so that the broker queues what is published next."""
    subscribed = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    client.on_subscribe = lambda *args: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 60
    address = parse_mqtt_url(url)
    client.connect(address.host, address.port, clean_start=True, properties=properties)
    client.loop_start()
    try:
        client.subscribe([(topic, 1) for topic in topics])
        assert subscribed.wait(10), "no SUBACK from the broker"
    finally:
        client.disconnect()
        client.loop_stop()


def session_subscriber(ingest: Ingest, broker: TestBroker, **options: Any) -> Subscriber:
    """The controller's subscriber on `broker`, not started, whose persistent session the
    broker already holds (`make_session`): what is published from now on waits for it, and
    comes in large groups once it starts. `options` go to Subscriber (batch_max, ...)."""
    client_id = f"test-{uuid.uuid4().hex}"
    subscriber = Subscriber(
        parse_mqtt_url(broker.url),
        ingest,
        client_id=client_id,
        topic_root=broker.topic_root,
        session_expiry_s=60,
        **options,
    )
    make_session(broker.url, client_id, subscriber.subscriptions())
    return subscriber
