"""Findings into alert rows: open what is new, escalate what changed severity, resolve what
was judged and no longer found. At most one unresolved alert per (subject, kind): the partial
unique index guarantees it even when ingest and the scheduler race on the same device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel
from ulid import ULID

# Importing the models registers their tables on SQLModel.metadata, read just below.
from fleet.alerts.models import NOT_RESOLVED, AlertKind, AlertState
from fleet.alerts.rules import Finding

ALERTS: Table = SQLModel.metadata.tables["alert"]
DELIVERIES: Table = SQLModel.metadata.tables["webhook_delivery"]
IN_CHUNK = 500
CLEARED = "condition cleared"


@dataclass(frozen=True)
class Judgement:
    """What one evaluation said about one subject: `judged` kinds not in `findings` resolve."""

    site: str
    device: str | None
    judged: frozenset[AlertKind]
    findings: frozenset[Finding]

    @property
    def subject(self) -> str:
        return subject_of(self.site, self.device)


@dataclass
class ReconcileResult:
    opened: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)


def subject_of(site: str, device: str | None) -> str:
    return f"device:{device}" if device is not None else f"site:{site}"


def reconcile(
    conn: Connection, judgements: list[Judgement], now: datetime, *, notify: bool
) -> ReconcileResult:
    result = ReconcileResult()
    current = _unresolved(conn, [j.subject for j in judgements])
    for judgement in judgements:
        found = {f.kind: f for f in judgement.findings}
        for kind, finding in found.items():
            row = current.get((judgement.subject, kind.value))
            if row is None:
                alert_id = _open(conn, judgement, finding, now)
                if alert_id is not None:
                    result.opened.append(alert_id)
                    if notify:
                        enqueue(conn, "alert.opened", alert_id, now)
            elif row["severity"] != finding.severity.value:
                # The message is the one of the last severity change: rewriting it on every
                # reading (lamp hours grow by the minute) would make every reading a write.
                conn.execute(
                    ALERTS.update()
                    .where(ALERTS.c.id == row["id"])
                    .values(
                        severity=finding.severity.value, message=finding.message, updated_at=now
                    )
                )
                result.escalated.append(row["id"])
        for kind in judgement.judged - found.keys():
            row = current.get((judgement.subject, kind.value))
            if row is not None and resolve(conn, row["id"], now, by=None, note=CLEARED):
                result.resolved.append(row["id"])
                if notify:
                    enqueue(conn, "alert.resolved", row["id"], now)
    return result


def resolve(conn: Connection, alert_id: int, now: datetime, *, by: str | None, note: str) -> bool:
    done = conn.execute(
        ALERTS.update()
        .where(ALERTS.c.id == alert_id, ALERTS.c.state != AlertState.resolved.value)
        .values(
            state=AlertState.resolved.value,
            resolved_at=now,
            resolved_by=by,
            resolution=note,
            updated_at=now,
        )
    )
    return done.rowcount == 1


def enqueue(conn: Connection, event: str, alert_id: int, now: datetime) -> str:
    """Queue a webhook notification in the caller's transaction; webhook.py sends it."""
    alert = conn.execute(select(ALERTS).where(ALERTS.c.id == alert_id)).mappings().one()
    delivery_id = str(ULID())
    body = {
        "event": event,
        "delivery": delivery_id,
        "at": now.isoformat(),
        "alert": alert_json(alert),
    }
    conn.execute(
        insert(DELIVERIES).values(
            delivery_id=delivery_id,
            alert_id=alert_id,
            event=event,
            body=json.dumps(body, separators=(",", ":"), sort_keys=True),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return delivery_id


def alert_json(alert: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in (
        "id",
        "kind",
        "severity",
        "state",
        "site_code",
        "device_id",
        "message",
        "opened_at",
        "acknowledged_at",
        "acknowledged_by",
        "ack_note",
        "resolved_at",
        "resolved_by",
        "resolution",
    ):
        value = alert[name]
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _open(conn: Connection, judgement: Judgement, finding: Finding, now: datetime) -> int | None:
    values = {
        "kind": finding.kind.value,
        "severity": finding.severity.value,
        "state": AlertState.open.value,
        "subject": judgement.subject,
        "site_code": judgement.site,
        "device_id": judgement.device,
        "message": finding.message,
        "opened_at": now,
        "updated_at": now,
    }
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        dialect_insert(ALERTS)
        .values(values)
        .on_conflict_do_nothing(index_elements=["subject", "kind"], index_where=text(NOT_RESOLVED))
        .returning(ALERTS.c.id)
    )
    # None: another writer opened the same alert a moment ago, and that one stands.
    return conn.execute(stmt).scalar_one_or_none()


def _unresolved(conn: Connection, subjects: list[str]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    unique = sorted(set(subjects))
    for chunk in _chunks(unique):
        query = select(ALERTS.c.id, ALERTS.c.subject, ALERTS.c.kind, ALERTS.c.severity).where(
            ALERTS.c.subject.in_(chunk), ALERTS.c.state != AlertState.resolved.value
        )
        for row in conn.execute(query).mappings():
            out[(row["subject"], row["kind"])] = row
    return out


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
