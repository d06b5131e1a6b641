"""Alerts: filtered lists (history included), one alert, acknowledge and resolve by hand."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from fleet.alerts import actions, queries
from fleet.alerts.actions import AlertAlreadyResolved
from fleet.alerts.models import AlertKind, AlertState, Severity
from fleet.alerts.queries import AlertNotFound
from fleet.alerts.schemas import AckIn, AlertOut, AlertPage, ResolveIn
from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.paging import cursor_refused, link_next, refuse_offset
from fleet.api.params import (
    After,
    DeviceFilter,
    RowIdPath,
    SiteFilter,
    limit_query,
    since_query,
)
from fleet.auth.permissions import Allow, Caller
from fleet.paging import BadCursor
from fleet.protocol.messages import utcnow
from fleet.time_window import Instant

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

MAX_PAGE = 1000


@router.get("", response_model=AlertPage, dependencies=[Depends(refuse_offset)])
def list_alerts(
    request: Request,
    response: Response,
    session: SessionDep,
    state: AlertState | None = None,
    kind: AlertKind | None = None,
    site: SiteFilter = None,
    device: DeviceFilter = None,
    severity: Severity | None = None,
    since: Annotated[Instant | None, since_query("opened at or after")] = None,
    limit: Annotated[int, limit_query(MAX_PAGE)] = 100,
    after: After = None,
    caller: Annotated[Caller | None, Allow("alerts:read")] = None,
) -> AlertPage:
    """Newest first, a page at a time: the next page is `after=` this page's `next`."""
    try:
        page = queries.find_alerts(
            session,
            caller,
            states=[state] if state is not None else [],
            kind=kind,
            site=site,
            device=device,
            severity=severity,
            since=since,
            limit=limit,
            after=after,
        )
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    return page


@router.get("/{alert_id}", response_model=AlertOut, dependencies=[Allow("alerts:read")])
def get_alert(alert_id: RowIdPath, session: SessionDep) -> AlertOut:
    try:
        return queries.get_alert(session, alert_id)
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/{alert_id}/ack", response_model=AlertOut)
def acknowledge(
    alert_id: RowIdPath,
    body: AckIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("alerts:write")],
) -> AlertOut:
    """Acknowledge an open alert; it is recorded as the authenticated caller's."""
    body = body.model_copy(update={"by": caller.name})
    try:
        return actions.acknowledge(session, alert_id, body, utcnow())
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except AlertAlreadyResolved as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/{alert_id}/resolve", response_model=AlertOut)
def resolve_by_hand(
    alert_id: RowIdPath,
    body: ResolveIn,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("alerts:write")],
) -> AlertOut:
    """Resolve an alert by hand; it is recorded as the authenticated caller's."""
    body = body.model_copy(update={"by": caller.name})
    notify = bool(settings.webhook_url)
    try:
        return actions.resolve_by_hand(session, alert_id, body, utcnow(), notify=notify)
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except AlertAlreadyResolved as exc:
        raise HTTPException(409, str(exc)) from None
