"""The fleet overview and one site's page. `?partial=1` returns only the part that refreshes.
The site page also shows the site's power schedule and its exception dates, and takes an
exception date added or deleted by ops or the site's technicians (same-origin form posts)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from fleet.alerts.queries import (
    OpenAlerts,
    unacknowledged_alerts_by_device,
    unacknowledged_alerts_by_site,
)
from fleet.alerts.silences import find as find_silences
from fleet.api.deps import SessionDep
from fleet.api.params import SiteCodePath
from fleet.auth.permissions import Allow, Caller
from fleet.commands.power_exceptions import (
    ExceptionIn,
    ExceptionNotFound,
    add_exception,
    remove_exception,
    site_exceptions,
    site_schedule,
)
from fleet.commands.requested import campaign_commands
from fleet.devices.queries import find_devices
from fleet.devices.registry import timetable_from_json
from fleet.models import Device, Site
from fleet.protocol.messages import CONTROL_RE, SITE_CODE_PATTERN, utcnow
from fleet.sites.queries import SiteNotFound, site_detail
from fleet.time_window import Day
from fleet.web.i18n import (
    LANG_COOKIE,
    LANGUAGES,
    SITE_ZONE,
    ZONE_COOKIE,
    language_of,
    translations,
)
from fleet.web.not_found import PageNotFound
from fleet.web.overview import (
    fleet_totals,
    newest_report,
    site_level,
    site_problems,
    site_rows,
)
from fleet.web.templating import render, state_rank
from fleet.web.timetable_chart import local_now, week_chart
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)
VENDOR_DEVICES_SHOWN = 500  # a vendor's devices on its overview; the API pages through more


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("dashboard:read")],
    viewer: ViewerDep,
    partial: bool = False,
) -> HTMLResponse:
    lang = language_of(request)
    rows = site_rows(session, caller, translations(lang))  # the caller's sites, or devices
    # A vendor opens no site page: its own devices are listed here instead, each linked.
    devices = (
        find_devices(session, caller, limit=VENDOR_DEVICES_SHOWN)
        if caller.vendor is not None
        else None
    )
    return render(
        request,
        "_overview.html" if partial else "overview.html",
        lang=lang,
        viewer=viewer,
        rows=rows,
        totals=fleet_totals(rows),
        newest=newest_report(rows),
        problem_sites=sum(1 for r in rows if r.is_problem),
        devices=devices,
        device_alerts=unacknowledged_alerts_by_device(session, caller) if devices else {},
        site_zones={r.site.code: r.site.timezone for r in rows},
    )


@router.get("/sites/{code}", response_class=HTMLResponse)
def site_page(
    code: str,
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("sites:read")],
    viewer: ViewerDep,
    partial: bool = False,
    campaign: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    return site_view(request, session, caller, viewer, code, partial=partial, campaign=campaign)


def site_view(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    code: str,
    *,
    partial: bool = False,
    problem: str = "",
    problem_of: str = "exception",
    status_code: int = 200,
    campaign: str = "",
) -> HTMLResponse:
    """The site page (or its refreshing part). `problem`: why a form's post (`problem_of`:
    exception, schedule, in_use, command) changed nothing, said by that form with
    `status_code` (422); `campaign`: a switch-off sent from the page, whose commands it shows.
    Raises PageNotFound."""
    try:
        if not re.fullmatch(SITE_CODE_PATTERN, code):
            raise SiteNotFound(code)  # no site can have it: not looked up
        detail = site_detail(session, code)  # what `GET /api/v1/sites/{code}` returns
    except SiteNotFound:
        raise PageNotFound(
            f"There is no site {code!r}.", "The overview lists every site."
        ) from None
    open_alerts = unacknowledged_alerts_by_site(session, caller).get(code, OpenAlerts())
    lang = language_of(request)
    readings: dict[str, dict[str, Any]] = {
        device_id: dict(reading or {})
        for device_id, reading in session.exec(
            select(Device.id, Device.last_reading).where(
                Device.site_code == code, col(Device.retired_at).is_(None)
            )
        )
    }
    rooms = []
    for room in detail.rooms:
        devices = sorted(room.devices, key=lambda d: (state_rank(d.state), d.id))
        worst: dict[str, int] = defaultdict(int)
        for device in devices:
            worst[device.state] += 1
        rooms.append({"room": room, "devices": devices, "counts": dict(worst)})
    tz = ZoneInfo(detail.timezone)
    timetable = timetable_from_json(detail.timetable)
    now = utcnow()
    return render(
        request,
        "_site.html" if partial else "site.html",
        lang=lang,
        viewer=viewer,
        site=detail,
        zone=tz,
        level=site_level(detail, open_alerts),
        rooms=rooms,
        readings=readings,
        problems=site_problems(detail, open_alerts, translations(lang)),
        open_alerts=open_alerts,
        device_alerts=unacknowledged_alerts_by_device(session, caller, code),
        local=local_now(timetable, tz, now),
        week=week_chart(timetable, tz, now),
        now=now,
        power=_power_schedule(session, code) if not partial else None,
        # The silences in force here: its alerts notify no one meanwhile.
        silences=find_silences(session, frozenset({code}), current_at=now, limit=50),
        problem=problem,
        problem_of=problem_of,
        status_code=status_code,
        campaign=campaign,
        # Only a campaign of the page's own shape: its rows are the site's own all the same.
        sent=campaign_commands(session, code, campaign)
        if viewer.may("devices:command") and re.fullmatch(r"power-[0-9]{1,19}", campaign)
        else None,
    )


def _power_schedule(session: Session, code: str) -> dict[str, Any]:
    """The site's power schedule as `GET /api/v1/sites/{code}/power-schedule` gives it, with
    each exception date's note and who added it."""
    return {"schedule": site_schedule(session, code), "exceptions": site_exceptions(session, code)}


