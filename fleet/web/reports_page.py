"""The reports page: the stored scheduled reports with their download links, and a form for a
usage report on demand.

The list is `fleet.reports.queries`' with the caller's vendor scope, as `GET /api/v1/reports`
returns it, and both the downloads and the on-demand report are the API's own URLs, so a vendor
gets here exactly what its token gets from the API.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep
from fleet.auth.permissions import Allow
from fleet.models import Device, Site
from fleet.paging import MAX_CURSOR_CHARS, BadCursor
from fleet.protocol.messages import utcnow
from fleet.reports.formats import ReportFormat
from fleet.reports.queries import stored_reports
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

USAGE_API = "/api/v1/reports/usage"
PAGE_SIZE = 100


def last_month(today: date) -> tuple[date, date]:
    """The first and last day of the calendar month before `today`'s: the period the on-demand
    report form starts with."""
    end = today.replace(day=1) - timedelta(days=1)
    return end.replace(day=1), end


def _choices(session: Session, vendor: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The vendors and (code, name) sites the form offers: a vendor's own, or every one."""
    devices = select(Device.vendor, Device.site_code).where(col(Device.retired_at).is_(None))
    if vendor is not None:
        devices = devices.where(func.lower(col(Device.vendor)) == vendor.lower())
    rows = session.exec(devices.distinct()).all()
    vendors = sorted({v for v, _ in rows if v})
    codes = {s for _, s in rows}
    sites = session.exec(select(Site.code, Site.name).order_by(col(Site.code))).all()
    return vendors, [(code, name) for code, name in sites if code in codes]


@router.get("/reports", response_class=HTMLResponse, dependencies=[Allow("reports:read")])
def reports_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    after: Annotated[str, Query(max_length=MAX_CURSOR_CHARS)] = "",
) -> HTMLResponse:
    scope = viewer.vendor  # None for ops: every vendor
    vendors, sites = _choices(session, scope)
    start, end = last_month(utcnow().date())
    try:
        reports = stored_reports(session, scope, limit=PAGE_SIZE, after=after or None)
    except BadCursor:
        # A cursor from an edited or stale URL: the first page, rather than an error page.
        reports = stored_reports(session, scope, limit=PAGE_SIZE)
    return render(
        request,
        "reports.html",
        viewer=viewer,
        reports=reports.items,
        older=f"/reports?{urlencode({'after': reports.next})}" if reports.next else "",
        vendors=vendors,
        sites=sites,
        scope=scope,
        start=start,
        end=end,
        formats=[f.value for f in ReportFormat],
    )


@router.get("/reports/usage", dependencies=[Allow("reports:read")])
def usage_from_form(
    start: Annotated[date, Query(alias="from")],
    end: Annotated[date, Query(alias="to")],
    vendor: Annotated[str, Query(max_length=64)] = "",
    site: Annotated[str, Query(max_length=32)] = "",
    format: Annotated[str, Query(max_length=8)] = "csv",
) -> RedirectResponse:
    """The form's "any" is an empty field; the API takes a missing one, so drop those."""
    fields = {
        "vendor": vendor,
        "site": site,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "format": format,
    }
    query = urlencode({k: v for k, v in fields.items() if v})
    return RedirectResponse(f"{USAGE_API}?{query}", status_code=303)
