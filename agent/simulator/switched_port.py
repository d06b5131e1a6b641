"""A simulated device's TCP port that is served only while the device is powered.

A panel that is switched off serves nothing: its LAN control port and whatever answers a
TCP connect go away, and come back when it is switched on (DeviceBehaviour follows the
site's timetable). The port number is kept across, so the address map stays true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from agent.simulator.behaviour import DeviceBehaviour
from agent.streams import quiet_when_cancelled
from fleet.protocol.messages import Power

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
POWERED = {Power.on, Power.warming}
LONG_AGO = datetime.min.replace(tzinfo=UTC)


class SwitchedPort:
    """Listens on one loopback port while `powered` (the behaviour says on, and `alive`),
    from `boot_s` after it was switched on (a panel's network is up once its OS has booted;
    one already on when the simulator starts has long booted).

    `alive = False` takes the device off the network whatever its power (unplugged).
    `powered_at` is when the port last came up, for busy periods after it."""

    def __init__(
        self, behaviour: DeviceBehaviour, check_s: float = 0.1, boot_s: float = 0.0
    ) -> None:
        """Follow `behaviour`'s power, checked every `check_s` seconds; the port opens `boot_s`
        seconds after the device comes on."""
        self.behaviour = behaviour
        self.alive = True
        self.check_s = check_s
        self.boot_s = boot_s
        self._on_since: datetime | None = None
        self.address: tuple[str, int] = ("", 0)
        self.powered_at: datetime | None = None
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def device_id(self) -> str:
        """The simulated device's id, as in the site config."""
        return self.behaviour.device.id

    @property
    def serving(self) -> bool:
        """Whether the port is listening now."""
        return self._server is not None

    def powered(self) -> bool:
        """Whether the device is `alive` and on or warming up."""
        return self.alive and self.behaviour.power() in POWERED

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> SwitchedPort:
        """Take the port (0: a free one, kept across power cycles), open it if the device is
        powered, and follow its power from then on; returns self. OSError if the port cannot be
        bound."""
        # Bound once (port 0: the kernel picks), so the number survives each power cycle.
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        self.address = probe.getsockname()[:2]
        probe.close()
        if self.powered():
            self._on_since = LONG_AGO  # on before we started: booted
        await self.sync()
        self._watch = asyncio.create_task(self._follow_power())
        return self

    async def sync(self) -> None:
        """Open or close the port as the device's power and `alive` say, now."""
        now = self.behaviour.clock()
        want = self.powered()
        if not want:
            self._on_since = None
        elif self._on_since is None:
            self._on_since = now
        booted = (
            self._on_since is not None and (now - self._on_since).total_seconds() >= self.boot_s
        )
        want = want and booted
        if want and self._server is None:
            self._server = await asyncio.start_server(
                quiet_when_cancelled(self._accept), *self.address, reuse_address=True, limit=1024
            )
            # One on before the simulator started came up long ago: not busy booting now.
            self.powered_at = now if self._on_since != LONG_AGO else LONG_AGO
        elif not want and self._server is not None:
            self._drop()

    async def _follow_power(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.sync()
            except OSError:  # the port is taken meanwhile: try again at the next check
                log.warning("%s: cannot listen on %s again", self.device_id, self.address)

    def _drop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    def close(self) -> None:
        """Stop following the power, close the port and drop the open connections."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._drop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away
        except Exception:  # a bad client must never take the simulator down
            log.debug("%s: conversation failed", self.device_id, exc_info=True)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """What the device does with a connection: by default nothing (a TCP connect is
        all a reachability-only device is asked for), closing when the client does."""
        await reader.read(1024)
