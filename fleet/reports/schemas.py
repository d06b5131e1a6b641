"""What the reports API and the reports page show of a stored report."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel


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
