"""PJLink collector (class 1, plus class 2 queries) over TCP 4352.

One TCP connection per poll (agent/collectors/pjlink_session.py: greeting, MD5 auth, the reply
bytes as projectors send them), one query at a time (never pipelined: some projectors lock up
when pushed), then close. What matters is asked first: power, errors, lamp, input; then filter
hours; the static queries (class, firmware, serial, name, manufacturer, model) only every
`static_interval_s`, their last answers reported in between. Each query has the profile's
timeout to itself (a projector may take up to 2 s per answer), and the poll's deadline is the
number of its queries times that timeout (`deadline_s`), which the poller honours.

Replies are read case-insensitively. ERR3 ("unavailable time", during warm-up or standby) means
busy, not faulty: the field is left out and the reading says which queries were busy. An
answer that is not PJLink costs that field (said in the reading's error), not the projector.

Why not a library: aiopjlink2 opens a new connection (and authenticates again) for every
command, a dozen per poll, and pulls in a serial-port dependency; the protocol is small.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from agent.collectors.pjlink_session import (
    ERROR_MEANING,
    PJLINK_PORT,
    Answer,
    PjlinkAuthError,
    PjlinkClosed,
    PjlinkError,
    PjlinkProtocolError,
    PjlinkSession,
    auth_digest,
    parse_reply,
    pjlink_session,
)
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading, utcnow
from fleet.protocol.profiles import PjlinkSettings

__all__ = [
    "ERROR_MEANING",
    "PJLINK_PORT",
    "Answer",
    "PjlinkAuthError",
    "PjlinkClosed",
    "PjlinkCollector",
    "PjlinkError",
    "PjlinkProtocolError",
    "ProjectorAnswers",
    "auth_digest",
    "parse_reply",
    "pjlink_session",
    "reading_from_answers",
]

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
# Identity queries and the metric each fills.
IDENTITY = {"NAME": "name", "INF1": "manufacturer", "INF2": "product", "INFO": "info"}
# Read every poll, in this order: what a technician and the alerts need.
ESSENTIAL = ("POWR", "ERST", "LAMP")
# Asked every `static_interval_s` only: they do not change while the projector is the same.
STATIC = frozenset({"CLSS", "SVER", "SNUM", *IDENTITY})
# After this many queries in a row without an answer the projector is taken to be gone.
SILENT_QUERIES = 2
# What connecting and the greeting may take, in per-query timeouts.
CONNECT_COST = 2


@dataclass
class ProjectorAnswers:
    """What one poll got, filled as it goes so that a broken connection keeps what arrived."""

    answers: dict[str, Answer] = field(default_factory=dict)
    pjlink_class: int = 1
    # Queries that had no answer within their timeout.
    silent: list[str] = field(default_factory=list)


@dataclass
class StaticAnswers:
    """A projector's static answers (CLSS, SVER, SNUM, identity) and when they were read."""

    answers: dict[str, Answer] = field(default_factory=dict)
    read_at: float | None = None  # time.monotonic() of the last complete read

    def due(self, interval_s: float, now: float) -> bool:
        return self.read_at is None or now - self.read_at >= interval_s

    @property
    def pjlink_class(self) -> int | None:
        clss = self.answers.get("CLSS")
        if clss is None or not clss.ok:
            return None if clss is None else 1
        return 2 if clss.value.strip() == "2" else 1


@dataclass(frozen=True)
class QueryPlan:
    """The queries of one poll, in order: (command, class). `static` ones refresh the cache."""

    queries: tuple[tuple[str, int], ...]
    static: bool


def plan_queries(settings: PjlinkSettings, cached: StaticAnswers, now: float) -> QueryPlan:
    """Which queries this poll makes. Without a known class, CLSS comes before INPT (whose
    class depends on it); the static ones only when due."""
    due = cached.due(settings.static_interval_s, now)
    known = cached.pjlink_class
    queries: list[tuple[str, int]] = [(c, 1) for c in ESSENTIAL]
    if known is None or due:
        queries.append(("CLSS", 1))
    pjclass = known or 1
    class2 = settings.class2 and pjclass == 2
    # After CLSS, INPT's class is decided at run time (read_projector); the plan counts it.
    queries.append(("INPT", 2 if class2 else 1))
    if settings.class2 and (class2 or known is None):
        queries.append(("FILT", 2))
    if due:
        if settings.class2 and (class2 or known is None):
            queries.append(("SVER", 2))
        if settings.identity:
            queries += [(c, 1) for c in IDENTITY]
            if settings.class2 and (class2 or known is None):
                queries.append(("SNUM", 2))
    return QueryPlan(tuple(queries), due)


