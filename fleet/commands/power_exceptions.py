"""A site's power schedule as it is read, and its exception dates added and removed: what the
API's routes (fleet/api/routes/power_schedules.py) and the site page (fleet/web/pages.py)
both do, with the same checks and the same audit entries."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from fleet.auth.audit import record
from fleet.auth.permissions import Caller
from fleet.commands.models import PowerException, PowerSchedule, RoomInUse
from fleet.protocol.messages import TEXT_PATTERN, utcnow
from fleet.time_window import Day

Minutes = Annotated[int, Field(ge=1, le=24 * 60)]
Note = Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)]


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["notify_only", "act"] = "notify_only"
    off_after_last_class_min: Minutes | None = None
    off_after_idle_min: Minutes | None = None


class ScheduleOut(PolicyIn):
    rooms: dict[str, PolicyIn] = Field(default_factory=dict)
    exceptions: list[date] = Field(default_factory=list)
    rooms_in_use: dict[str, datetime] = Field(default_factory=dict)


class ExceptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day: Day
    note: Note = ""


class ExceptionNotFound(LookupError):
    """No exception date on that day at that site."""


def site_schedule(session: Session, code: str) -> ScheduleOut:
    """The site's policy, its rooms' own, its exception dates (sorted) and the rooms marked
    in use now. The site is not checked: the caller does that."""
    rows = session.exec(select(PowerSchedule).where(PowerSchedule.site_code == code)).all()
    policy = {r.room_id: PolicyIn.model_validate(r, from_attributes=True) for r in rows}
    base = policy.pop("", PolicyIn())
    now = utcnow()
    return ScheduleOut(
        **base.model_dump(),
        rooms=policy,
        exceptions=[e.day for e in site_exceptions(session, code)],
        rooms_in_use={
            r.room_id: r.until
            for r in session.exec(
                select(RoomInUse).where(RoomInUse.site_code == code, col(RoomInUse.until) > now)
            )
        },
    )


def site_exceptions(session: Session, code: str) -> list[PowerException]:
    """The site's exception dates in date order, with their notes and who added them."""
    return list(
        session.exec(
            select(PowerException)
            .where(PowerException.site_code == code)
            .order_by(col(PowerException.day))
        )
    )


def add_exception(session: Session, code: str, body: ExceptionIn, caller: Caller) -> None:
    """Add (or replace the note of) the exception date, audited `power_exception.add`."""
    session.merge(
        PowerException(
            site_code=code,
            day=body.day,
            note=body.note,
            created_by=caller.name,
            created_at=utcnow(),
        )
    )
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="power_exception.add",
        target=f"site {code}",
        detail=body.model_dump(mode="json"),
    )
    session.commit()


def remove_exception(session: Session, code: str, day: date, caller: Caller) -> None:
    """Remove the exception date, audited `power_exception.remove`. Raises
    ExceptionNotFound when there is none on that day."""
    row = session.get(PowerException, (code, day))
    if row is None:
        raise ExceptionNotFound(f"no exception on {day.isoformat()} at {code}")
    session.delete(row)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="power_exception.remove",
        target=f"site {code}",
        detail={"day": day.isoformat()},
    )
    session.commit()
