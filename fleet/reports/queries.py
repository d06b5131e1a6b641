"""Read-side questions about reports that the API and the reports page share: which vendor a
caller may ask about, and the stored scheduled reports.

The caller's scope is a vendor (None for ops: every vendor), and `_may_read` is the one place
that says what it lets the caller read.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from fleet.paging import Order, Page, SortKey
from fleet.reports.models import StoredReport
from fleet.reports.schemas import StoredReportOut


class VendorOutOfScope(PermissionError):
    """The caller asked about a vendor other than its own."""


class StoredReportNotFound(LookupError):
    """No stored report has that id; the message says where to list them."""

    def __init__(self, report_id: int) -> None:
        """`report_id`: the id asked for, kept on the error."""
        super().__init__(f"no stored report {report_id}: GET /api/v1/reports lists them")
        self.report_id = report_id


def _may_read(scope: str | None, vendor: str) -> bool:
    return scope is None or vendor.lower() == scope.lower()


def scoped_vendor(requested: str | None, scope: str | None) -> str | None:
    """The vendor a question is about: the one requested, within the caller's `scope`; a
    scoped caller who names none gets its own. Raises VendorOutOfScope."""
    if scope is None:
        return requested
    if requested is not None and not _may_read(scope, requested):
        raise VendorOutOfScope(
            f"this token may read {scope} reports only, not {requested!r}: drop ?vendor="
        )
    return scope


# Newest period first, then by vendor; the id orders a vendor's formats of one period.
ORDER = Order(
    "reports",
    SortKey(col(StoredReport.period_start), "date", descending=True),
    SortKey(col(StoredReport.vendor), "str"),
    SortKey(col(StoredReport.id), "int"),
)


def stored_reports(
    session: Session,
    scope: str | None,
    vendor: str | None = None,
    period: str | None = None,
    *,
    limit: int = 100,
    after: str | None = None,
) -> Page[StoredReportOut]:
    """The stored reports the caller may read, newest period first, then by vendor; only
    `vendor`'s (any case) and `period`'s when given: one page of up to `limit` after the
    cursor `after`. Raises VendorOutOfScope and fleet.paging.BadCursor."""
    wanted = scoped_vendor(vendor, scope)
    query = select(StoredReport)
    if wanted is not None:
        # Equality in any case, not ILIKE: a vendor's name is no pattern ('%' or '_' in it
        # would match other vendors' reports).
        query = query.where(func.lower(col(StoredReport.vendor)) == wanted.lower())
    if period is not None:
        query = query.where(col(StoredReport.period) == period)
    if after is not None:
        query = query.where(ORDER.after(after))
    rows = session.exec(query.order_by(*ORDER.order_by()).limit(limit + 1)).all()
    return ORDER.page([_out(r) for r in rows], limit, lambda r: (r.period_start, r.vendor, r.id))


def stored_report(session: Session, report_id: int, scope: str | None) -> StoredReport:
    """One stored report with its content. Raises StoredReportNotFound, also for another
    vendor's: its existence is not the caller's to know."""
    stored = session.get(StoredReport, report_id)
    if stored is None or not _may_read(scope, stored.vendor):
        raise StoredReportNotFound(report_id)
    return stored


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
