"""Devices: filtered lists, one device's state and reason, and its raw health samples."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import ColumnElement, func
from sqlmodel import col, select

from fleet.api.deps import SessionDep
from fleet.api.schemas import DeviceDetail, DeviceHealth, DevicePage, SampleOut
from fleet.auth.permissions import Allow, Caller
from fleet.devices.schemas import DeviceOut
from fleet.devices.state import DeviceState
from fleet.models import Device, Sample

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

MAX_PAGE = 1000
MAX_SAMPLES = 10_000
LIST_COLUMNS = [getattr(Device, name) for name in DeviceOut.model_fields]


@router.get("", response_model=DevicePage)
def list_devices(
    session: SessionDep,
    site: str | None = None,
    vendor: str | None = None,
    kind: str | None = None,
    state: DeviceState | None = None,
    include_retired: bool = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
    caller: Annotated[Caller | None, Allow("devices:read")] = None,
) -> DevicePage:
    conditions: list[ColumnElement[bool]] = []
    if caller is not None and caller.sites is not None:
        conditions.append(col(Device.site_code).in_(sorted(caller.sites)))
    if caller is not None and caller.vendor is not None:
        conditions.append(func.lower(col(Device.vendor)) == caller.vendor.lower())
    if site is not None:
        conditions.append(col(Device.site_code) == site)
    if vendor is not None:
        # Vendors are written "MAXHUB" or "Seewo" in profiles: match whatever case was typed.
        conditions.append(func.lower(col(Device.vendor)) == vendor.lower())
    if kind is not None:
        conditions.append(col(Device.kind) == kind)
    if state is not None:
        conditions.append(col(Device.state) == state.value)
    if not include_retired:
        conditions.append(col(Device.retired_at).is_(None))
    total = session.exec(select(func.count()).select_from(Device).where(*conditions)).one()
    # Only the listed columns: loading whole Device rows would parse every last_reading's JSON
    # and build ORM objects only to copy them out again.
    rows = session.execute(
        select(*LIST_COLUMNS)
        .where(*conditions)
        .order_by(col(Device.id))
        .limit(limit)
        .offset(offset)
    ).mappings()
    return DevicePage(
        items=[DeviceOut.model_validate(dict(r)) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{device_id}", response_model=DeviceDetail, dependencies=[Allow("devices:read")])
def get_device(device_id: str, session: SessionDep) -> DeviceDetail:
    return DeviceDetail.model_validate(_device_or_404(session, device_id))


@router.get(
    "/{device_id}/health", response_model=DeviceHealth, dependencies=[Allow("devices:read")]
)
def device_health(
    device_id: str,
    session: SessionDep,
    start: Annotated[
        datetime | None, Query(alias="from", description="ISO 8601 with offset, inclusive")
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="ISO 8601 with offset, exclusive")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SAMPLES)] = 1000,
) -> DeviceHealth:
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise HTTPException(
                422, f"'{name}' has no timezone: write it as ISO 8601 with 'Z' or '+05:45'"
            )
    if start is not None and end is not None and start > end:
        raise HTTPException(
            422, f"'from' ({start.isoformat()}) is after 'to' ({end.isoformat()}): swap them"
        )
    _device_or_404(session, device_id)
    query = select(Sample).where(Sample.device_id == device_id)
    if start is not None:
        query = query.where(col(Sample.ts) >= start)
    if end is not None:
        query = query.where(col(Sample.ts) < end)
    rows = session.exec(query.order_by(col(Sample.ts).desc()).limit(limit)).all()
    return DeviceHealth(
        device=device_id,
        start=start,
        end=end,
        limit=limit,
        items=[SampleOut.model_validate(s) for s in rows],
    )


def _device_or_404(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(
            404, f"no device {device_id!r}: GET /api/v1/devices lists the registered ids"
        )
    return device
