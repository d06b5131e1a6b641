"""One PJLink conversation over TCP 4352: greeting, MD5 authentication, one query at a time,
and the reply bytes read as projectors really send them (PJLink 1.04 / class 2, JBMIA).

What the field sends besides the reply is tolerated, for every command: bytes before the
reply on its line (a prompt, NULs, an echo), control bytes inside a value (a NAME padded with
NULs to its buffer's size before the CR), the LF of a CR LF, a stray line, a late reply to a
query that had timed out. They are stripped and counted, never taken for the value. A line
that holds no PJLink reply at all makes that one query `unsupported`, not the projector
unreachable. Free text (NAME, INF1, INF2, INFO, SNUM, SVER) is decoded in the device's
encoding (UTF-8 unless the profile or device says otherwise); text that is not valid in it
is read as Latin-1 (which takes any byte) and the answer says so: never a lossy replace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

PJLINK_PORT = 4352
# The longest valid reply is ~140 bytes (a 128-byte class 2 parameter): longer is not PJLink.
LINE_LIMIT = 512
ERROR_MEANING = {
    "ERR1": "undefined command",
    "ERR2": "out of parameter",
    "ERR3": "unavailable time (busy)",
    "ERR4": "projector failure",
}
# Queries whose parameter is free text in the projector's own encoding.
TEXT_COMMANDS = frozenset({"NAME", "INF1", "INF2", "INFO", "SNUM", "SVER"})
# Marks an answer that was not a PJLink reply (the `error` of an unsupported query).
NOT_PJLINK = "NOT_PJLINK"

# A reply anywhere on its line: `%`, class, command, `=`, parameter up to the line's end.
_REPLY = re.compile(rb"%([12])([A-Za-z0-9]{4})=(.*)", re.DOTALL)
# Bytes that are never part of a reply: C0 controls (CR ends the line before this) and DEL.
_NOISE = re.compile(rb"[\x00-\x1f\x7f]")
_GREETING = re.compile(rb"PJLINK (?:0|ERRA|1 ([0-9A-Za-z]{1,32}))", re.IGNORECASE)


class PjlinkError(Exception):
    """Talking PJLink failed; the message says what happened."""


class PjlinkAuthError(PjlinkError):
    """The projector refused the password (PJLINK ERRA) or wants one we do not have."""


class PjlinkProtocolError(PjlinkError):
    """The peer answered, but not in PJLink: a greeting that is not PJLink, an oversized line."""


class PjlinkClosed(PjlinkError):
    """The projector closed or reset the connection mid-conversation."""


@dataclass(frozen=True)
class Answer:
    """One query's outcome. `value` is the parameter as text (decoded, control bytes removed);
    `error` is ERR1..ERR4, or NOT_PJLINK when the answer was not a PJLink reply; `notes`
    say what was stripped or how the text was decoded."""

    command: str  # upper case, e.g. POWR
    value: str = ""
    error: str | None = None
    notes: tuple[str, ...] = ()
    stripped: int = 0  # bytes of the line that were not part of the reply

    @property
    def ok(self) -> bool:
        """True when the reply is a value or OK: neither ERR1-ERR4 nor NOT_PJLINK."""
        return self.error is None

    @property
    def busy(self) -> bool:
        """ERR3 (unavailable time): the projector is warming up or in standby, not faulty."""
        return self.error == "ERR3"

    @property
    def unsupported(self) -> bool:
        """The line was not a PJLink reply to this query (NOT_PJLINK): this field is lost, not the
        projector."""
        return self.error == NOT_PJLINK


@dataclass(frozen=True)
class Reply:
    """A PJLink reply found in a line: class, command (upper case), raw parameter bytes, and
    how many bytes around or inside it were not part of it."""

    pjclass: int
    command: str
    raw: bytes
    stripped: int


def auth_digest(token: str, password: str) -> str:
    """PJLink's authentication: md5(random from the greeting + password), lowercase hex."""
    return hashlib.md5((token + password).encode(), usedforsecurity=False).hexdigest()


