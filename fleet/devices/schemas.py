"""A device as the API and the pages show it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypedDict


class DeviceOut(BaseModel):
    """One device of the registry, with its derived state and the reason for it, as the devices API
    and the pages show it."""

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


# DeviceOut's fields as a TypedDict: a device row as the database gave it is written out as
# JSON through this, by DeviceOut's own field types, in DeviceOut's order and words, without
# first being validated into a model (rows of typed columns need no validating, and for a page
# of a hundred that was a third of the page's cost).
DEVICE_ROW: Any = TypedDict(  # type: ignore[misc]
    "DeviceRow", {name: field.annotation for name, field in DeviceOut.model_fields.items()}
)
