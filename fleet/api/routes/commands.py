"""Power and input commands: to one device, or to a site's devices (or one room's), sent
through the site agents. Ops, and technicians for their own sites; vendors never. Each is
audited with who sent it and why, and keeps its state and the device's answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import DeviceIdPath, SiteCodePath
from fleet.auth.audit import record
from fleet.auth.permissions import Allow, Caller, no_device_detail
from fleet.commands.models import DeviceCommand
from fleet.commands.sending import send
from fleet.models import Device
from fleet.protocol.commands import INPUT_PATTERN
from fleet.protocol.messages import DEVICE_ID_PATTERN, TEXT_PATTERN, CommandKind, utcnow

router = APIRouter(prefix="/api/v1", tags=["commands"])


class CommandIn(BaseModel):
    """Exactly one of `power` and `input`, and why (kept with the command and audited)."""

    model_config = ConfigDict(extra="forbid")

    power: Literal["on", "off"] | None = None
    input: str | None = Field(default=None, pattern=INPUT_PATTERN)
    reason: str = Field(min_length=1, max_length=500, pattern=TEXT_PATTERN)
    # For a site: only this room's devices.
    room: str | None = Field(default=None, pattern=DEVICE_ID_PATTERN)

    @model_validator(mode="after")
    def _one_action(self) -> CommandIn:
        if (self.power is None) == (self.input is None):
            raise ValueError('give exactly one of "power" ("on" or "off") and "input"')
        return self


class CommandOut(BaseModel):
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
    value = body.power or body.input or ""
    publish = getattr(getattr(request.app.state, "ingest_status", None), "publish", None)
    rows = send(
        session,
        publish,
        settings.topic_root,
        devices,
        kind,
        value,
        caller.name,
        body.reason,
        utcnow(),
    )
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action=f"commands.{kind.value}",
        target=target,
        detail={"value": value, "reason": body.reason, "devices": len(rows)},
    )
    session.commit()
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
    failed or expired, with the device's answer)."""
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
    """Switch every device of a site (or of `room` in it) that takes the command's kind."""
    query = select(Device).where(Device.site_code == code, col(Device.retired_at).is_(None))
    if body.room is not None:
        query = query.where(Device.room_id == body.room)
    devices = list(session.exec(query.order_by(col(Device.id))))
    where = f"site {code}" + (f" room {body.room}" if body.room else "")
    return _send(request, session, settings, caller, devices, body, where)


@router.get("/devices/{device_id}/commands", dependencies=[Allow("devices:command")])
def device_commands(device_id: DeviceIdPath, session: SessionDep) -> list[CommandOut]:
    """The device's power and input commands, newest first (at most 200). 404 for a device
    that does not exist, in the same words as for one outside the caller's scope."""
    if session.get(Device, device_id) is None:
        raise HTTPException(404, no_device_detail(device_id))
    rows = session.exec(
        select(DeviceCommand)
        .where(DeviceCommand.device_id == device_id)
        .order_by(col(DeviceCommand.id).desc())
        .limit(200)
    )
    return [CommandOut.model_validate(r) for r in rows]
