"""A device as the API and the pages show it."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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
