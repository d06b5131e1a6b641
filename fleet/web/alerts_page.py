"""The alerts page (filter, acknowledge) and the alert counts other pages show.

Acknowledging goes through the API's own handler, so the page and `POST
/api/v1/alerts/{id}/ack` cannot disagree about what an acknowledgement is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.alerts.models import Alert, AlertKind, AlertState, Severity
from fleet.api.deps import SessionDep
from fleet.api.routes.alerts import AckIn, acknowledge, list_alerts
from fleet.auth.permissions import Allow
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


def open_alerts_by_site(session: Session) -> dict[str, OpenAlerts]:
    query = (
        select(Alert.site_code, Alert.severity, func.count())
        .where(Alert.state == AlertState.open.value)
        .group_by(col(Alert.site_code), col(Alert.severity))
    )
    counts: dict[str, OpenAlerts] = {}
    for site, severity, count in session.exec(query):
        before = counts.get(site, OpenAlerts())
        critical = count if severity == Severity.critical.value else 0
        counts[site] = OpenAlerts(before.total + count, before.critical + critical)
    return counts


def recent_alerts_of_device(session: Session, device_id: str, limit: int = 20) -> list[Alert]:
    query = (
        select(Alert)
        .where(Alert.device_id == device_id)
        .order_by(col(Alert.opened_at).desc())
        .limit(limit)
    )
    return list(session.exec(query))


@router.get("/alerts", response_class=HTMLResponse, dependencies=[Allow("fleet:read")])
def alerts_page(
    request: Request,
    session: SessionDep,
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
    if state == ACTIVE:
        items = [
            a
            for s in (AlertState.open, AlertState.acknowledged)
            for a in list_alerts(
                session,
                state=s,
                kind=chosen_kind,
                site=site or None,
                severity=chosen_severity,
                limit=PAGE_SIZE,
            ).items
        ]
        items.sort(key=lambda a: (a.state != AlertState.open.value, -a.opened_at.timestamp()))
    else:
        items = list_alerts(
            session,
            state=AlertState(state),
            kind=chosen_kind,
            site=site or None,
            severity=chosen_severity,
            limit=PAGE_SIZE,
        ).items
    filters = {"state": state, "severity": severity, "kind": kind, "site": site}
    query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
    sites = session.exec(select(Alert.site_code).distinct().order_by(col(Alert.site_code))).all()
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
        sites=list(sites),
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
