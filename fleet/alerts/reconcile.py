"""Observations into alert rows, through each kind's hold (hold.py): open what has held long
enough, escalate what got worse, resolve what has been gone long enough. The hold's counts
are kept in `alert_condition`. At most one unresolved alert per (subject, kind): the partial
unique index guarantees it even when ingest and the scheduler race on the same device."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel
from ulid import ULID

from fleet.alerts.hold import NONE, Action, Counts, step

# Importing the models registers their tables on SQLModel.metadata, read just below.
from fleet.alerts.models import NOT_RESOLVED, AlertState, Severity
from fleet.alerts.rules import HOLDS, Finding, Observation

ALERTS: Table = SQLModel.metadata.tables["alert"]
DELIVERIES: Table = SQLModel.metadata.tables["webhook_delivery"]
CONDITIONS: Table = SQLModel.metadata.tables["alert_condition"]
IN_CHUNK = 500
CLEARED = "condition cleared"
RETIRED = "device retired"
_RANK = {Severity.warning.value: 0, Severity.critical.value: 1}


@dataclass(frozen=True)
class Judgement:
    """What one evaluation said about one subject: an observation per kind it could judge
    (a kind without one is left as it is). `gone`: the subject itself is gone (a device
    retired): its alerts resolve at once."""

    site: str
    device: str | None
    observations: tuple[Observation, ...]
    gone: bool = False

    @property
    def subject(self) -> str:
        """The alert subject key: "device:<id>", or "site:<code>" for a site's own alerts."""
        return subject_of(self.site, self.device)


@dataclass
class ReconcileResult:
    """The ids of the alerts one reconcile opened, escalated and resolved."""

    opened: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)


def subject_of(site: str, device: str | None) -> str:
    """The alert subject key of a device ("device:<id>") or, when `device` is None, of the site
    ("site:<code>")."""
    return f"device:{device}" if device is not None else f"site:{site}"


def reconcile(
    conn: Connection, judgements: list[Judgement], now: datetime, *, notify: bool
) -> ReconcileResult:
    """Apply `judgements` at `now` in the caller's transaction; `notify` queues a webhook for
    every alert opened or resolved (never for an escalation)."""
    result = ReconcileResult()
    subjects = [j.subject for j in judgements]
    current = _unresolved(conn, subjects)
    counts = _counts(conn, subjects)
    changed: dict[tuple[str, str], tuple[str, Counts]] = {}
    for judgement in judgements:
        if judgement.gone:
            for key in [k for k in current.keys() | counts.keys() if k[0] == judgement.subject]:
                if key in current:
                    _resolved(conn, result, current[key]["id"], now, RETIRED, notify)
                changed[key] = (judgement.site, NONE)
            continue
        for seen in judgement.observations:
            key = (judgement.subject, seen.kind.value)
            row = current.get(key)
            before = counts.get(key, NONE)
            after, action = step(before, row is not None, seen, HOLDS[seen.kind])
            if after != before:
                changed[key] = (judgement.site, after)
            if action == Action.open and seen.finding is not None:
                alert_id = _open(conn, judgement, seen.finding, now)
                if alert_id is not None:
                    result.opened.append(alert_id)
                    if notify:
                        enqueue(conn, "alert.opened", alert_id, now)
            elif action == Action.resolve and row is not None:
                _resolved(conn, result, row["id"], now, CLEARED, notify)
            elif row is not None and seen.finding is not None:
                _escalate(conn, result, row, seen.finding, now)
    _write_counts(conn, changed, counts, now)
    return result


def _resolved(
    conn: Connection, result: ReconcileResult, alert_id: int, now: datetime, note: str, notify: bool
) -> None:
    if resolve(conn, alert_id, now, by=None, note=note):
        result.resolved.append(alert_id)
        if notify:
            enqueue(conn, "alert.resolved", alert_id, now)


def _escalate(
    conn: Connection, result: ReconcileResult, row: Any, finding: Finding, now: datetime
) -> None:
    # Only upwards, and the message is the one of the last escalation: rewriting it on every
    # reading (lamp hours grow by the minute) would make every reading a write, and a value
    # wavering at a severity's edge would flap it.
    if _RANK[finding.severity.value] <= _RANK.get(row["severity"], 0):
        return
    conn.execute(
        ALERTS.update()
        .where(ALERTS.c.id == row["id"])
        .values(severity=finding.severity.value, message=finding.message, updated_at=now)
    )
    result.escalated.append(row["id"])


def resolve(conn: Connection, alert_id: int, now: datetime, *, by: str | None, note: str) -> bool:
    """Resolve one alert at `now` in the caller's transaction, with `note` as its resolution; `by`
    is who resolved it by hand, None when it cleared by itself. Returns False when it was already
    resolved or does not exist."""
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
    """The alert row as the JSON object a webhook body carries: its public fields, datetimes as ISO
    8601 strings."""
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


_COUNT_COLUMNS = (
    "raise_since",
    "raise_count",
    "last_raise_at",
    "clear_since",
    "clear_count",
    "last_at",
)


def _counts(conn: Connection, subjects: list[str]) -> dict[tuple[str, str], Counts]:
    out: dict[tuple[str, str], Counts] = {}
    for chunk in _chunks(sorted(set(subjects))):
        query = select(
            CONDITIONS.c.subject, CONDITIONS.c.kind, *(CONDITIONS.c[c] for c in _COUNT_COLUMNS)
        ).where(CONDITIONS.c.subject.in_(chunk))
        for subject, kind, *values in conn.execute(query):
            out[(subject, kind)] = Counts(*values)
    return out


def _write_counts(
    conn: Connection,
    changed: dict[tuple[str, str], tuple[str, Counts]],
    before: dict[tuple[str, str], Counts],
    now: datetime,
) -> None:
    gone = sorted(key for key, (_, counts) in changed.items() if counts.empty and key in before)
    kept = [
        {
            "subject": subject,
            "kind": kind,
            "site_code": site,
            **{c: getattr(counts, c) for c in _COUNT_COLUMNS},
            "updated_at": now,
        }
        # In key order: two writers upserting the same rows take their locks in one order.
        for (subject, kind), (site, counts) in sorted(changed.items())
        if not counts.empty
    ]
    for start in range(0, len(gone), IN_CHUNK):
        chunk = gone[start : start + IN_CHUNK]
        conn.execute(
            delete(CONDITIONS).where(tuple_(CONDITIONS.c.subject, CONDITIONS.c.kind).in_(chunk))
        )
    if kept:
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = dialect_insert(CONDITIONS)
        columns = [*_COUNT_COLUMNS, "site_code", "updated_at"]
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["subject", "kind"],
                set_={c: stmt.excluded[c] for c in columns},
            ),
            kept,
        )


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), IN_CHUNK):
        yield items[start : start + IN_CHUNK]
