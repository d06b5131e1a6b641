"""The programme's tables: phases, the classrooms they cover, milestones, device evidence."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet.models import BigId, json_column, utc_column

# A milestone's `room_id` is this for the phase itself, else the classroom's room id.
PHASE_ITSELF = ""


class Phase(SQLModel, table=True):
    """One phase of a site's installation programme, numbered from 1 within the site, with who
    recorded it and when."""

    __tablename__ = "programme_phase"
    __table_args__ = (UniqueConstraint("site_code", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    site_code: str = Field(foreign_key="site.code", index=True)
    number: int
    name: str = ""
    recorded_by: str
    recorded_at: datetime = utc_column(nullable=False)


class PhaseRoom(SQLModel, table=True):
    """A classroom covered by a phase; a classroom belongs to one phase at most."""

    __tablename__ = "programme_phase_room"

    room_id: str = Field(primary_key=True, foreign_key="room.id")
    phase_id: int = Field(foreign_key="programme_phase.id", index=True)


class MilestoneRecord(SQLModel, table=True):
    """One milestone of a phase (`room_id` PHASE_ITSELF) or of one classroom of it: planned and
    actual dates, whether reached, its note and evidence, and who recorded it."""

    __tablename__ = "programme_milestone"
    __table_args__ = (UniqueConstraint("phase_id", "room_id", "milestone"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    phase_id: int = Field(foreign_key="programme_phase.id", index=True)
    # PHASE_ITSELF, or a room of the phase (not a foreign key: "" is no room).
    room_id: str = PHASE_ITSELF
    milestone: str
    planned: date | None = None
    actual: date | None = None
    actual_end: date | None = None
    reached: bool = False
    note: str = ""
    # e.g. {"trained_more_than": 70}, or what the devices showed (fleet.programme.evidence).
    evidence: dict[str, Any] | None = json_column()
    # Recorded against the ordering rules on purpose; kept so a reader knows.
    correction: bool = False
    recorded_by: str
    recorded_at: datetime = utc_column(nullable=False)


class ClassroomEvidence(SQLModel, table=True):
    """What the devices of one classroom have shown, kept by the evidence job between runs."""

    __tablename__ = "programme_classroom_evidence"

    room_id: str = Field(primary_key=True, foreign_key="room.id")
    site_code: str = Field(index=True)
    # device id -> ISO time of its first healthy reading
    first_healthy: dict[str, Any] = json_column(nullable=False)
    all_healthy_at: datetime | None = utc_column()
    # "waiting" (not every device healthy yet), "confirmed", "attached" or "review"
    status: str = Field(default="waiting", index=True)
    reason: str = ""
    # Samples received up to here have been looked at; the next run reads only newer ones.
    scanned_through: datetime | None = utc_column()
    checked_at: datetime = utc_column(nullable=False)
