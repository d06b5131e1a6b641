"""What the REST API returns (pydantic), apart from the tables themselves and what a domain
package shows to both the API and the pages (its own `schemas` module)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter
from typing_extensions import TypedDict

from fleet.devices.schemas import DEVICE_ROW, DeviceOut


class Out(BaseModel):
    """Base of the API's answers that are read from table rows (`from_attributes`)."""

    model_config = ConfigDict(from_attributes=True)


class DeviceDetail(DeviceOut):
    """One device as the devices API gives ops, technicians and vendors in their scope: its
    registry entry, derived state and reason, and its newest reading (null before the first)."""

    last_reading: dict[str, Any] | None


class DevicePage(BaseModel):
    """A page of the devices the caller may see, by id; the next page is `after=` its `next`."""

    items: list[DeviceOut]  # by id
    total: int  # devices that match, at the time of this page
    limit: int
    next: str | None  # the cursor of the next page (`after=`); None on the last


# DevicePage's body written from rows (`fleet.devices.queries.device_rows`): the same JSON as
# DevicePage(...).model_dump_json(), without validating each row into a DeviceOut first.
DEVICE_PAGE_BODY: TypeAdapter[Any] = TypeAdapter(
    TypedDict(  # type: ignore[operator]
        "DevicePageBody",
        {"items": list[DEVICE_ROW], "total": int, "limit": int, "next": str | None},
    )
)


class SampleOut(Out):
    """One raw health sample of a device: when it was read (`ts`) and stored (`received_at`),
    both UTC, and what it reported; what the device does not report is null."""

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
    """A device's raw health samples from `start` (inclusive) to `end` (exclusive), newest first,
    at most `limit` of them."""

    device: str
    start: datetime | None
    end: datetime | None
    limit: int
    items: list[SampleOut]  # newest first


class Health(BaseModel):
    """What /healthz answers a probe: `ok` or `degraded`, the database's state (`ok` or why
    unreachable), and ingest's own status (null when this process runs no ingest)."""

    status: str  # "ok" or "degraded"
    database: str
    ingest: dict[str, Any] | None
