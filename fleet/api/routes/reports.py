"""Usage reports: made on request (`/usage`), or scheduled and stored (list, download).

Vendor scoping: `vendor_scope` is the one place that says which vendor's devices the caller may
see. Until roles land it allows every vendor; the roles issue replaces its body (a vendor token
gives that vendor), and every report route already applies what it returns.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlmodel import col, select

from fleet.api.deps import EngineDep, SessionDep, SettingsDep
from fleet.auth.permissions import Allow
from fleet.reports.compute import ReportError, ReportRequest, build_report, check_request
from fleet.reports.formats import MEDIA_TYPES, ReportFormat, filename, iter_csv, renderer
from fleet.reports.models import StoredReport

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

CHUNK = 64 * 1024


def vendor_scope(request: Request) -> str | None:
    """The vendor the caller is limited to, or None for ops (every vendor): set by the
    route's `reports:read` permission (fleet.auth.permissions)."""
    caller = getattr(request.state, "caller", None)
    return getattr(caller, "vendor", None)


VendorScopeDep = Annotated[str | None, Depends(vendor_scope)]


class StoredReportOut(BaseModel):
    id: int
    vendor: str
    period: str
    period_start: date
    period_end: date
    format: str
    filename: str
    sha256: str
    size: int
    url: str


def _scoped_vendor(requested: str | None, scope: str | None) -> str | None:
    if scope is None:
        return requested
    if requested is not None and requested.lower() != scope.lower():
        raise HTTPException(
            403, f"this token may read {scope} reports only, not {requested!r}: drop ?vendor="
        )
    return scope


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
    start: Annotated[date, Query(alias="from", description="first local date, YYYY-MM-DD")],
    end: Annotated[date, Query(alias="to", description="last local date (inclusive)")],
    vendor: str | None = None,
    site: str | None = None,
    device: str | None = None,
    format: Annotated[str, Query(description="json, csv, xlsx or html")] = "json",
) -> StreamingResponse:
    try:
        fmt = ReportFormat(format.lower())
    except ValueError:
        raise HTTPException(
            422,
            f"format {format!r} is not supported: use one of "
            f"{', '.join(f.value for f in ReportFormat)}",
        ) from None
    request = ReportRequest(start, end, _scoped_vendor(vendor, scope), site, device)
    with engine.connect() as conn:
        try:
            request = check_request(conn, request, settings.report_max_days)
        except ReportError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        report = build_report(conn, request, settings.report_basis())
    body: Iterator[bytes] = (
        iter_csv(report) if fmt == ReportFormat.csv else _chunks(renderer(fmt)(report))
    )
    return StreamingResponse(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{filename(report, fmt)}"'},
    )


@router.get("", response_model=list[StoredReportOut], dependencies=[Allow("reports:read")])
def list_reports(
    session: SessionDep,
    scope: VendorScopeDep,
    vendor: str | None = None,
    period: str | None = None,
) -> list[StoredReportOut]:
    wanted = _scoped_vendor(vendor, scope)
    query = select(StoredReport).order_by(
        col(StoredReport.period_start).desc(), col(StoredReport.vendor), col(StoredReport.id)
    )
    if wanted is not None:
        query = query.where(col(StoredReport.vendor).ilike(wanted))
    if period is not None:
        query = query.where(col(StoredReport.period) == period)
    return [_out(r) for r in session.exec(query)]


@router.get("/{report_id}", response_class=StreamingResponse, dependencies=[Allow("reports:read")])
def download_report(report_id: int, session: SessionDep, scope: VendorScopeDep) -> Any:
    stored = session.get(StoredReport, report_id)
    if stored is None or (scope is not None and stored.vendor.lower() != scope.lower()):
        raise HTTPException(404, f"no stored report {report_id}: GET /api/v1/reports lists them")
    return StreamingResponse(
        _chunks(stored.content),
        media_type=stored.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{stored.filename}"',
            "X-Content-SHA256": stored.sha256,
        },
    )


def _out(row: StoredReport) -> StoredReportOut:
    assert row.id is not None
    return StoredReportOut(
        id=row.id,
        vendor=row.vendor,
        period=row.period,
        period_start=row.period_start,
        period_end=row.period_end,
        format=row.format,
        filename=row.filename,
        sha256=row.sha256,
        size=row.size,
        url=f"/api/v1/reports/{row.id}",
    )
