"""The device_command table: one row per device a power or input command was sent to."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column
from sqlmodel import Field, SQLModel

from fleet.models import BigId, utc_column


class DeviceCommand(SQLModel, table=True):
    """One power or input command sent to one device, by a person or by a power schedule, and what
    became of it: the agent's answer and the reading that confirmed it."""

    __tablename__ = "device_command"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    cmd_id: str = Field(index=True, unique=True)
    # The request it was part of (one device, a room, a site): `power-<id of the first row>`.
    campaign: str = Field(index=True)
    device_id: str = Field(index=True)
    site_code: str = Field(index=True)
    kind: str  # "power" or "input"
    value: str  # "on"/"off", or an input's name
    # sent, then done, failed or expired.
    state: str = Field(default="sent", index=True)
    # The device's own answer, as its agent reported it (PJLink's ERR3 while warming, ...).
    answer: str = ""
    requested_by: str
    reason: str
    created_at: datetime = utc_column(nullable=False)
    expires_at: datetime = utc_column(nullable=False)
    answered_at: datetime | None = utc_column()
    # The first reading after the answer that shows the device as asked.
    confirmed_at: datetime | None = utc_column()
    updated_at: datetime = utc_column(nullable=False)


class PowerSchedule(SQLModel, table=True):
    """When displays are switched off, for a site (`room_id` "") or one room of it, which
    overrides the site's. A minutes field None: that rule is off."""

    __tablename__ = "power_schedule"

    site_code: str = Field(primary_key=True)
    room_id: str = Field(default="", primary_key=True)
    # notify_only: record what would have been done, send nothing; act: send it.
    mode: str = "notify_only"
    # Switch off this many minutes after the day's last class.
    off_after_last_class_min: int | None = None
    # Switch off a display on this many minutes with no class.
    off_after_idle_min: int | None = None
    updated_by: str = ""
    updated_at: datetime = utc_column(nullable=False)


class PowerException(SQLModel, table=True):
    """A site's day without power schedules (an exam, an event, a holiday), local date."""

    __tablename__ = "power_exception"

    site_code: str = Field(primary_key=True)
    day: date = Field(primary_key=True)
    note: str = ""
    created_by: str = ""
    created_at: datetime = utc_column(nullable=False)


class RoomInUse(SQLModel, table=True):
    """A room a technician marked in use until `until`: no schedule switches anything there."""

    __tablename__ = "room_in_use"

    room_id: str = Field(primary_key=True)
    site_code: str = Field(index=True)
    until: datetime = utc_column(nullable=False)
    marked_by: str = ""
    reason: str = ""
