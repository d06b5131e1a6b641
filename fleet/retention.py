"""How long each table that grows with traffic keeps its rows: by age, and by count.

Dead letters, the audit log, agents' events and acks, the ingested-message ledger, sent
webhook deliveries and resolved alerts all grow with what the field sends, hostile traffic
included. Each has a `Retention`: rows older than `max_age` go, and beyond the newest
`max_rows` the oldest go too, so a flood of bad input costs bounded disk whatever its rate.
Raw samples are not here: they go once rolled up (fleet/reports/rollup.py), since reports
need them until then.

`apply_retention` is the hourly job. It deletes in chunks (one short transaction each, so
ingest is never held up behind it), and one table's failure is logged and counted without
stopping the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import ColumnElement, Engine, delete, select, text
from sqlmodel import SQLModel

log = logging.getLogger(__name__)

CHUNK = 5000
PURGED = Counter("fleet_retention_deleted_total", "Rows deleted by retention", ["table"])
FAILED = Counter("fleet_retention_failures_total", "Retention runs that failed", ["table"])


@dataclass(frozen=True)
class Retention:
    """One table's retention.

    `ts_column` orders and ages rows; `only` (SQL) limits the rule to rows done with (a
    resolved alert, a delivery sent or given up); `children` are (table, foreign-key column)
    whose rows referring to a deleted row go first.
    """

    table: str
    ts_column: str
    max_age: timedelta
    max_rows: int
    only: str | None = None
    key: str = "id"
    children: tuple[tuple[str, str], ...] = ()


def apply_retention(engine: Engine, rules: Sequence[Retention], now: datetime) -> None:
    """The scheduled job: `purge_table` for each rule; a failing table is logged and counted."""
    for rule in rules:
        try:
            purge_table(engine, rule, now)
        except Exception:
            FAILED.labels(rule.table).inc()
            log.exception("retention of %s failed; the other tables go on", rule.table)


def purge_table(engine: Engine, rule: Retention, now: datetime) -> int:
    """Delete `rule.table`'s rows older than `rule.max_age` at `now`, then those past the
    newest `rule.max_rows`; returns how many rows were deleted."""
    table = SQLModel.metadata.tables[rule.table]
    ts = table.c[rule.ts_column]
    key = table.c[rule.key]
    only: list[ColumnElement[bool]] = [text(rule.only)] if rule.only else []  # type: ignore[list-item]
    cutoff = now - rule.max_age
    with engine.connect() as conn:
        # The newest row past the count limit: it and everything older go as well.
        nth = conn.execute(
            select(ts).where(*only).order_by(ts.desc()).offset(rule.max_rows).limit(1)
        ).scalar()
    old = [*only, ts <= nth] if nth is not None and nth >= cutoff else [*only, ts < cutoff]
    deleted = 0
    while True:
        with engine.begin() as conn:
            keys = list(conn.execute(select(key).where(*old).limit(CHUNK)).scalars())
            if not keys:
                break
            for child, column in rule.children:
                child_table = SQLModel.metadata.tables[child]
                conn.execute(delete(child_table).where(child_table.c[column].in_(keys)))
            deleted += conn.execute(delete(table).where(key.in_(keys))).rowcount
        if len(keys) < CHUNK:
            break
    if deleted:
        PURGED.labels(rule.table).inc(deleted)
        log.info("retention: deleted %d rows of %s", deleted, rule.table)
    return deleted
