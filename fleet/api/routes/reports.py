"""Usage reports: made on request (`/usage`), or scheduled and stored (list, download).

Vendor scoping: `vendor_scope` reads the caller's vendor (None for ops) off the request, and
every report route hands it to `fleet.reports.queries`, which applies it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleet.api.deps import EngineDep, SessionDep, SettingsDep
from fleet.api.paging import cursor_refused, link_next
from fleet.api.params import (
    After,
    DeviceFilter,
    RowIdPath,
    SiteFilter,
    VendorFilter,
    day_query,
    limit_query,
    refused,
    text_filter,
)
from fleet.auth.permissions import Allow
from fleet.exports import content_disposition
from fleet.paging import BadCursor
from fleet.reports.compute import ReportError, ReportRequest, build_report, check_request
from fleet.reports.formats import MEDIA_TYPES, ReportFormat, filename, iter_csv, renderer
from fleet.reports.queries import (
    StoredReportNotFound,
    VendorOutOfScope,
    scoped_vendor,
    stored_report,
    stored_reports,
)
from fleet.reports.schemas import StoredReportOut
from fleet.time_window import Day

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

CHUNK = 64 * 1024


def vendor_scope(request: Request) -> str | None:
    """The vendor the caller is limited to, or None for ops (every vendor): set by the
    route's `reports:read` permission (fleet.auth.permissions)."""
    caller = getattr(request.state, "caller", None)
    return getattr(caller, "vendor", None)


VendorScopeDep = Annotated[str | None, Depends(vendor_scope)]


def _scoped_vendor(requested: str | None, scope: str | None) -> str | None:
    try:
        return scoped_vendor(requested, scope)
    except VendorOutOfScope as exc:
        raise HTTPException(403, str(exc)) from None


def _chunks(content: bytes) -> Iterator[bytes]:
    for i in range(0, len(content), CHUNK):
        yield content[i : i + CHUNK]


@router.get(
    "/usage",
    responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}},
    dependencies=[Allow("reports:read")],
)
def usage_report(
    engine: EngineDep,
    settings: SettingsDep,
    scope: VendorScopeDep,
    start: Annotated[Day, day_query("first local date", alias="from")],
    end: Annotated[Day, day_query("last local date (inclusive)", alias="to")],
    vendor: VendorFilter = None,
    site: SiteFilter = None,
    device: DeviceFilter = None,
    format: Annotated[str, Query(max_length=8, description="json, csv, xlsx or html")] = "json",
    bom: Annotated[
        bool, Query(description="CSV: start with a UTF-8 byte order mark, for Excel")
    ] = False,
) -> StreamingResponse:
    try:
        fmt = ReportFormat(format.lower())
    except ValueError:
        raise refused(
            "query",
            "format",
            f"format {format!r} is not supported: use one of "
            f"{', '.join(f.value for f in ReportFormat)}",
            format,
        ) from None
    request = ReportRequest(start, end, _scoped_vendor(vendor, scope), site, device)
    with engine.connect() as conn:
        try:
            request = check_request(conn, request, settings.report_max_days)
        except ReportError as exc:
            if exc.status == 422:  # the period: too long, or backwards
                raise refused("query", "to", str(exc), end.isoformat()) from None
            raise HTTPException(exc.status, str(exc)) from None
        report = build_report(conn, request, settings.report_basis())
    body: Iterator[bytes] = (
        iter_csv(report, bom=bom) if fmt == ReportFormat.csv else _chunks(renderer(fmt)(report))
    )
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": disposition(MEDIA_TYPES[fmt], filename(report, fmt))},
    )


def disposition(media_type: str, name: str) -> str:
    """The printable HTML report opens in the browser (inline); the others download."""
    html = media_type.split(";")[0].strip().lower() == "text/html"
    return content_disposition(name, inline=html)


@router.get("", response_model=list[StoredReportOut], dependencies=[Allow("reports:read")])
def list_reports(
    request: Request,
    response: Response,
    session: SessionDep,
    scope: VendorScopeDep,
    vendor: VendorFilter = None,
    period: Annotated[str | None, text_filter("monthly or weekly", 16)] = None,
    limit: Annotated[int, limit_query(1000)] = 100,
    after: After = None,
) -> list[StoredReportOut]:
    """Newest period first, then by vendor; the next page's URL is in the Link header
    (rel="next")."""
    try:
        page = stored_reports(session, scope, vendor, period, limit=limit, after=after)
    except VendorOutOfScope as exc:
        raise HTTPException(403, str(exc)) from None
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    return page.items


@router.get("/{report_id}", response_class=StreamingResponse, dependencies=[Allow("reports:read")])
def download_report(report_id: RowIdPath, session: SessionDep, scope: VendorScopeDep) -> Any:
    try:
        stored = stored_report(session, report_id, scope)
    except StoredReportNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return StreamingResponse(
        _chunks(stored.content),
        media_type=stored.media_type,
        headers={
            "Content-Disposition": disposition(stored.media_type, stored.filename),
            "X-Content-SHA256": stored.sha256,
        },
    )