def find_reply(line: bytes) -> Reply | None:
    """The PJLink reply in one line (bytes, CR removed), or None if it holds none.

    Control bytes anywhere are dropped first (NUL padding, an LF left by CR LF, a telnet
    prompt's escapes), then the reply is searched for rather than expected at the start
    (an echo of the query, `%1POWR ?`, has no `=` and is skipped); its parameter runs to the
    line's end."""
    clean = _NOISE.sub(b"", line)
    found = _REPLY.search(clean)
    if found is None:
        return None
    pjclass, command, raw = found.groups()
    # The reply runs to the line's end: every other byte of the line was not part of it.
    stripped = len(line) - (len(clean) - found.start())
    return Reply(int(pjclass), command.decode("ascii").upper(), raw, stripped)


def decode_text(raw: bytes, encoding: str) -> tuple[str, str | None]:
    """`raw` as text in `encoding`; if it is not valid there, as Latin-1 (every byte is a
    character, so nothing is lost), with a note saying so. Never replaces a byte."""
    try:
        return raw.decode(encoding), None
    except (UnicodeDecodeError, LookupError):
        pass
    shown = raw[:24].hex(" ")
    return raw.decode("latin-1"), f"not valid {encoding} ({shown}): read as Latin-1"


def answer_from_reply(reply: Reply, encoding: str = "utf-8") -> Answer:
    """An Answer from a reply already matched to its query."""
    notes: list[str] = []
    if reply.command in TEXT_COMMANDS:
        value, note = decode_text(reply.raw, encoding)
        if note:
            notes.append(note)
    else:
        # Status parameters are ASCII digits and letters; anything else is shown as Latin-1
        # (lossless) and then refused by the field's own check.
        value = reply.raw.decode("latin-1")
    error = value.upper() if value.upper() in ERROR_MEANING else None
    return Answer(reply.command, value, error, tuple(notes), reply.stripped)


def parse_reply(
    line: bytes | str, command: str, pjclass: int = 1, encoding: str = "utf-8"
) -> Answer:
    """One reply line (without CR) read as the answer to `command`: an Answer, whose error is
    NOT_PJLINK when the line holds no PJLink reply, or one to another command.

    Raises PjlinkAuthError on `PJLINK ERRA` (the password was refused)."""
    raw = line.encode("latin-1", "replace") if isinstance(line, str) else line
    reply = find_reply(raw)
    if reply is None:
        _refused(raw)
        return not_pjlink(command, raw)
    if reply.command != command or reply.pjclass != pjclass:
        return Answer(
            command,
            "",
            NOT_PJLINK,
            (f"answered %{reply.pjclass}{reply.command} to %{pjclass}{command}",),
        )
    return answer_from_reply(reply, encoding)


def _refused(raw: bytes) -> None:
    """Raise PjlinkAuthError if a line that holds no reply is `PJLINK ERRA`."""
    if b"PJLINK ERRA" in _NOISE.sub(b"", raw).upper():
        raise PjlinkAuthError("the projector refused the password (PJLINK ERRA)")


def not_pjlink(command: str, raw: bytes) -> Answer:
    """The Answer to `command` when its line holds no PJLink reply; the note shows the line's first
    24 bytes, escaped."""
    shown = raw[:24].decode("latin-1").encode("unicode_escape").decode("ascii")
    return Answer(command, "", NOT_PJLINK, (f"answered {shown!r}, not a PJLink reply",))


