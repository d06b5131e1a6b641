"""Alerts: filtered lists (history included), one alert, acknowledge and resolve by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from fleet.alerts import actions, queries
from fleet.alerts.actions import AlertAlreadyResolved
from fleet.alerts.models import AlertKind, AlertState, Severity
from fleet.alerts.queries import AlertNotFound
from fleet.alerts.schemas import AckIn, AlertOut, AlertPage, ResolveIn
from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.permissions import Allow, Caller
from fleet.protocol.messages import utcnow

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

MAX_PAGE = 1000


@router.get("", response_model=AlertPage)
def list_alerts(
    session: SessionDep,
    state: AlertState | None = None,
    kind: AlertKind | None = None,
    site: str | None = None,
    device: str | None = None,
    severity: Severity | None = None,
    since: Annotated[
        datetime | None, Query(description="opened at or after; ISO 8601 with offset")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    caller: Annotated[Caller | None, Allow("alerts:read")] = None,
) -> AlertPage:
    if since is not None and since.tzinfo is None:
        raise HTTPException(
            422, "'since' has no timezone: write it as ISO 8601 with 'Z' or '+05:45'"
        )
    return queries.find_alerts(
        session,
        caller,
        state=state,
        kind=kind,
        site=site,
        device=device,
        severity=severity,
        since=since,
        limit=limit,
        offset=offset,
    )


@router.get("/{alert_id}", response_model=AlertOut, dependencies=[Allow("alerts:read")])
def get_alert(alert_id: int, session: SessionDep) -> AlertOut:
    try:
        return queries.get_alert(session, alert_id)
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/{alert_id}/ack", response_model=AlertOut, dependencies=[Allow("alerts:write")])
def acknowledge(alert_id: int, body: AckIn, session: SessionDep) -> AlertOut:
    try:
        return actions.acknowledge(session, alert_id, body, utcnow())
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except AlertAlreadyResolved as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/{alert_id}/resolve", response_model=AlertOut, dependencies=[Allow("alerts:write")])
def resolve_by_hand(
    alert_id: int, body: ResolveIn, session: SessionDep, settings: SettingsDep
) -> AlertOut:
    notify = bool(settings.webhook_url)
    try:
        return actions.resolve_by_hand(session, alert_id, body, utcnow(), notify=notify)
    except AlertNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except AlertAlreadyResolved as exc:
        raise HTTPException(409, str(exc)) from None
