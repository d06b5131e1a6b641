"""The alerts page: filter, acknowledge.

The list and the acknowledgement are the alerts domain's own (`fleet.alerts.queries`,
`fleet.alerts.actions`), the same the API calls, so the page and `GET /api/v1/alerts` or
`POST /api/v1/alerts/{id}/ack` cannot disagree; the caller's scope is applied there.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlmodel import Session

from fleet.alerts.actions import AlertAlreadyResolved, acknowledge
from fleet.alerts.models import AlertKind, AlertState, Severity
from fleet.alerts.queries import AlertNotFound, find_alerts, sites_with_alerts
from fleet.alerts.schemas import AckIn, AlertOut
from fleet.api.deps import SessionDep
from fleet.auth.permissions import Allow, Caller
from fleet.protocol.messages import utcnow
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

ACTIVE = "active"  # open or acknowledged: what ops still has to deal with
PAGE_SIZE = 200


def _scoped_alerts(
    session: Session,
    caller: Caller,
    state: AlertState,
    kind: AlertKind | None,
    site: str | None,
    severity: Severity | None,
) -> list[AlertOut]:
    return find_alerts(
        session, caller, state=state, kind=kind, site=site, severity=severity, limit=PAGE_SIZE
    ).items


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
        sites=sites_with_alerts(session, caller),
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
        acknowledge(session, alert_id, AckIn(by=viewer.name, note=note), utcnow())
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    except AlertAlreadyResolved:
        pass  # the list shows that it is resolved
    # Only back to one of our own pages: a form field must not redirect anywhere else.
    target = back if back.startswith("/") and not back.startswith("//") else "/alerts"
    return RedirectResponse(target, status_code=303)
