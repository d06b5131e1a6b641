"""Devices: filtered lists, one device's state and reason, and its raw health samples."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from sqlmodel import col, select

from fleet.api.deps import SessionDep
from fleet.api.paging import cursor_refused, link_next, refuse_offset
from fleet.api.params import (
    After,
    DeviceIdPath,
    SiteFilter,
    VendorFilter,
    limit_query,
    refused,
    since_query,
    text_filter,
)
from fleet.api.responses import prevalidated
from fleet.api.schemas import (
    DEVICE_PAGE_BODY,
    DeviceDetail,
    DeviceHealth,
    DevicePage,
    SampleOut,
)
from fleet.auth.permissions import Allow, Caller, no_device_detail
from fleet.devices.queries import device_rows
from fleet.devices.state import DeviceState
from fleet.models import Device, Sample
from fleet.paging import BadCursor
from fleet.time_window import Instant

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

MAX_PAGE = 1000
MAX_SAMPLES = 10_000


@router.get("", response_model=DevicePage, dependencies=[Depends(refuse_offset)])
def list_devices(
    request: Request,
    response: Response,
    session: SessionDep,
    site: SiteFilter = None,
    vendor: VendorFilter = None,
    kind: Annotated[str | None, text_filter("panel, projector or device", 32)] = None,
    state: DeviceState | None = None,
    include_retired: bool = False,
    limit: Annotated[int, limit_query(MAX_PAGE)] = 100,
    after: After = None,
    caller: Annotated[Caller | None, Allow("devices:read")] = None,
) -> Response:
    """By id, a page at a time: the next page is `after=` this page's `next`."""
    try:
        page = device_rows(
            session,
            caller,
            site=site,
            vendor=vendor,
            kind=kind,
            state=state,
            include_retired=include_retired,
            limit=limit,
            after=after,
        )
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    body = {"items": page.items, "total": page.total or 0, "limit": limit, "next": page.next}
    return prevalidated(DEVICE_PAGE_BODY.dump_json(body), response)


@router.get("/{device_id}", response_model=DeviceDetail, dependencies=[Allow("devices:read")])
def get_device(device_id: DeviceIdPath, session: SessionDep) -> DeviceDetail:
    return DeviceDetail.model_validate(_device_or_404(session, device_id))


@router.get(
    "/{device_id}/health", response_model=DeviceHealth, dependencies=[Allow("devices:read")]
)
def device_health(
    device_id: DeviceIdPath,
    request: Request,
    response: Response,
    session: SessionDep,
    start: Annotated[Instant | None, since_query("inclusive", alias="from")] = None,
    end: Annotated[Instant | None, since_query("exclusive", alias="to")] = None,
    limit: Annotated[int, limit_query(MAX_SAMPLES)] = 1000,
) -> DeviceHealth:
    """Newest first. Samples are unique per device and time, so the next page is `to=` the
    last sample's `ts` (the Link header gives it)."""
    if start is not None and end is not None and start > end:
        raise refused(
            "query",
            "from",
            f"'from' ({start.isoformat()}) is after 'to' ({end.isoformat()}): swap them",
            start.isoformat(),
        )
    _device_or_404(session, device_id)
    query = select(Sample).where(Sample.device_id == device_id)
    if start is not None:
        query = query.where(col(Sample.ts) >= start)
    if end is not None:
        query = query.where(col(Sample.ts) < end)
    rows = session.exec(query.order_by(col(Sample.ts).desc()).limit(limit + 1)).all()
    items = [SampleOut.model_validate(s) for s in rows[:limit]]
    more = len(rows) > limit and bool(items)
    link_next(request, response, items[-1].ts.isoformat() if more else None, param="to")
    return DeviceHealth(device=device_id, start=start, end=end, limit=limit, items=items)


def _device_or_404(session: SessionDep, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, no_device_detail(device_id))
    return device
