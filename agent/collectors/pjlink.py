"""PJLink collector (class 1, plus class 2 queries) over TCP 4352, with our own small client.

One TCP connection per poll: greeting, MD5 authentication when the projector asks for it,
then one query at a time (never pipelined: some projectors lock up when pushed), then close.
Replies are read case-insensitively. ERR3 ("unavailable time", during warm-up or standby) means
busy, not faulty: the field is left out and the reading says which queries were busy.

Why not a library: aiopjlink2 opens a new connection (and authenticates again) for every
command, a dozen per poll, and pulls in a serial-port dependency; the protocol is small.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading, utcnow
from fleet.protocol.profiles import PjlinkSettings

PJLINK_PORT = 4352
# The longest valid reply is ~140 bytes (a 128-byte class 2 parameter): longer is not PJLink.
LINE_LIMIT = 512

POWER = {"0": Power.off, "1": Power.on, "2": Power.cooling, "3": Power.warming}
FLAGS = {"0": Flag.ok, "1": Flag.warning, "2": Flag.error}
ERST_ORDER = ("fan", "lamp", "temperature", "cover", "filter", "other")
INPUT_TYPES = {
    "1": "rgb",
    "2": "video",
    "3": "digital",
    "4": "storage",
    "5": "network",
    "6": "internal",
}
ERROR_MEANING = {
    "ERR1": "undefined command",
    "ERR2": "out of parameter",
    "ERR3": "unavailable time (busy)",
    "ERR4": "projector failure",
}
# Identity queries and the metric each fills.
IDENTITY = {"NAME": "name", "INF1": "manufacturer", "INF2": "product", "INFO": "info"}
_REPLY = re.compile(r"^%([12])([A-Za-z0-9]{4})=(.*)$", re.DOTALL)


class PjlinkError(Exception):
    """Talking PJLink failed; the message says what happened."""


class PjlinkAuthError(PjlinkError):
    """The projector refused the password (PJLINK ERRA) or wants one we do not have."""


class PjlinkProtocolError(PjlinkError):
    """The peer answered, but not in PJLink: garbage, an oversized line, an out-of-order reply."""


class PjlinkClosed(PjlinkError):
    """The projector closed or reset the connection mid-conversation."""


@dataclass(frozen=True)
class Answer:
    command: str  # upper case, e.g. POWR
    value: str = ""  # the parameter, as sent
    error: str | None = None  # ERR1..ERR4, upper case

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def busy(self) -> bool:
        return self.error == "ERR3"


def auth_digest(token: str, password: str) -> str:
    """PJLink's authentication: md5(random from the greeting + password), lowercase hex."""
    return hashlib.md5((token + password).encode(), usedforsecurity=False).hexdigest()


async def _read_line(reader: asyncio.StreamReader, timeout: float) -> str:
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r"), timeout)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            shown = exc.partial[:40].decode("ascii", "replace")
            raise PjlinkClosed(f"connection closed after half a reply ({shown!r})") from None
        raise PjlinkClosed("the projector closed the connection") from None
    except asyncio.LimitOverrunError:
        raise PjlinkProtocolError(f"a reply longer than {LINE_LIMIT} bytes: not PJLink") from None
    except ValueError:  # StreamReader turns a limit overrun into ValueError in some paths
        raise PjlinkProtocolError(f"a reply longer than {LINE_LIMIT} bytes: not PJLink") from None
    # Some projectors end lines with CR LF: the LF then starts the next line.
    return raw.decode("utf-8", "replace").strip("\r\n")


