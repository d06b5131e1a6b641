"""The agent's MQTT link under concurrent publishes, against a real broker.

paho calls on_publish from its network thread while holding its own message lock. Several
tasks publishing at once (health batches, update progress, command acks) make a PUBACK
arrive while the event loop is inside client.publish(): any lock the link took on both
sides of that would stop the agent for good.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agent.publisher import MqttLink
from fleet.protocol.broker_url import parse_mqtt_url
from tests.fixtures_broker import TestBroker

PUBLISHERS = 8
EACH = 250


@pytest.mark.timeout(30)
def test_concurrent_publishes_all_acknowledged(broker: TestBroker) -> None:
    async def run() -> tuple[int, int]:
        link = MqttLink(parse_mqtt_url(broker.url), client_id=f"link-{uuid.uuid4().hex[:8]}")
        await link.start()
        acked = 0
        try:
            assert await link.wait_connected(10), link.last_error

            async def publisher(n: int) -> None:
                nonlocal acked
                for i in range(EACH):
                    await link.publish(f"{broker.topic_root}/race/{n}", f"{n}:{i}".encode())
                    acked += 1

            # A frozen event loop cannot time itself out: the test's timeout judges it.
            await asyncio.gather(*(publisher(n) for n in range(PUBLISHERS)))
            return acked, len(link._pending)
        finally:
            await link.close()

    acked, left = asyncio.run(run())
    assert acked == PUBLISHERS * EACH
    assert left == 0, "every PUBACK resolves and forgets its publish"
