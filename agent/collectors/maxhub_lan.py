"""The `maxhub-lan` collector: MAXHUB interactive flat panels over their LAN control port.

Source: MAXHUB, "IFP V6 RS-232 & LAN Protocol Specification" (0725), published by MAXHUB at
sgp-cstore-pub.maxhub.com (maxhub_global_public/software/v6/...), as transcribed in the
AI4AV public catalogue entry "MAXHUB IFP V6 (CFXXFA) Control Spec"
(https://ai4av.net/devices/maxhub/maxhub_maxhub_series, ODbL-1.0). What that table says,
and all that this module relies on:

- TCP port 4664 (and RS-232 9600 8N1), no authentication.
- Every command is a fixed 9-byte frame: 0x3A (':'), the machine id as two ASCII digits
  (0x30 0x31, id 1: the table documents no other), 0x53 ('S') to set or 0x47 ('G') to get,
  one command byte, three ASCII digits of data, 0x0D.
- A get is answered `3A 30 31 72 <command> <3 digits> 0D` (0x72, 'r'); a set is answered
  `34 30 31 2B 0D` ("401+", success) or `34 30 31 2D 0D` ("401-", failure).
- Gets this collector makes, and what the table says of their replies:
  power 0x30: 000 backlight off, 001 backlight on, 002 power off, and it marks the power query
  "RS232 only"; video source 0x3A: 001 HDMI1, 103 slot-in PC, 104 Type-C1, 105 Type-C2;
  backlight 0x3F, volume 0x38, contrast 0x34: 000-100; mute 0x39, touch 0x44: 000 off, 001 on.
- Sets the table gives for power (0x30): 000 backlight off, 001 backlight on, 002 power off,
  003 power on (RS-232 only, no reply); for the video source (0x3A) the codes above.

Where the table is silent this collector says nothing: temperature, firmware, uptime, lamp
and error flags stay unknown, a video source code not in the table is kept only as
`metrics.input_code`, and a panel that does not answer the power query over LAN (the table
says it is RS-232's) has power `unknown`. No device serves its LAN port while powered off.

The quirks of serial-over-LAN that a panel shows are handled here: a reply may come split
across TCP segments or after stray bytes, so replies are read up to their 0x0D and searched
for their frame; the panel answers nothing for a while after power-on, so a query that times
out is reported, not guessed at; the port takes one client at a time, so a connection that
is closed at once is retried after a pause, and ours is closed as soon as the poll is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from datetime import datetime

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from fleet.protocol.messages import Power, Reading, utcnow

PORT = 4664
FRAME_LENGTH = 9
MACHINE_ID = b"01"  # the only id the public table documents
SET, GET, REPLY = b"S", b"G", b"r"
ACK_OK = b"401+\r"
ACK_FAIL = b"401-\r"
MAX_REPLY_BYTES = 256  # more without a frame in it is not a MAXHUB reply

# Command bytes (the table's "command type").
POWER = 0x30
VOLUME = 0x38
MUTE = 0x39
VIDEO_SOURCE = 0x3A
CONTRAST = 0x34
BACKLIGHT = 0x3F
TOUCH = 0x44

POWER_STATES = {"000": Power.standby, "001": Power.on, "002": Power.off}  # backlight off = standby
POWER_SET_CODES = {"backlight-off": 0, "backlight-on": 1, "off": 2, "on": 3}
INPUT_CODES = {"001": "hdmi1", "103": "slot-in-pc", "104": "type-c1", "105": "type-c2"}
SWITCHES = {"000": False, "001": True}

_REPLY = re.compile(rb":01r(.)(\d{3})\r", re.DOTALL)


class MaxhubFrameError(ValueError):
    """A value the public table cannot carry in a 9-byte frame."""


def frame(kind: bytes, command: int, value: int = 0) -> bytes:
    """The 9-byte frame `: 0 1 <S|G> <command> <3 ASCII digits> CR`.

    Raises MaxhubFrameError for a command outside one byte or a value outside 0-999."""
    if kind not in (SET, GET):
        raise MaxhubFrameError(f"frame kind {kind!r} is neither set (S) nor get (G)")
    if not 0 <= command <= 0xFF:
        raise MaxhubFrameError(f"command {command} is not one byte")
    if not 0 <= value <= 999:
        raise MaxhubFrameError(f"value {value} does not fit three ASCII digits (000-999)")
    return b":" + MACHINE_ID + kind + bytes([command]) + b"%03d" % value + b"\r"


def query_frame(command: int) -> bytes:
    """The get frame of `command`, e.g. query_frame(POWER) == 3A 30 31 47 30 30 30 30 0D."""
    return frame(GET, command)


def power_frame(state: str) -> bytes:
    """The set frame for `state`: on, off, backlight-on, backlight-off (table: power 0x30).

    The table marks `on` RS-232 only, with no reply: over LAN a panel that is off serves no
    port to send it to. Raises MaxhubFrameError for another state."""
    if state not in POWER_SET_CODES:
        raise MaxhubFrameError(
            f"power state {state!r} is not in the table: use {', '.join(POWER_SET_CODES)}"
        )
    return frame(SET, POWER, POWER_SET_CODES[state])


def input_frame(source: str) -> bytes:
    """The set frame selecting `source` (hdmi1, slot-in-pc, type-c1, type-c2: the codes the
    public table gives). Raises MaxhubFrameError for a source the table does not give."""
    codes = {name: int(code) for code, name in INPUT_CODES.items()}
    if source not in codes:
        raise MaxhubFrameError(
            f"input {source!r} is not in the public table: use {', '.join(codes)}"
        )
    return frame(SET, VIDEO_SOURCE, codes[source])


def parse_reply(data: bytes, command: int) -> str | None:
    """The three digits of the reply to `command` found in `data` (stray bytes around it
    ignored), or None if `data` holds no such reply (a failure ack, another command's)."""
    for match in _REPLY.finditer(data):
        if match.group(1)[0] == command:
            return match.group(2).decode("ascii")
    return None


# What each poll asks, in order: the fields that matter first.
QUERIES: tuple[tuple[str, int], ...] = (
    ("power", POWER),
    ("input", VIDEO_SOURCE),
    ("backlight_pct", BACKLIGHT),
    ("volume_pct", VOLUME),
    ("mute", MUTE),
    ("touch", TOUCH),
)
BUSY_RETRY_PAUSE_S = 0.5


def poll_deadline(target: Target) -> float:
    """Seconds a poll may take: each query's timeout, for each try, and a connect."""
    poll = target.profile.poll
    per_try = poll.timeout_s * (len(QUERIES) + 1)
    return per_try * (poll.retries + 1) + BUSY_RETRY_PAUSE_S * poll.retries + 1.0


class PortBusyError(ConnectionError):
    """The panel closed our connection before answering: another client holds its port."""


@dataclass
class _Answers:
    values: dict[str, str]
    unanswered: list[str]


async def _ask_all(target: Target, timeout: float) -> _Answers:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port), timeout
    )
    values: dict[str, str] = {}
    unanswered: list[str] = []
    try:
        for name, command in QUERIES:
            writer.write(query_frame(command))
            await writer.drain()
            try:
                digits = await asyncio.wait_for(_read_reply(reader, command), timeout)
            except TimeoutError:
                # A panel busy after power-on answers none of them: do not wait out each.
                unanswered.extend(n for n, _ in QUERIES[len(values) + len(unanswered) :])
                break
            if digits is None:
                unanswered.append(name)
            else:
                values[name] = digits
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return _Answers(values, unanswered)


