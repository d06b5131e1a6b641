"""Power and input of MAXHUB panels over their LAN control port (TCP 4664), with the set
frames of MAXHUB's public "IFP V6 RS-232 & LAN Protocol Specification" (0725), the same
source as agent/collectors/maxhub_lan.py, which builds the frames.

What the table allows, and so what this does:
- `off`: power 0x30 set to 002 (power off); the panel acknowledges `401+`, or `401-`.
- `on`: the table's power-on (003) is RS-232 only, with no reply, and a panel that is off
  serves no LAN port. Over LAN a panel can only be brought back from backlight-off (000) with
  backlight-on (001); a panel that is off is reported as such, never as switched on.
- `input`: video source 0x3A set to the table's code (hdmi1, slot-in-pc, type-c1, type-c2);
  a name outside the table is not sent.
The port takes one client at a time, as polls do: a connection closed at once is retried
after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.collectors import Target
from agent.collectors.control import ControlAnswer, register_control
from agent.collectors.maxhub_lan import (
    ACK_FAIL,
    ACK_OK,
    BUSY_RETRY_PAUSE_S,
    MAX_REPLY_BYTES,
    PORT,
    MaxhubFrameError,
    input_frame,
    power_frame,
)


class _PortBusy(ConnectionError):
    """The panel closed the connection before acknowledging: another client holds its port."""


async def _read_ack(reader: asyncio.StreamReader) -> bool:
    """True on `401+`, False on `401-`, whatever stray bytes come before or split it.
    Raises _PortBusy if the panel closes the connection first."""
    buffer = b""
    while True:
        chunk = await reader.read(64)
        if not chunk:
            raise _PortBusy("the panel closed the connection before acknowledging")
        buffer += chunk
        if ACK_OK in buffer:
            return True
        if ACK_FAIL in buffer:
            return False
        buffer = buffer[-MAX_REPLY_BYTES:]


async def _send_set(target: Target, frame: bytes) -> bool:
    """Send one set frame and read its acknowledgement. Raises ConnectionRefusedError when
    nothing listens, _PortBusy, OSError or TimeoutError."""
    timeout = target.profile.poll.timeout_s
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port), timeout
    )
    try:
        writer.write(frame)
        await writer.drain()
        return await asyncio.wait_for(_read_ack(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _set(target: Target, what: str, frame: bytes) -> ControlAnswer:
    retries = target.profile.poll.retries
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(BUSY_RETRY_PAUSE_S)
        try:
            ok = await _send_set(target, frame)
        except ConnectionRefusedError:
            port = target.port or PORT
            return ControlAnswer(
                False,
                f"{what}: nothing listens on TCP {port}: the panel is off (the MAXHUB table "
                "switches it on over RS-232 only) or its LAN control is disabled",
            )
        except _PortBusy as exc:
            problem = str(exc)
            continue
        except (OSError, TimeoutError) as exc:
            problem = f"no acknowledgement ({exc or 'timeout'})"
            continue
        return ControlAnswer(ok, f"{what}: {'401+ (done)' if ok else '401- (refused)'}")
    return ControlAnswer(False, f"{what}: {problem}")


class MaxhubLanControl:
    """The `Control` of `maxhub-lan` panels (see the module docstring for what each does)."""

    async def set_power(self, target: Target, on: bool) -> ControlAnswer:
        """`on`: backlight-on (the table's power-on is RS-232 only); off: power off. The answer
        carries the panel's 401+ or 401-."""
        state = "backlight-on" if on else "off"
        return await _set(target, f"power {state}", power_frame(state))

    async def set_input(self, target: Target, name: str) -> ControlAnswer:
        """Select video source `name` (hdmi1, slot-in-pc, type-c1, type-c2); any other name is
        refused and nothing is sent."""
        try:
            frame = input_frame(name)
        except MaxhubFrameError as exc:
            return ControlAnswer(False, f"input {name!r}: {exc}: not sent")
        return await _set(target, f"input {name}", frame)


register_control("maxhub-lan", MaxhubLanControl)
