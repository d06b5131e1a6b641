"""What the rollouts API and the rollouts page take and return."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from fleet.time_window import Instant


class RolloutOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    profile: str
    release_version: str
    release_sha256: str
    targets: dict[str, Any]
    policy: dict[str, Any]
    state: str
    current_wave: int
    pause_kind: str
    reason: str
    created_at: datetime
    start_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int] = {}  # devices by update state; "done" sums the final states


class RolloutDeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    site_code: str
    wave: int
    state: str
    method: str
    attempts: int
    firmware_before: str | None
    cmd_id: str | None
    sent_at: datetime | None
    next_try_at: datetime | None
    message: str


class SiteBytesOut(BaseModel):
    site_code: str
    bytes_downloaded: int
    devices_updated: int
    devices_targeted: int


class RolloutDetailOut(RolloutOut):
    devices: list[RolloutDeviceOut]
    sites: list[SiteBytesOut]


class StartIn(BaseModel):
    start_at: Instant | None = None
