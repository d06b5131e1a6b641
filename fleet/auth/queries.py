"""Read-side questions about the audit log: its entries, filtered, newest first, in pages.
The log is ops' business only (`audit:read`), so there is no narrower scope to apply."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from fleet.auth.models import AuditEntry
from fleet.paging import Order, Page, SortKey

# Newest first; entries written between two pages sort before the cursor.
ORDER = Order(
    "audit",
    SortKey(col(AuditEntry.at), "datetime", descending=True),
    SortKey(col(AuditEntry.id), "int", descending=True),
)


def find_audit_entries(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    after: str | None = None,
) -> Page[AuditEntry]:
    """The entries that match every filter given (`since`: at or after, timezone-aware),
    newest first: one page of up to `limit` after the cursor `after`, with how many match in
    all. Raises fleet.paging.BadCursor."""
    conditions: list[ColumnElement[bool]] = []
    if actor is not None:
        conditions.append(col(AuditEntry.actor) == actor)
    if action is not None:
        conditions.append(col(AuditEntry.action) == action)
    if outcome is not None:
        conditions.append(col(AuditEntry.outcome) == outcome)
    if since is not None:
        conditions.append(col(AuditEntry.at) >= since)
    total = session.exec(select(func.count()).select_from(AuditEntry).where(*conditions)).one()
    query = select(AuditEntry).where(*conditions)
    if after is not None:
        query = query.where(ORDER.after(after))
    rows = session.exec(query.order_by(*ORDER.order_by()).limit(limit + 1)).all()
    return ORDER.page(rows, limit, lambda e: (e.at, e.id), total)
