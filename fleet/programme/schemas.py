"""What the programme API takes and returns."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.programme.milestones import MilestoneName
from fleet.protocol.messages import DEVICE_ID_PATTERN, TEXT_PATTERN
from fleet.protocol.site_config import MAX_PHASE_NUMBER
from fleet.time_window import Day

# A note of up to 2,000 characters of text; line breaks are fine, other controls are not.
Note = Annotated[str, Field(max_length=2000, pattern=TEXT_PATTERN)]


class Body(BaseModel):
    """A request body of the programme API: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class PhaseCreate(Body):
    """The body that creates a phase of a site: its number (the next one if omitted), name and the
    classrooms it covers."""

    phase: int | None = Field(
        default=None, ge=1, le=MAX_PHASE_NUMBER, description="the next number if omitted"
    )
    name: Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)] = ""
    rooms: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] = Field(
        default_factory=list, max_length=1000, description="classrooms the phase covers"
    )


class MilestoneCreate(Body):
    """The body that records one milestone of a phase, or of one classroom of it."""

    milestone: MilestoneName
    room: str | None = Field(
        default=None,
        pattern=DEVICE_ID_PATTERN,
        description="a classroom of the phase; none: the phase",
    )
    planned: Day | None = None
    actual: Day | None = None
    actual_end: Day | None = Field(default=None, description="last day, when it took days")
    reached: bool = Field(default=False, description="true when it happened, date unknown")
    note: Note = ""
    evidence: dict[str, Any] | None = Field(default=None, examples=[{"trained": 25}])
    correction: bool = Field(default=False, description="record against the ordering rules")


class MilestonePatch(Body):
    """Only the fields given change; null clears a date."""

    planned: Day | None = None
    actual: Day | None = None
    actual_end: Day | None = None
    reached: bool | None = None
    note: Note | None = None
    evidence: dict[str, Any] | None = None
    correction: bool = False


class MilestoneOut(BaseModel):
    """One recorded milestone as the programme API shows it, with whether it is overdue and who
    recorded it."""

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
    """One phase of a site as the programme API shows it, with its classrooms and milestones."""

    site: str
    phase: int
    name: str
    rooms: list[str]
    recorded_by: str
    recorded_at: datetime
    milestones: list[MilestoneOut]  # the phase's own, then each classroom's


class MilestoneRef(BaseModel):
    """A milestone named in a site's standing: where it belongs and its dates."""

    phase: int
    room: str | None
    milestone: MilestoneName
    planned: date | None
    actual: date | None
    actual_end: date | None
    reached: bool


class SiteProgramme(BaseModel):
    """One site's standing in the programme, as the API and the programme page show it: the
    milestone reached, the next one, what is overdue, and classrooms to review."""

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
    """The answer to a programme CSV import: how many rows it recorded."""

    rows: int
