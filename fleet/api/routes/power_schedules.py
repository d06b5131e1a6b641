"""A site's power schedule (with per-room overrides), its exception dates, and rooms marked
in use: what fleet/commands/schedules.py judges. Ops, and technicians for their own sites."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.exceptions import RequestValidationError

from fleet.api.deps import SessionDep
from fleet.api.params import SiteCodePath
from fleet.auth.permissions import Allow, Caller
from fleet.commands import power_exceptions
from fleet.commands.power_exceptions import (
    ExceptionIn,
    ExceptionNotFound,
    InUseIn,
    RoomId,
    RoomNotFound,
    ScheduleIn,
    ScheduleOut,
    UnknownRooms,
    site_schedule,
)
from fleet.models import Site
from fleet.time_window import WINDOW, Day

router = APIRouter(prefix="/api/v1/sites/{code}", tags=["power schedules"])


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
    try:
        power_exceptions.set_schedule(session, code, body, caller)
    except UnknownRooms as exc:
        # FastAPI's 422 shape, as the OpenAPI schema declares it.
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "rooms", room),
                    "msg": f"not a room of {code}",
                    "type": "value_error",
                }
                for room in exc.rooms[:10]
            ]
        ) from None
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
    try:
        until = power_exceptions.mark_in_use(session, code, room_id, body, caller)
    except RoomNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return {"until": until}
