"""Where the MQTT broker is and how to log in, from one URL: mqtt[s]://user:pass@host:port."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used: a wrong scheme, no host, a bad port or an unknown
    MQTT protocol version."""


@dataclass(frozen=True)
class BrokerAddress:
    """A broker URL taken apart by `parse_mqtt_url`: where the agent or the controller
    connects, its login, and its TLS files."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    # A client certificate (and its key) for brokers that require one (require_certificate).
    cert_file: str | None = None
    key_file: str | None = None
    # "5" for MQTT v5, "3.1.1" for brokers that speak only that (the demo's embedded amqtt).
    protocol: str = "3.1.1"

    def ssl_context(self) -> ssl.SSLContext:
        """TLS that checks the broker against `ca` (else the system's CAs), and presents a
        client certificate when `cert` is given."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def display(self) -> str:
        """The URL without its password, for logs and errors."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """Parse `mqtt://[user[:password]@]host[:port][?protocol=5&ca=/path&cert=/path&key=/path]`.

    The password may also come from FLEET_MQTT_PASSWORD so that it stays out of files.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise BrokerUrlError(
            f"broker URL {url!r} must start with mqtt:// or mqtts://, e.g. mqtt://127.0.0.1:1883"
        )
    if not parts.hostname:
        raise BrokerUrlError(f"broker URL {url!r} names no host, e.g. mqtt://127.0.0.1:1883")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise BrokerUrlError(f"broker URL {url!r} has a bad port") from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    protocol = query.get("protocol", "3.1.1")
    if protocol not in ("5", "3.1.1"):
        raise BrokerUrlError(f"broker URL {url!r}: protocol must be 5 or 3.1.1")
    password = unquote(parts.password) if parts.password else os.environ.get("FLEET_MQTT_PASSWORD")
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=password,
        tls=tls,
        ca_file=query.get("ca"),
        cert_file=query.get("cert"),
        key_file=query.get("key"),
        protocol=protocol,
    )
