"""What the reports API and the reports page show of a stored report."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel


class StoredReportOut(BaseModel):
    """One stored scheduled report (a vendor, a period, a format) as the reports API and page list
    it: its SHA-256, size in bytes and download URL."""

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
