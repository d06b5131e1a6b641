"""Where health enters the controller's storage, independent of MQTT.

`Ingest.handle(group)` stores a group of messages in ONE transaction. Bad input never raises:
it is counted, logged and dead-lettered, and its outcome says so (the caller acks it). A batch
is judged reading by reading: its good readings are stored, each bad one dead-lettered with its
own reason. A value the store refuses costs only its own message. Only the database being away
or busy (`fleet.db.DATABASE_FAULTS`) raises, so the caller does not ack and the broker delivers
the group again; storing is idempotent (msg_id per batch, (device, ts) per sample), so that
redelivery stores nothing twice.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import repeat
from operator import attrgetter, sub
from typing import Any
from zoneinfo import ZoneInfo

from prometheus_client import Counter, Histogram
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from fleet.db import is_database_fault
from fleet.devices.registry import timetable_from_json
from fleet.ingest.parse import (
    HealthMessage,
    IncomingMessage,
    Outcome,
    OutcomeStatus,
    Parsed,
    RegistrySnapshot,
    Rejected,
    RejectReason,
    SiteEntry,
    parse_message,
)
from fleet.ingest.store import GroupWriter, SampleCopy, dead_letter_insert
from fleet.models import Device, Site
from fleet.protocol.messages import TOPIC_ROOT, utcnow
from fleet.protocol.timetable import Timetable

__all__ = [
    "AfterCommit",
    "Checked",
    "IncomingMessage",
    "Ingest",
    "Outcome",
    "OutcomeStatus",
    "RejectReason",
]

# Called after a group's transaction committed, with the devices whose rows it wrote and the
# time; e.g. alerts. It runs before the group is acked: keep it to a few bulk queries.
AfterCommit = Callable[[Engine, list[str], datetime], None]

log = logging.getLogger(__name__)

REJECTED = Counter(
    "fleet_ingest_rejected_total", "Messages rejected and dead-lettered, by reason", ["reason"]
)
READINGS = Counter("fleet_ingest_readings_total", "Readings accepted into storage")
READINGS_REFUSED = Counter(
    "fleet_ingest_readings_refused_total",
    "Readings refused (and dead-lettered one by one) from batches whose others were stored",
    ["reason"],
)
MESSAGES = Counter("fleet_ingest_messages_total", "Messages handled, by outcome", ["outcome"])
COPY_AHEAD = Counter(
    "fleet_ingest_copy_ahead_total",
    "Groups whose samples were COPYed while the group was gathered (PostgreSQL), by how the "
    "COPY ended: kept, or why it was rolled back and the group written as any other",
    ["outcome"],
)
GROUP_SECONDS = Histogram("fleet_ingest_group_seconds", "Time to store one group of messages")
# How old a reading is when it reaches the controller (received_at - reading ts): seconds
# normally, hours after a site's link or the broker was down and the agent's outbox drains.
LAG_SECONDS = Histogram(
    "fleet_ingest_lag_seconds",
    "Age of each stored reading on arrival (received_at - reading ts)",
    buckets=(1, 5, 15, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400),
)

# A miss (unknown site or device) reloads the registry from the database at most this often,
# so a `sync` done by another process is picked up without a flood of reloads on bad input.
REGISTRY_RELOAD_MIN_S = 10.0
IN_CLASS_MEMO_MAX = 100_000
_TS = attrgetter("ts")
# A group makes tens of thousands of container objects (readings, their dicts, rows) that all
# live until it is stored. At CPython's default first threshold (700 allocations) each group
# set off hundreds of young collections, each walking what the group had made so far, and
# full ones as its survivors piled up: a fifth of a large group's CPU time (measured on a
# 20,000-reading group). A higher first threshold lets a collection come every 20,000
# allocations instead: the same objects are found, as often as matters, and the collector
# stays on for every thread of the process (it is never paused around a group).
COLLECTOR_THRESHOLDS = (20_000, 10, 10)


@dataclass(frozen=True)
class Checked:
    """A message checked ahead of its group (`Ingest.check`), and the registry it was checked
    against: a registry reloaded since means checking it again."""

    parsed: Parsed
    registry: RegistrySnapshot

    @property
    def sends_samples(self) -> bool:
        """A health message: readings for the `sample` table."""
        return isinstance(self.parsed, HealthMessage)


class Ingest:
    """Stores groups of incoming messages (`handle`), keeps the registry snapshot they are checked
    against, and counts what became of them for /healthz."""

    def __init__(
        self,
        engine: Engine,
        sites: Mapping[str, Iterable[str]] | None = None,
        topic_root: str = TOPIC_ROOT,
    ) -> None:
        """`sites` (site code to device ids) pins the registry; None reads it from the
        database. `topic_root`: the MQTT topic root messages are parsed under."""
        # `sites` (site code -> device ids) pins the registry; by default it comes from the DB.
        self.engine = engine
        self.topic_root = topic_root
        self._pinned = {k: frozenset(v) for k, v in sites.items()} if sites is not None else None
        self._lock = threading.Lock()
        self._reloaded_at = 0.0
        self.registry = RegistrySnapshot()
        self.rejected: Tally[str] = Tally()
        self.refused_readings: Tally[str] = Tally()
        self.outcomes: Tally[str] = Tally()
        self.readings = 0
        self.last_group_at: datetime | None = None
        self.after_commit: list[AfterCommit] = []
        self.clock: Callable[[], datetime] = utcnow  # tests pin it
        self._touched: set[str] = set()
        self._minute_sites: frozenset[str] = frozenset()
        self._in_class_memo: dict[tuple[str, int], bool] = {}
        # The writer sends a group's samples while it gathers the group (`open_copy`).
        dialect = engine.dialect
        self.copies_ahead = (dialect.name, dialect.driver) == ("postgresql", "psycopg")
        self.refresh_registry()

    def refresh_registry(self) -> None:
        """Reload sites and devices from the database; call after `sync_registry`."""
        with self.engine.connect() as conn:
            site_rows = conn.execute(select(Site.code, Site.timezone, Site.timetable)).all()  # type: ignore[call-overload]
            device_rows = conn.execute(
                select(Device.id, Device.site_code, Device.retired_at)  # type: ignore[call-overload]
            ).all()
        timetables = {code: (tz, timetable) for code, tz, timetable in site_rows}
        active: dict[str, set[str]] = {}
        for device_id, site_code, retired_at in device_rows:
            if retired_at is None:
                active.setdefault(site_code, set()).add(device_id)
        if self._pinned is not None:
            active = {k: set(v) for k, v in self._pinned.items()}
            codes: Iterable[str] = self._pinned
        else:
            codes = timetables
        entries = {}
        for code in codes:
            tz, timetable = timetables.get(code, ("UTC", {}))
            entries[code] = SiteEntry(
                frozenset(active.get(code, ())), timetable_from_json(timetable), ZoneInfo(tz)
            )
        self._minute_sites = frozenset(
            code for code, entry in entries.items() if _on_whole_minutes(entry.timetable)
        )
        self._in_class_memo = {}
        self.registry = RegistrySnapshot(
            sites=entries,
            device_site={d: s for d, s, _ in device_rows},
            retired=frozenset(d for d, _, retired_at in device_rows if retired_at is not None),
        )
        self._reloaded_at = time.monotonic()

    def check(self, message: IncomingMessage) -> Checked | None:
        """`message` checked against the contract and the registry as it stands, ahead of
        its group (the subscriber's writer checks each message as it gathers the group): no
        database work. Give it to `handle` beside its message; None if checking failed (the
        group then checks the message again, and says why)."""
        registry = self.registry
        try:
            return Checked(parse_message(message, self.topic_root, registry), registry)
        except Exception:
            return None

    def open_copy(self) -> SampleCopy | None:
        """A `SampleCopy` for the group about to be gathered, on PostgreSQL over psycopg;
        None elsewhere, or if the database cannot take one now (the group is then written
        as it is anyway, and meets the fault there)."""
        if not self.copies_ahead:
            return None
        try:
            return SampleCopy(self.engine)
        except Exception:
            log.debug("no COPY ahead of this group", exc_info=True)
            return None

    def handle(
        self,
        messages: list[IncomingMessage],
        checked: Sequence[Checked | None] | None = None,
        copy: SampleCopy | None = None,
    ) -> list[Outcome]:
        """Store a group; one outcome per message, in order. `checked` (from `check`, one a
        message) spares checking again what was checked against the registry still in force;
        `copy` (from `open_copy`, fed with the group's messages as they were checked) holds
        its samples already sent, and is closed here whatever happens. Raises only a database
        fault (the database away or busy), for the caller to retry the group whole, without
        `copy`."""
        try:
            return self._handle(messages, checked, copy)
        finally:
            if copy is not None:
                copy.close()

    def _handle(
        self,
        messages: list[IncomingMessage],
        checked: Sequence[Checked | None] | None,
        copy: SampleCopy | None,
    ) -> list[Outcome]:
        with self._lock, GROUP_SECONDS.time():
            self._touched = set()
            parsed = [
                self._parse(m, c)
                for m, c in zip(messages, checked or repeat(None, len(messages)), strict=True)
            ]
            try:
                outcomes = self._store(messages, parsed, copy)
            except Exception as exc:
                if is_database_fault(exc):
                    raise
                # Not the database being away: one message carries what the store cannot take
                # (a value it refuses, or one a conversion on the way cannot hold). Find it,
                # dead-letter it, store the rest: no message may hold up those behind it.
                log.warning("group of %d refused (%r); storing one by one", len(messages), exc)
                outcomes = [self._store_alone(m, p) for m, p in zip(messages, parsed, strict=True)]
            self._count(messages, outcomes)
            _observe_lag(messages, parsed, outcomes)
            touched = sorted(self._touched)
        self._run_after_commit(touched)
        return outcomes

    def status(self) -> dict[str, Any]:
        """Ingest's counts for /healthz: sites known, readings stored, outcomes, rejections and
        refused readings by reason, and when the last group was stored (ISO 8601, UTC)."""
        return {
            "ok": True,
            "sites": len(self.registry.sites),
            "readings": self.readings,
            "outcomes": dict(self.outcomes),
            "rejected": dict(self.rejected),
            "readings_refused": dict(self.refused_readings),
            "last_group_at": self.last_group_at.isoformat() if self.last_group_at else None,
        }

    def _parse(self, message: IncomingMessage, checked: Checked | None = None) -> Parsed:
        try:
            if checked is not None and checked.registry is self.registry:
                result = checked.parsed
            else:
                result = parse_message(message, self.topic_root, self.registry)
            if self._should_reload(result):
                self.refresh_registry()
                result = parse_message(message, self.topic_root, self.registry)
            return result
        except Exception as exc:  # a bug must not stop ingest: keep the message to replay
            log.exception("cannot parse message on %s", message.topic)
            return Rejected(RejectReason.invalid, f"controller error while parsing: {exc!r}")

    def _should_reload(self, result: Parsed) -> bool:
        return (
            self._pinned is None
            and isinstance(result, Rejected)
            and result.reason in (RejectReason.unknown_site, RejectReason.unknown_device)
            and time.monotonic() - self._reloaded_at >= REGISTRY_RELOAD_MIN_S
        )

    def _store(
        self,
        messages: list[IncomingMessage],
        parsed: list[Parsed],
        copy: SampleCopy | None = None,
    ) -> list[Outcome]:
        if copy is None:
            with self.engine.begin() as conn:
                writer = GroupWriter(conn, self.registry, self._in_class)
                outcomes = writer.write(messages, parsed)
        else:
            # The rest of the group goes into the COPY's transaction, committed as one. Closed
            # before any fallback: its uncommitted rows would hold up the same rows written
            # one by one on another connection.
            try:
                stored = copy.end(messages, parsed)
                COPY_AHEAD.labels(copy.outcome).inc()
                writer = GroupWriter(
                    copy.conn, self.registry, self._in_class, samples_stored=stored
                )
                outcomes = writer.write(messages, parsed)
                copy.transaction.commit()
            finally:
                copy.close()
        self._touched |= writer.touched
        return outcomes

    def _run_after_commit(self, touched: list[str]) -> None:
        for hook in self.after_commit:
            try:
                hook(self.engine, touched, self.clock())
            except Exception:  # the group is stored: a failing hook must not get it redelivered
                log.exception("after-commit hook %r failed for %d devices", hook, len(touched))

    def _store_alone(self, message: IncomingMessage, parsed: Parsed) -> Outcome:
        try:
            return self._store([message], [parsed])[0]
        except Exception as exc:
            if is_database_fault(exc):
                raise
            why = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
            detail = f"the store refused it: {type(why).__name__}: {why}"
            log.exception("message on %s cannot be stored; dead-lettering it", message.topic)
            with self.engine.begin() as conn:
                conn.execute(dead_letter_insert(message, RejectReason.db_rejected, detail))
            return Outcome.rejected(RejectReason.db_rejected, detail)

    def _in_class(self, site: str, at: datetime) -> bool:
        # Memoised per (site, UTC minute) when the site's periods start and end on whole
        # minutes (then every instant of a minute answers alike, zone offsets being whole
        # minutes since 1972): a group's thousand readings cost a few timetable look-ups.
        entry = self.registry.sites.get(site)
        if entry is None:
            return False
        if site not in self._minute_sites or at.year < 1972:
            return entry.timetable.in_class(at, entry.tz)
        key = (site, int(at.timestamp()) // 60)
        known = self._in_class_memo.get(key)
        if known is None:
            if len(self._in_class_memo) >= IN_CLASS_MEMO_MAX:
                self._in_class_memo.clear()
            known = self._in_class_memo[key] = entry.timetable.in_class(at, entry.tz)
        return known

    def _count(self, messages: list[IncomingMessage], outcomes: list[Outcome]) -> None:
        # Only after commit: a group that raised will come again and be counted then.
        statuses: Tally[str] = Tally()
        readings = 0
        for message, outcome in zip(messages, outcomes, strict=True):
            statuses[outcome.status.value] += 1
            if outcome.status == OutcomeStatus.rejected and outcome.reason is not None:
                self.rejected[outcome.reason.value] += 1
                REJECTED.labels(outcome.reason.value).inc()
                log.warning(
                    "rejected message on %s (%s): %s", message.topic, outcome.reason, outcome.detail
                )
            readings += outcome.readings
            if outcome.refused_readings:
                for reason in outcome.refused_readings:
                    self.refused_readings[reason.value] += 1
                    READINGS_REFUSED.labels(reason.value).inc()
                log.warning(
                    "%d readings refused on %s: %s",
                    len(outcome.refused_readings),
                    message.topic,
                    outcome.detail,
                )
        # The metrics once per group, not once per message.
        for status, count in statuses.items():
            self.outcomes[status] += count
            MESSAGES.labels(status).inc(count)
        self.readings += readings
        READINGS.inc(readings)
        self.last_group_at = utcnow()


def collect_less_often() -> None:
    """Raise this process's cyclic-collector thresholds to `COLLECTOR_THRESHOLDS` (never
    lower one that is higher). Called once by the subscriber as it starts."""
    current = gc.get_threshold()
    gc.set_threshold(*(max(c, t) for c, t in zip(current, COLLECTOR_THRESHOLDS, strict=False)))


def _on_whole_minutes(timetable: Timetable) -> bool:
    return all(
        t.second == 0 and t.microsecond == 0
        for periods in timetable.weekly.values()
        for period in periods
        for t in (period.start, period.end)
    )


def _observe_lag(
    messages: list[IncomingMessage], parsed: list[Parsed], outcomes: list[Outcome]
) -> None:
    for message, result, outcome in zip(messages, parsed, outcomes, strict=True):
        if outcome.status == OutcomeStatus.stored and isinstance(result, HealthMessage):
            observe_ages(LAG_SECONDS, message.received_at, list(map(_TS, result.readings)))


def observe_ages(histogram: Histogram, received: datetime, stamps: list[datetime]) -> None:
    """`histogram.observe(age)` for each of `stamps` (aware datetimes), its age the seconds
    from it to `received`; a stamp after `received` (a device clock ahead of ours) is age 0,
    not negative. For a histogram whose bounds are whole microseconds (`LAG_SECONDS`' are
    whole seconds).

    One message's readings at once, with no Python step a reading: the stamps sorted, the
    buckets of the oldest and the newest found, each bound between them placed by bisection,
    the sum of ages added exactly (timedeltas), each lock taken once. Observed one by one, a
    group's thousands of readings were a tenth of its ingest time. Falls back to one observe
    each where prometheus_client's (private) bucket layout is not as known."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for ts in stamps:
            histogram.observe(max((received - ts).total_seconds(), 0.0))
        return
    if not stamps:
        return
    ordered = sorted(stamps)
    oldest, count = ordered[0], len(ordered)
    # A stamp's bucket is the first whose bound its age does not pass (age <= bound).
    youngest_bucket = bisect_left(bounds, max((received - ordered[-1]).total_seconds(), 0.0))
    oldest_bucket = bisect_left(bounds, max((received - oldest).total_seconds(), 0.0))
    placed = 0  # the youngest `placed` stamps are counted
    for index in range(youngest_bucket, oldest_bucket):
        # age <= bound, that is ts >= received - bound: those from the cut's place on.
        within = count - bisect_left(ordered, received - timedelta(seconds=bounds[index]))
        if within > placed:
            buckets[index].inc(within - placed)
            placed = within
    buckets[oldest_bucket].inc(count - placed)
    aged = bisect_right(ordered, received)  # those not ahead of `received`
    if aged:
        ages = (received - oldest) * aged - sum(
            map(sub, ordered[:aged], repeat(oldest, aged)), timedelta()
        )
        total.inc(ages.total_seconds())