class PjlinkSession:
    """One authenticated connection; `query` sends one command and reads its reply."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        digest: str | None,
        timeout: float,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._digest = digest  # sent before the first command only
        self._timeout = timeout
        self.auth_required = digest is not None

    async def query(self, command: str, pjclass: int = 1) -> Answer:
        line = f"%{pjclass}{command} ?\r"
        if self._digest is not None:
            line, self._digest = self._digest + line, None
        try:
            self._writer.write(line.encode("ascii"))
            await asyncio.wait_for(self._writer.drain(), self._timeout)
        except ConnectionError as exc:
            raise PjlinkClosed(f"the connection broke while sending {command} ({exc})") from None
        reply = await _read_line(self._reader, self._timeout)
        return parse_reply(reply, command, pjclass)

    async def set(self, command: str, param: str, pjclass: int = 1) -> Answer:
        """Send a set command (`%1POWR 0`) and read its reply: `OK`, or ERR1 to ERR4."""
        line = f"%{pjclass}{command} {param}\r"
        if self._digest is not None:
            line, self._digest = self._digest + line, None
        try:
            self._writer.write(line.encode("ascii"))
            await asyncio.wait_for(self._writer.drain(), self._timeout)
        except ConnectionError as exc:
            raise PjlinkClosed(f"the connection broke while sending {command} ({exc})") from None
        reply = await _read_line(self._reader, self._timeout)
        return parse_reply(reply, command, pjclass)


def parse_reply(reply: str, command: str, pjclass: int = 1) -> Answer:
    """One reply line (without CR) checked against the command it answers."""
    if reply.upper().startswith("PJLINK ERRA"):
        raise PjlinkAuthError("the projector refused the password (PJLINK ERRA)")
    found = _REPLY.match(reply)
    if found is None:
        raise PjlinkProtocolError(f"answered {reply[:40]!r} to {command}, not a PJLink reply")
    got_class, got_command, value = found.groups()
    if got_command.upper() != command or int(got_class) != pjclass:
        raise PjlinkProtocolError(
            f"answered %{got_class}{got_command} to %{pjclass}{command}: replies out of order"
        )
    if value.upper() in ERROR_MEANING:
        return Answer(command, value, value.upper())
    return Answer(command, value)


def _parse_greeting(greeting: str, password: str | None) -> str | None:
    """The digest to send with the first command (None: no authentication)."""
    parts = greeting.split(" ")
    head = [p.upper() for p in parts]
    if head[:2] == ["PJLINK", "0"]:
        return None
    if head[:2] == ["PJLINK", "ERRA"]:
        raise PjlinkAuthError("the projector refused the connection (PJLINK ERRA)")
    if head[:2] == ["PJLINK", "1"] and len(parts) == 3 and parts[2]:
        if password is None:
            raise PjlinkAuthError("the projector asks for a PJLink password and none is set")
        return auth_digest(parts[2], password)
    raise PjlinkProtocolError(f"greeted with {greeting[:40]!r}, not 'PJLINK 0' or 'PJLINK 1 ...'")


@contextlib.asynccontextmanager
async def pjlink_session(
    host: str, port: int, password: str | None, timeout: float
) -> AsyncIterator[PjlinkSession]:
    """Connect, read the greeting, prepare authentication; close on exit, whatever happened."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=LINE_LIMIT), timeout
    )
    try:
        greeting = await _read_line(reader, timeout)
        digest = _parse_greeting(greeting, password)
        yield PjlinkSession(reader, writer, digest, timeout)
    finally:
        writer.close()
        # A peer that never acknowledges the close must not hold the poll.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


@dataclass
class ProjectorAnswers:
    """What one poll got, filled as it goes so that a broken connection keeps what arrived."""

    answers: dict[str, Answer] = field(default_factory=dict)
    pjlink_class: int = 1


async def read_projector(
    session: PjlinkSession, settings: PjlinkSettings, into: ProjectorAnswers
) -> None:
    """Every query of a poll, most important first, one at a time."""
    for command in ("POWR", "CLSS", "ERST", "LAMP"):
        into.answers[command] = await session.query(command)
    clss = into.answers["CLSS"]
    class2 = settings.class2 and clss.ok and clss.value.strip() == "2"
    into.pjlink_class = 2 if clss.ok and clss.value.strip() == "2" else 1
    into.answers["INPT"] = await session.query("INPT", 2 if class2 else 1)
    if class2:
        for command in ("FILT", "SVER"):
            into.answers[command] = await session.query(command, 2)
    if settings.identity:
        for command in IDENTITY:
            into.answers[command] = await session.query(command)
        if class2:
            into.answers["SNUM"] = await session.query("SNUM", 2)


def _input_name(value: str) -> str | None:
    value = value.strip()
    if len(value) != 2 or value[0] not in INPUT_TYPES:
        return None
    return f"{INPUT_TYPES[value[0]]}{value[1].lower()}"


def _lamps(value: str) -> list[tuple[int, bool]] | None:
    parts = value.split()
    if not parts or len(parts) % 2 or not all(p.isdigit() for p in parts[::2]):
        return None
    if not all(on in ("0", "1") for on in parts[1::2]):
        return None
    return [(int(hours), on == "1") for hours, on in zip(parts[::2], parts[1::2], strict=True)]


