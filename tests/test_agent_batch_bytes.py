"""A backlog that makes a batch larger than the broker takes: nothing is lost, and the agent
does not reconnect and send it again for ever.

The field's example: `batch_size: 1000` and 1,000 readings waiting make a batch of about
345 KB, over the broker's limit and the controller's 256 KiB. Over MQTT 3.1.1 Mosquitto's
`message_size_limit` acknowledged it and dropped it; over 5.0 it answered a PUBACK code paho
takes for a protocol error, and the agent reconnected every second with the same batch. Here
a real Mosquitto of the test's own, with the shipped limits (deploy/mosquitto) and with
smaller ones, announced (MQTT 5.0 CONNACK Maximum Packet Size) or not, takes the backlog
from the agent's own sender; the test's controller counts what arrives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.publisher import publish_overhead_bytes
from agent.sender import LOSSES_BEFORE_SPLIT
from bench.brokers import DEPLOY, MosquittoMissing, OwnMosquitto
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import MAX_BATCH_BYTES, MAX_PAYLOAD_BYTES, Topics
from tests.conftest import need
from tests.fixtures_link import (
    HealthSink,
    agent_options,
    connections,
    fill_outbox,
    health_topic,
    mosquitto_with,
    panel_backlog,
    running_agent,
    site_file,
    until,
    url_of,
)

BACKLOG = 1000
ROOT = "size/fleet/v1"


def start(broker: OwnMosquitto) -> OwnMosquitto:
    try:
        broker.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    return broker


def send_backlog(
    broker: OwnMosquitto, protocol: str, tmp: Path
) -> tuple[HealthSink, dict[str, Any], str]:
    """A 1,000-reading backlog with batch_size 1000, sent by the agent until the outbox is
    empty; returns the test's controller, the agent's outbox status and its client id."""
    data_dir = tmp / "agent"
    readings = panel_backlog(BACKLOG)
    fill_outbox(data_dir, readings)
    sink = HealthSink(parse_mqtt_url(url_of(broker, protocol)), health_topic(ROOT))
    options = agent_options(data_dir, ROOT, max_batches_per_s=20)

    async def run() -> dict[str, Any]:
        url = parse_mqtt_url(url_of(broker, protocol))
        async with running_agent(site_file(tmp, batch_size=1000), url, options) as agent:
            await until(lambda: agent.outbox.depth() == 0, 60, "the outbox to empty")
            return agent.outbox.status().as_dict()

    try:
        status = asyncio.run(run())
        assert sink.wait_for(lambda s: len(s.readings()) >= BACKLOG, 15), len(sink.readings())
    finally:
        sink.close()
    assert sorted((r.device, r.ts) for r in sink.readings()) == sorted(
        (r.device, r.ts) for r in readings
    ), "every reading once"
    assert status["readings_acked"] == BACKLOG
    return sink, status, options.client_id or ""


def test_shipped_broker_limit_is_above_the_cap_and_the_controllers_limit() -> None:
    """MAX_BATCH_BYTES is the one number; the broker's packet limit (which counts the whole
    PUBLISH) leaves room for it on the longest topic, and the controller's payload limit is
    above it. `message_size_limit` is gone (see deploy/mosquitto/fleet-queues.conf)."""
    conf = (DEPLOY / "fleet-queues.conf").read_text().splitlines()
    settings = dict(line.split(None, 1) for line in conf if line and not line.startswith("#"))
    assert "message_size_limit" not in settings
    longest_topic = Topics("x" * 64).health("s" * 32)
    assert int(settings["max_packet_size"]) >= MAX_BATCH_BYTES + publish_overhead_bytes(
        longest_topic
    )
    assert MAX_BATCH_BYTES < MAX_PAYLOAD_BYTES


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_backlog_over_the_shipped_limit_is_split_and_all_delivered(
    tmp_path: Path, protocol: str
) -> None:
    broker = start(mosquitto_with(tmp_path))
    try:
        sink, status, client_id = send_backlog(broker, protocol, tmp_path)
        sizes = [size for size, _ in sink.batches]
        assert len(sizes) >= 2, "1,000 readings are more than one batch can carry"
        assert max(sizes) <= MAX_BATCH_BYTES < MAX_PAYLOAD_BYTES
        assert status["batches_refused"] == 0
        assert connections(broker, client_id) == 1, "no reconnect"
        # Mosquitto's note that message_size_limit should be max_packet_size: not given.
        assert "message_size_limit" not in broker.log.read_text()
    finally:
        broker.stop()


@pytest.mark.timeout(120)
def test_smaller_maximum_packet_size_announced_over_v5_is_honoured(tmp_path: Path) -> None:
    broker = start(mosquitto_with(tmp_path, "max_packet_size 20000"))
    try:
        sink, status, client_id = send_backlog(broker, "5", tmp_path)
        limit = 20000 - publish_overhead_bytes(health_topic(ROOT))
        assert max(size for size, _ in sink.batches) <= limit
        assert status["batches_refused"] == 0
        assert connections(broker, client_id) == 1, "no reconnect"
    finally:
        broker.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("protocol", "limit_line"),
    [
        # Not announced over 3.1.1: Mosquitto closes the connection on an over-size packet.
        ("3.1.1", "max_packet_size 20000"),
        # Mosquitto 2.0 answers a PUBACK of 149, which paho takes for a protocol error.
        ("5", "message_size_limit 20000"),
    ],
)
def test_size_limit_not_announced_is_learned_in_a_few_reconnects(
    tmp_path: Path, protocol: str, limit_line: str
) -> None:
    broker = start(mosquitto_with(tmp_path, limit_line))
    try:
        sink, status, client_id = send_backlog(broker, protocol, tmp_path)
        assert max(size for size, _ in sink.batches) <= 20000
        (refusal,) = status["refusals"]
        assert refusal["reason_code"] == 149 and "max_packet_size" in refusal["fix"]
        # 240 KiB, then a quarter, then a sixteenth (15 KB) fits: two sizes refused, each
        # after LOSSES_BEFORE_SPLIT lost connections, with batches in flight together.
        # Counted after the agent stopped: every connection of the whole drain.
        reconnects = connections(broker, client_id) - 1
        assert 2 <= reconnects <= 2 * LOSSES_BEFORE_SPLIT + 2, reconnects
    finally:
        broker.stop()
