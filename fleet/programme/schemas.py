"""What the programme API takes and returns."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.programme.milestones import MilestoneName


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseCreate(Body):
    phase: int | None = Field(default=None, ge=1, description="the next number if omitted")
    name: str = ""
    rooms: list[str] = Field(default_factory=list, description="classrooms the phase covers")


class MilestoneCreate(Body):
    milestone: MilestoneName
    room: str | None = Field(default=None, description="a classroom of the phase; none: the phase")
    planned: date | None = None
    actual: date | None = None
    actual_end: date | None = Field(default=None, description="last day, when it took days")
    reached: bool = Field(default=False, description="true when it happened, date unknown")
    note: str = ""
    evidence: dict[str, Any] | None = Field(default=None, examples=[{"trained": 25}])
    correction: bool = Field(default=False, description="record against the ordering rules")


class MilestonePatch(Body):
    """Only the fields given change; null clears a date."""

    planned: date | None = None
    actual: date | None = None
    actual_end: date | None = None
    reached: bool | None = None
    note: str | None = None
    evidence: dict[str, Any] | None = None
    correction: bool = False


class MilestoneOut(BaseModel):
    milestone: MilestoneName
    room: str | None
    planned: date | None
    actual: date | None
    actual_end: date | None
    reached: bool
    overdue: bool
    note: str
    evidence: dict[str, Any] | None
    correction: bool
    recorded_by: str
    recorded_at: datetime


class PhaseOut(BaseModel):
    site: str
    phase: int
    name: str
    rooms: list[str]
    recorded_by: str
    recorded_at: datetime
    milestones: list[MilestoneOut]  # the phase's own, then each classroom's


class MilestoneRef(BaseModel):
    phase: int
    room: str | None
    milestone: MilestoneName
    planned: date | None
    actual: date | None
    actual_end: date | None
    reached: bool


class SiteProgramme(BaseModel):
    site: str
    name: str
    country: str
    vendor: str
    today: date
    current: MilestoneRef | None
    next: MilestoneRef | None
    late: bool
    overdue: list[MilestoneRef]
    review: list[str]  # classrooms whose devices report without an installed milestone


class ImportResult(BaseModel):
    rows: int