def reading_from_answers(
    target: Target, got: ProjectorAnswers, ts: datetime, problem: str | None = None
) -> Reading:
    """A Reading from the answers; `problem` says why the poll stopped early, if it did."""
    fields: dict[str, Any] = {}
    metrics: dict[str, Any] = {"pjlink_class": got.pjlink_class}
    notes = [problem] if problem else []
    busy = []
    for command, answer in got.answers.items():
        if answer.busy:
            busy.append(command)
            continue
        if answer.error == "ERR4":
            notes.append(f"the projector reports a failure (ERR4) to {command}")
            continue
        if not answer.ok:
            continue  # ERR1/ERR2: this model does not have it
        value = answer.value
        bad = False
        if command == "POWR":
            bad = value.strip() not in POWER
            fields["power"] = POWER.get(value.strip(), Power.unknown)
        elif command == "ERST":
            digits = value.strip()
            bad = len(digits) != 6 or any(d not in FLAGS for d in digits)
            if not bad:
                fields["errors"] = ErrorFlags(
                    **{name: FLAGS[d] for name, d in zip(ERST_ORDER, digits, strict=True)}
                )
        elif command == "LAMP":
            lamps = _lamps(value)
            bad = lamps is None
            for i, (hours, on) in enumerate(lamps or [], start=1):
                metrics[f"lamp{i}_hours"] = hours
                metrics[f"lamp{i}_on"] = on
            if lamps:
                fields["lamp_hours"] = max(hours for hours, _ in lamps)
        elif command == "FILT":
            bad = not value.strip().isdigit()
            if not bad:
                fields["filter_hours"] = int(value.strip())
        elif command == "INPT":
            name = _input_name(value)
            bad = name is None
            fields["input"] = name
        elif command == "SVER":
            fields["firmware"] = value.strip() or None
        elif command == "SNUM":
            metrics["serial"] = value.strip()
        elif command in IDENTITY:
            metrics[IDENTITY[command]] = value.strip()
        if bad:
            notes.append(f"{command} answered {value[:24]!r}, which is not PJLink")
    if busy:
        # Busy is normal while warming up or in standby: say so without calling it a fault.
        metrics["pjlink_busy"] = ",".join(busy)
    error = f"{target.where}: {'; '.join(notes)}" if notes else None
    return make_reading(
        target.device.id,
        ts,
        True,
        metrics=metrics,
        error=error,
        source=target.where,
        out_of_range_fix="check the projector's PJLink answers",
        **fields,
    )


@register("pjlink")
class PjlinkCollector:
    async def poll(self, target: Target) -> Reading:
        ts = utcnow()
        poll = target.profile.poll
        settings = target.profile.pjlink or PjlinkSettings()
        got = ProjectorAnswers()
        attempts = poll.retries + 1
        # Inside the poller's deadline (timeout * tries + 2 s), so we answer before it cancels.
        budget = poll.timeout_s * attempts
        problem = "no answer"
        try:
            async with asyncio.timeout(budget):
                for attempt in range(attempts):
                    try:
                        async with pjlink_session(
                            target.host, target.port, target.device.password, poll.timeout_s
                        ) as session:
                            await read_projector(session, settings, got)
                        return reading_from_answers(target, got, ts)
                    except (PjlinkClosed, ConnectionResetError, TimeoutError) as exc:
                        problem = _describe(exc, poll.timeout_s)
                        if "POWR" in got.answers or attempt + 1 == attempts:
                            break
                        got = ProjectorAnswers()
                        await asyncio.sleep(0.2)  # some projectors refuse an instant reconnect
        except TimeoutError:
            problem = f"no complete PJLink answer within {budget:g} s"
        except PjlinkAuthError as exc:
            return unreachable(
                target,
                f"PJLink authentication failed: {exc}",
                ts,
                fix=(
                    f"set password: for {target.device.id} in the site config to the "
                    "projector's PJLink password (its network or security menu)"
                ),
            )
        except PjlinkProtocolError as exc:
            return unreachable(
                target,
                f"{exc}",
                ts,
                fix=f"check that {target.where} is a projector with PJLink enabled",
            )
        except ConnectionRefusedError:
            return unreachable(
                target,
                f"connection refused on TCP {target.port}",
                ts,
                fix="enable PJLink (and network standby) in the projector's menu",
            )
        except OSError as exc:
            return unreachable(
                target,
                f"network error: {exc.strerror or exc}",
                ts,
                fix="check the address in the site config and that the projector is on the network",
            )
        if "POWR" in got.answers:
            # It answered the essential query before failing: keep what arrived.
            return reading_from_answers(target, got, ts, f"poll cut short: {problem}")
        return unreachable(
            target, problem, ts, fix="check that the projector is powered and on the network"
        )

    async def close(self) -> None:
        return None  # nothing shared: a new connection per poll


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"PJLink timeout: nothing within {timeout:g} s"
    if isinstance(exc, ConnectionResetError):
        return "the projector reset the connection"
    return str(exc)
