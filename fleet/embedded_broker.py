"""The embedded MQTT broker (amqtt, MQTT 3.1.1) for `fleet demo` and local tests.

Always on loopback, on a free port: never 1883, which a system broker may hold.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.plugins.authentication import AnonymousAuthPlugin
from amqtt.session import Session

MQTT_PORT = 1883
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


# The ports this process handed out lately, not handed out again: a server binds its port a
# while after the choice (a test's controller seconds later, once it has migrated), and a
# second choice meanwhile must not give the same one. Bounded: a long-lived process forgets.
_RECENT = 1000
_given: deque[int] = deque(maxlen=_RECENT)
_given_lock = threading.Lock()
# This process's part of the range, (index, parts): see `share_ports`.
_share = (0, 1)


def share_ports(index: int, parts: int) -> None:
    """Confine this process's `free_port` choices to the `index`-th (from 0) of `parts`
    equal, disjoint parts of its range, so that `parts` processes choosing ports side by side
    (the test suite's parallel workers, whose servers bind seconds after the choice) never
    choose the same port. Raises ValueError unless 0 <= index < parts."""
    global _share
    if not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts}: want 0 <= index < parts")
    _share = (index, parts)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A TCP port (UDP with `kind=socket.SOCK_DGRAM`) free on `host` now, for a server to
    bind a moment later.

    Chosen below the kernel's ephemeral range (Linux's ip_local_port_range, 32768-60999 by
    default) when that can be read: a port from inside it, as `bind(0)` gives, may be taken
    meanwhile by any outgoing connection's local end (a busy host makes hundreds a second),
    and the server then fails with EADDRINUSE. Never 1883, which a system broker may hold;
    never one of the last 1,000 this process gave; within this process's part of the range
    (`share_ports`). Falls back to the kernel's choice. IPv4 hosts only."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    index, parts = _share
    part = min(low - 1024, 12_000) // parts
    top = low - 1 - index * part
    with _given_lock:
        for _ in range(50 if part > 100 else 0):
            port = top - secrets.randbelow(part)
            if port == MQTT_PORT or port in _given:
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.append(port)
            return port
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration walks a copy of its keys, so it may change meanwhile."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))


class OpenAuthPlugin(AnonymousAuthPlugin):
    """Lets every client in, as amqtt's anonymous plugin does, without marking its session
    anonymous: amqtt keeps no persistent session (and queues no message) for an anonymous
    client, and a site agent's persistent session is what keeps the commands sent while it
    is away."""

    async def authenticate(self, *, session: Session) -> bool:
        """Let the client in when amqtt's anonymous plugin would, with its session kept as a
        persistent one."""
        allowed = bool(await super().authenticate(session=session))
        if allowed:
            session.is_anonymous = False
        return allowed


class EmbeddedBroker:
    """An amqtt broker on loopback for `fleet demo` and tests: every client allowed, on a free port
    unless one is given."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        """`port` None: a free port on `host` (never 1883)."""
        self.host = host
        self.port = port or free_port(host)
        self._config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            "plugins": {
                f"{__name__}.OpenAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker: Broker | None = None
        # amqtt logs every connection at INFO; the demo's console is for the product.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)

    @property
    def url(self) -> str:
        """The broker's address for agents and the controller: mqtt://<host>:<port>."""
        return f"mqtt://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start listening, on the running event loop."""
        # amqtt binds itself to the running loop when constructed.
        self._broker = Broker(self._config)
        # amqtt iterates its subscriptions across awaits while other clients subscribe
        # ("dictionary changed size during iteration" when many agents connect at once).
        self._broker._subscriptions = _SnapshotDict(self._broker._subscriptions)
        await self._broker.start()

    async def stop(self) -> None:
        """Shut the broker down; does nothing when it is not running."""
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
