"""The agent's link under test: a site agent run in the test's own event loop (its outbox
filled first, no devices to poll), a real Mosquitto of the test's own, and a client on the
controller's side that keeps every health batch it is given."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.outbox import Outbox
from agent.runner import AgentOptions, SiteAgent, outbox_path
from bench.brokers import DEPLOY, OwnMosquitto
from fleet.protocol.broker_url import BrokerAddress, parse_mqtt_url
from fleet.protocol.messages import HealthBatch, Reading, Topics
from fleet.protocol.site_config import AgentSection, LoadedSite, load_site

# A Seewo panel's reading as the simulator gives it (336 bytes of JSON): a backlog of these
# is what a site's outbox holds after an outage.
PANEL = Reading.model_validate_json(
    '{"device":"upm-sc1-panel-1","ts":"2026-03-02T02:00:00.644108Z","reachable":true,'
    '"power":"standby","temperature_c":30.1,"uptime_s":1157809.36,"firmware":"3.2.1",'
    '"errors":{"fan":"ok","lamp":"ok","temperature":"ok","cover":"ok","filter":"ok",'
    '"other":"ok"},"metrics":{"sys_name":"upm-sc1-panel-1","update_status":"idle",'
    '"brightness_pct":0}}'
)
SITE = "upm"


def panel_backlog(count: int) -> list[Reading]:
    """`count` panel readings of devices sim-0000..., one a second, ending a minute ago."""
    start = (datetime.now(UTC) - timedelta(seconds=count + 60)).replace(microsecond=0)
    return [
        PANEL.model_copy(update={"device": f"sim-{i:04d}", "ts": start + timedelta(seconds=i)})
        for i in range(count)
    ]


def site_file(tmp: Path, batch_size: int = 50) -> LoadedSite:
    """A site config file for `upm` without devices (so `fleet-agent status` can read it);
    a batch_size the config check refuses is set past it, as if it had been let through."""
    path = tmp / "site_configs" / f"{SITE}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "site": {"code": SITE, "name": "Link test", "country": "Nowhere", "timezone": "UTC"},
        "agent": {"id": f"{SITE}-agent-1", "batch_size": min(batch_size, 50)},
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    site = load_site(path)
    if batch_size <= 50:
        return site
    agent = AgentSection.model_construct(
        **{**site.config.agent.model_dump(), "batch_size": batch_size}
    )
    return dataclasses.replace(site, config=site.config.model_copy(update={"agent": agent}))


def fill_outbox(data_dir: Path, readings: list[Reading]) -> None:
    box = Outbox(outbox_path(data_dir, SITE), max_age=timedelta(days=3650))
    box.add(readings)
    box.close()


def mosquitto_with(tmp: Path, *queue_lines: str, listener: tuple[str, ...] = ()) -> OwnMosquitto:
    """A Mosquitto with the shipped fleet-queues.conf, its size limit lines replaced by
    `queue_lines` when given; `listener` lines go after the listener (auth, ACL)."""
    conf = (DEPLOY / "fleet-queues.conf").read_text()
    if queue_lines:
        conf = "\n".join(
            line
            for line in conf.splitlines()
            if not line.startswith(("max_packet_size", "message_size_limit"))
        )
        conf += "\n" + "\n".join(queue_lines) + "\n"
    broker = OwnMosquitto(tmp / f"broker-{uuid.uuid4().hex[:6]}")
    broker.configure(
        *(listener or ("allow_anonymous true",)),
        f"persistence_location {broker.workdir}/",
        before=[conf],
    )
    return broker


def connections(broker: OwnMosquitto, client_id: str) -> int:
    """How many times the broker accepted a connection from `client_id` (its log)."""
    return sum(
        1
        for line in broker.log.read_text(errors="replace").splitlines()
        if "New client connected" in line and f" as {client_id} " in line
    )


class HealthSink:
    """The controller's side: a paho client subscribed to a site's health at QoS 1 that
    keeps every batch it is given (its payload's size and the batch)."""

    def __init__(self, address: BrokerAddress, topic: str) -> None:
        self.topic = topic
        self.batches: list[tuple[int, HealthBatch]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        v5 = address.protocol == "5"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"sink-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if address.username:
            self.client.username_pw_set(address.username, address.password)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the test's controller did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        batch = HealthBatch.model_validate_json(msg.payload)
        with self._changed:
            self.batches.append((len(msg.payload), batch))
            self._changed.notify_all()

    def readings(self) -> list[Reading]:
        with self._changed:
            return [r for _, b in self.batches for r in b.readings]

    def wait_for(self, condition: Callable[[HealthSink], bool], timeout: float) -> bool:
        """Block (in a thread) until `condition(self)` holds after a delivery, or timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Check `condition` every 50 ms on the event loop until it gives something truthy;
    fail saying `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def agent_options(data_dir: Path, root: str, **overrides: Any) -> AgentOptions:
    return AgentOptions(
        **{
            "data_dir": data_dir,
            "topic_root": root,
            "linger_s": 0.0,
            "client_id": f"agent-{uuid.uuid4().hex[:8]}",
            "session_expiry_s": 0,
            **overrides,
        }
    )


@contextlib.asynccontextmanager
async def running_agent(
    site: LoadedSite, address: BrokerAddress, options: AgentOptions
) -> AsyncIterator[SiteAgent]:
    """A SiteAgent running on this event loop until the block ends (then stopped cleanly)."""
    agent = SiteAgent(site, address, options)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.link.connected.is_set() or task.done(), 15, "a connection")
        if task.done():
            task.result()
        yield agent
    finally:
        agent.stop.set()
        await asyncio.wait_for(task, 30)


def url_of(broker: OwnMosquitto, protocol: str, user: str | None = None) -> str:
    who = f"{user}@" if user else ""
    query = "?protocol=5" if protocol == "5" else ""
    return f"mqtt://{who}127.0.0.1:{broker.port}{query}"


def with_password(url: str, password: str) -> BrokerAddress:
    return dataclasses.replace(parse_mqtt_url(url), password=password)


def health_topic(root: str) -> str:
    return Topics(root).health(SITE)
