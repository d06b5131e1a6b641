"""The audit log, for ops: logins, enrolments, milestone edits, rollout actions, report
downloads and every refused request, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from fleet.api.deps import SessionDep
from fleet.api.paging import cursor_refused, link_next, refuse_offset
from fleet.api.params import After, limit_query, since_query, text_filter
from fleet.auth.permissions import Allow
from fleet.auth.queries import find_audit_entries
from fleet.paging import BadCursor
from fleet.time_window import Instant

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    """One audit log entry, for ops: who (`actor`, `role`) did what (`action`) to what
    (`target`), when (`at`, UTC), with what outcome (`ok`, `denied` or `failed <status>`) and any
    detail."""

    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    """A page of the audit log, for ops, newest first; the next page is `after=` its `next`."""

    items: list[AuditOut]  # newest first
    total: int  # entries that match, at the time of this page
    limit: int
    next: str | None  # the cursor of the next page (`after=`); None on the last


@router.get(
    "",
    response_model=AuditPage,
    dependencies=[Allow("audit:read"), Depends(refuse_offset)],
)
def list_audit(
    request: Request,
    response: Response,
    session: SessionDep,
    actor: Annotated[str | None, text_filter("who: a user name, 'anonymous', 'cli:<user>'")] = None,
    action: Annotated[
        str | None, text_filter("what: 'login', 'enrol', 'rollouts.start', ...")
    ] = None,
    outcome: Annotated[str | None, text_filter("'ok', 'denied' or 'failed <status>'")] = None,
    since: Annotated[Instant | None, since_query("at or after")] = None,
    limit: Annotated[int, limit_query(1000)] = 100,
    after: After = None,
) -> AuditPage:
    """Newest first, a page at a time: the next page is `after=` this page's `next`."""
    try:
        page = find_audit_entries(
            session,
            actor=actor,
            action=action,
            outcome=outcome,
            since=since,
            limit=limit,
            after=after,
        )
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    return AuditPage(
        items=[AuditOut.model_validate(r, from_attributes=True) for r in page.items],
        total=page.total or 0,
        limit=limit,
        next=page.next,
    )
