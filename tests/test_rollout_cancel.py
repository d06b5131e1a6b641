"""Rollouts that stop, with every part a real process (`fleet serve`, `fleet-agent simulate`,
`fleet-agent run`) over a real broker, driven through the HTTP API:

- cancelled right after a wave is sent, that wave's panels are not updated and end
  `cancelled`;
- cancelled while the agent's link is down, the commands the broker held for it are dropped
  when they arrive, and their panels end `cancelled`;
- a second rollout over panels already in one is refused, naming the first, and each panel
  gets one firmware command.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.error
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet.protocol.messages import Command, CommandKind, Topics
from fleet.rollouts.plan import FINAL
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import wait_for
from tests.test_rollout_processes import (
    NEW,
    OLD,
    PANELS,
    PROFILE,
    RolloutStack,
    make_stack,
    start_site,
)

FINAL_STATES = {s.value for s in FINAL}


class CmdWatcher:
    """Every message the controller publishes on the site's cmd topic."""

    def __init__(self, broker: TestBroker) -> None:
        self.commands: list[Command] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        host, port = broker.url.removeprefix("mqtt://").split("?")[0].split(":")
        self.client.connect(host, int(port))
        self.client.subscribe(Topics(broker.topic_root).cmd("upm"), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.commands.append(Command.model_validate_json(msg.payload))

    def firmware(self) -> list[Command]:
        with self._lock:
            return [c for c in self.commands if c.kind == CommandKind.firmware_update]

    def revokes(self, campaign: str) -> bool:
        with self._lock:
            return any(
                c.kind == CommandKind.cancel and campaign in c.args.get("campaigns", [])
                for c in self.commands
            )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher(broker: TestBroker) -> Iterator[CmdWatcher]:
    w = CmdWatcher(broker)
    yield w
    w.close()


def slow_tick_stack(tmp_path: Any, broker: TestBroker, tick_s: str) -> RolloutStack:
    stack = make_stack(tmp_path, broker)
    stack.extra_env["FLEET_ROLLOUT_TICK_S"] = tick_s
    return stack


def create(stack: RolloutStack, **policy: Any) -> dict[str, Any]:
    body = {
        "name": "seewo 3.3.0",
        "release_version": NEW,
        "targets": {"profile": PROFILE, "sites": ["upm"]},
        "waves": [{"count": 1}, {"percent": 100}],
        "device_timeout_s": 60,
        "window": {"margin_min": 0},
        "start": True,
        **policy,
    }
    result: dict[str, Any] = stack.call("POST", "/api/v1/rollouts", body)
    return result


def detail(stack: RolloutStack, rollout_id: int) -> dict[str, Any]:
    result: dict[str, Any] = stack.get(f"/api/v1/rollouts/{rollout_id}")
    return result


def devices(stack: RolloutStack, rollout_id: int) -> dict[str, dict[str, Any]]:
    return {d["device_id"]: d for d in detail(stack, rollout_id)["devices"]}


def all_final(stack: RolloutStack, rollout_id: int) -> dict[str, dict[str, Any]] | None:
    found = devices(stack, rollout_id)
    return found if all(d["state"] in FINAL_STATES for d in found.values()) else None


def firmware_stays(stack: RolloutStack, expected: dict[str, str], seconds: float) -> None:
    """The panels' readings show `expected` throughout `seconds` (polled every second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen = stack.firmware()
        assert {d: seen[d] for d in expected} == expected
        time.sleep(0.5)


@MOSQUITTO_ONLY
@pytest.mark.timeout(120)
def test_cancel_right_after_a_wave_is_sent_stops_that_wave(
    tmp_path: Any, broker: TestBroker, watcher: CmdWatcher
) -> None:
    # A one-second tick: the cancel below lands well within the tick that holds the wave.
    stack = slow_tick_stack(tmp_path, broker, "1")
    try:
        start_site(stack)
        rollout_id = int(create(stack)["id"])
        canary = wait_for(
            lambda: next(
                (d for d in devices(stack, rollout_id).values() if d["state"] == "succeeded"),
                None,
            ),
            40,
            "the canary to succeed",
        )
        wave2 = wait_for(
            lambda: [
                d["device_id"]
                for d in devices(stack, rollout_id).values()
                if d["wave"] == 1 and d["state"] == "sent"
            ],
            20,
            "wave 2 to be sent",
            interval=0.05,
        )
        cancelled_at = time.monotonic()
        stack.call("POST", f"/api/v1/rollouts/{rollout_id}/cancel")

        final = wait_for(lambda: all_final(stack, rollout_id), 30, "every device final")
        took = time.monotonic() - cancelled_at
        wait_for(lambda: stack.firmware()[canary["device_id"]] == NEW, 15, "the canary's reading")
        firmware_stays(stack, dict.fromkeys(wave2, OLD), 4)
        agent_log = next(p for p in stack.procs if p.name == "agent").output()
        print(
            f"\n[cancel right after wave 2 was sent] wave 2 {wave2}: "
            f"{[final[d]['state'] for d in wave2]} {took:.1f} s after the cancel; canary "
            f"{canary['device_id']} succeeded; panels' firmware after: {stack.firmware()}"
        )
        assert len(wave2) == 2
        for device in wave2:
            assert final[device]["state"] == "cancelled", final[device]
        assert final[canary["device_id"]]["state"] == "succeeded"
        assert detail(stack, rollout_id)["state"] == "aborted"
        assert detail(stack, rollout_id)["counts"]["done"] == len(PANELS)
        assert agent_log.count(f"cancelled: the controller cancelled rollout-{rollout_id}") >= 2
        assert watcher.revokes(f"rollout-{rollout_id}")
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()


# Mosquitto only: the embedded amqtt does not deliver again a QoS 1 message it wrote to a
# connection that then died unacknowledged (MQTT 3.1.1 section 4.4 says it must), so the
# held commands never reach the agent there; their devices end `timed_out`.
@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
@pytest.mark.timeout(150)
def test_commands_held_while_the_link_was_down_are_dropped_after_a_cancel(
    tmp_path: Any, broker: TestBroker, watcher: CmdWatcher
) -> None:
    stack = make_stack(tmp_path, broker)
    try:
        start_site(stack)
        rollout_id = int(create(stack, pause_for_approval=True)["id"])
        wait_for(
            lambda: detail(stack, rollout_id)["state"] == "paused",
            40,
            "the canary to pass and the rollout to wait for approval",
        )
        # The site's link goes quiet: the agent is frozen, its connection still open, so
        # the broker holds what is sent to it and the controller still sees the site online.
        agent = next(p for p in stack.procs if p.name == "agent")
        assert agent.popen is not None
        agent.popen.send_signal(signal.SIGSTOP)
        stack.call("POST", f"/api/v1/rollouts/{rollout_id}/resume")
        wave2 = wait_for(
            lambda: [
                d["device_id"]
                for d in devices(stack, rollout_id).values()
                if d["wave"] == 1 and d["state"] == "sent"
            ],
            20,
            "wave 2 to be sent",
        )
        stack.call("POST", f"/api/v1/rollouts/{rollout_id}/cancel")
        wait_for(lambda: watcher.revokes(f"rollout-{rollout_id}"), 10, "the revocation sent")
        # The link comes back as a new connection: the agent (killed while frozen, so it
        # never read them) is started again and the broker hands over the held commands.
        agent.kill9()
        back_at = time.monotonic()
        restarted = stack.agent()
        final = wait_for(lambda: all_final(stack, rollout_id), 40, "every device final")
        took = time.monotonic() - back_at
        firmware_stays(stack, dict.fromkeys(wave2, OLD), 4)
        log = restarted.output()
        held = [c.cmd_id for c in watcher.firmware() if c.devices[0] in wave2]
        print(
            f"\n[link down at the cancel] held commands {held}; after the agent came back: "
            f"{[final[d]['state'] for d in wave2]} within {took:.1f} s; firmware "
            f"{stack.firmware()}"
        )
        assert len(wave2) == 2
        for device in wave2:
            assert final[device]["state"] == "cancelled", final[device]
            assert f"rollout-{rollout_id}" in final[device]["message"]
        # The held commands did reach the agent, which dropped them unstarted.
        for cmd_id in held:
            assert f"command {cmd_id} not carried out: cancelled" in log, log[-3000:]
        assert "installing" not in json.dumps(final)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()


@pytest.mark.parametrize("broker", ["mosquitto"], indirect=True)
@pytest.mark.timeout(120)
def test_second_rollout_over_the_same_panels_is_refused_naming_the_first(
    tmp_path: Any, broker: TestBroker, watcher: CmdWatcher
) -> None:
    stack = make_stack(tmp_path, broker)
    try:
        start_site(stack)
        first = int(create(stack, waves=[{"percent": 100}])["id"])
        with pytest.raises(urllib.error.HTTPError) as refused:
            create(stack, waves=[{"percent": 100}], name="the same again")
        body = json.loads(refused.value.read())
        reasons = " ".join(e["msg"] for e in body["detail"])
        final = wait_for(lambda: all_final(stack, first), 60, "the first rollout to finish")
        per_panel = {p: sum(c.devices == [p] for c in watcher.firmware()) for p in PANELS}
        print(
            f"\n[double rollout] second refused ({refused.value.code}): {reasons}; firmware "
            f"commands per panel: {per_panel}; first rollout: "
            f"{sorted(d['state'] for d in final.values())}"
        )
        assert refused.value.code == 422
        assert f"rollout {first} ('seewo 3.3.0') holds 3" in reasons
        assert len(stack.get("/api/v1/rollouts")) == 1
        assert per_panel == dict.fromkeys(PANELS, 1)
        assert {d["state"] for d in final.values()} == {"succeeded"}
        wait_for(lambda: set(stack.firmware().values()) == {NEW}, 15, "the panels' readings")
        # Once the first has ended, the panels are free again (nothing left to update).
        with pytest.raises(urllib.error.HTTPError) as again:
            create(stack, waves=[{"percent": 100}], name="after the first")
        assert "already runs" in again.value.read().decode()
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()
