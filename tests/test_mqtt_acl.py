"""Broker credentials against a real Mosquitto of the test's own, configured from
`fleet mqtt-auth export`: a site's credential publishes only as its site, never commands;
anonymous clients are refused; the controller never stores what the broker denied."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine
from sqlmodel import Session, select

from bench.brokers import MosquittoMissing, OwnMosquitto
from fleet.auth.mqtt_auth import rotate_site_credential
from fleet.ingest.pipeline import Ingest
from fleet.ingest.subscriber import Subscriber
from fleet.models import DeadLetter, Sample
from fleet.protocol.broker_url import parse_mqtt_url
from tests.conftest import need
from tests.fixtures_db import RECEIVED, batch, reading
from tests.procs import BIN, wait_for

CONTROLLER_PASSWORD = "controller-secret-1"
NOT_AUTHORIZED = 135


@pytest.fixture
def site_passwords(sqlite_registered: Engine) -> dict[str, str]:
    with Session(sqlite_registered) as session:
        passwords = {site: rotate_site_credential(session, site)[1] for site in ("upm", "tuit")}
        session.commit()
    return passwords


@pytest.fixture
def secured(
    tmp_path: Path, sqlite_registered: Engine, site_passwords: dict[str, str]
) -> Iterator[OwnMosquitto]:
    """Mosquitto with anonymous off and the password and ACL files of `fleet mqtt-auth export`."""
    broker = OwnMosquitto(tmp_path / "broker")
    out = tmp_path / "mqtt-auth"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        "FLEET_DATABASE_URL": sqlite_registered.url.render_as_string(hide_password=False),
        "FLEET_MQTT_URL": f"mqtt://fleet-controller@127.0.0.1:{broker.port}?protocol=5",
        "FLEET_MQTT_PASSWORD": CONTROLLER_PASSWORD,
    }
    export = subprocess.run(
        [str(BIN / "fleet"), "mqtt-auth", "export", "--format", "mosquitto", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    for name in ("passwd", "acl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert CONTROLLER_PASSWORD not in (out / "passwd").read_text()
    broker.configure(
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "persistence false",
        "log_type all",
    )
    try:
        broker.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    yield broker
    broker.stop()


class Client:
    """A bare paho MQTT v5 client that reports the broker's answer to each request."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self.received: list[str] = []
        self.connack: int | None = None
        self._done = threading.Condition()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"acl-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, message: self.received.append(message.topic)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, 10, "the broker's CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: Any, _p: Any = None) -> None:
        self.connack = code.value

    def _on_publish(self, _c: Any, _u: Any, mid: int, code: Any, _p: Any = None) -> None:
        self.acks[mid] = code.value

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: Any, _p: Any = None) -> None:
        self.granted = [c.value for c in codes]

    def publish(self, topic: str, payload: dict[str, Any]) -> int:
        """The PUBACK reason code: 0 accepted, 135 not authorized."""
        info = self.client.publish(topic, json.dumps(payload), qos=1)
        return wait_for(
            lambda: self.acks.get(info.mid, None) is not None and (self.acks[info.mid],),
            10,
            f"PUBACK for {topic}",
        )[0]

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return wait_for(lambda: self.granted and (self.granted[0],), 10, "SUBACK")[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def controller(secured: OwnMosquitto, sqlite_registered: Engine) -> Iterator[Subscriber]:
    address = parse_mqtt_url(f"mqtt://fleet-controller@127.0.0.1:{secured.port}?protocol=5")
    address = type(address)(**{**address.__dict__, "password": CONTROLLER_PASSWORD})
    subscriber = Subscriber(
        address, Ingest(sqlite_registered), client_id=f"ctl-{uuid.uuid4().hex[:8]}"
    )
    subscriber.start()
    wait_for(lambda: subscriber.status().get("connected"), 15, "the controller's connection")
    yield subscriber
    subscriber.stop()


def samples(sqlite_registered: Engine) -> dict[str, list[str]]:
    with Session(sqlite_registered) as session:
        rows = session.exec(select(Sample)).all()
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.device_id, []).append(row.ts.isoformat())
    return out


