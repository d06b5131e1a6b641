"""Power and input commands a person asks for, from the API (fleet/api/routes/commands.py)
or a page (fleet/web/power_forms.py): which devices take them, then sent and audited alike.

A device takes a kind of command when its profile's control does (Profile.control_problem):
a device that cannot be switched is refused before anything is sent, and a site's or room's
command goes to the devices that take it only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, col, select

from fleet.auth.audit import record
from fleet.auth.permissions import Caller
from fleet.commands.models import DeviceCommand
from fleet.commands.sending import Publish, send
from fleet.devices.profile_book import profiles_in
from fleet.models import Device
from fleet.protocol.commands import INPUT_PATTERN
from fleet.protocol.messages import DEVICE_ID_PATTERN, TEXT_PATTERN, CommandKind, utcnow
from fleet.protocol.profiles import Profile


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


class NotSwitchable(ValueError):
    """The device's profile takes no such command: nothing was sent."""


def profiles(profiles_dir: Path) -> dict[str, Profile]:
    """The controller's profiles by id (read again only when a file there changes)."""
    return profiles_in(profiles_dir)


def control_problem(book: dict[str, Profile], device: Device, kind: CommandKind) -> str | None:
    """Why `device` cannot take `kind`, or None when it can. A device whose profile is gone
    from the folder takes nothing: the controller cannot tell what it takes."""
    profile = book.get(device.profile)
    if profile is None:
        return f"profile {device.profile} is not among the controller's profiles"
    return profile.control_problem(kind.value)


def site_devices(session: Session, code: str, room: str | None = None) -> list[Device]:
    """The site's (or the room's) devices in service, by id."""
    query = select(Device).where(Device.site_code == code, col(Device.retired_at).is_(None))
    if room is not None:
        query = query.where(Device.room_id == room)
    return list(session.exec(query.order_by(col(Device.id))))


def takers(book: dict[str, Profile], devices: list[Device], kind: CommandKind) -> list[Device]:
    """The devices among `devices` that take `kind`."""
    return [d for d in devices if control_problem(book, d, kind) is None]


def request_command(
    session: Session,
    publish: Publish | None,
    topic_root: str,
    book: dict[str, Profile],
    devices: list[Device],
    kind: CommandKind,
    value: str,
    caller: Caller,
    reason: str,
    target: str,
) -> list[DeviceCommand]:
    """Send `kind` = `value` to each of `devices` (fleet.commands.sending.send), audited
    `commands.<kind>` on `target` with who asked and why; returns the rows (`sent`, or
    `failed` with why). Raises NotSwitchable, sending nothing, when one of them does not
    take `kind`."""
    for device in devices:
        problem = control_problem(book, device, kind)
        if problem is not None:
            raise NotSwitchable(f"{device.id} takes no {kind.value} command: {problem}")
    rows = send(session, publish, topic_root, devices, kind, value, caller.name, reason, utcnow())
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action=f"commands.{kind.value}",
        target=target,
        detail={"value": value, "reason": reason, "devices": len(rows)},
    )
    session.commit()
    return rows


def recent_commands(session: Session, device_id: str, limit: int = 200) -> list[DeviceCommand]:
    """The device's commands, newest first."""
    return list(
        session.exec(
            select(DeviceCommand)
            .where(DeviceCommand.device_id == device_id)
            .order_by(col(DeviceCommand.id).desc())
            .limit(limit)
        )
    )


def campaign_commands(session: Session, code: str, campaign: str) -> list[DeviceCommand]:
    """One request's commands (a site's or room's switch-off) at site `code`, by device."""
    return list(
        session.exec(
            select(DeviceCommand)
            .where(DeviceCommand.site_code == code, DeviceCommand.campaign == campaign)
            .order_by(col(DeviceCommand.device_id))
            .limit(1000)
        )
    )
