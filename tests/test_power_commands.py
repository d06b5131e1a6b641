"""Power and input commands end to end: `fleet serve`, `fleet-agent simulate` and
`fleet-agent run` as real processes over a real broker, a simulated PJLink projector that
answers POWR and INPT as a projector does (ERR3 while warming up), driven through the API
by a site's technician; another site's technician and a vendor are refused."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from fleet.protocol.site_config import DEFAULT_SITES_DIR
from tests.fixtures_auth import user_token
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import Stack, wait_for

PROJECTOR = "ugb-sc1-projector"

# The command's path and its permissions are what these pin, not the broker.
pytestmark = MOSQUITTO_ONLY


@pytest.fixture
def stack(tmp_path: Any, broker: TestBroker) -> Iterator[Stack]:
    s = Stack(tmp_path, broker.url, broker.topic_root, f"sqlite:///{tmp_path / 'fleet.db'}", "ugb")
    # No classes: the projector starts in standby and nothing switches it but us.
    config = yaml.safe_load(s.config.read_text())
    config["timetable"] = {"weekly": {}}
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))
    # Another site in the registry (its agent is not run): the technician's other site.
    shutil.copy(DEFAULT_SITES_DIR / "upm.yaml", s.sites_dir)
    yield s
    s.stop_all()


def call(stack: Stack, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        stack.base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def settled(stack: Stack, token: str, cmd_id: str, states: set[str]) -> dict[str, Any] | None:
    _, rows = call(stack, token, "GET", f"/api/v1/devices/{PROJECTOR}/commands")
    row = next(r for r in rows if r["cmd_id"] == cmd_id)
    return (
        row if row["state"] in states and (row["state"] != "done" or row["confirmed_at"]) else None
    )


@pytest.mark.timeout(120)
def test_technician_switches_a_projector_of_their_site_and_no_one_else_may(
    stack: Stack,
) -> None:
    try:
        stack.simulate()
        stack.controller(FLEET_ROLLOUT_TICK_S="0.5")
        stack.agent()
        engine = create_engine(stack.database_url)
        tech = user_token(engine, "tech-ugb", "technician", sites=["ugb"])
        vendor = user_token(engine, "vendor-weidong", "vendor", vendor="Weidong")
        first = wait_for(
            lambda: (d := stack.get(f"/api/v1/devices/{PROJECTOR}"))["last_seen_at"] and d,
            60,
            "the projector's first reading",
        )
        assert first["power"] in ("standby", "off"), first

        code, sent = call(
            stack,
            tech,
            "POST",
            f"/api/v1/devices/{PROJECTOR}/commands",
            {"power": "on", "reason": "evening lecture moved to this room"},
        )
        assert code == 202, sent
        (on,) = sent
        assert on["state"] == "sent" and on["requested_by"] == "tech-ugb"
        done = wait_for(
            lambda: settled(stack, tech, on["cmd_id"], {"done", "failed", "expired"}),
            30,
            "the power-on command confirmed",
        )
        reading = stack.get(f"/api/v1/devices/{PROJECTOR}")

        # Switched off again at once: the projector is still warming up and says so (ERR3).
        code, sent = call(
            stack,
            tech,
            "POST",
            f"/api/v1/devices/{PROJECTOR}/commands",
            {"power": "off", "reason": "wrong room"},
        )
        assert code == 202, sent
        busy = wait_for(
            lambda: settled(stack, tech, sent[0]["cmd_id"], {"done", "failed", "expired"}),
            30,
            "the power-off command's answer",
        )

        refusals = {
            "another site's device": call(
                stack,
                tech,
                "POST",
                "/api/v1/devices/upm-sc2-projector/commands",
                {"power": "off", "reason": "x"},
            ),
            "another site": call(
                stack, tech, "POST", "/api/v1/sites/upm/commands", {"power": "off", "reason": "x"}
            ),
            "a vendor": call(
                stack,
                vendor,
                "POST",
                f"/api/v1/devices/{PROJECTOR}/commands",
                {"power": "off", "reason": "x"},
            ),
            "no reason": call(
                stack, tech, "POST", f"/api/v1/devices/{PROJECTOR}/commands", {"power": "off"}
            ),
        }
        with engine.connect() as conn:
            audit = conn.execute(
                text("SELECT actor, action, detail FROM audit_entry WHERE action LIKE 'commands.%'")
            ).all()
        engine.dispose()
        print(
            f"\n[power commands] on: {done['state']} ({done['answer']}), confirmed by the "
            f"reading at {done['confirmed_at']} (power {reading['power']}); off while warming: "
            f"{busy['state']} ({busy['answer']}); refused: "
            f"{ {k: v[0] for k, v in refusals.items()} }; audited: {len(audit)}"
        )
        assert done["state"] == "done" and "POWR 1: OK" in done["answer"]
        assert done["confirmed_at"] is not None
        assert reading["power"] in ("on", "warming")
        assert busy["state"] == "failed" and "ERR3" in busy["answer"]
        assert refusals["another site's device"][0] == 404
        assert refusals["another site"][0] == 403
        assert refusals["a vendor"][0] == 403
        assert refusals["no reason"][0] == 422
        assert [(a[0], a[1]) for a in audit] == [("tech-ugb", "commands.power")] * 2
        details = [a[2] if isinstance(a[2], dict) else json.loads(a[2]) for a in audit]
        assert details[0]["reason"] == "evening lecture moved to this room"
    except BaseException:
        print(stack.logs())
        raise


SNMP_PROJECTOR = "upm-sc2-projector"  # snmp-projector: power by SET of its power_set object


@pytest.fixture
def upm_stack(tmp_path: Any, broker: TestBroker) -> Iterator[Stack]:
    s = Stack(tmp_path, broker.url, broker.topic_root, f"sqlite:///{tmp_path / 'fleet.db'}", "upm")
    config = yaml.safe_load(s.config.read_text())
    config["timetable"] = {"weekly": {}}  # no classes: standby until we switch it
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))
    yield s
    s.stop_all()


@pytest.mark.timeout(120)
def test_technician_switches_an_snmp_projector_by_set_and_the_reading_confirms(
    upm_stack: Stack,
) -> None:
    stack = upm_stack
    try:
        stack.simulate()
        stack.controller(FLEET_ROLLOUT_TICK_S="0.5")
        stack.agent()
        engine = create_engine(stack.database_url)
        tech = user_token(engine, "tech-upm", "technician", sites=["upm"])
        engine.dispose()
        path = f"/api/v1/devices/{SNMP_PROJECTOR}"
        first = wait_for(
            lambda: (d := stack.get(path))["last_seen_at"] and d, 60, "the first reading"
        )
        assert first["power"] in ("standby", "off"), first

        def send(power: str) -> dict[str, Any]:
            code, sent = call(
                stack, tech, "POST", f"{path}/commands", {"power": power, "reason": "test"}
            )
            assert code == 202, sent
            cmd_id = sent[0]["cmd_id"]

            def final() -> dict[str, Any] | None:
                _, rows = call(stack, tech, "GET", f"{path}/commands")
                row = next(r for r in rows if r["cmd_id"] == cmd_id)
                if row["state"] == "done" and not row["confirmed_at"]:
                    return None  # done, not yet confirmed by a reading
                return row if row["state"] in ("done", "failed", "expired") else None

            row: dict[str, Any] = wait_for(final, 30, f"the power-{power} command settled")
            return row

        on = send("on")
        reading = stack.get(path)
        busy = send("off")  # still warming: the device's agent says inconsistentValue
        print(
            f"\n[snmp power] on: {on['state']} ({on['answer']}), power {reading['power']}; "
            f"off while warming: {busy['state']} ({busy['answer']})"
        )
        assert on["state"] == "done" and "noError" in on["answer"], on
        assert on["confirmed_at"] is not None
        assert reading["power"] in ("on", "warming")
        assert busy["state"] == "failed" and "inconsistentValue" in busy["answer"], busy
    except BaseException:
        print(stack.logs())
        raise


def test_an_api_only_controller_publishes_the_command(stack: Stack) -> None:
    """`fleet serve --role api`, the scaled-out API tier, sends commands too: it connects to
    the broker (subscribing to nothing) and publishes them."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from fleet.protocol.broker_url import parse_mqtt_url
    from fleet.protocol.messages import Command, Topics

    address = parse_mqtt_url(stack.broker_url)
    topic = Topics(stack.topic_root).cmd("ugb")
    got: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()
    listener = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    listener.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    listener.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        if not message.retain:
            got.append(message.payload)
            arrived.set()

    listener.on_message = on_message
    listener.connect(address.host, address.port)
    listener.loop_start()
    try:
        assert subscribed.wait(10)
        stack.controller(FLEET_ROLE="api")
        ops = stack.ops_token
        assert ops is not None
        status, rows = call(
            stack, ops, "POST", f"/api/v1/devices/{PROJECTOR}/commands",
            {"power": "on", "reason": "API tier test"},
        )  # fmt: skip
        assert status == 202 and rows[0]["state"] == "sent", rows
        assert arrived.wait(10), "no command reached the site's cmd topic"
    finally:
        listener.loop_stop()
        listener.disconnect()
    command = Command.model_validate_json(got[0])
    assert (command.kind.value, command.devices) == ("power", [PROJECTOR])