@router.post("/sites/{code}/power-exceptions")
def add_exception_from_page(
    code: SiteCodePath,
    request: Request,
    session: SessionDep,
    # The same permission and site scope as the API's route: ops, a technician of this site.
    caller: Annotated[Caller, Allow("devices:command")],
    viewer: ViewerDep,
    day: Annotated[str, Form(max_length=100)] = "",
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The site page's form: what `POST /api/v1/sites/{code}/power-exceptions` does, audited
    alike; a date or note the API would refuse is said on the page (422)."""
    if session.get(Site, code) is None:
        raise PageNotFound(f"There is no site {code!r}.", "The overview lists every site.")
    try:
        # A form's text may hold what a note may not (a pasted control character): dropped.
        body = ExceptionIn.model_validate({"day": day, "note": CONTROL_RE.sub("", note)})
    except ValidationError as exc:
        request.state.audit_outcome = "failed 422"
        reasons = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        return site_view(request, session, caller, viewer, code, problem=reasons, status_code=422)
    add_exception(session, code, body, caller)
    return RedirectResponse(f"/sites/{code}#power", status_code=303)


@router.post("/sites/{code}/power-exceptions/{day}/delete")
def remove_exception_from_page(
    code: SiteCodePath,
    day: Annotated[Day, Path()],
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> Response:
    """The site page's delete button (a form cannot send DELETE): what `DELETE
    /api/v1/sites/{code}/power-exceptions/{day}` does, audited alike; 404 when there is none."""
    try:
        remove_exception(session, code, day, caller)
    except ExceptionNotFound:
        raise PageNotFound(
            f"There is no exception on {day.isoformat()} at {code}.", "The site page lists them."
        ) from None
    return RedirectResponse(f"/sites/{code}#power", status_code=303)


def _local_path(path: str) -> str:
    # Only a path on this site: never an open redirect ("//host", "/\host" reach elsewhere).
    ok = path.startswith("/") and not path.startswith(("//", "/\\")) and path.isprintable()
    return path if ok else "/"


@router.get("/preferences", dependencies=[Allow("public")])
def preferences(
    lang: Annotated[str, Query(max_length=8)] = "",
    tz: Annotated[str, Query(max_length=64)] = "",
    next: Annotated[str, Query(max_length=512)] = "/",
) -> RedirectResponse:
    """The footer's form: the language and the time zone the pages are read in, kept in two
    cookies for a year. A value we do not have is ignored, not refused: it comes from a form
    or a URL people edit."""
    response = RedirectResponse(_local_path(next), status_code=303)
    year = 365 * 24 * 3600
    if lang in LANGUAGES:
        response.set_cookie(LANG_COOKIE, lang, max_age=year, samesite="lax")
    if tz == SITE_ZONE or tz in available_timezones():
        response.set_cookie(ZONE_COOKIE, tz, max_age=year, samesite="lax")
    return response
