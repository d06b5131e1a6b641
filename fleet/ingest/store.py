"""Writes one parsed group of messages through Core statements (no ORM objects on the hot path).

Samples go in once per (device, ts): on SQLite by INSERT ... ON CONFLICT DO NOTHING; on
PostgreSQL by COPY under a savepoint, or through a staging table merged with ON CONFLICT DO
NOTHING when a row is stored already, or COPYed before the group closed (`SampleCopy`). Each
device's latest state is updated once per group, and only by a reading newer than the one it
already shows.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from operator import itemgetter
from typing import Any

from psycopg.errors import UniqueViolation
from pydantic_core import to_json
from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from fleet.db import is_database_fault
from fleet.devices.state import derive_state
from fleet.ingest.agents import AgentRows
from fleet.ingest.parse import (
    AgentStateMessage,
    BadReading,
    HealthMessage,
    IncomingMessage,
    Outcome,
    OutcomeStatus,
    Parsed,
    RegistrySnapshot,
    Rejected,
    RejectReason,
)
from fleet.ingest.rows import (
    DEVICE_UPDATE,
    POSTGRES_DEVICE_UPDATE_JSON,
    POSTGRES_INGESTED_INSERT_JSON,
    POSTGRES_SAMPLE_COPY,
    POSTGRES_SAMPLE_COPY_DIRECT,
    POSTGRES_SAMPLE_COPY_TYPES,
    POSTGRES_SAMPLE_MERGE,
    POSTGRES_SAMPLE_STAGE,
    SAMPLES,
    SQLITE_DEVICE_UPDATE,
    SQLITE_INGESTED_INSERT,
    note_row,
    sample_rows,
    sample_tuples,
    sqlite_sample_insert,
    sqlite_ts,
)
from fleet.protocol.messages import Reading

log = logging.getLogger(__name__)

DEVICES = SQLModel.metadata.tables["device"]
INGESTED = SQLModel.metadata.tables["ingested_message"]
AGENTS = SQLModel.metadata.tables["agent_status"]
NOTES = SQLModel.metadata.tables["agent_message"]
DEAD = SQLModel.metadata.tables["dead_letter"]

IN_CHUNK = 500  # ids per IN (...) list, well under SQLite's parameter limit
DETAIL_MAX = 2000
# What a dead letter keeps of its message: enough to read what was wrong and replay most
# messages, while a flood of oversize garbage costs 16 KiB a row, not 256 (fleet/retention.py
# bounds the rows).
DEAD_LETTER_PAYLOAD_MAX = 16 * 1024

InClass = Callable[[str, datetime], bool]
# Order of arrival: (received_at, index in group); rows from earlier groups use index -1.
Arrival = tuple[datetime, int]


# A device's newest reading in a group, with its site and arrival: a plain tuple, as one is
# made for nearly every reading.
Latest = tuple[Reading, str, Arrival]


def dead_letter_insert(message: IncomingMessage, reason: RejectReason, detail: str) -> Insert:
    """The INSERT of a message's dead-letter row: the reason, the detail, and its payload up to
    DEAD_LETTER_PAYLOAD_MAX bytes."""
    return insert(DEAD).values(_dead_letter_row(message, reason, detail))


def _dead_letter_row(message: IncomingMessage, reason: RejectReason, detail: str) -> dict[str, Any]:
    return {
        "received_at": message.received_at,
        "topic": message.topic.replace("\x00", ""),
        "reason": reason.value,
        "detail": detail.replace("\x00", "")[:DETAIL_MAX],
        "payload": bytes(message.payload[:DEAD_LETTER_PAYLOAD_MAX]),
        "size": len(message.payload),
        "truncated": len(message.payload) > DEAD_LETTER_PAYLOAD_MAX,
    }


def _refused_reading_row(message: IncomingMessage, bad: BadReading) -> dict[str, Any]:
    """A dead-letter row for one reading of a batch: the reading alone, as it came."""
    payload = json.dumps(bad.raw, default=str).encode()  # ASCII: any odd text is escaped
    return {
        "received_at": message.received_at,
        "topic": message.topic.replace("\x00", ""),
        "reason": bad.reason.value,
        "detail": bad.detail.replace("\x00", "")[:DETAIL_MAX],
        "payload": payload[:DEAD_LETTER_PAYLOAD_MAX],
        "size": len(payload),
        "truncated": len(payload) > DEAD_LETTER_PAYLOAD_MAX,
    }


class GroupWriter:
    """Writes one group in the caller's transaction. `samples_stored`: the group's samples
    are in already (a `SampleCopy` that `end`ed with its rows kept); everything else is
    written as for any group."""

    def __init__(
        self,
        conn: Connection,
        registry: RegistrySnapshot,
        in_class: InClass,
        *,
        samples_stored: bool = False,
    ) -> None:
        """`in_class` tells whether a site is in class at an instant (for the devices' derived
        state); `registry` is what the group was checked against."""
        self.conn = conn
        self.samples_stored = samples_stored
        self.registry = registry
        self.in_class = in_class
        self.touched: set[str] = set()  # devices whose row a reading updated (if newer)
        dialect = conn.dialect.name
        self.insert: Callable[[Table], Any] = (
            postgresql.insert if dialect == "postgresql" else sqlite.insert
        )
        # The two bulk statements go to the driver with values already in the form it takes:
        # SQLAlchemy's per-parameter bind processing was most of a group's time.
        driver = f"{dialect}+{conn.dialect.driver}"
        self.raw_sqlite = driver == "sqlite+pysqlite"
        self.raw_postgres = driver == "postgresql+psycopg"
        # A sample's (device, ts), the key a group's copies of it are told apart by: on SQLite
        # the ts as stored text, one text to one instant.
        self.sample_key: Callable[[Any], tuple[str, Any]] = (
            itemgetter(0, 1)
            if self.raw_sqlite or self.raw_postgres
            else itemgetter("device_id", "ts")
        )

    def write(self, messages: list[IncomingMessage], parsed: list[Parsed]) -> list[Outcome]:
        """Write the group's `parsed` messages (`messages` in the same order): samples, ingest
        ledger, dead letters, agent notes and rows, devices' state. Returns one Outcome per message,
        in order."""
        outcomes: list[Outcome] = []
        dead: list[dict[str, Any]] = []
        # (device, ts) -> the row as its driver takes it (a tuple in SAMPLE_COLUMNS order on
        # the raw drivers, a dict otherwise); a later copy in the group replaces an earlier.
        samples: dict[tuple[str, Any], Any] = {}
        ingested: list[dict[str, Any]] = []
        notes: list[dict[str, Any]] = []
        latest: dict[str, Latest] = {}
        agents = AgentRows(
            self.conn,
            {p.site for p in parsed if isinstance(p, (HealthMessage, AgentStateMessage))},
        )
        # Samples stored already means a SampleCopy kept them, having found none of the
        # group's msg_ids in the ledger in this transaction: no need to ask again.
        seen = (
            set()
            if self.samples_stored
            else self._stored_msg_ids(
                [p.batch.msg_id for p in parsed if isinstance(p, HealthMessage) and p.batch]
            )
        )

        for index, (message, item) in enumerate(zip(messages, parsed, strict=True)):
            arrival = (message.received_at, index)
            if isinstance(item, Rejected):
                dead.append(_dead_letter_row(message, item.reason, item.detail))
                outcomes.append(Outcome.rejected(item.reason, item.detail))
            elif isinstance(item, HealthMessage):
                batch = item.batch
                if batch is not None:
                    if batch.msg_id in seen:
                        outcomes.append(Outcome(OutcomeStatus.duplicate, detail="already stored"))
                        continue
                    seen.add(batch.msg_id)
                    ingested.append(
                        {
                            "msg_id": batch.msg_id,
                            "site_code": item.site,
                            "agent_id": batch.agent_id,
                            "seq": batch.seq,
                            "received_at": (
                                sqlite_ts(message.received_at)
                                if self.raw_sqlite
                                else message.received_at
                            ),
                            "readings": len(batch.readings),
                        }
                    )
                    agents.health(item.site, batch.agent_id, arrival)
                if not self.samples_stored:
                    rows = self._sample_rows(item, message)
                    samples.update(zip(map(self.sample_key, rows), rows, strict=True))
                site = item.site
                for reading in item.readings:
                    device = reading.device
                    known = latest.get(device)
                    if known is None or known[0].ts <= reading.ts:
                        latest[device] = (reading, site, arrival)
                for bad in item.refused:
                    dead.append(_refused_reading_row(message, bad))
                outcomes.append(
                    Outcome(
                        OutcomeStatus.stored,
                        readings=len(item.readings),
                        refused_readings=tuple(bad.reason for bad in item.refused),
                        detail="; ".join(bad.detail for bad in item.refused[:3]),
                    )
                )
            elif isinstance(item, AgentStateMessage):
                why = agents.said(item.site, item.state, arrival)
                if why is None:
                    outcomes.append(Outcome(OutcomeStatus.stored))
                else:  # a retained state replayed, or a stale one: acknowledged, no change
                    outcomes.append(Outcome(OutcomeStatus.duplicate, detail=why))
            else:
                notes.append(note_row(item, message.received_at))
                outcomes.append(Outcome(OutcomeStatus.stored))

        if dead:
            self.conn.execute(insert(DEAD), dead)
        if samples and self.raw_sqlite:
            self.conn.exec_driver_sql(*sqlite_sample_insert(list(samples.values())))
        elif samples and self.raw_postgres:
            self._copy_samples(list(samples.values()))
        elif samples:
            stmt = self.insert(SAMPLES).on_conflict_do_nothing(index_elements=["device_id", "ts"])
            self.conn.execute(stmt, list(samples.values()))
        if ingested and self.raw_sqlite:
            self.conn.exec_driver_sql(SQLITE_INGESTED_INSERT, ingested)
        elif ingested and self.raw_postgres:
            self.conn.exec_driver_sql(POSTGRES_INGESTED_INSERT_JSON, (to_json(ingested).decode(),))
        elif ingested:
            stmt = self.insert(INGESTED).on_conflict_do_nothing(index_elements=["msg_id"])
            self.conn.execute(stmt, ingested)
        if notes:
            self.conn.execute(insert(NOTES), notes)
        agents.write()
        self._update_devices(latest, agents.offline)
        return outcomes

    def _sample_rows(self, item: HealthMessage, message: IncomingMessage) -> list[Any]:
        """A message's samples in the form this connection's driver takes."""
        msg_id = item.batch.msg_id if item.batch else None
        if self.raw_sqlite:
            return sample_tuples(
                item.readings, sqlite_ts(message.received_at), msg_id, text_stamps=True
            )
        if self.raw_postgres:
            return sample_tuples(item.readings, message.received_at, msg_id, text_stamps=False)
        return sample_rows(item.readings, message.received_at, msg_id)

    def _copy_samples(self, rows: list[tuple[Any, ...]]) -> None:
        """COPY, how bulk rows go into PostgreSQL fast; COPY has no ON CONFLICT. Straight into
        `sample` under a savepoint first: a group of new readings, the usual case, costs one
        COPY. If any (device, ts) is stored already (a batch sent again under a new msg_id),
        that COPY fails whole and is rolled back; then the rows go into a temporary table of
        this connection (emptied at commit) and are merged with ON CONFLICT DO NOTHING, so
        redelivery stores nothing twice, exactly as a plain INSERT ... ON CONFLICT did."""
        try:
            with self.conn.begin_nested():
                self._copy(POSTGRES_SAMPLE_COPY_DIRECT, rows)
            return
        except UniqueViolation:
            pass
        self.conn.exec_driver_sql(POSTGRES_SAMPLE_STAGE)
        self._copy(POSTGRES_SAMPLE_COPY, rows)
        self.conn.exec_driver_sql(POSTGRES_SAMPLE_MERGE)

    def _copy(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        cursor = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                copy.set_types(POSTGRES_SAMPLE_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()

    def _stored_msg_ids(self, msg_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(msg_ids):
            rows = self.conn.execute(select(INGESTED.c.msg_id).where(INGESTED.c.msg_id.in_(chunk)))
            found.update(rows.scalars())
        return found

    def _update_devices(self, latest: dict[str, Latest], offline: dict[str, Arrival]) -> None:
        rows = []
        for device, (reading, site, arrival) in latest.items():
            went_offline = offline.get(site)
            if went_offline is not None and went_offline > arrival:
                continue  # the agent went offline after sending this: site_offline stands
            state, reason = derive_state(reading, in_class=self.in_class(site, reading.ts))
            # The raw drivers take JSON as text: pydantic's own serialiser writes it directly.
            dump = (
                reading.model_dump_json(exclude_none=True)
                if self.raw_sqlite or self.raw_postgres
                else reading.model_dump(mode="json", exclude_none=True)
            )
            rows.append(
                {
                    "b_id": device,
                    "b_ts": sqlite_ts(reading.ts) if self.raw_sqlite else reading.ts,
                    "b_state": state.value,
                    "b_reason": reason,
                    "b_reading": dump,
                    "b_firmware": reading.firmware,
                    "b_power": reading.power.value,
                    "b_reachable": reading.reachable,
                }
            )
        if rows and self.raw_sqlite:
            self.conn.exec_driver_sql(SQLITE_DEVICE_UPDATE, rows)
        elif rows and self.raw_postgres:
            self.conn.exec_driver_sql(POSTGRES_DEVICE_UPDATE_JSON, (to_json(rows).decode(),))
        elif rows:
            self.conn.execute(DEVICE_UPDATE, rows)
        self.touched.update(str(row["b_id"]) for row in rows)


class CopyAhead(enum.StrEnum):
    """How a `SampleCopy` ended: its rows kept, or why they were rolled back and the group
    written as any other (the label of `fleet_ingest_copy_ahead_total`)."""

    kept = "kept"
    checked_again = "checked_again"  # a message parsed again at the group (registry reloaded)
    reading_twice = "reading_twice"  # one (device, ts) twice in the group
    already_stored = "already_stored"  # a message id or a (device, ts) stored before
    refused = "refused"  # the server refused a row (the group then finds which)
    broken = "broken"  # the COPY failed while it was fed


class _Abandon(Exception):
    """Ends a COPY with CopyFail: its rows go nowhere."""


class SampleCopy:
    """A group's readings COPYed into `sample` while the group is still being gathered, on
    PostgreSQL over psycopg: the server inserts them (its foreign-key check and four indexes
    are most of a COPY's time) on its own core while the writer checks the next messages,
    rather than only once the group has closed.

    Opened by the writer at a group's first reading, `feed` with each message as it is
    checked, then handed to `fleet.ingest.pipeline.Ingest.handle`, which calls `end` and
    writes the rest of the group in this transaction. The rows stand only if they are
    exactly those the group's own write would store: every health message fed as it was
    checked and not parsed again, no (device, ts) twice, none stored before and no message
    id stored before. Otherwise they are rolled back to a savepoint and the group is written
    as any other, so idempotency and dead-lettering are GroupWriter's, unchanged.

    Raises a database fault from `__init__` (the caller then writes the group as usual) and
    from `end` (the group is retried whole). `close` is always safe to call."""

    def __init__(self, engine: Engine) -> None:
        """Open a connection, a transaction and the COPY into `sample` on `engine`; raises a
        database fault when any of them fails."""
        self.conn = engine.connect()
        self.outcome: CopyAhead | None = None
        self._fed: dict[int, tuple[IncomingMessage, HealthMessage]] = {}
        self._skipped: set[int] = set()
        self._msg_ids: set[str] = set()
        self._keys: set[tuple[str, datetime]] = set()
        self._broken: CopyAhead | None = None
        self._copy: Any = None
        self._finish: Any = None
        try:
            self.transaction = self.conn.begin()
            self.savepoint = self.conn.begin_nested()
            dbapi = self.conn.connection.dbapi_connection
            self._cursor = dbapi.cursor()  # type: ignore[union-attr]
            stream = self._cursor.copy(POSTGRES_SAMPLE_COPY_DIRECT)
            self._copy = stream.__enter__()
            self._copy.set_types(POSTGRES_SAMPLE_COPY_TYPES)
            self._finish = stream.__exit__
        except BaseException:
            self.close()
            raise

    def feed(self, message: IncomingMessage, parsed: Parsed) -> None:
        """Send `message`'s readings now, if it is a health message (checked, `parsed`).
        Never raises: a failure only means the group is written as any other."""
        if self._broken is not None or not isinstance(parsed, HealthMessage):
            return
        msg_id = parsed.batch.msg_id if parsed.batch else None
        if msg_id is not None and msg_id in self._msg_ids:
            self._skipped.add(id(message))  # the group's write counts it a duplicate
            return
        rows = sample_tuples(parsed.readings, message.received_at, msg_id, text_stamps=False)
        keys = [(row[0], row[1]) for row in rows]
        if not self._keys.isdisjoint(keys) or len(set(keys)) < len(keys):
            # The group's write keeps the later copy; COPY would refuse the second.
            self._abandon(CopyAhead.reading_twice)
            return
        try:
            for row in rows:
                self._copy.write_row(row)
        except Exception:
            log.debug("COPY ahead of the group failed while fed", exc_info=True)
            self._abandon(CopyAhead.broken)
            return
        self._keys.update(keys)
        if msg_id is not None:
            self._msg_ids.add(msg_id)
        self._fed[id(message)] = (message, parsed)

    def end(self, messages: list[IncomingMessage], parsed: list[Parsed]) -> bool:
        """Close the COPY; True if its rows are the group's samples and stand, False if they
        were rolled back (the group then writes its samples itself). Sets `outcome`.
        Raises a database fault."""
        why = self._broken or self._mismatch(messages, parsed)
        if why is None:
            try:
                self._finish(None, None, None)
            except UniqueViolation:
                why = CopyAhead.already_stored
            except Exception as exc:
                if is_database_fault(exc):
                    raise
                why = CopyAhead.refused
            finally:
                self._finish = None
        else:
            self._abandon(why)
        if why is None and self._msg_ids:
            # In chunks, as GroupWriter asks: a group may hold more ids than a statement
            # may bind (`FLEET_INGEST_BATCH_MAX` goes to 100,000).
            for chunk in _chunks(sorted(self._msg_ids)):
                stored = select(INGESTED.c.msg_id).where(INGESTED.c.msg_id.in_(chunk))
                if self.conn.execute(stored.limit(1)).first() is not None:
                    why = CopyAhead.already_stored
                    break
        self.outcome = why or CopyAhead.kept
        if why is None:
            self.savepoint.commit()
            return True
        self.savepoint.rollback()
        return False

    def _mismatch(self, messages: list[IncomingMessage], parsed: list[Parsed]) -> CopyAhead | None:
        """None if what was fed is what the group's write would store: each health message
        fed as the group now has it parsed (or skipped as a copy of a message fed before),
        and nothing fed that is not in the group."""
        matched: set[int] = set()
        for message, item in zip(messages, parsed, strict=True):
            if not isinstance(item, HealthMessage):
                continue
            was = self._fed.get(id(message))
            if was is not None and was[0] is message and was[1] is item:
                matched.add(id(message))
            elif id(message) not in self._skipped:
                return CopyAhead.checked_again
        return None if matched == self._fed.keys() else CopyAhead.checked_again

    def _abandon(self, why: CopyAhead) -> None:
        self._broken = why
        finish, self._finish = self._finish, None
        if finish is None:
            return
        try:
            finish(_Abandon, _Abandon(why.value), None)
        except Exception:  # the server's answer to CopyFail; the savepoint undoes the rest
            log.debug("COPY ahead of the group abandoned (%s)", why, exc_info=True)

    def close(self) -> None:
        """Roll back whatever was not committed and give the connection back."""
        try:
            if self._finish is not None:
                self._abandon(CopyAhead.broken)
            self.conn.close()
        except Exception:
            log.debug("closing a COPY ahead of its group failed", exc_info=True)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
