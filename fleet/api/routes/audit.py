"""The audit log, for ops: logins, enrolments, milestone edits, rollout actions, report
downloads and every refused request, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import col, select

from fleet.api.deps import SessionDep
from fleet.auth.models import AuditEntry
from fleet.auth.permissions import Allow

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int


@router.get("", response_model=AuditPage, dependencies=[Allow("audit:read")])
def list_audit(
    session: SessionDep,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    since: Annotated[datetime | None, Query(description="ISO 8601 with offset")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    if since is not None and since.tzinfo is None:
        raise HTTPException(
            422, "'since' has no timezone: write it as ISO 8601 with 'Z' or '+05:45'"
        )
    conditions = []
    if actor is not None:
        conditions.append(col(AuditEntry.actor) == actor)
    if action is not None:
        conditions.append(col(AuditEntry.action) == action)
    if outcome is not None:
        conditions.append(col(AuditEntry.outcome) == outcome)
    if since is not None:
        conditions.append(col(AuditEntry.at) >= since)
    total = session.exec(select(func.count()).select_from(AuditEntry).where(*conditions)).one()
    rows = session.exec(
        select(AuditEntry)
        .where(*conditions)
        .order_by(col(AuditEntry.at).desc(), col(AuditEntry.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return AuditPage(
        items=[AuditOut.model_validate(r, from_attributes=True) for r in rows], total=total
    )
