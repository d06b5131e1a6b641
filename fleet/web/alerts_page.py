"""The alerts page (filter, acknowledge) and the alert counts other pages show.

Acknowledging goes through the API's own handler, so the page and `POST
/api/v1/alerts/{id}/ack` cannot disagree about what an acknowledgement is. Ops see every alert,
a technician those of their sites, a vendor only those about its own devices: the API's own
list, with its scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from fleet.alerts.models import Alert, AlertKind, AlertState, Severity
from fleet.api.deps import SessionDep
from fleet.api.routes.alerts import AckIn, AlertOut, acknowledge, list_alerts
from fleet.auth.permissions import Allow, Caller
from fleet.models import Device
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

ACTIVE = "active"  # open or acknowledged: what ops still has to deal with
PAGE_SIZE = 200


@dataclass(frozen=True)
class OpenAlerts:
    """Alerts nobody has acknowledged yet, at one site."""

    total: int = 0
    critical: int = 0


def open_alerts_by_site(session: Session, vendor: str | None = None) -> dict[str, OpenAlerts]:
    """Per site; with `vendor`, only the alerts about that vendor's devices."""
    query = (
        select(Alert.site_code, Alert.severity, func.count())
        .where(Alert.state == AlertState.open.value)
        .group_by(col(Alert.site_code), col(Alert.severity))
    )
    if vendor is not None:
        query = query.where(col(Alert.device_id).in_(_devices_of(vendor)))
    counts: dict[str, OpenAlerts] = {}
    for site, severity, count in session.exec(query):
        before = counts.get(site, OpenAlerts())
        critical = count if severity == Severity.critical.value else 0
        counts[site] = OpenAlerts(before.total + count, before.critical + critical)
    return counts


def _devices_of(vendor: str) -> SelectOfScalar[str]:
    return select(Device.id).where(func.lower(col(Device.vendor)) == vendor.lower())


def _scoped_alerts(
    session: Session,
    caller: Caller,
    state: AlertState,
    kind: AlertKind | None,
    site: str | None,
    severity: Severity | None,
) -> list[AlertOut]:
    return list_alerts(
        session,
        state=state,
        kind=kind,
        site=site,
        severity=severity,
        limit=PAGE_SIZE,
        caller=caller,
    ).items


def _alert_sites(session: Session, caller: Caller) -> list[str]:
    query = select(Alert.site_code).distinct().order_by(col(Alert.site_code))
    if caller.sites is not None:
        query = query.where(col(Alert.site_code).in_(sorted(caller.sites)))
    if caller.vendor is not None:
        query = query.where(col(Alert.device_id).in_(_devices_of(caller.vendor)))
    return list(session.exec(query))


def recent_alerts_of_device(session: Session, device_id: str, limit: int = 20) -> list[Alert]:
    query = (
        select(Alert)
        .where(Alert.device_id == device_id)
        .order_by(col(Alert.opened_at).desc())
        .limit(limit)
    )
    return list(session.exec(query))


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("dashboard:read")],
    viewer: ViewerDep,
    state: str = ACTIVE,
    severity: str = "",
    kind: str = "",
    site: str = "",
    partial: bool = False,
) -> HTMLResponse:
    # Unknown filter values are dropped rather than refused: they come from a URL people edit.
    chosen_severity = Severity(severity) if severity in Severity.__members__ else None
    chosen_kind = AlertKind(kind) if kind in AlertKind.__members__ else None
    states = [s.value for s in AlertState] + [ACTIVE]
    state = state if state in states else ACTIVE
    wanted = [AlertState.open, AlertState.acknowledged] if state == ACTIVE else [AlertState(state)]
    items = [
        a
        for s in wanted
        for a in _scoped_alerts(session, caller, s, chosen_kind, site or None, chosen_severity)
    ]
    if state == ACTIVE:
        items.sort(key=lambda a: (a.state != AlertState.open.value, -a.opened_at.timestamp()))
    filters = {"state": state, "severity": severity, "kind": kind, "site": site}
    query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
    return render(
        request,
        "_alerts.html" if partial else "alerts.html",
        viewer=viewer,
        alerts=items,
        filters=filters,
        query=query,
        states=states,
        severities=[s.value for s in Severity],
        kinds=[k.value for k in AlertKind],
        sites=_alert_sites(session, caller),
    )


@router.post("/alerts/{alert_id}/ack", dependencies=[Allow("alerts:write")])
def acknowledge_alert(
    alert_id: int,
    session: SessionDep,
    viewer: ViewerDep,
    note: Annotated[str, Form(max_length=2000)] = "",
    back: Annotated[str, Form()] = "/alerts",
) -> RedirectResponse:
    try:
        acknowledge(alert_id, AckIn(by=viewer.name, note=note), session)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise PageNotFound(f"There is no alert {alert_id}.") from None
        if exc.status_code != 409:  # 409: already resolved; the list shows that
            raise
    # Only back to one of our own pages: a form field must not redirect anywhere else.
    target = back if back.startswith("/") and not back.startswith("//") else "/alerts"
    return RedirectResponse(target, status_code=303)