async def read_line(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """The next line up to CR (CR removed), as bytes."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r"), timeout)
    except asyncio.IncompleteReadError as exc:
        if _NOISE.sub(b"", exc.partial).strip():
            shown = exc.partial[:40].decode("ascii", "replace")
            raise PjlinkClosed(f"connection closed after half a reply ({shown!r})") from None
        raise PjlinkClosed("the projector closed the connection") from None
    except (asyncio.LimitOverrunError, ValueError):
        # StreamReader turns a limit overrun into ValueError in some paths.
        raise PjlinkProtocolError(f"a reply longer than {LINE_LIMIT} bytes: not PJLink") from None
    return raw[:-1]


class PjlinkSession:
    """One authenticated connection; `query` sends one command and reads its reply.

    `timeout` (seconds) applies to each query on its own: a projector may take up to the
    spec's 2 s per answer, so a poll's deadline is the number of its queries times this."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        digest: str | None,
        timeout: float,
        encoding: str = "utf-8",
    ) -> None:
        """A session over an open connection. `digest` (from parse_greeting; None: no
        authentication) is sent before the first command; `timeout` is seconds per query; `encoding`
        decodes free-text replies."""
        self._reader = reader
        self._writer = writer
        self._digest = digest  # sent before the first command only
        self._timeout = timeout
        self._encoding = encoding
        # Queries sent whose reply has not been read (a timeout): their late replies are
        # recognised and skipped rather than taken for the next query's answer.
        self._late: set[tuple[int, str]] = set()
        self.auth_required = digest is not None

    async def query(self, command: str, pjclass: int = 1) -> Answer:
        """Send `%<class><command> ?` and read its answer. Raises TimeoutError when nothing
        answers it within the timeout, PjlinkClosed when the connection breaks,
        PjlinkAuthError on PJLINK ERRA."""
        return await self._exchange(command, "?", pjclass)

    async def set(self, command: str, param: str, pjclass: int = 1) -> Answer:
        """Send a set command (`%1POWR 0`) and read its answer: `OK`, or ERR1 to ERR4 in
        `Answer.error` (PJLink 1.04 section 4). Raises as `query` does."""
        return await self._exchange(command, param, pjclass)

    async def _exchange(self, command: str, param: str, pjclass: int) -> Answer:
        line = f"%{pjclass}{command} {param}\r"
        if self._digest is not None:
            line, self._digest = self._digest + line, None
        try:
            self._writer.write(line.encode("ascii"))
            await asyncio.wait_for(self._writer.drain(), self._timeout)
        except ConnectionError as exc:
            raise PjlinkClosed(f"the connection broke while sending {command} ({exc})") from None
        self._late.add((pjclass, command))
        loop = asyncio.get_running_loop()
        until = loop.time() + self._timeout
        skipped: list[str] = []
        while True:
            left = until - loop.time()
            if left <= 0:
                raise TimeoutError
            raw = await read_line(self._reader, left)
            reply = find_reply(raw)
            if reply is None:
                _refused(raw)
            if reply is None and not _NOISE.sub(b"", raw).strip():
                continue  # an empty line: the LF of CR LF, or padding alone
            other = None if reply is None else (reply.pjclass, reply.command)
            if other is not None and other != (pjclass, command) and other in self._late:
                self._late.discard(other)
                skipped.append(f"%{other[0]}{other[1]}")
                continue  # a late answer to an earlier query that had timed out
            if reply is None:
                # Its real reply may follow: kept as late, so that it is skipped then.
                return not_pjlink(command, raw)
            self._late.discard((pjclass, command))
            answer = parse_reply(raw, command, pjclass, self._encoding)
            if skipped:
                note = f"a late reply to {', '.join(skipped)} skipped"
                answer = dataclasses.replace(answer, notes=(*answer.notes, note))
            return answer


def parse_greeting(greeting: bytes | str, password: str | None) -> str | None:
    """The digest to send with the first command (None: no authentication). Bytes around the
    greeting are tolerated, as around any reply."""
    raw = greeting.encode("latin-1", "replace") if isinstance(greeting, str) else greeting
    found = _GREETING.search(_NOISE.sub(b"", raw))
    if found is None:
        shown = raw[:40].decode("latin-1").encode("unicode_escape").decode("ascii")
        raise PjlinkProtocolError(f"greeted with {shown!r}, not 'PJLINK 0' or 'PJLINK 1 ...'")
    head = found.group(0).upper()
    if head == b"PJLINK 0":
        return None
    if head == b"PJLINK ERRA":
        raise PjlinkAuthError("the projector refused the connection (PJLINK ERRA)")
    if password is None:
        raise PjlinkAuthError("the projector asks for a PJLink password and none is set")
    return auth_digest(found.group(1).decode("ascii"), password)


@contextlib.asynccontextmanager
async def pjlink_session(
    host: str, port: int, password: str | None, timeout: float, encoding: str = "utf-8"
) -> AsyncIterator[PjlinkSession]:
    """Connect, read the greeting, prepare authentication; close on exit, whatever happened.
    `timeout` (seconds) bounds the connect, the greeting, and each query."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=LINE_LIMIT), timeout
    )
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while True:  # a blank line (LF of a CR LF, a NUL) before the greeting is not it
            greeting = await read_line(reader, max(until - loop.time(), 0.001))
            if _NOISE.sub(b"", greeting).strip():
                break
        digest = parse_greeting(greeting, password)
        yield PjlinkSession(reader, writer, digest, timeout, encoding)
    finally:
        writer.close()
        # A peer that never acknowledges the close must not hold the poll.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
