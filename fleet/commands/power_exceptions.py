"""A site's power schedule as it is read and set, its exception dates added and removed, and
its rooms marked in use: what the API's routes (fleet/api/routes/power_schedules.py) and the
site page (fleet/web/pages.py, fleet/web/power_forms.py) both do, with the same checks and the
same audit entries."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from fleet.auth.audit import record
from fleet.auth.permissions import Caller
from fleet.commands.models import PowerException, PowerSchedule, RoomInUse
from fleet.models import Room
from fleet.protocol.messages import DEVICE_ID_PATTERN, TEXT_PATTERN, utcnow
from fleet.time_window import Day

Minutes = Annotated[int, Field(ge=1, le=24 * 60)]
Note = Annotated[str, Field(max_length=500, pattern=TEXT_PATTERN)]


class PolicyIn(BaseModel):
    """A power schedule policy as the API and the site page take it: `mode` (only record what would
    be switched off, or act), and minutes after the day's last class or of being on with no class
    after which displays are switched off (None: that rule is off)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["notify_only", "act"] = "notify_only"
    off_after_last_class_min: Minutes | None = None
    off_after_idle_min: Minutes | None = None


RoomId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
# The most room overrides one schedule holds.
MAX_ROOMS = 1000


class ScheduleIn(PolicyIn):
    """The site's policy, and rooms whose own policy overrides it."""

    rooms: dict[RoomId, PolicyIn] = Field(default_factory=dict, max_length=MAX_ROOMS)


class InUseIn(BaseModel):
    """The body of marking a room in use: for how many minutes no power schedule switches anything
    there, and why."""

    model_config = ConfigDict(extra="forbid")

    minutes: Minutes
    reason: Note = ""


class UnknownRooms(ValueError):
    """Room overrides for rooms the site does not have: nothing was changed."""

    def __init__(self, code: str, rooms: list[str]) -> None:
        """`code`: the site; `rooms`: the room ids it does not have (the message names the first
        ten)."""
        super().__init__(f"not rooms of {code}: {', '.join(rooms[:10])}")
        self.code = code
        self.rooms = rooms


class RoomNotFound(LookupError):
    """No such room at that site."""


class ScheduleOut(PolicyIn):
    """A site's power schedule as the API shows it: the site's policy, its rooms' own, its exception
    dates and the rooms in use now (until when, UTC)."""

    rooms: dict[str, PolicyIn] = Field(default_factory=dict)
    exceptions: list[date] = Field(default_factory=list)
    rooms_in_use: dict[str, datetime] = Field(default_factory=dict)


class ExceptionIn(BaseModel):
    """The body of adding an exception date (a local date on which the site's power schedule
    switches nothing off), with a note."""

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


def set_schedule(session: Session, code: str, body: ScheduleIn, caller: Caller) -> None:
    """Replace the site's schedule and its room overrides, audited `power_schedule.set`.
    Raises UnknownRooms, changing nothing, for an override of a room the site does not have.
    The site is not checked: the caller does that."""
    rooms = set(session.exec(select(Room.id).where(Room.site_code == code)))
    unknown = sorted(set(body.rooms) - rooms)
    if unknown:
        raise UnknownRooms(code, unknown)
    for row in session.exec(select(PowerSchedule).where(PowerSchedule.site_code == code)):
        session.delete(row)
    session.flush()
    now = utcnow()
    for room_id, policy in [
        ("", PolicyIn(**body.model_dump(exclude={"rooms"}))),
        *body.rooms.items(),
    ]:
        session.add(
            PowerSchedule(
                site_code=code,
                room_id=room_id,
                **policy.model_dump(),
                updated_by=caller.name,
                updated_at=now,
            )
        )
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="power_schedule.set",
        target=f"site {code}",
        detail=body.model_dump(mode="json"),
    )
    session.commit()


def mark_in_use(
    session: Session, code: str, room_id: str, body: InUseIn, caller: Caller
) -> datetime:
    """Mark the room in use for `body.minutes` (no power schedule switches anything there),
    audited `room.in_use`; returns until when (UTC). Raises RoomNotFound."""
    room = session.get(Room, room_id)
    if room is None or room.site_code != code:
        raise RoomNotFound(f"no room {room_id} at {code}")
    until = utcnow() + timedelta(minutes=body.minutes)
    session.merge(
        RoomInUse(
            room_id=room_id, site_code=code, until=until, marked_by=caller.name, reason=body.reason
        )
    )
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="room.in_use",
        target=f"room {room_id}",
        detail=body.model_dump(mode="json"),
    )
    session.commit()
    return until
