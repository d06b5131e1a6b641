"""The fleet overview and one site's page. `?partial=1` returns only the part that refreshes."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import col, select

from fleet.alerts.queries import OpenAlerts, unacknowledged_alerts_by_site
from fleet.api.deps import SessionDep
from fleet.auth.permissions import Allow, Caller
from fleet.devices.registry import timetable_from_json
from fleet.models import Device
from fleet.protocol.messages import SITE_CODE_PATTERN, utcnow
from fleet.sites.queries import SiteNotFound, site_detail
from fleet.web.not_found import PageNotFound
from fleet.web.overview import fleet_totals, newest_report, site_problems, site_rows
from fleet.web.templating import render, state_rank
from fleet.web.timetable_chart import local_now, week_chart
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("dashboard:read")],
    viewer: ViewerDep,
    partial: bool = False,
) -> HTMLResponse:
    rows = site_rows(session, caller)  # only the caller's sites, or vendor's devices
    return render(
        request,
        "_overview.html" if partial else "overview.html",
        viewer=viewer,
        rows=rows,
        totals=fleet_totals(rows),
        newest=newest_report(rows),
        problem_sites=sum(1 for r in rows if r.is_problem),
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
) -> HTMLResponse:
    try:
        if not re.fullmatch(SITE_CODE_PATTERN, code):
            raise SiteNotFound(code)  # no site can have it: not looked up
        detail = site_detail(session, code)  # what `GET /api/v1/sites/{code}` returns
    except SiteNotFound:
        raise PageNotFound(
            f"There is no site {code!r}.", "The overview lists every site."
        ) from None
    open_alerts = unacknowledged_alerts_by_site(session, caller).get(code, OpenAlerts())
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
        viewer=viewer,
        site=detail,
        rooms=rooms,
        readings=readings,
        problems=site_problems(detail, open_alerts),
        open_alerts=open_alerts,
        local=local_now(timetable, tz, now),
        week=week_chart(timetable, tz, now),
        now=now,
    )