async def read_projector(
    session: PjlinkSession,
    settings: PjlinkSettings,
    into: ProjectorAnswers,
    cached: StaticAnswers | None = None,
    now: float | None = None,
) -> None:
    """The poll's queries (plan_queries), one at a time. A query that times out is noted
    and the next one asked; POWR timing out, or SILENT_QUERIES in a row, ends the poll
    (TimeoutError), with what arrived kept in `into`."""
    cached = cached if cached is not None else StaticAnswers()
    now = time.monotonic() if now is None else now
    plan = plan_queries(settings, cached, now)
    in_a_row = 0
    statics_answered = True
    for command, pjclass in plan.queries:
        class2 = settings.class2 and _class_of(into, cached) == 2
        if command == "INPT":
            pjclass = 2 if class2 else 1  # CLSS may have been answered just now
        elif pjclass == 2 and not class2:
            continue  # class 2 queries only to a projector that said it is class 2
        try:
            answer = await session.query(command, pjclass)
        except TimeoutError:
            if command == "POWR":
                raise
            into.silent.append(command)
            statics_answered = statics_answered and command not in STATIC
            in_a_row += 1
            if in_a_row >= SILENT_QUERIES:
                raise
            continue
        in_a_row = 0
        into.answers[command] = answer
        if command in STATIC:
            cached.answers[command] = answer
    into.pjlink_class = _class_of(into, cached) or 1
    if plan.static and statics_answered:
        cached.read_at = now


def _class_of(into: ProjectorAnswers, cached: StaticAnswers) -> int | None:
    clss = into.answers.get("CLSS")
    if clss is not None:
        return 2 if clss.ok and clss.value.strip() == "2" else 1
    return cached.pjlink_class


def _input_name(value: str) -> str | None:
    value = value.strip()
    if len(value) != 2 or value[0] not in INPUT_TYPES:
        return None
    return f"{INPUT_TYPES[value[0]]}{value[1].lower()}"


def _lamps(value: str) -> list[tuple[int, bool]] | None:
    parts = value.split()
    if not parts or len(parts) % 2 or not all(p.isascii() and p.isdigit() for p in parts[::2]):
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
    # What was stripped or how text was decoded: not a fault, but a technician may want it.
    remarks = [
        f"{command}: {note}"
        for command, a in got.answers.items()
        if not a.unsupported
        for note in a.notes
    ]
    unsupported = []
    for command, answer in got.answers.items():
        if answer.unsupported:
            unsupported.append(f"{command} {'; '.join(answer.notes)}")
            continue
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
            bad = not (value.strip().isascii() and value.strip().isdigit())
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
    if unsupported:
        notes.append(f"left out, not a PJLink reply: {'; '.join(unsupported)}")
    if got.silent:
        notes.append(f"no answer in time to {', '.join(got.silent)}")
    if busy:
        # Busy is normal while warming up or in standby: say so without calling it a fault.
        metrics["pjlink_busy"] = ",".join(busy)
    stripped = [f"{c} {a.stripped}" for c, a in got.answers.items() if a.stripped]
    if stripped:
        remarks.insert(0, f"bytes not part of the reply stripped: {', '.join(stripped)}")
    if remarks:
        metrics["pjlink_notes"] = "; ".join(remarks)
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
    """Polls projectors over PJLink; keeps each projector's static answers between polls."""

    def __init__(self) -> None:
        """Start with no static answers; they are cached per device id as polls read them."""
        self._static: dict[str, StaticAnswers] = {}

    def deadline_s(self, target: Target) -> float:
        """How long a poll of `target` may take, in seconds: each query its timeout, plus
        connecting and the greeting, for each try; the poller adds its own margin."""
        poll = target.profile.poll
        settings = target.profile.pjlink or PjlinkSettings()
        cached = self._static.get(target.device.id, StaticAnswers())
        queries = len(plan_queries(settings, cached, time.monotonic()).queries)
        # A retry happens only when POWR, the first query, got nothing: it costs one query.
        return poll.timeout_s * (CONNECT_COST + queries + poll.retries * (CONNECT_COST + 1))

    async def poll(self, target: Target) -> Reading:
        """One Reading of the projector over one PJLink connection, reconnecting while POWR is
        unanswered, within `deadline_s`. Static answers come from the cache between refreshes; a
        failure gives an unreachable Reading that says what to check."""
        ts = utcnow()
        poll = target.profile.poll
        settings = target.profile.pjlink or PjlinkSettings()
        encoding = target.device.text_encoding or settings.text_encoding
        cached = self._static.setdefault(target.device.id, StaticAnswers())
        budget = self.deadline_s(target)
        got = ProjectorAnswers()
        attempts = poll.retries + 1
        problem = "no answer"
        try:
            async with asyncio.timeout(budget):
                for attempt in range(attempts):
                    try:
                        async with pjlink_session(
                            target.host,
                            target.port,
                            target.device.password,
                            poll.timeout_s,
                            encoding,
                        ) as session:
                            await read_projector(session, settings, got, cached)
                        return reading_from_answers(target, _with_static(got, cached), ts)
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
            got = _with_static(got, cached)
            return reading_from_answers(target, got, ts, f"poll cut short: {problem}")
        return unreachable(
            target, problem, ts, fix="check that the projector is powered and on the network"
        )

    async def close(self) -> None:
        """Forget the cached static answers."""
        self._static.clear()


def _with_static(got: ProjectorAnswers, cached: StaticAnswers) -> ProjectorAnswers:
    """This poll's answers, and the cached static ones it did not ask again."""
    answers = dict(got.answers)
    for command, answer in cached.answers.items():
        answers.setdefault(command, answer)
    return ProjectorAnswers(answers, got.pjlink_class, list(got.silent))


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"PJLink timeout: nothing within {timeout:g} s"
    if isinstance(exc, ConnectionResetError):
        return "the projector reset the connection"
    return str(exc)
