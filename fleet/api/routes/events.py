"""A site's agent events, newest first: discovery results, update progress, agent errors,
outbox drops. Kept as received (the `agent_message` table)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response

from fleet.api.deps import SessionDep
from fleet.api.paging import cursor_refused, link_next
from fleet.api.params import After, SiteCodePath, limit_query
from fleet.auth.permissions import Allow
from fleet.paging import BadCursor
from fleet.protocol.messages import EventKind
from fleet.sites.queries import SiteNotFound, site_events
from fleet.sites.schemas import EventOut

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


@router.get("/{code}/events", response_model=list[EventOut], dependencies=[Allow("sites:read")])
def list_site_events(
    code: SiteCodePath,
    request: Request,
    response: Response,
    session: SessionDep,
    kind: EventKind | None = None,
    limit: Annotated[int, limit_query(500)] = 50,
    after: After = None,
) -> list[EventOut]:
    """`?kind=discovery` gives what `fleet-agent discover --publish` found at the site. Newest
    first; the next page's URL is in the Link header (rel="next")."""
    try:
        page = site_events(session, code, kind=kind, limit=limit, after=after)
    except SiteNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    return page.items
