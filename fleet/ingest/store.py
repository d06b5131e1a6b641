"""Writes one parsed group of messages through Core statements (no ORM objects on the hot path).

Samples go in with INSERT ... ON CONFLICT DO NOTHING on (device, ts); each device's latest state
is updated once per group, and only by a reading newer than the one it already shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from operator import itemgetter
from typing import Any

from psycopg.errors import UniqueViolation
from pydantic_core import to_json
from sqlalchemy import (
    Connection,
    Insert,
    Table,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

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
    def __init__(self, conn: Connection, registry: RegistrySnapshot, in_class: InClass) -> None:
        self.conn = conn
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
        seen = self._stored_msg_ids(
            [p.batch.msg_id for p in parsed if isinstance(p, HealthMessage) and p.batch]
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
                msg_id = batch.msg_id if batch else None
                if self.raw_sqlite:
                    rows: list[Any] = sample_tuples(
                        item.readings, sqlite_ts(message.received_at), msg_id, text_stamps=True
                    )
                elif self.raw_postgres:
                    rows = sample_tuples(
                        item.readings, message.received_at, msg_id, text_stamps=False
                    )
                else:
                    rows = sample_rows(item.readings, message.received_at, msg_id)
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


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
