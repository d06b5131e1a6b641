"""A site at a glance, and one site's rooms and devices, as the API and the pages show them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from fleet.devices.schemas import DeviceOut


class AgentStatusOut(BaseModel):
    """A site agent's last word as the sites API shows it: its id, state (online or offline),
    version, boot, and when it was stamped, received and last heard."""

    model_config = ConfigDict(from_attributes=True)

    agent_id: str
    state: str
    version: str
    boot_id: str
    ts: datetime
    received_at: datetime
    last_message_at: datetime | None


class SiteSummary(BaseModel):
    """One site at a glance, as `GET /api/v1/sites` and the overview page show it: its devices by
    state, its agent, its newest report and its open alerts, within the caller's scope."""

    model_config = ConfigDict(from_attributes=True)

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
    open_alerts: int = 0  # open or acknowledged; for a vendor, the open ones about its devices


class RoomOut(BaseModel):
    """One room of a site with its devices."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    building: str
    devices: list[DeviceOut]


class SiteDetail(SiteSummary):
    """One site with its timetable, when its config was last synced, and its rooms and devices."""

    timetable: dict[str, Any]
    synced_at: datetime
    rooms: list[RoomOut]


class EventOut(BaseModel):
    """An agent's event at a site, as received (`fleet.protocol.messages.AgentEvent`)."""

    id: int
    kind: str
    agent_id: str
    ts: datetime
    received_at: datetime
    device: str | None
    message: str
    data: dict[str, Any]
