"""The site agent's MQTT session is persistent: a command the controller publishes while the
agent is down waits on the broker and is carried out when the agent is back, and a command
delivered twice (QoS 1, or again after a restart) is carried out once.

Real processes (`fleet-agent simulate`, `fleet-agent run`) on a real broker: a Mosquitto of
the test's own (MQTT v5 and v3.1.1) and the demo's embedded amqtt. The test plays the
controller: it publishes on cmd at QoS 1 and reads cmd/ack and events. The release's artifact
comes from a download server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.collectors import target_for
from agent.simulator import start_devices
from agent.simulator.firmware_image import make_image
from agent.updater import UpdateOptions
from fleet.devices.profile_book import profiles_in
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import Command, CommandAck, CommandKind, Topics
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.agent_commands import CommandPath, word
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for
from tests.range_server import RangeServer

SITE = "upm"
PROFILE = "seewo-panel"
OLD, NEW = "3.2.1", "3.3.0"
PANELS = ("upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc2-panel-1")


@dataclass(frozen=True)
class Broker:
    name: str
    url: str


@pytest.fixture(params=["mosquitto-v5", "mosquitto-v3.1.1", "embedded"])
def session_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    if request.param == "embedded":
        thread = BrokerThread()
        thread.start()
        try:
            yield Broker("embedded amqtt (3.1.1)", thread.url)
        finally:
            thread.stop()
        return
    own = request.getfixturevalue("own_mosquitto")
    url = own.url if request.param == "mosquitto-v5" else own.url.split("?")[0]
    yield Broker(request.param, url)


@dataclass
class SessionStack(Stack):
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.extra_env, **extra})


def fast_profiles(tmp_path: Path, url: str) -> Path:
    """The shipped profiles polled every second; the Seewo release comes from `url`, and its
    panels always take an update and reboot at once."""
    out = tmp_path / "firmware_profiles"
    out.mkdir()
    for path in DEFAULT_PROFILES_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.setdefault("poll", {}).update(interval_s=1, timeout_s=0.5, retries=0)
        if data["id"] == PROFILE:
            data["simulation"].update(update_reboot_s=0.3, update_failure_share=0.0)
            next(r for r in data["releases"] if r["version"] == NEW)["artifact"] = url
        (out / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return out


class Controller:
    """The controller's side of the broker: publishes commands at QoS 1, keeps what the
    agent sends back."""

    def __init__(self, url: str, topics: Topics) -> None:
        address = parse_mqtt_url(url)
        self.v5 = address.protocol == "5"
        self.topics = topics
        self.acks: list[CommandAck] = []
        self.events: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"test-controller-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the test's client did not subscribe"

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(
            [
                (self.topics.cmd_ack(SITE), 1),
                (self.topics.events(SITE), 1),
                (self.topics.agent_state(SITE), 1),
            ]
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic == self.topics.cmd_ack(SITE):
                self.acks.append(CommandAck.model_validate_json(msg.payload))
            elif msg.topic == self.topics.events(SITE):
                self.events.append(json.loads(msg.payload))
            else:
                self.states.append(json.loads(msg.payload))

    def send(self, payload: bytes) -> None:
        """The command, then the controller's word after it (retained), as the rollout tick
        sends them: the agent starts the command on the word."""
        info = self.client.publish(self.topics.cmd(SITE), payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), "the broker did not take the command"
        issued = Command.model_validate_json(payload).issued_at
        info = self.client.publish(
            self.topics.cmd(SITE), word(SITE, issued + timedelta(milliseconds=1)), 1, True
        )
        info.wait_for_publish(10)
        assert info.is_published(), "the broker did not take the word"

    def acks_for(self, cmd_id: str) -> list[CommandAck]:
        with self._lock:
            return [a for a in self.acks if a.cmd_id == cmd_id]

    def events_for(self, cmd_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["data"].get("cmd_id") == cmd_id]

    def last_state(self) -> dict[str, Any] | None:
        with self._lock:
            return self.states[-1] if self.states else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def firmware_command(cmd_id: str, device: str, url: str) -> bytes:
    release = profiles_in(DEFAULT_PROFILES_DIR)[PROFILE].release(NEW)
    assert release is not None
    return Command(
        cmd_id=cmd_id,
        kind=CommandKind.firmware_update,
        site=SITE,
        issued_at=datetime.now(UTC),
        devices=[device],
        args={
            "rollout_id": 1,
            "version": NEW,
            "sha256": release.sha256,
            "size": release.size,
            "url": url,
            "timeout_s": 120,
        },
    ).to_json()


def test_command_sent_while_the_agent_is_down_is_carried_out_once(
    tmp_path: Path, session_broker: Broker
) -> None:
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    topics = Topics(root)
    with RangeServer(make_image(PROFILE, NEW)) as server:
        stack = SessionStack(
            tmp_path,
            session_broker.url,
            root,
            f"sqlite:///{tmp_path / 'unused.db'}",
            profiles_dir=fast_profiles(tmp_path, server.url),
        )
        stack.extra_env = {"FLEET_AGENT_UPDATE_READ_S": "0.3"}
        config = yaml.safe_load(stack.config.read_text())
        config["timetable"] = {"weekly": {}}  # no classes: no panel is ever in use
        stack.config.write_text(yaml.safe_dump(config, sort_keys=False))
        client_id = f"agent-upm-test-{uuid.uuid4().hex[:8]}"
        agent_args = ("--client-id", client_id, "--session-expiry", "300")
        controller = Controller(session_broker.url, topics)
        try:
            stack.simulate()

            def online_boot() -> str | None:
                state = controller.last_state()
                return state["boot_id"] if state and state["state"] == "online" else None

            first = stack.agent(*agent_args)
            first_boot = wait_for(online_boot, 30, "the agent online")

            # The agent dies; the broker fires its will. A command goes out meanwhile.
            first.kill9()
            wait_for(
                lambda: (controller.last_state() or {}).get("state") == "offline",
                30,
                "the agent's will (offline)",
            )
            controller.send(firmware_command("c1", PANELS[0], server.url))

            stack.agent(*agent_args)
            wait_for(lambda: online_boot() not in (None, first_boot), 30, "the agent back")
            acks = wait_for(lambda: controller.acks_for("c1"), 60, "the result of c1")
            assert acks[0].ok, acks[0].message
            final = controller.events_for("c1")[-1]
            assert (final["data"]["state"], final["data"]["firmware"]) == ("succeeded", NEW)

            # Delivered again (QoS 1 allows it): ignored. c2, behind it on the same topic,
            # updates another panel (a download, a SET, a reboot), so by its result the
            # agent has long been through the repeat.
            controller.send(firmware_command("c1", PANELS[0], server.url))
            controller.send(firmware_command("c2", PANELS[1], server.url))
            assert wait_for(lambda: controller.acks_for("c2"), 60, "the result of c2")[0].ok

            # Again while the agent is stopped: after the restart it still knows c1.
            stack.procs[-1].stop()
            wait_for(
                lambda: (controller.last_state() or {}).get("state") == "offline",
                30,
                "the agent offline",
            )
            controller.send(firmware_command("c1", PANELS[0], server.url))
            controller.send(firmware_command("c3", PANELS[2], server.url))
            stack.agent(*agent_args)
            assert wait_for(lambda: controller.acks_for("c3"), 60, "the result of c3")[0].ok

            assert len(controller.acks_for("c1")) == 1, controller.acks_for("c1")
            c1_events = controller.events_for("c1")
            assert [e["data"]["state"] for e in c1_events] == [
                "downloading",
                "installing",
                "succeeded",
            ]
            assert len(server.requests) == 1, "the artifact was downloaded more than once"
        except BaseException:
            print(stack.logs())
            raise
        finally:
            controller.close()
            stack.stop_all()


class Kept(CommandPath):
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))

    def acks(self) -> list[CommandAck]:
        return [CommandAck.model_validate_json(p) for t, p in self.sent if t.endswith("/ack")]

    def states(self) -> list[str]:
        return [json.loads(p)["data"]["state"] for t, p in self.sent if t.endswith("/events")]


async def _stale(tmp_path: Path) -> None:
    profile = profiles_in(DEFAULT_PROFILES_DIR)[PROFILE]
    release = profile.release(NEW)
    assert release is not None
    url = f"http://127.0.0.1:9/api/v1/firmware/artifacts/{release.sha256}"
    async with await start_devices(1, profile) as sim:
        device = next(iter(sim.responders))
        targets = [
            target_for(r.behaviour.device, profile, r.address) for r in sim.responders.values()
        ]
        agent = Kept()
        agent.build(SITE, tmp_path, targets, UpdateOptions(tmp_path))
        await agent.start()
        loop = asyncio.get_running_loop()
        try:
            issued = datetime.now(UTC) - timedelta(hours=2)
            template = Command.model_validate_json(firmware_command("c", device, url))
            # Two hours old by this host's clock, but the controller's word, one second after
            # it, says it is fresh (this host's clock is off): carried out.
            skewed = template.model_copy(update={"cmd_id": "c-skewed", "issued_at": issued})
            agent.inbox.on_message(skewed.to_json(), True)
            await asyncio.sleep(0.2)
            assert agent.sent == [], "started before any word from the controller"
            agent.inbox.on_message(word(SITE, issued + timedelta(seconds=1)), True)
            deadline = loop.time() + 10
            while not agent.acks():
                assert loop.time() < deadline, "no answer"
                await asyncio.sleep(0.02)
            # Two hours old by the controller's own latest word: expired, not started.
            old = template.model_copy(update={"cmd_id": "c-old", "issued_at": issued})
            agent.inbox.on_message(old.to_json(), True)
            agent.inbox.on_message(word(SITE, datetime.now(UTC)), True)
            while len(agent.acks()) < 2:
                assert loop.time() < deadline, "no answer to the second"
                await asyncio.sleep(0.02)
        finally:
            await agent.close()
        carried, expired = agent.acks()
        assert carried.cmd_id == "c-skewed" and "deferred" in carried.message, carried.message
        assert expired.cmd_id == "c-old" and not expired.ok and "expired" in expired.message
        # c-skewed was downloading when it found no server; c-old never got that far.
        assert agent.states() == ["downloading", "deferred", "expired"]
        assert sim.device(device).behaviour.firmware == OLD


def test_command_older_than_its_timeout_is_refused_not_carried_out(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_stale(tmp_path), 60))
