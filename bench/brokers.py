"""Brokers for benchmarks and tests: a Mosquitto of our own, run with the queue and
persistence limits we ship in deploy/mosquitto/, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from fleet.embedded_broker import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"


class MosquittoMissing(RuntimeError):
    pass


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return found if Path(found).exists() else None


class OwnMosquitto:
    """A Mosquitto of the test's own, on a free loopback port, configured with the queue and
    persistence limits we ship in deploy/mosquitto/: one the test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.configure(
            "allow_anonymous true",
            f"persistence_location {workdir}/",
            before=[(DEPLOY / "fleet-queues.conf").read_text()],
        )
        self.popen: subprocess.Popen[bytes] | None = None

    def configure(self, *lines: str, before: list[str] | None = None) -> None:
        """Write the config: `before` (global settings), our listener on the loopback port,
        then `lines` (the listener's own settings among them)."""
        conf = [*(before or []), f"listener {self.port} 127.0.0.1", *lines]
        if os.geteuid() == 0:
            conf.append("user root")  # else it drops to `mosquitto`, who cannot write here
        self.conf.write_text("\n".join(conf) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}?protocol=5"

    def start(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise MosquittoMissing("mosquitto is not installed (Debian package mosquitto)")
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
