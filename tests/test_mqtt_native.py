"""MQTT-native devices, end to end over a real broker: a device that publishes one Reading on
`<root>/<site>/devices/<device>/health` reaches the API through `fleet serve`, under the same
validation and site rules as agent batches; a reading naming another site's device is
rejected and dead-lettered, and the ingest loop goes on."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from sqlalchemy import create_engine, text

from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import Topics, utcnow
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DEFAULT_SITES_DIR
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import Stack, wait_for

SITE = "dzv-uz"
NATIVE = "dzv-uz-sc1-native-panel"
OTHER_SITES_DEVICE = "ugb-sc1-panel-1"  # registered, but at site ugb

# Ingest's rules for a device's own topic are what this pins, not the broker.
pytestmark = MOSQUITTO_ONLY
NATIVE_PROFILE = {
    "id": "mqtt-native-panel",
    "vendor": "Generic",
    "model": "MQTT-native panel (test)",
    "kind": "panel",
    "protocol": "mqtt",
    "note": "publishes its own readings: the agent does not poll it",
}


@pytest.fixture
def stack(tmp_path: Path, broker: TestBroker) -> Iterator[Stack]:
    profiles = tmp_path / "firmware_profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles)
    (profiles / "mqtt-native-panel.yaml").write_text(yaml.safe_dump(NATIVE_PROFILE))
    s = Stack(
        tmp_path,
        broker.url,
        broker.topic_root,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        site=SITE,
        profiles_dir=profiles,
    )
    shutil.copy(DEFAULT_SITES_DIR / "ugb.yaml", s.sites_dir)  # the other site
    config = yaml.safe_load(s.config.read_text())
    config["rooms"][0]["devices"].append(
        {"id": NATIVE, "profile": "mqtt-native-panel", "address": "203.0.113.19"}
    )
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))
    yield s
    s.stop_all()


def publish(broker: TestBroker, topic: str, payload: dict[str, Any]) -> None:
    """Publish one QoS 1 message as a device would, and wait for the broker's PUBACK."""
    address = parse_mqtt_url(broker.url)
    v5 = address.protocol == "5"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"native-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    )
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        info = client.publish(topic, json.dumps(payload), qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"the broker did not acknowledge {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


def reading(device: str, **fields: Any) -> dict[str, Any]:
    body = {"device": device, "ts": utcnow().isoformat(), "reachable": True, "power": "on"}
    return body | fields


def dead_letters(stack: Stack) -> list[tuple[str, str, str]]:
    engine = create_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT topic, reason, detail FROM dead_letter")).all()
    finally:
        engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_native_device_reading_reaches_the_api_and_foreign_one_is_dead_lettered(
    stack: Stack, broker: TestBroker
) -> None:
    stack.controller()
    topics = Topics(broker.topic_root)

    def native_seen() -> dict[str, Any] | None:
        detail = stack.get(f"/api/v1/devices/{NATIVE}")
        last = detail.get("last_reading")
        return dict(last) if last and last.get("temperature_c") == 41.5 else None

    # The controller's subscription may still be settling: publish until the reading lands
    # (QoS 1 and (device, ts) idempotence make repeats harmless).
    def publish_and_check() -> dict[str, Any] | None:
        publish(
            broker,
            topics.device_health(SITE, NATIVE),
            reading(NATIVE, temperature_c=41.5, input="hdmi1", metrics={"native": True}),
        )
        return wait_for_quick(native_seen)

    last = wait_for(publish_and_check, 30, "the native device's reading in the API")
    assert last["power"] == "on" and last["input"] == "hdmi1"
    assert last["metrics"] == {"native": True}

    # On this site's topic, naming a device that belongs to ugb: rejected.
    publish(broker, topics.device_health(SITE, OTHER_SITES_DEVICE), reading(OTHER_SITES_DEVICE))
    # On the native device's own topic, naming another device: rejected too.
    publish(broker, topics.device_health(SITE, NATIVE), reading("dzv-uz-sc1-panel-1"))

    def both_rejected() -> list[tuple[str, str, str]] | None:
        rows = dead_letters(stack)
        return rows if len(rows) >= 2 else None

    rows = wait_for(both_rejected, 20, "two dead letters")
    reasons = {reason: (topic, detail) for topic, reason, detail in rows}
    topic, detail = reasons["unknown_device"]
    assert topic == topics.device_health(SITE, OTHER_SITES_DEVICE)
    assert "ugb-sc1-panel-1 belongs to site ugb" in detail
    assert "device_mismatch" in reasons
    health = stack.get("/healthz")
    assert health["ingest"]["rejected"]["unknown_device"] >= 1
    # The ugb device was not touched by the foreign reading.
    assert stack.get(f"/api/v1/devices/{OTHER_SITES_DEVICE}")["last_reading"] is None
    assert stack.procs[0].alive()  # the ingest loop goes on


def wait_for_quick(condition: Any) -> Any:
    try:
        return wait_for(condition, 3, "a quick check")
    except TimeoutError:
        return None
