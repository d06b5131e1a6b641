"""Sites: the fleet at a glance, and one site's rooms and devices."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Annotated, Protocol

from fastapi import APIRouter, HTTPException
from sqlalchemy import func
from sqlmodel import col, select

from fleet.alerts.queries import open_alerts_by_site
from fleet.api.deps import SessionDep
from fleet.api.schemas import (
    AgentStatusOut,
    DeviceOut,
    RoomOut,
    SiteDetail,
    SiteSummary,
)
from fleet.auth.permissions import Allow, Caller
from fleet.models import AgentStatus, Device, Room, Site

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


@router.get("", response_model=list[SiteSummary])
def list_sites(
    session: SessionDep, caller: Annotated[Caller | None, Allow("sites:read")] = None
) -> list[SiteSummary]:
    # The summary's columns, not whole sites: a site's timetable is JSON, parsed for nothing.
    sites = session.execute(select(*SUMMARY_COLUMNS).order_by(col(Site.code))).all()
    if caller is not None and caller.sites is not None:
        sites = [s for s in sites if s.code in caller.sites]  # a technician: their sites only
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    last: dict[str, datetime | None] = {}
    query = (
        select(Device.site_code, Device.state, func.count(), func.max(Device.last_seen_at))
        .where(col(Device.retired_at).is_(None))
        .group_by(col(Device.site_code), col(Device.state))
    )
    for site_code, state, count, seen in session.exec(query):
        counts[site_code][state] = count
        newest = last.get(site_code)
        if seen is not None and (newest is None or seen > newest):
            last[site_code] = seen
    agents = {a.site_code: a for a in session.exec(select(AgentStatus))}
    alerts = open_alerts_by_site(session)
    return [
        _summary(s, counts[s.code], agents.get(s.code), last.get(s.code), alerts.get(s.code, 0))
        for s in sites
    ]


@router.get("/{code}", response_model=SiteDetail, dependencies=[Allow("sites:read")])
def get_site(code: str, session: SessionDep) -> SiteDetail:
    site = session.get(Site, code)
    if site is None:
        raise HTTPException(404, f"no site {code!r}: GET /api/v1/sites lists the known codes")
    devices = session.exec(
        select(Device)
        .where(Device.site_code == code, col(Device.retired_at).is_(None))
        .order_by(col(Device.id))
    ).all()
    rooms = session.exec(select(Room).where(Room.site_code == code).order_by(col(Room.id))).all()
    by_room: dict[str, list[DeviceOut]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for device in devices:
        by_room[device.room_id].append(DeviceOut.model_validate(device))
        counts[device.state] += 1
    seen = [d.last_seen_at for d in devices if d.last_seen_at is not None]
    alerts = open_alerts_by_site(session).get(code, 0)
    summary = _summary(
        site, counts, session.get(AgentStatus, code), max(seen, default=None), alerts
    )
    return SiteDetail(
        **summary.model_dump(),
        timetable=site.timetable,
        synced_at=site.synced_at,
        rooms=[
            RoomOut(id=r.id, name=r.name, building=r.building, devices=by_room[r.id]) for r in rooms
        ],
    )


class _SiteFacts(Protocol):
    code: str
    name: str
    institution: str
    country: str
    timezone: str
    vendor: str


SUMMARY_COLUMNS = [
    col(Site.code),
    col(Site.name),
    col(Site.institution),
    col(Site.country),
    col(Site.timezone),
    col(Site.vendor),
]


def _summary(
    site: _SiteFacts,
    counts: dict[str, int],
    agent: AgentStatus | None,
    last: datetime | None,
    open_alerts: int = 0,
) -> SiteSummary:
    return SiteSummary(
        code=site.code,
        name=site.name,
        institution=site.institution,
        country=site.country,
        timezone=site.timezone,
        vendor=site.vendor,
        devices=sum(counts.values()),
        devices_by_state=dict(counts),
        agent=AgentStatusOut.model_validate(agent) if agent else None,
        last_reported_at=last,
        open_alerts=open_alerts,
    )