def test_site_credential_cannot_publish_as_another_site(
    secured: OwnMosquitto,
    controller: Subscriber,
    sqlite_registered: Engine,
    site_passwords: dict[str, str],
) -> None:
    forged_at = RECEIVED - timedelta(minutes=5)
    honest_at = RECEIVED - timedelta(minutes=1)
    tuit = Client(secured.port, "site-tuit", site_passwords["tuit"])
    upm = Client(secured.port, "site-upm", site_passwords["upm"])
    try:
        # tuit's credential, a well-formed upm batch, on upm's topic: the broker says no.
        forged = batch("upm", [reading("upm-sc1-panel-1", forged_at)])
        assert tuit.publish("fleet/v1/upm/health", forged) == NOT_AUTHORIZED
        # The same credential on its own topic, and upm on its own: accepted.
        own = batch("upm", [reading("upm-sc1-panel-1", honest_at)])
        assert upm.publish("fleet/v1/upm/health", own) == 0
        # A site never sends commands, not even to itself, and reads only its own.
        assert upm.publish("fleet/v1/upm/cmd", {"cmd": "poll_now"}) == NOT_AUTHORIZED
        # Commands reach their own site only (Mosquitto checks reads on delivery).
        tuit.subscribe("fleet/v1/upm/cmd")
        upm.subscribe("fleet/v1/upm/cmd")
        controller.publish("fleet/v1/upm/cmd", json.dumps({"cmd": "poll_now"}).encode())
        wait_for(lambda: upm.received, 10, "upm's command")
        time.sleep(0.3)
        assert tuit.received == []
    finally:
        tuit.close()
        upm.close()
    wait_for(lambda: samples(sqlite_registered).get("upm-sc1-panel-1"), 15, "the honest reading")
    time.sleep(0.5)  # anything else the broker let through would have arrived by now
    assert samples(sqlite_registered) == {"upm-sc1-panel-1": [honest_at.isoformat()]}
    with Session(sqlite_registered) as session:
        assert session.exec(select(DeadLetter)).all() == []  # denied at the door, not later


def test_anonymous_and_wrong_password_are_refused(
    secured: OwnMosquitto, site_passwords: dict[str, str]
) -> None:
    for username, password in ((None, None), ("site-upm", "wrong"), ("site-upm", None)):
        client = Client(secured.port, username, password)
        try:
            assert client.connack not in (None, 0), (username, password)
        finally:
            client.close()


def test_acl_gives_the_controller_everything_under_the_root(
    secured: OwnMosquitto, controller: Subscriber
) -> None:
    client = Client(secured.port, "fleet-controller", CONTROLLER_PASSWORD)
    try:
        # 16: accepted, nobody subscribed. Anything but 135 means the ACL let it through.
        assert client.publish("fleet/v1/upm/cmd", {"cmd": "poll_now"}) in (0, 16)
        assert client.publish("other/topic", {"x": 1}) == NOT_AUTHORIZED
    finally:
        client.close()


def test_broker_url_takes_ca_and_optional_client_certificate() -> None:
    address = parse_mqtt_url(
        "mqtts://site-upm@broker.example?ca=/etc/ca.pem&cert=/c.pem&key=/k.pem"
    )
    assert (address.tls, address.port, address.ca_file) == (True, 8883, "/etc/ca.pem")
    assert (address.cert_file, address.key_file) == ("/c.pem", "/k.pem")
    assert parse_mqtt_url("mqtts://broker.example").cert_file is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    extra=st.one_of(
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,70}", fullmatch=True), st.text()
    ).filter(lambda t: t not in {"fleet-controller", "site-upm"})
)
def test_a_controller_user_the_files_cannot_hold_is_refused_and_nothing_is_written(
    sqlite_registered: Engine, tmp_path_factory: pytest.TempPathFactory, extra: str
) -> None:
    """Any --controller-user: either refused with its reason and no file written, or each
    file names exactly the users asked for, one line per login and one `user` line each."""
    from fleet.auth.mqtt_auth import (
        BROKER_USER_RE,
        ControllerLogin,
        ExportError,
        export_mosquitto,
    )

    out = tmp_path_factory.mktemp("export") / "mqtt-auth"
    login = ControllerLogin("fleet-controller", "pw", (extra,))
    with Session(sqlite_registered) as session:
        rotate_site_credential(session, "upm")
        session.commit()
        try:
            passwd, acl = export_mosquitto(session, out, login, "fleet/v1")
        except ExportError as exc:
            event("refused")
            assert not BROKER_USER_RE.fullmatch(extra)
            assert "FLEET_MQTT_URL" in str(exc) and "--controller-user" in str(exc)
            assert not out.exists()
            return
    event("written")
    logins = [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]
    assert logins == ["fleet-controller", extra, "site-upm"]
    users = [line[5:] for line in acl.read_text().splitlines() if line.startswith("user ")]
    assert users == ["fleet-controller", extra, "site-upm"]


def test_a_line_break_in_a_controller_user_cannot_grant_a_site_the_whole_root(
    sqlite_registered: Engine, tmp_path: Path
) -> None:
    from fleet.auth.mqtt_auth import ControllerLogin, ExportError, export_mosquitto

    hostile = ControllerLogin("fleet-controller", "pw", ("x\nuser site-upm\ntopic readwrite #",))
    with Session(sqlite_registered) as session, pytest.raises(ExportError, match="cannot be"):
        export_mosquitto(session, tmp_path / "out", hostile, "fleet/v1")
    assert not (tmp_path / "out").exists()
