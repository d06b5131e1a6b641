"""A site's power schedule (with per-room overrides), its exception dates, and rooms marked
in use: what fleet/commands/schedules.py judges. Ops, and technicians for their own sites."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import select

from fleet.api.deps import SessionDep
from fleet.api.params import SiteCodePath
from fleet.auth.audit import record
from fleet.auth.permissions import Allow, Caller
from fleet.commands import power_exceptions
from fleet.commands.models import PowerSchedule, RoomInUse
from fleet.commands.power_exceptions import (
    ExceptionIn,
    ExceptionNotFound,
    Minutes,
    Note,
    PolicyIn,
    ScheduleOut,
    site_schedule,
)
from fleet.models import Room, Site
from fleet.protocol.messages import DEVICE_ID_PATTERN, utcnow
from fleet.time_window import WINDOW, Day

router = APIRouter(prefix="/api/v1/sites/{code}", tags=["power schedules"])

RoomId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class ScheduleIn(PolicyIn):
    """The site's policy, and rooms whose own policy overrides it."""

    rooms: dict[RoomId, PolicyIn] = Field(default_factory=dict, max_length=1000)


class InUseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: Minutes
    reason: Note = ""


def _site(session: SessionDep, code: str) -> Site:
    site = session.get(Site, code)
    if site is None:
        raise HTTPException(404, f"no site {code}")
    return site


@router.get("/power-schedule", dependencies=[Allow("devices:command")])
def get_schedule(code: SiteCodePath, session: SessionDep) -> ScheduleOut:
    _site(session, code)
    return site_schedule(session, code)


@router.put("/power-schedule")
def put_schedule(
    code: SiteCodePath,
    body: ScheduleIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> ScheduleOut:
    """Replace the site's schedule and its room overrides. `mode` notify_only (the default)
    records what would be done; act sends it."""
    _site(session, code)
    rooms = set(session.exec(select(Room.id).where(Room.site_code == code)))
    unknown = sorted(set(body.rooms) - rooms)
    if unknown:
        # FastAPI's 422 shape, as the OpenAPI schema declares it.
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "rooms", room),
                    "msg": f"not a room of {code}",
                    "type": "value_error",
                }
                for room in unknown[:10]
            ]
        )
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
    return get_schedule(code, session)


@router.post("/power-exceptions", status_code=201)
def add_exception(
    code: SiteCodePath,
    body: ExceptionIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> ExceptionIn:
    """A local date on which the site's power schedules do nothing (exam, event, holiday)."""
    _site(session, code)
    power_exceptions.add_exception(session, code, body, caller)
    return body


@router.delete("/power-exceptions/{day}", status_code=204)
def remove_exception(
    code: SiteCodePath,
    day: Annotated[Day, Path(description=f"the site's local date; YYYY-MM-DD, {WINDOW}")],
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> None:
    try:
        power_exceptions.remove_exception(session, code, day, caller)
    except ExceptionNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/rooms/{room_id}/in-use", status_code=201)
def mark_in_use(
    code: SiteCodePath,
    room_id: RoomId,
    body: InUseIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> dict[str, datetime]:
    """Mark a room in use for `minutes`: no power schedule switches anything there."""
    room = session.get(Room, room_id)
    if room is None or room.site_code != code:
        raise HTTPException(404, f"no room {room_id} at {code}")
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
    return {"until": until}
