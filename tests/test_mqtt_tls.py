"""MQTT over TLS against a real Mosquitto of the test's own, with certificates made here by
openssl: the way a real site reaches a controller across the internet (mqtts:// with `ca=`,
and `cert=`/`key=` where the broker asks for a client certificate)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.check import check_broker
from agent.publisher import MqttLink
from bench.brokers import MosquittoMissing, OwnMosquitto
from fleet.ingest.pipeline import Ingest
from fleet.ingest.subscriber import Subscriber
from fleet.models import Sample
from fleet.protocol.broker_url import parse_mqtt_url
from tests.conftest import need
from tests.fixtures_db import RECEIVED, batch, reading
from tests.procs import wait_for


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path  # a CA that signed nothing here: a broker it vouches for is not ours


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def make_ca(dir: Path, name: str) -> tuple[Path, Path]:
    key, cert = dir / f"{name}.key", dir / f"{name}.crt"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=dir)
    openssl(
        "req", "-x509", "-new", "-key", str(key), "-days", "2", "-subj", f"/CN={name}",
        "-out", str(cert), cwd=dir,
    )  # fmt: skip
    return cert, key


def make_leaf(dir: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = dir / f"{name}.key", dir / f"{name}.csr", dir / f"{name}.crt"
    (dir / f"{name}.ext").write_text(ext)
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=dir)
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr), cwd=dir)
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-extfile", str(dir / f"{name}.ext"),
        "-out", str(cert), cwd=dir,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        need("openssl", "Debian's openssl makes the test certificates")
    dir = tmp_path_factory.mktemp("pki")
    ca = make_ca(dir, "fleet-ca")
    server = make_leaf(
        dir, "broker", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    client = make_leaf(dir, "site-upm", ca, "extendedKeyUsage=clientAuth\n")
    rogue, _ = make_ca(dir, "rogue-ca")
    return Pki(ca[0], server[0], server[1], client[0], client[1], rogue)


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[OwnMosquitto]:
    """Mosquitto listening on TLS only, asking every client for a certificate of our CA."""
    broker = OwnMosquitto(tmp_path / "broker")
    broker.configure(
        "allow_anonymous true",
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
        "persistence false",
    )
    try:
        broker.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    yield broker
    broker.stop()


def url(broker: OwnMosquitto, pki: Pki, *, ca: Path | None = None, client: bool = True) -> str:
    query = f"protocol=5&ca={ca or pki.ca}"
    if client:
        query += f"&cert={pki.client_cert}&key={pki.client_key}"
    return f"mqtts://127.0.0.1:{broker.port}?{query}"


def test_a_reading_crosses_tls_with_client_certificates(
    tls_broker: OwnMosquitto, pki: Pki, sqlite_registered: Engine
) -> None:
    subscriber = Subscriber(
        parse_mqtt_url(url(tls_broker, pki)),
        Ingest(sqlite_registered),
        client_id=f"ctl-{uuid.uuid4().hex[:8]}",
    )
    subscriber.start()
    at = RECEIVED - timedelta(minutes=1)
    try:
        wait_for(lambda: subscriber.status().get("connected"), 15, "the controller over TLS")

        async def agent_publishes() -> None:
            link = MqttLink(parse_mqtt_url(url(tls_broker, pki)), client_id="upm-agent-tls")
            await link.start()
            try:
                assert await link.wait_connected(10), link.last_error
                payload = batch("upm", [reading("upm-sc1-panel-1", at)])
                await link.publish("fleet/v1/upm/health", json.dumps(payload).encode())
            finally:
                await link.close()

        asyncio.run(agent_publishes())

        def stored() -> list[str]:
            with Session(sqlite_registered) as session:
                return [s.device_id for s in session.exec(select(Sample)).all()]

        assert wait_for(stored, 15, "the reading sent over TLS") == ["upm-sc1-panel-1"]
    finally:
        subscriber.stop()


def test_check_names_a_broker_certificate_our_ca_did_not_sign(
    tls_broker: OwnMosquitto, pki: Pki
) -> None:
    good = asyncio.run(check_broker(parse_mqtt_url(url(tls_broker, pki)), "check-good", 10))
    assert good.status == "ok", good.detail
    wrong_ca = parse_mqtt_url(url(tls_broker, pki, ca=pki.rogue_ca))
    result = asyncio.run(check_broker(wrong_ca, "check-rogue", 5))
    assert result.status == "fail"
    assert "certificate" in result.detail and str(pki.rogue_ca) in result.detail, result.detail


def test_check_says_the_broker_wants_a_client_certificate(
    tls_broker: OwnMosquitto, pki: Pki
) -> None:
    no_cert = parse_mqtt_url(url(tls_broker, pki, client=False))
    result = asyncio.run(check_broker(no_cert, "check-no-cert", 5))
    assert result.status == "fail"
    assert "client certificate" in result.detail and "cert=" in result.detail, result.detail


def test_a_running_agent_logs_why_it_cannot_connect(tls_broker: OwnMosquitto, pki: Pki) -> None:
    """Not just "not reachable yet": the agent finds out and says the CA is the wrong one,
    while it keeps retrying (and its readings wait in the outbox)."""

    async def run() -> str | None:
        link = MqttLink(parse_mqtt_url(url(tls_broker, pki, ca=pki.rogue_ca)), "upm-agent-x")
        await link.start(first_connect_timeout=1)
        try:
            for _ in range(100):
                if link.last_error:
                    break
                await asyncio.sleep(0.1)
            assert not link.connected.is_set()
            return link.last_error
        finally:
            await link.close()

    error = asyncio.run(run())
    assert error is not None and "not trusted by the CA in ca=" in error, error
