"""The alerts page: filter, acknowledge, and older alerts a page at a time; one alert's page,
acknowledged with a note or resolved from there.

The list and the acknowledgement are the alerts domain's own (`fleet.alerts.queries`,
`fleet.alerts.actions`), the same the API calls, so the page and `GET /api/v1/alerts` or
`POST /api/v1/alerts/{id}/ack` (or `/resolve`) cannot disagree; the caller's scope is
applied there. Pages follow the list's cursor, as the API's do, so alerts that open while
someone reads the history neither repeat a row on the next page nor push one off it.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, select

from fleet.alerts.actions import AlertAlreadyResolved, acknowledge, resolve_by_hand
from fleet.alerts.models import AlertKind, AlertState, Severity
from fleet.alerts.queries import AlertNotFound, find_alerts, get_alert, sites_with_alerts
from fleet.alerts.schemas import AckIn, AlertPage, ResolveIn
from fleet.alerts.silences import silenced_now
from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import RowIdPath
from fleet.auth.permissions import Allow, Caller
from fleet.models import Site
from fleet.paging import MAX_CURSOR_CHARS, BadCursor
from fleet.protocol.messages import CONTROL_RE, SITE_CODE_PATTERN, utcnow
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

ACTIVE = "active"  # open or acknowledged: what ops still has to deal with
PAGE_SIZE = 200
# A form's text is taken whole up to this, so that a longer note than the API takes is told
# on the page (422), not cut off or refused as a raw error.
MAX_FORM_TEXT = 1_000_000


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
    return _alert_page(request, session, viewer, alert_id)


def _alert_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    alert_id: int,
    *,
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    try:
        alert = get_alert(session, alert_id)
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    site = session.get(Site, alert.site_code)
    muted = silenced_now(
        session.connection(), [(alert.id, alert.site_code, alert.device_id)], utcnow()
    )
    silence_link = {"site": alert.site_code}
    if alert.device_id:
        silence_link["device"] = alert.device_id
    return render(
        request,
        "alert.html",
        status_code=status_code,
        viewer=viewer,
        alert=alert,
        zone=site.timezone if site is not None else None,
        silence=muted.get(alert.id),
        silence_link=f"/silences?{urlencode(silence_link)}#new",
        back=f"/alerts/{alert.id}",
        problem=problem,
    )


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())


def _back(back: str) -> str:
    # Only back to one of our own pages: a form field must not redirect anywhere else.
    ok = back.startswith("/") and not back.startswith(("//", "/\\")) and back.isprintable()
    return back if ok else "/alerts"


# The route names are the API's, so that the audit entry (fleet.auth.permissions names it
# after the route) reads the same from the page as from the API.
@router.post("/alerts/{alert_id}/ack", name="acknowledge")
def acknowledge_alert(
    request: Request,
    alert_id: RowIdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("alerts:write")],
    viewer: ViewerDep,
    note: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    back: Annotated[str, Form(max_length=2000)] = "/alerts",
) -> Response:
    """What `POST /api/v1/alerts/{id}/ack` does, as the signed-in caller, with the form's
    note; a note the API would refuse is said on the alert's page (422), nothing changed."""
    try:
        # A form's text may hold what a note may not (a pasted control character): dropped.
        body = AckIn(by=caller.name, note=CONTROL_RE.sub("", note))
    except ValidationError as exc:
        request.state.audit_outcome = "failed 422"
        return _alert_page(
            request, session, viewer, alert_id, problem=_reasons(exc), status_code=422
        )
    try:
        acknowledge(session, alert_id, body, utcnow())
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    except AlertAlreadyResolved:
        pass  # the page shows that it is resolved
    return RedirectResponse(_back(back), status_code=303)


@router.post("/alerts/{alert_id}/resolve", name="resolve_by_hand")
def resolve_alert(
    request: Request,
    alert_id: RowIdPath,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("alerts:write")],
    viewer: ViewerDep,
    resolution: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
) -> Response:
    """What `POST /api/v1/alerts/{id}/resolve` does, as the signed-in caller, with the form's
    resolution (the API's default when empty); refused text is said on the page (422)."""
    text = CONTROL_RE.sub("", resolution).strip()
    try:
        body = ResolveIn(by=caller.name, **({"note": text} if text else {}))
    except ValidationError as exc:
        request.state.audit_outcome = "failed 422"
        return _alert_page(
            request, session, viewer, alert_id, problem=_reasons(exc), status_code=422
        )
    try:
        resolve_by_hand(session, alert_id, body, utcnow(), notify=bool(settings.webhook_url))
    except AlertNotFound:
        raise PageNotFound(f"There is no alert {alert_id}.") from None
    except AlertAlreadyResolved:
        pass  # the page shows who resolved it
    return RedirectResponse(f"/alerts/{alert_id}", status_code=303)