async def _read_reply(reader: asyncio.StreamReader, command: int) -> str | None:
    """Bytes up to a CR, until they hold the reply to `command` or a failure ack (None).
    Raises PortBusyError if the panel closes the connection first."""
    buffer = b""
    while True:
        chunk = await reader.read(64)
        if not chunk:
            raise PortBusyError("the panel closed the connection before answering")
        buffer += chunk
        while b"\r" in buffer:
            line, _, buffer = buffer.partition(b"\r")
            line += b"\r"
            digits = parse_reply(line, command)
            if digits is not None:
                return digits
            if line.endswith(ACK_FAIL):
                return None
        if len(buffer) > MAX_REPLY_BYTES:
            buffer = buffer[-FRAME_LENGTH:]


@register("maxhub-lan")
class MaxhubLanCollector:
    """Power, input and the panel settings the public table lets one read (see module doc)."""

    def deadline_s(self, target: Target) -> float:
        """Seconds a poll may take: see `poll_deadline`."""
        return poll_deadline(target)

    async def poll(self, target: Target) -> Reading:
        """One Reading of the panel: power, input, and backlight, volume, mute and touch as metrics.
        A port held by another client is retried after a pause, up to the profile's retries."""
        poll = target.profile.poll
        ts = utcnow()
        answers: _Answers | None = None
        problem = ""
        for attempt in range(poll.retries + 1):
            if attempt:
                await asyncio.sleep(BUSY_RETRY_PAUSE_S)
            try:
                answers = await _ask_all(target, poll.timeout_s)
            except PortBusyError:
                problem = "the LAN control port closed our connection: another client holds it"
                continue
            except ConnectionRefusedError:
                return unreachable(
                    target,
                    f"nothing listens on TCP {target.port}",
                    ts,
                    fix="the panel is off, or its LAN control is disabled in its settings",
                )
            except (OSError, TimeoutError) as exc:
                problem = f"cannot connect ({exc or 'timeout'})"
                continue
            if answers.values:
                break
        if answers is None:
            return unreachable(target, problem, ts, fix="retry later; check the panel is on")
        return reading_from(target, answers.values, answers.unanswered, ts)

    async def close(self) -> None:
        """Nothing to release: each poll opens and closes its own connection."""
        return None


def reading_from(
    target: Target, values: dict[str, str], unanswered: list[str], ts: datetime
) -> Reading:
    """The Reading the table's replies give; what it is silent on stays unknown."""
    metrics: dict[str, object] = {}
    power = POWER_STATES.get(values.get("power", ""), Power.unknown)
    input_name = None
    code = values.get("input")
    if code is not None:
        input_name = INPUT_CODES.get(code)
        if input_name is None:
            metrics["input_code"] = code  # not in the public table: not named
    for name in ("backlight_pct", "volume_pct"):
        if name in values and int(values[name]) <= 100:
            metrics[name] = int(values[name])
    for name in ("mute", "touch"):
        if values.get(name) in SWITCHES:
            metrics[name] = SWITCHES[values[name]]
    error = None
    if unanswered:
        metrics["unanswered"] = ",".join(unanswered)
        if not values:
            error = (
                f"connected to {target.where} but the panel answered no query within "
                f"{target.profile.poll.timeout_s:g} s each (busy after power-on?): the next "
                "poll asks again"
            )
    return make_reading(
        target.device.id,
        ts,
        True,
        power=power,
        input=input_name,
        metrics=metrics,
        error=error,
        source=target.where,
    )
