"""A simulated PJLink projector on a loopback TCP port, with the quirks real ones have.

Password authentication (`PJLINK 1 <random>`, `PJLINK ERRA` on a wrong digest), lowercase
replies on some models, ERR3 while warming up or cooling down (and for INPT in standby), the
connection dropped after 30 s idle, now and then a slow reply, lamp and filter hours that age
and faults that come and go (from DeviceBehaviour). Times are `PjlinkQuirks` fields so that
tests need not wait 30 s. `misbehave` makes it answer badly, for fault tests. Field quirks:
every reply slow (1.0-1.9 s, inside the spec's 2 s), NAME padded with NULs, bytes before and
after replies, text in Latin-1 (NEC), a query answered with something that is not PJLink.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import zlib
from dataclasses import dataclass
from typing import Literal

from agent.simulator.behaviour import DeviceBehaviour
from agent.streams import quiet_when_cancelled
from fleet.protocol.messages import Flag, Power

log = logging.getLogger(__name__)

ERST_ORDER = ("fan", "lamp", "temperature", "cover", "filter", "other")
FLAG_DIGIT = {Flag.ok: "0", Flag.warning: "1", Flag.error: "2"}
POWER_DIGIT = {
    Power.off: "0",
    Power.standby: "0",
    Power.on: "1",
    Power.cooling: "2",
    Power.warming: "3",
}
# Input names of the profile's simulation hints -> PJLink input type digit.
INPUT_TYPE = {"rgb": "1", "vga": "1", "video": "2", "hdmi": "3", "dvi": "3", "dp": "3"}
INPUT_TYPE |= {"digital": "3", "usb": "4", "storage": "4", "network": "5", "lan": "5"}
CLASS1 = {"POWR", "INPT", "ERST", "LAMP", "NAME", "INF1", "INF2", "INFO", "CLSS"}
CLASS2 = {"INPT", "FILT", "SNUM", "SVER"}
_COMMAND = re.compile(r"^%([12])([A-Za-z0-9]{4})[ =](.*)$")

Misbehaviour = Literal["garbage_greeting", "garbage", "half", "silent", "reset"]


@dataclass
class PjlinkQuirks:
    """How a simulated projector departs from a clean PJLink exchange (see the module docstring);
    times in seconds."""

    idle_drop_s: float = 30.0  # the PJLink spec lets a projector close an idle connection
    slow_reply_chance: float = 0.02
    slow_reply_s: float = 2.0  # inside the profile's timeout: slow, not dead
    lowercase: bool = False
    pjlink_class: int = 2
    # Every reply after a delay drawn from this range (s): a projector that answers each
    # query in 1.0-1.9 s, inside the spec's 2 s.
    reply_delay_s: tuple[float, float] | None = None
    # NAME padded with NUL bytes to its buffer's size before the CR.
    name_nul_padding: int = 0
    # Bytes sent before the greeting (a telnet prompt, NULs, a blank line).
    before_greeting: bytes = b""
    # Bytes sent before every reply (a prompt, NULs, an echo), and after its CR.
    before_reply: bytes = b""
    after_reply: bytes = b""
    # The encoding of NAME, INF1, INF2, INFO (NEC sends Latin-1).
    text_encoding: str = "utf-8"
    # Commands answered with something that is not a PJLink reply.
    not_pjlink: frozenset[str] = frozenset()
    # Commands answered only after `slow_reply_s` (past the client's timeout: a late reply).
    slow_commands: frozenset[str] = frozenset()
    # Replies as given here instead of the model's, by command: hostile-input tests.
    raw_replies: dict[str, bytes] | None = None


class ProjectorServer:
    """One simulated projector. `alive = False` refuses connections (as a projector that is
    unplugged); `misbehave` picks a way of answering badly."""

    def __init__(
        self,
        behaviour: DeviceBehaviour,
        password: str | None,
        quirks: PjlinkQuirks | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """A projector following `behaviour`; `password` (None: no authentication) is what its
        greeting asks for; `rng` draws its tokens and slow replies."""
        self.behaviour = behaviour
        self.password = password
        self.quirks = quirks or PjlinkQuirks()
        self.rng = rng or random.Random(behaviour.device.id)
        self.misbehave: Misbehaviour | None = None
        self.alive = True
        self.connections = 0
        self.commands = 0
        self.auth_failures = 0
        self.idle_drops = 0
        self.received: list[str] = []  # the commands asked, e.g. "%1POWR"
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def device_id(self) -> str:
        """The simulated projector's id, as in the site config."""
        return self.behaviour.device.id

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> ProjectorServer:
        """Listen on `host`:`port` (0: a free port); `address` then holds where. Returns self."""
        self._server = await asyncio.start_server(
            quiet_when_cancelled(self._serve), host, port, limit=1024
        )
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    def close(self) -> None:
        """Stop listening and close the open connections."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if not self.alive:
                writer.transport.abort()
                return
            self.connections += 1
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away: nothing to do
        except Exception:  # a bad client must never take the simulator down
            log.debug("%s: conversation failed", self.device_id, exc_info=True)
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.misbehave == "silent":
            await reader.read()  # say nothing until the client gives up
            return
        if self.misbehave == "garbage_greeting":
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            await writer.drain()
            return
        token = f"{self.rng.getrandbits(32):08x}"
        greeting = f"PJLINK 1 {token}\r".encode() if self.password else b"PJLINK 0\r"
        writer.write(self.quirks.before_greeting + greeting)
        await writer.drain()
        first = True
        while True:
            try:
                raw = await asyncio.wait_for(reader.readuntil(b"\r"), self.quirks.idle_drop_s)
            except TimeoutError:
                self.idle_drops += 1
                return
            line = raw.decode("ascii", "replace").strip("\r\n")
            if first and self.password:
                digest, line = line[:32], line[32:]
                expected = hashlib.md5(
                    (token + self.password).encode(), usedforsecurity=False
                ).hexdigest()
                if digest.lower() != expected:
                    self.auth_failures += 1
                    writer.write(b"PJLINK ERRA\r")
                    await writer.drain()
                    return
            first = False
            self.commands += 1
            if self.misbehave == "reset":
                writer.transport.abort()
                return
            if self.misbehave == "half":
                writer.write(b"%1POW")
                await writer.drain()
                await reader.read()
                return
            if self.misbehave == "garbage":
                writer.write(bytes(self.rng.getrandbits(8) for _ in range(12)) + b"\r")
                await writer.drain()
                continue
            if self.rng.random() < self.quirks.slow_reply_chance:
                await asyncio.sleep(self.quirks.slow_reply_s)
            if self.quirks.reply_delay_s is not None:
                await asyncio.sleep(self.rng.uniform(*self.quirks.reply_delay_s))
            if line[2:6].upper() in self.quirks.slow_commands:
                await asyncio.sleep(self.quirks.slow_reply_s)
            self.received.append(line[:6].upper())
            q = self.quirks
            writer.write(q.before_reply + self.reply_bytes(line) + b"\r" + q.after_reply)
            await writer.drain()

    def reply_bytes(self, line: str) -> bytes:
        """The reply's bytes as this model sends them: text in its encoding, NAME padded."""
        found = _COMMAND.match(line)
        command = found[2].upper() if found else ""
        if command in self.quirks.not_pjlink:
            return b"OK"  # what a serial-to-LAN box in front of some projectors says
        if self.quirks.raw_replies is not None and command in self.quirks.raw_replies:
            return self.quirks.raw_replies[command]
        text = self.reply(line)
        data = text.encode(self.quirks.text_encoding, "replace")
        if command == "NAME" and not text.upper().endswith("=ERR1"):
            data += b"\x00" * self.quirks.name_nul_padding
        return data

    def reply(self, line: str) -> str:
        """The reply (without CR) to one command line (without digest or CR)."""
        found = _COMMAND.match(line)
        if found is None:
            return "%1ERR1=ERR1"  # not a command at all: what many projectors send back
        pjclass, command, param = int(found[1]), found[2].upper(), found[3]
        if param != "?" and command in ("POWR", "INPT") and pjclass == 1:
            value = self._set(command, param.strip())
        elif param != "?":
            value = "ERR2"  # the simulator sets power and input only
        elif pjclass > self.quirks.pjlink_class or command not in (CLASS1, CLASS2)[pjclass - 1]:
            value = "ERR1"
        else:
            value = self._value(command)
        if self.quirks.lowercase:
            return f"%{pjclass}{command.lower()}={value.lower() if value[:3] == 'ERR' else value}"
        return f"%{pjclass}{command}={value}"

    def _set(self, command: str, param: str) -> str:
        b = self.behaviour
        if command == "POWR":
            if param not in ("0", "1"):
                return "ERR2"
            return "OK" if b.switch(param == "1") else "ERR3"
        if b.power() != Power.on:
            return "ERR3"  # no input switching in standby or while warming
        names = {_input_code(n): n for n in b.profile.simulation.inputs}
        if param not in names:
            return "ERR2"
        return "OK" if b.select_input(names[param]) else "ERR2"

    def _value(self, command: str) -> str:
        b = self.behaviour
        now = b.clock()
        power = b.power(now)
        transition = power in (Power.warming, Power.cooling)
        if command == "POWR":
            return POWER_DIGIT[power]
        if command == "ERST":
            return "".join(FLAG_DIGIT[b.error_flag(flag, now)] for flag in ERST_ORDER)
        if command == "CLSS":
            return str(self.quirks.pjlink_class)
        if command in ("LAMP", "FILT", "INPT") and transition:
            return "ERR3"  # busy warming up or cooling down
        if command == "LAMP":
            if b.lamp_hours is None:
                return "ERR1"  # a lamp-free (laser or LED) model
            lamp_on = power in (Power.on, Power.warming)
            return f"{int(b.lamp_hours)} {1 if lamp_on else 0}"
        if command == "FILT":
            return "ERR1" if b.filter_hours is None else str(int(b.filter_hours))
        if command == "INPT":
            if power != Power.on or not b.input:
                return "ERR3"  # no input selected in standby
            return _input_code(b.input)
        if command == "NAME":
            return (b.device.name or b.device.id)[:64]
        if command == "INF1":
            return b.profile.vendor[:32]
        if command == "INF2":
            return b.profile.model[:32]
        if command == "INFO":
            return b.profile.simulation.sys_descr[:32]
        if command == "SNUM":
            return f"SIM{zlib.crc32(b.device.id.encode()) % 10**8:08d}"
        if command == "SVER":
            return b.firmware[:32]
        return "ERR1"


def _input_code(name: str) -> str:
    """`hdmi2` -> `32`: the type digit and the input's number."""
    kind = name.rstrip("0123456789").lower()
    number = name[len(kind) :] or "1"
    return INPUT_TYPE.get(kind, "3") + number[-1]
