"""The power actions of the device and site pages, as same-origin form posts: power on, off
and input on a device; switch off a site or a room (after a confirm page, which needs no
script); mark a room in use; edit the site's power schedule.

Each does what the API's route does (fleet/commands/requested.py, power_exceptions.py: the
same checks, the same audit entries) under the same permission and scope (`devices:command`:
ops, a technician of the site; vendors never). A value the API would refuse is said on the
page (422), with nothing changed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import DeviceIdPath, SiteCodePath
from fleet.auth.permissions import Allow, Caller
from fleet.commands.power_exceptions import (
    MAX_ROOMS,
    InUseIn,
    RoomNotFound,
    ScheduleIn,
    UnknownRooms,
    mark_in_use,
    set_schedule,
)
from fleet.commands.requested import (
    CommandIn,
    NotSwitchable,
    profiles,
    request_command,
    site_devices,
    takers,
)
from fleet.models import Device, Room, Site
from fleet.protocol.messages import CONTROL_RE, DEVICE_ID_PATTERN, CommandKind
from fleet.web.device_page import device_view
from fleet.web.i18n import language_of
from fleet.web.not_found import PageNotFound
from fleet.web.pages import site_view
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

Text = Annotated[str, Form(max_length=2000)]
# A room's override in the schedule form: `room_mode:<room id>` ("" follows the site's),
# `room_last:<room id>`, `room_idle:<room id>` (minutes; "" is that rule off).
# The most fields the schedule form takes: three a room, and the site's.
MAX_FIELDS = 3 * MAX_ROOMS + 10
ROOM_FIELD = re.compile(r"^room_(mode|last|idle):(.*)$", re.DOTALL)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()[:10]
    )


def _publish(request: Request) -> Any:
    return getattr(getattr(request.app.state, "ingest_status", None), "publish", None)


def _site(session: Session, code: str) -> Site:
    site = session.get(Site, code)
    if site is None:
        raise PageNotFound(f"There is no site {code!r}.", "The overview lists every site.")
    return site


@router.post("/devices/{device_id}/commands")
def device_command_from_page(
    device_id: DeviceIdPath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    # The same permission and scope as the API's route: ops, a technician of its site.
    caller: Annotated[Caller, Allow("devices:command")],
    viewer: ViewerDep,
    power: Annotated[str, Form(max_length=100)] = "",
    input: Annotated[str, Form(max_length=100)] = "",
    reason: Text = "",
) -> Response:
    """The device page's power on / off and input buttons: what `POST
    /api/v1/devices/{id}/commands` does, audited alike; then back to the page, which shows the
    command's state as it goes. A refused value or action is said on the page (422)."""
    device = session.get(Device, device_id)
    if device is None or device.retired_at is not None:
        raise PageNotFound(
            f"There is no device {device_id!r}.", "Open its site from the overview to find it."
        )
    problem = ""
    try:
        body = CommandIn.model_validate(
            {
                "power": power or None,
                "input": input or None,
                "reason": CONTROL_RE.sub("", reason).strip(),
            }
        )
        kind = CommandKind.power if body.power is not None else CommandKind.input
        request_command(
            session,
            _publish(request),
            settings.topic_root,
            profiles(settings.profiles_dir),
            [device],
            kind,
            body.power or body.input or "",
            caller,
            body.reason,
            f"device {device_id}",
        )
    except ValidationError as exc:
        problem = _reasons(exc)
    except NotSwitchable as exc:
        problem = str(exc)
    if problem:
        request.state.audit_outcome = "failed 422"
        return device_view(
            request,
            session,
            viewer,
            settings.profiles_dir,
            device_id,
            problem=problem,
            status_code=422,
        )
    return RedirectResponse(f"/devices/{quote(device_id)}#commands", status_code=303)


@router.post("/sites/{code}/commands")
def site_command_from_page(
    code: SiteCodePath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("devices:command")],
    viewer: ViewerDep,
    room: Annotated[str, Form(max_length=100)] = "",
    reason: Text = "",
    confirm: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """The site page's "switch off": first a page that lists the devices it will switch off
    and asks to confirm (a form, no script), then what `POST /api/v1/sites/{code}/commands`
    does with power off, audited alike; back to the site page, which shows each command."""
    site = _site(session, code)
    try:
        body = CommandIn.model_validate(
            {"power": "off", "reason": CONTROL_RE.sub("", reason).strip(), "room": room or None}
        )
    except ValidationError as exc:
        request.state.audit_outcome = "failed 422"
        return site_view(
            request,
            session,
            caller,
            viewer,
            code,
            problem=_reasons(exc),
            problem_of="command",
            status_code=422,
        )
    room_row = session.get(Room, body.room) if body.room else None
    if body.room and (room_row is None or room_row.site_code != code):
        raise PageNotFound(
            f"There is no room {body.room!r} at {code}.", "The site page lists them."
        )
    book = profiles(settings.profiles_dir)
    devices = takers(book, site_devices(session, code, body.room), CommandKind.power)
    if confirm != "yes" or not devices:
        # Nothing sent yet: what would be switched off, and the button that does it.
        request.state.audit_outcome = "confirm asked"
        return render(
            request,
            "power_confirm.html",
            lang=language_of(request),
            viewer=viewer,
            site=site,
            room=room_row,
            reason=body.reason,
            devices=devices,
        )
    rows = request_command(
        session,
        _publish(request),
        settings.topic_root,
        book,
        devices,
        CommandKind.power,
        "off",
        caller,
        body.reason,
        f"site {code}" + (f" room {body.room}" if body.room else ""),
    )
    return RedirectResponse(
        f"/sites/{quote(code)}?campaign={quote(rows[0].campaign)}#sent", status_code=303
    )


@router.post("/sites/{code}/rooms/{room_id}/in-use")
def room_in_use_from_page(
    code: SiteCodePath,
    room_id: Annotated[str, Path(max_length=100)],
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
    viewer: ViewerDep,
    minutes: Annotated[str, Form(max_length=100)] = "",
    reason: Text = "",
) -> Response:
    """The site page's "room in use" (keep on): what `POST .../rooms/{room_id}/in-use` does,
    audited alike; no power schedule switches anything in the room until then."""
    _site(session, code)
    if not re.fullmatch(DEVICE_ID_PATTERN, room_id):  # no room can have it: not looked up
        raise PageNotFound(f"There is no room {room_id!r} at {code}.", "The site page lists them.")
    try:
        body = InUseIn.model_validate(
            {"minutes": minutes, "reason": CONTROL_RE.sub("", reason).strip()}
        )
        mark_in_use(session, code, room_id, body, caller)
    except ValidationError as exc:
        request.state.audit_outcome = "failed 422"
        return site_view(
            request,
            session,
            caller,
            viewer,
            code,
            problem=_reasons(exc),
            problem_of="in_use",
            status_code=422,
        )
    except RoomNotFound:
        raise PageNotFound(
            f"There is no room {room_id!r} at {code}.", "The site page lists them."
        ) from None
    return RedirectResponse(f"/sites/{quote(code)}#power", status_code=303)


@router.post("/sites/{code}/power-schedule")
async def schedule_from_page(
    code: SiteCodePath,
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("devices:command")],
    viewer: ViewerDep,
) -> Response:
    """The site page's schedule form: what `PUT /api/v1/sites/{code}/power-schedule` does,
    with the same checks (minutes 1..1440 or blank, rooms of this site), audited alike."""
    try:
        form = await request.form(max_fields=MAX_FIELDS)
        items: list[tuple[str, Any]] | None = form.multi_items()
        problem = ""
    except StarletteHTTPException as exc:  # more fields than a schedule has
        items, problem = None, str(exc.detail)
    # The database's work off the event loop, as a plain route's would be.
    return await run_in_threadpool(
        _schedule_post, request, session, caller, viewer, code, items, problem
    )


def _schedule_post(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    code: str,
    items: list[tuple[str, Any]] | None,
    problem: str,
) -> Response:
    _site(session, code)
    if items is not None:
        try:
            set_schedule(session, code, ScheduleIn.model_validate(_schedule_body(items)), caller)
        except ValidationError as exc:
            problem = _reasons(exc)
        except UnknownRooms as exc:
            problem = str(exc)
    if problem:
        request.state.audit_outcome = "failed 422"
        return site_view(
            request,
            session,
            caller,
            viewer,
            code,
            problem=problem,
            problem_of="schedule",
            status_code=422,
        )
    return RedirectResponse(f"/sites/{quote(code)}#power", status_code=303)


def _schedule_body(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """The form's fields as the API's body: blank minutes are None (that rule off), a room
    whose mode is blank follows the site's. A field given twice, or one the form does not
    have, is kept so that validation says so."""
    body: dict[str, Any] = {}
    rooms: dict[str, dict[str, Any]] = {}
    for key, raw in items:
        text = raw if isinstance(raw, str) else "(a file)"
        value = text.strip() or None
        match = ROOM_FIELD.match(key)
        if match is not None:
            field = {"mode": "mode", "last": "off_after_last_class_min"}.get(
                match.group(1), "off_after_idle_min"
            )
            room = rooms.setdefault(match.group(2), {})
            room[field] = [room[field], value] if field in room else value
        elif key in body:
            body[key] = [body[key], value]
        else:
            body[key] = value
    if body.get("mode") is None:
        body.pop("mode", None)
    body["rooms"] = {room: fields for room, fields in rooms.items() if fields.get("mode")}
    return body
