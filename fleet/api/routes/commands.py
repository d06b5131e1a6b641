"""Power and input commands: to one device, or to a site's devices (or one room's), sent
through the site agents. Ops, and technicians for their own sites; vendors never. Each is
audited with who sent it and why, and keeps its state and the device's answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict
from sqlmodel import Session

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import DeviceIdPath, SiteCodePath
from fleet.auth.permissions import Allow, Caller, no_device_detail
from fleet.commands.requested import (
    CommandIn,
    NotSwitchable,
    profiles,
    recent_commands,
    request_command,
    site_devices,
    takers,
)
from fleet.models import Device
from fleet.protocol.messages import CommandKind

router = APIRouter(prefix="/api/v1", tags=["commands"])


class CommandOut(BaseModel):
    """One power or input command, for ops and the site's technician: the device, what was asked
    (`kind`, `value`), its state and the device's answer, who asked and why, and its times (UTC)."""

    model_config = ConfigDict(from_attributes=True)

    cmd_id: str
    campaign: str
    device_id: str
    site_code: str
    kind: str
    value: str
    state: str
    answer: str
    requested_by: str
    reason: str
    created_at: datetime
    expires_at: datetime
    answered_at: datetime | None
    confirmed_at: datetime | None


def _send(
    request: Request,
    session: Session,
    settings: Any,
    caller: Caller,
    devices: list[Device],
    body: CommandIn,
    target: str,
) -> list[CommandOut]:
    if not devices:
        raise HTTPException(404, f"no device to command in {target}")
    kind = CommandKind.power if body.power is not None else CommandKind.input
    publish = getattr(getattr(request.app.state, "ingest_status", None), "publish", None)
    try:
        rows = request_command(
            session,
            publish,
            settings.topic_root,
            profiles(settings.profiles_dir),
            devices,
            kind,
            body.power or body.input or "",
            caller,
            body.reason,
            target,
        )
    except NotSwitchable as exc:
        # FastAPI's 422 shape, as the OpenAPI schema declares it.
        raise RequestValidationError(
            [{"loc": ("body", kind.value), "msg": str(exc), "type": "value_error"}]
        ) from None
    return [CommandOut.model_validate(r) for r in rows]


@router.post("/devices/{device_id}/commands", status_code=202)
def device_command(
    device_id: DeviceIdPath,
    body: CommandIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> list[CommandOut]:
    """Switch one device's power or input. 202: each command `sent` (or `failed` with why, if
    it could not be published); its state follows in GET .../commands (sent, then done,
    failed or expired, with the device's answer). 422 when the device's profile takes no such
    command (a panel read by reachability only, an SNMP model with no power object)."""
    device = session.get(Device, device_id)
    if device is None or device.retired_at is not None:
        raise HTTPException(404, no_device_detail(device_id))
    return _send(request, session, settings, caller, [device], body, f"device {device_id}")


@router.post("/sites/{code}/commands", status_code=202)
def site_command(
    code: SiteCodePath,
    body: CommandIn,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("devices:command")],
) -> list[CommandOut]:
    """Switch every device of a site (or of `room` in it) that takes the command's kind;
    404 when none does."""
    kind = CommandKind.power if body.power is not None else CommandKind.input
    devices = takers(profiles(settings.profiles_dir), site_devices(session, code, body.room), kind)
    where = f"site {code}" + (f" room {body.room}" if body.room else "")
    return _send(request, session, settings, caller, devices, body, where)


@router.get("/devices/{device_id}/commands", dependencies=[Allow("devices:command")])
def device_commands(device_id: DeviceIdPath, session: SessionDep) -> list[CommandOut]:
    """The device's power and input commands, newest first (at most 200). 404 for a device
    that does not exist, in the same words as for one outside the caller's scope."""
    if session.get(Device, device_id) is None:
        raise HTTPException(404, no_device_detail(device_id))
    return [CommandOut.model_validate(r) for r in recent_commands(session, device_id)]
