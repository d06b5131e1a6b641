"""The shipped Mosquitto config, started as root as Debian's package starts it, so that it drops
to the `mosquitto` user before reading the files `fleet mqtt-auth export` wrote: the files are
readable by it, a site logs in and publishes, and a site's credential cannot take over the
controller's session by connecting with its client id."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine
from sqlmodel import Session

from agent.check import check_broker
from bench.brokers import mosquitto_binary, port_open
from fleet.auth.mqtt_auth import rotate_site_credential
from fleet.embedded_broker import free_port
from fleet.protocol.broker_url import parse_mqtt_url
from tests.conftest import need
from tests.procs import BIN, wait_for
from tests.test_mqtt_tls import make_ca, make_leaf

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "mosquitto"
CONTROLLER_PASSWORD = "controller-secret-1"


@dataclass
class PackagedBroker:
    port: int
    ca: Path
    log: Path
    passwords: dict[str, str]
    popen: subprocess.Popen[bytes]


def shipped_config(work: Path, port: int, keep_client_ids: bool) -> str:
    """deploy/mosquitto/mosquitto.conf with only its paths moved into `work`, its listener on a
    loopback port of the test's own, and its log on stderr; every setting else as shipped."""
    text = (DEPLOY / "mosquitto.conf").read_text()
    text = text.replace("/etc/mosquitto/", f"{work}/etc/mosquitto/")
    text = text.replace("/run/mosquitto/", f"{work}/run/")
    text = text.replace("/var/lib/mosquitto/", f"{work}/lib/")
    text = re.sub(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", text)
    text = re.sub(r"(?m)^log_dest syslog$", "log_dest stderr", text)
    if keep_client_ids:  # the control: what the shipped line prevents
        text = re.sub(r"(?m)^use_username_as_clientid true$", "", text)
    return text


def start_packaged(
    work: Path, engine: Engine, keep_client_ids: bool = False
) -> Iterator[PackagedBroker]:
    if os.geteuid() != 0:
        need("root", "the broker must start as root to drop privileges as packaged")
    binary = mosquitto_binary()
    if binary is None:
        need("mosquitto", ".ci/run expects Debian's mosquitto")
    try:
        broker_user = pwd.getpwnam("mosquitto")
    except KeyError:
        need("mosquitto user", "Debian's mosquitto package creates it")
    etc = work / "etc" / "mosquitto"
    (etc / "certs").mkdir(parents=True)
    (etc / "fleet.d").mkdir()
    shutil.copy(DEPLOY / "fleet-queues.conf", etc / "fleet.d" / "fleet-queues.conf")
    for name in ("run", "lib"):
        (work / name).mkdir()
        os.chown(work / name, broker_user.pw_uid, broker_user.pw_gid)
    ca = make_ca(etc / "certs", "ca")
    cert, key = make_leaf(
        etc / "certs", "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    for path in (cert, key):
        os.chown(path, broker_user.pw_uid, broker_user.pw_gid)
    with Session(engine) as session:
        passwords = {site: rotate_site_credential(session, site)[1] for site in ("upm", "tuit")}
        session.commit()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLEET_")},
        "FLEET_DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "FLEET_MQTT_URL": "mqtts://fleet-controller@127.0.0.1:8883",
        "FLEET_MQTT_PASSWORD": CONTROLLER_PASSWORD,
    }
    export = subprocess.run(
        [str(BIN / "fleet"), "mqtt-auth", "export", "--out", str(etc / "fleet")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    assert "owner mosquitto:" in export.stdout
    for name in ("passwd", "acl"):
        info = (etc / "fleet" / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (broker_user.pw_uid, 0o600)
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(shipped_config(work, port, keep_client_ids))
    log = work / "mosquitto.log"
    with log.open("wb") as out:
        popen = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: port_open("127.0.0.1", port) or popen.poll() is not None,
            15,
            "the packaged Mosquitto",
        )
        assert popen.poll() is None, log.read_text()
        # As packaged: started as root, running as mosquitto.
        status = Path(f"/proc/{popen.pid}/status").read_text()
        uid = int(re.search(r"(?m)^Uid:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        assert uid == broker_user.pw_uid, status
        yield PackagedBroker(port, ca[0], log, {**passwords}, popen)
    finally:
        popen.terminate()
        popen.wait(10)


@pytest.fixture
def work() -> Iterator[Path]:
    # The broker's own user must reach these files: pytest's tmp_path is root's alone (0700).
    path = Path(tempfile.mkdtemp(prefix="fleet-packaged-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def packaged(work: Path, sqlite_registered: Engine) -> Iterator[PackagedBroker]:
    yield from start_packaged(work, sqlite_registered)


class Session5:
    """A paho MQTT v5 client on a persistent session, recording what happens to it."""

    def __init__(self, broker: PackagedBroker, user: str, password: str, client_id: str) -> None:
        self.connack: int | None = None
        self.disconnects: list[int] = []
        self.received: list[str] = []
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set(user, password)
        self.client.tls_set(ca_certs=str(broker.ca))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda _c, _u, _f, rc, _p=None: self.disconnects.append(
            rc.value
        )
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p=None: self.granted.extend(
            c.value for c in codes
        )
        self.client.on_message = lambda _c, _u, m: self.received.append(m.payload.decode())
        self.client.on_publish = lambda _c, _u, mid, rc, _p=None: self.acks.__setitem__(
            mid, rc.value
        )
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.reconnect_delay_set(60, 60)  # a taken-over client must not come straight back
        self.client.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        wait_for(lambda: self.connack is not None, 15, f"{user}'s CONNACK")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: Any, _p: Any = None) -> None:
        self.connack = code.value

    def publish(self, topic: str, payload: str) -> int:
        info = self.client.publish(topic, payload, qos=1)
        acked = wait_for(lambda: info.mid in self.acks and (self.acks[info.mid],), 10, "PUBACK")
        return acked[0]

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: self.granted, 10, "SUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_exported_files_work_with_mosquitto_started_as_packaged(
    packaged: PackagedBroker,
) -> None:
    site = Session5(packaged, "site-upm", packaged.passwords["upm"], "agent-upm-upm-agent-1")
    try:
        assert site.connack == 0, packaged.log.read_text()
        assert site.publish("fleet/v1/upm/health", json.dumps({"x": 1})) in (0, 16)
        assert site.publish("fleet/v1/tuit/health", json.dumps({"x": 1})) == 135
    finally:
        site.close()
    assert "Unable to open" not in packaged.log.read_text()


def takeover(broker: PackagedBroker) -> tuple[Session5, str]:
    """The controller on its persistent session, then site upm's credential connecting with
    the controller's client id; then upm publishes a batch. Returns the controller's client
    and the batch's marker."""
    controller = Session5(broker, "fleet-controller", CONTROLLER_PASSWORD, "fleet-controller")
    assert controller.connack == 0, broker.log.read_text()
    controller.subscribe("fleet/v1/+/health")
    attacker = Session5(broker, "site-upm", broker.passwords["upm"], "fleet-controller")
    marker = uuid.uuid4().hex
    try:
        assert attacker.connack == 0
        assert attacker.publish("fleet/v1/upm/health", marker) in (0, 16)
    finally:
        attacker.close()
    return controller, marker


def test_a_site_credential_cannot_take_over_the_controller_session(
    packaged: PackagedBroker,
) -> None:
    controller, marker = takeover(packaged)
    try:
        wait_for(lambda: marker in controller.received, 15, "the batch at the controller")
        assert controller.disconnects == [], packaged.log.read_text()
    finally:
        controller.close()


def test_without_the_shipped_setting_the_takeover_succeeds(
    work: Path, sqlite_registered: Engine
) -> None:
    """The control: the same attack on the same config less `use_username_as_clientid`
    throws the controller off, so the test above would see a regression."""
    brokers = start_packaged(work, sqlite_registered, keep_client_ids=True)
    broker = next(brokers)
    try:
        controller, marker = takeover(broker)
        try:
            wait_for(lambda: controller.disconnects, 15, "the controller thrown off")
            assert marker not in controller.received
        finally:
            controller.close()
    finally:
        next(brokers, None)


def test_check_says_credentials_accepted_only_where_the_broker_checks_them(
    packaged: PackagedBroker,
) -> None:
    base = f"mqtts://site-upm@127.0.0.1:{packaged.port}?ca={packaged.ca}"
    right = replace(parse_mqtt_url(base), password=packaged.passwords["upm"])
    wrong = replace(right, password="not-the-password")
    ok = asyncio.run(check_broker(right, "check-upm-1"))
    assert (ok.status, "credentials accepted" in ok.detail) == ("ok", True), ok.detail
    refused = asyncio.run(check_broker(wrong, "check-upm-2"))
    assert refused.status == "fail" and "credentials accepted" not in refused.detail
