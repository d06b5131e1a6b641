"""A site's agent events, newest first: discovery results, update progress, agent errors,
outbox drops. Kept as received (the `agent_message` table)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from sqlmodel import col, select

from fleet.api.deps import SessionDep
from fleet.api.schemas import Out
from fleet.auth.permissions import Allow
from fleet.models import AgentMessage, Site
from fleet.protocol.messages import EventKind

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


class EventOut(Out):
    id: int
    kind: str
    agent_id: str
    ts: datetime
    received_at: datetime
    device: str | None
    message: str
    data: dict[str, Any]


@router.get("/{code}/events", response_model=list[EventOut], dependencies=[Allow("sites:read")])
def site_events(
    code: str,
    session: SessionDep,
    kind: EventKind | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[EventOut]:
    """`?kind=discovery` gives what `fleet-agent discover --publish` found at the site."""
    if session.get(Site, code) is None:
        raise HTTPException(404, f"no site {code!r}: GET /api/v1/sites lists the known codes")
    query = (
        select(AgentMessage)
        .where(AgentMessage.site_code == code, AgentMessage.kind == "event")
        .order_by(col(AgentMessage.id).desc())
    )
    out: list[EventOut] = []
    # The kind lives in the stored body: filtered here, reading newest first in pages.
    offset, page = 0, max(limit, 100)
    while len(out) < limit:
        rows = session.exec(query.offset(offset).limit(page)).all()
        for row in rows:
            body = row.body
            if kind is not None and body.get("kind") != kind.value:
                continue
            out.append(
                EventOut(
                    id=row.id or 0,
                    kind=str(body.get("kind", "")),
                    agent_id=str(body.get("agent_id", "")),
                    ts=row.ts,
                    received_at=row.received_at,
                    device=body.get("device"),
                    message=str(body.get("message", "")),
                    data=body.get("data") or {},
                )
            )
            if len(out) == limit:
                break
        if len(rows) < page:
            break
        offset += page
    return out
