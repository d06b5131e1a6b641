"""What the alerts API and the alerts page take and return."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet.protocol.messages import TEXT_PATTERN


class AlertOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    severity: str
    state: str
    site_code: str
    device_id: str | None
    message: str
    opened_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    ack_note: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]  # newest first
    total: int  # alerts that match, at the time of this page
    limit: int
    next: str | None  # the cursor of the next page (`after=`); None on the last


class AckIn(BaseModel):
    by: str = Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)
    note: str = Field(default="", max_length=2000, pattern=TEXT_PATTERN)


class ResolveIn(BaseModel):
    by: str = Field(min_length=1, max_length=200, pattern=TEXT_PATTERN)
    note: str = Field(default="resolved by hand", max_length=2000, pattern=TEXT_PATTERN)
