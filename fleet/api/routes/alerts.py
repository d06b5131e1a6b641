"""Alerts: filtered lists (history included), one alert, acknowledge and resolve by hand."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from fleet.alerts.models import Alert, AlertKind, AlertState, Severity
from fleet.alerts.reconcile import enqueue, resolve
from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.schemas import Out
from fleet.auth.permissions import Allow, Caller
from fleet.models import Device
from fleet.protocol.messages import utcnow

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])

MAX_PAGE = 1000


class AlertOut(Out):
    id: int
    kind: str
    severity: str
    state: str
    site_code: str
    device_id: str | None
    message: str
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_note: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]  # newest first
    total: int
    limit: int
    offset: int


class AckIn(BaseModel):
    by: str = Field(min_length=1, max_length=200)
    note: str = Field(default="", max_length=2000)


class ResolveIn(BaseModel):
    by: str = Field(min_length=1, max_length=200)
    note: str = Field(default="resolved by hand", max_length=2000)


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
    conditions: list[ColumnElement[bool]] = []
    if caller is not None and caller.sites is not None:
        conditions.append(col(Alert.site_code).in_(sorted(caller.sites)))
    if caller is not None and caller.vendor is not None:
        # A vendor's own devices only: never a site's alerts, nor another make's.
        own = select(Device.id).where(func.lower(col(Device.vendor)) == caller.vendor.lower())
        conditions.append(col(Alert.device_id).in_(own))
    if state is not None:
        conditions.append(col(Alert.state) == state.value)
    if kind is not None:
        conditions.append(col(Alert.kind) == kind.value)
    if site is not None:
        conditions.append(col(Alert.site_code) == site)
    if device is not None:
        conditions.append(col(Alert.device_id) == device)
    if severity is not None:
        conditions.append(col(Alert.severity) == severity.value)
    if since is not None:
        conditions.append(col(Alert.opened_at) >= since)
    total = session.exec(select(func.count()).select_from(Alert).where(*conditions)).one()
    rows = session.exec(
        select(Alert)
        .where(*conditions)
        .order_by(col(Alert.opened_at).desc(), col(Alert.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return AlertPage(
        items=[AlertOut.model_validate(a) for a in rows], total=total, limit=limit, offset=offset
    )


@router.get("/{alert_id}", response_model=AlertOut, dependencies=[Allow("alerts:read")])
def get_alert(alert_id: int, session: SessionDep) -> AlertOut:
    return AlertOut.model_validate(_alert_or_404(session, alert_id))


@router.post("/{alert_id}/ack", response_model=AlertOut, dependencies=[Allow("alerts:write")])
def acknowledge(alert_id: int, body: AckIn, session: SessionDep) -> AlertOut:
    alert = _alert_or_404(session, alert_id)
    if alert.state == AlertState.resolved:
        raise HTTPException(
            409,
            f"alert {alert_id} is already resolved ({alert.resolution}): nothing to acknowledge",
        )
    now = utcnow()
    alert.state = AlertState.acknowledged.value
    alert.acknowledged_at = now
    alert.acknowledged_by = body.by
    alert.ack_note = body.note or None
    alert.updated_at = now
    session.add(alert)
    session.commit()
    session.refresh(alert)
    return AlertOut.model_validate(alert)


@router.post("/{alert_id}/resolve", response_model=AlertOut, dependencies=[Allow("alerts:write")])
def resolve_by_hand(
    alert_id: int, body: ResolveIn, session: SessionDep, settings: SettingsDep
) -> AlertOut:
    alert = _alert_or_404(session, alert_id)
    if alert.state == AlertState.resolved:
        raise HTTPException(409, f"alert {alert_id} is already resolved ({alert.resolution})")
    # If the condition is still there, the next evaluation opens a new alert for it.
    conn = session.connection()
    if resolve(conn, alert_id, utcnow(), by=body.by, note=body.note) and settings.webhook_url:
        enqueue(conn, "alert.resolved", alert_id, utcnow())
    session.commit()
    return AlertOut.model_validate(_alert_or_404(session, alert_id))


def _alert_or_404(session: Session, alert_id: int) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}: GET /api/v1/alerts lists them")
    return alert
