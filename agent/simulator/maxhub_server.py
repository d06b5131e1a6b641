"""A simulated MAXHUB panel speaking the LAN control protocol (agent/collectors/maxhub_lan.py
cites the public table) on a loopback TCP port, with the quirks of serial-over-LAN.

- Replies come split across TCP segments (`split_replies`), as a serial bridge forwards
  bytes as they trickle in at 9600 baud.
- For `busy_after_power_on_s` after it comes on, the panel reads frames and answers none.
- One client at a time: a second connection is closed at once, unanswered.
- The power query is answered (`power_query_over_lan`); the table calls it RS-232 only, so
  a panel may instead answer it with the failure ack, and the agent must take that.
- Switched off (the timetable, or `alive = False`), it serves no port at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agent.collectors.maxhub_lan import (
    ACK_FAIL,
    ACK_OK,
    BACKLIGHT,
    FRAME_LENGTH,
    INPUT_CODES,
    MUTE,
    POWER,
    TOUCH,
    VIDEO_SOURCE,
    VOLUME,
)
from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.switched_port import SwitchedPort


@dataclass
class MaxhubQuirks:
    """How a simulated panel departs from a clean exchange (see the module docstring); times in
    seconds."""

    split_replies: bool = True
    segment_gap_s: float = 0.02
    busy_after_power_on_s: float = 0.0
    power_query_over_lan: bool = True
    # Bytes a serial bridge sends before a reply now and then (line noise, a NUL).
    leading_noise: bytes = b""


class MaxhubPanelServer(SwitchedPort):
    """One simulated MAXHUB panel; `frames` counts the query frames it read."""

    def __init__(self, behaviour: DeviceBehaviour, quirks: MaxhubQuirks | None = None) -> None:
        """A panel following `behaviour`, with `quirks` (default: MaxhubQuirks()); it starts with
        the backlight on at 80 and the volume at 30."""
        super().__init__(behaviour)
        self.quirks = quirks or MaxhubQuirks()
        self.frames = 0
        self.refused_second_client = 0
        self.unanswered_busy = 0
        self._client: asyncio.StreamWriter | None = None
        self.volume = 30
        self.backlight = 80
        self.backlight_on = True

    def busy(self) -> bool:
        """True for `busy_after_power_on_s` after the port came up: frames are read but not
        answered."""
        if self.powered_at is None:
            return False
        since = (self.behaviour.clock() - self.powered_at).total_seconds()
        return since < self.quirks.busy_after_power_on_s

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client: read 9-byte frames and answer each unless busy. A second client while
        one is connected is closed unanswered."""
        if self._client is not None:
            self.refused_second_client += 1
            return  # closed at once: the port serves one client
        self._client = writer
        try:
            while True:
                raw = await reader.readexactly(FRAME_LENGTH)
                self.frames += 1
                if self.busy():
                    self.unanswered_busy += 1
                    continue
                await self._send(writer, self.reply(raw))
        finally:
            self._client = None

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        data = self.quirks.leading_noise + data
        if not self.quirks.split_replies:
            writer.write(data)
            await writer.drain()
            return
        for piece in (data[:3], data[3:6], data[6:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(self.quirks.segment_gap_s)

    def reply(self, raw: bytes) -> bytes:
        """The reply to one 9-byte frame: `:01r<command><3 digits>\\r` to a get, `401+` or
        `401-` to a set, the failure ack to anything else."""
        if raw[:4] == b":01S" and raw[-1:] == b"\r" and raw[5:8].isdigit():
            return ACK_OK if self._set(raw[4], int(raw[5:8])) else ACK_FAIL
        if raw[:4] != b":01G" or raw[-1:] != b"\r":
            return ACK_FAIL
        command = raw[4]
        value = self._value(command)
        if value is None:
            return ACK_FAIL
        return b":01r" + bytes([command]) + b"%03d" % value + b"\r"

    def _set(self, command: int, value: int) -> bool:
        """A set frame, as the table gives them: power 000 backlight off, 001 backlight on,
        002 power off (the port goes with it), 003 power on (already on: it is serving);
        video source by its code."""
        b = self.behaviour
        if command == POWER and value in (0, 1):
            self.backlight_on = value == 1
            return True
        if command == POWER and value == 2:
            return b.switch(False)
        if command == POWER and value == 3:
            return True
        if command == VIDEO_SOURCE:
            name = INPUT_CODES.get(f"{value:03d}")
            return name is not None and b.select_input(name)
        return False

    def _value(self, command: int) -> int | None:
        b = self.behaviour
        if command == POWER:
            if not self.quirks.power_query_over_lan:
                return None
            return 1 if self.backlight_on else 0  # serving: backlight on, or off (standby)
        if command == VIDEO_SOURCE:
            codes = {name: int(code) for code, name in INPUT_CODES.items()}
            return codes.get(b.input or "", 1)
        if command == BACKLIGHT:
            return self.backlight
        if command == VOLUME:
            return self.volume
        if command in (MUTE, TOUCH):
            return 0 if command == MUTE else 1
        return None


class ReachableHost(SwitchedPort):
    """A panel with no management protocol: a TCP port that answers a connect while the panel
    is on, from `boot_s` after it is switched on (its network comes up once it has booted),
    and closes each connection as soon as the client has connected: there is nothing to
    say on it."""

    async def converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Say nothing: the completed connect is the answer, and the connection is closed at
        once."""
        return None  # the connect was the answer; the caller closes the connection
