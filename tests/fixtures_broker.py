"""Real MQTT brokers for tests: the embedded amqtt (always) and the system Mosquitto
(127.0.0.1:1883; required when CI=true). Each test gets its own topic root, so tests that
share the system broker never see each other's messages."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.embedded_broker import EmbeddedBroker, free_port
from tests.conftest import need

MOSQUITTO = ("127.0.0.1", 1883)
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerThread:
    """The embedded broker on its own event loop in a thread, for synchronous tests."""

    def __init__(self) -> None:
        self.broker = EmbeddedBroker()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def url(self) -> str:
        return self.broker.url


@dataclass(frozen=True)
class TestBroker:
    kind: str
    url: str
    topic_root: str

    __test__ = False  # not a test class


@pytest.fixture(params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    if request.param == "mosquitto":
        if not port_open(*MOSQUITTO):
            need(
                "Mosquitto at 127.0.0.1:1883",
                "start it with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`",
            )
        yield TestBroker("mosquitto", "mqtt://127.0.0.1:1883?protocol=5", root)
        return
    thread = BrokerThread()
    thread.start()
    try:
        yield TestBroker("embedded", thread.url, root)
    finally:
        thread.stop()


class OwnMosquitto:
    """A Mosquitto of the test's own, on a free loopback port, configured with the queue and
    persistence limits we ship in deploy/mosquitto/: one the test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            (DEPLOY / "fleet-queues.conf").read_text(),
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence_location {workdir}/",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to `mosquitto`, who cannot write here
        self.conf.write_text("\n".join(lines) + "\n")
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}?protocol=5"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            need("mosquitto", "install Debian's mosquitto (.ci/run expects it)")
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                [binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean stop (SIGTERM): Mosquitto writes its persistence file on the way out."""
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[OwnMosquitto]:
    broker = OwnMosquitto(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()
