"""The alerts page: filter, acknowledge, and older alerts a page at a time.

The list and the acknowledgement are the alerts domain's own (`fleet.alerts.queries`,
`fleet.alerts.actions`), the same the API calls, so the page and `GET /api/v1/alerts` or
`POST /api/v1/alerts/{id}/ack` cannot disagree; the caller's scope is applied there. Pages
follow the list's cursor, as the API's do, so alerts that open while someone reads the
history neither repeat a row on the next page nor push one off it.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlmodel import select

from fleet.alerts.actions import AlertAlreadyResolved, acknowledge
from fleet.alerts.models import AlertKind, AlertState, Severity
from fleet.alerts.queries import AlertNotFound, find_alerts, get_alert, sites_with_alerts
from fleet.alerts.schemas import AckIn, AlertPage
from fleet.alerts.silences import silenced_now
from fleet.api.deps import SessionDep
from fleet.api.params import RowIdPath
from fleet.auth.permissions import Allow, Caller
from fleet.models import Site
from fleet.paging import MAX_CURSOR_CHARS, BadCursor
from fleet.protocol.messages import CONTROL_RE, SITE_CODE_PATTERN, utcnow
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

ACTIVE = "active"  # open or acknowledged: what ops still has to deal with
PAGE_SIZE = 200


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("dashboard:read")],
    viewer: ViewerDep,
    state: Annotated[str, Query(max_length=32)] = ACTIVE,
    severity: Annotated[str, Query(max_length=32)] = "",
    kind: Annotated[str, Query(max_length=64)] = "",
    site: Annotated[str, Query(max_length=64)] = "",
    after: Annotated[str, Query(max_length=MAX_CURSOR_CHARS)] = "",
    partial: bool = False,
) -> HTMLResponse:
    # Unknown filter values are dropped rather than refused: they come from a URL people edit.
    chosen_severity = Severity(severity) if severity in Severity.__members__ else None
    chosen_kind = AlertKind(kind) if kind in AlertKind.__members__ else None
    site = site if re.fullmatch(SITE_CODE_PATTERN, site) else ""
    states = [s.value for s in AlertState] + [ACTIVE]
    state = state if state in states else ACTIVE
    wanted = [AlertState.open, AlertState.acknowledged] if state == ACTIVE else [AlertState(state)]
    filters = {"state": state, "severity": severity, "kind": kind, "site": site}
    chosen = {k: v for k, v in filters.items() if v}

    def page(cursor: str | None) -> AlertPage:
        return find_alerts(
            session,
            caller,
            states=wanted,
            kind=chosen_kind,
            site=site or None,
            severity=chosen_severity,
            limit=PAGE_SIZE,
            after=cursor,
        )

    try:
        found = page(after or None)
    except BadCursor:
        # A cursor from an edited or stale URL: the first page, rather than an error page.
        found, after = page(None), ""
    items = found.items
    if state == ACTIVE:
        # Within the page, what nobody has acknowledged yet comes first.
        items.sort(key=lambda a: (a.state != AlertState.open.value, -a.opened_at.timestamp()))
    return render(
        request,
        "_alerts.html" if partial else "alerts.html",
        viewer=viewer,
        alerts=items,
        total=found.total,
        first_page=not after,
        filters=filters,
        query=urlencode(chosen),
        # What the live refresh reloads: this very page, its cursor included.
        refresh=urlencode({**chosen, "after": after} if after else chosen),
        older=f"/alerts?{urlencode({**chosen, 'after': found.next})}" if found.next else "",
        states=states,
        severities=[s.value for s in Severity],
        kinds=[k.value for k in AlertKind],
        sites=sites_with_alerts(session, caller),
        # Each alert's times in its own site's zone.
        site_zones=dict(session.exec(select(Site.code, Site.timezone)).all()),
        silenced=silenced_now(
            session.connection(), [(a.id, a.site_code, a.device_id) for a in items], utcnow()
        ),
    )


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
def alert_page(
    request: Request,
    alert_id: RowIdPath,
    session: SessionDep,
    # The permission also checks the alert is the caller's to see (another site's: not found).
    caller: Annotated[Caller, Allow("dashboard:read")],
    viewer: ViewerDep,
) -> HTMLResponse:
    """One alert and who did what to it, when: acknowledged, resolved, silenced, escalated.
    The page the e-mail notifications link to."""
    try:
        alert = get_alert(session, alert_id)
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    site = session.get(Site, alert.site_code)
    muted = silenced_now(
        session.connection(), [(alert.id, alert.site_code, alert.device_id)], utcnow()
    )
    return render(
        request,
        "alert.html",
        viewer=viewer,
        alert=alert,
        zone=site.timezone if site is not None else None,
        silence=muted.get(alert.id),
        back=f"/alerts/{alert.id}",
    )


@router.post("/alerts/{alert_id}/ack", dependencies=[Allow("alerts:write")])
def acknowledge_alert(
    alert_id: RowIdPath,
    session: SessionDep,
    viewer: ViewerDep,
    note: Annotated[str, Form(max_length=2000)] = "",
    back: Annotated[str, Form(max_length=2000)] = "/alerts",
) -> RedirectResponse:
    try:
        # A form's text may hold what a note may not (a pasted control character): dropped.
        acknowledge(
            session, alert_id, AckIn(by=viewer.name, note=CONTROL_RE.sub("", note)), utcnow()
        )
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    except AlertAlreadyResolved:
        pass  # the list shows that it is resolved
    # Only back to one of our own pages: a form field must not redirect anywhere else.
    target = back if back.startswith("/") and not back.startswith("//") else "/alerts"
    return RedirectResponse(target, status_code=303)
