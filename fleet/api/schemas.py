"""What the REST API returns (pydantic), apart from the tables themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AgentStatusOut(Out):
    agent_id: str
    state: str
    version: str
    boot_id: str
    ts: datetime
    received_at: datetime
    last_message_at: datetime | None


class SiteSummary(Out):
    code: str
    name: str
    institution: str
    country: str
    timezone: str
    vendor: str
    devices: int
    devices_by_state: dict[str, int]
    agent: AgentStatusOut | None
    last_reported_at: datetime | None  # newest reading of any of its devices
    open_alerts: int = 0  # open or acknowledged


class DeviceOut(Out):
    id: str
    site_code: str
    room_id: str
    name: str
    vendor: str
    model: str
    kind: str
    profile: str
    protocol: str
    address: str
    port: int | None
    retired_at: datetime | None
    state: str
    state_reason: str
    state_since: datetime | None
    last_seen_at: datetime | None
    firmware: str | None
    power: str | None
    reachable: bool | None


class DeviceDetail(DeviceOut):
    last_reading: dict[str, Any] | None


class RoomOut(Out):
    id: str
    name: str
    building: str
    devices: list[DeviceOut]


class SiteDetail(SiteSummary):
    timetable: dict[str, Any]
    synced_at: datetime
    rooms: list[RoomOut]


class DevicePage(BaseModel):
    items: list[DeviceOut]
    total: int
    limit: int
    offset: int


class SampleOut(Out):
    ts: datetime
    received_at: datetime
    msg_id: str | None
    reachable: bool
    power: str
    input: str | None
    temperature_c: float | None
    lamp_hours: float | None
    filter_hours: float | None
    uptime_s: float | None
    firmware: str | None
    errors: dict[str, str] | None
    error: str | None
    metrics: dict[str, Any] | None


class DeviceHealth(BaseModel):
    device: str
    start: datetime | None
    end: datetime | None
    limit: int
    items: list[SampleOut]  # newest first


class Health(BaseModel):
    status: str  # "ok" or "degraded"
    database: str
    ingest: dict[str, Any] | None
