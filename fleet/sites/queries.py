"""The fleet at a glance, and one site's rooms and devices: what `GET /api/v1/sites` and the
dashboard's overview and site pages show.

The caller's scope is applied here, in `site_summaries`: ops see every site, a technician their
sites, a vendor each site where it has devices, counting only those devices and the alerts about
them (never the site's agent: a vendor sees devices, never a site's own business).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Dialect, Row, func, type_coerce
from sqlalchemy.types import NullType
from sqlmodel import Session, col, select

from fleet.alerts.queries import OpenAlerts, open_alerts_by_site, unacknowledged_alerts_by_site
from fleet.auth.permissions import Caller
from fleet.devices.schemas import DeviceOut
from fleet.models import AgentMessage, AgentStatus, Device, Room, Site, UtcDateTime
from fleet.paging import Order, Page, SortKey
from fleet.protocol.messages import EventKind
from fleet.sites.schemas import AgentStatusOut, EventOut, RoomOut, SiteDetail, SiteSummary


class SiteNotFound(LookupError):
    """No site has that code; the message says where to list them."""

    def __init__(self, code: str) -> None:
        """`code`: the site code asked for, kept on the error."""
        super().__init__(f"no site {code!r}: GET /api/v1/sites lists the known codes")
        self.code = code


class _SiteFacts(Protocol):
    code: str
    name: str
    institution: str
    country: str
    timezone: str
    vendor: str


# Newest first, by the id the controller gave each event as it arrived.
EVENTS = Order("events", SortKey(col(AgentMessage.id), "int", descending=True))

SUMMARY_COLUMNS = [
    col(Site.code),
    col(Site.name),
    col(Site.institution),
    col(Site.country),
    col(Site.timezone),
    col(Site.vendor),
]


# The fleet's counts, per site and state, with the newest report of each: the overview's one
# scan of the device table. The newest report comes back as the database wrote it (text on
# SQLite), not as a datetime: only each site's newest of them is made one (`_as_instant`), not
# the one of every site and state, which at 100 sites cost a fifth of the page.
SITE_COUNTS = (
    select(
        Device.site_code,
        Device.state,
        func.count(),
        type_coerce(func.max(col(Device.last_seen_at)), NullType()),
    )
    .where(col(Device.retired_at).is_(None))
    .group_by(col(Device.site_code), col(Device.state))
)
# Built once: a statement made afresh for every request costs as much again to build and to
# match to its cached compilation as a small query costs to run.
SITE_SUMMARIES = select(*SUMMARY_COLUMNS).order_by(col(Site.code))
AGENTS = select(*AgentStatus.__table__.columns)  # type: ignore[attr-defined]


def site_summaries(session: Session, caller: Caller | None) -> list[SiteSummary]:
    """Every site the caller may see (None: every site), by code."""
    # The summary's columns, not whole sites: a site's timetable is JSON, parsed for nothing.
    conn = session.connection()
    sites = conn.execute(SITE_SUMMARIES).all()
    if caller is not None and caller.vendor is not None:
        return _vendor_summaries(session, sites, caller)
    if caller is not None and caller.sites is not None:
        sites = [s for s in sites if s.code in caller.sites]  # a technician: their sites only
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    last: dict[str, Any] = {}
    # Through the connection, not the ORM session: plain rows, without the ORM's result
    # machinery per row (a tenth of the overview's time at 100,000 devices).
    # All at once (fetchall), not row by row: a fetch call per row cost more than the rows.
    for site_code, state, count, seen in conn.execute(SITE_COUNTS).all():
        counts[site_code][state] = count
        newest = last.get(site_code)
        if seen is not None and (newest is None or seen > newest):
            last[site_code] = seen
    instant = _as_instant(conn.dialect)
    agents = {a.site_code: a for a in conn.execute(AGENTS).all()}
    alerts = open_alerts_by_site(session)
    return [
        _summary(
            s,
            counts[s.code],
            agents.get(s.code),
            instant(last.get(s.code)),
            alerts.get(s.code, 0),
        )
        for s in sites
    ]


def _as_instant(dialect: Dialect) -> Callable[[Any], datetime | None]:
    """Turns a `last_seen_at` as the database gave it into the aware UTC datetime the column
    reads as. The database's own values compare in time order: SQLite keeps them as text of
    one fixed width, PostgreSQL as timestamps."""
    convert = UtcDateTime().dialect_impl(dialect).result_processor(dialect, None)
    if convert is None:
        return lambda value: value
    return lambda value: None if value is None else convert(value)


def _vendor_summaries(
    session: Session, sites: Sequence[_SiteFacts], caller: Caller
) -> list[SiteSummary]:
    """The sites where the caller's vendor has devices, counting only those devices, and only
    the alerts about them that nobody has acknowledged yet."""
    assert caller.vendor is not None
    counts: dict[str, dict[str, int]] = {}
    last: dict[str, datetime] = {}
    query = (
        select(Device.site_code, Device.state, func.count(), func.max(Device.last_seen_at))
        .where(
            col(Device.retired_at).is_(None),
            func.lower(col(Device.vendor)) == caller.vendor.lower(),
        )
        .group_by(col(Device.site_code), col(Device.state))
    )
    for site_code, state, count, seen in session.exec(query):
        counts.setdefault(site_code, {})[state] = count
        if seen is not None and (site_code not in last or seen > last[site_code]):
            last[site_code] = seen
    alerts = unacknowledged_alerts_by_site(session, caller)
    return [
        _summary(s, counts[s.code], None, last.get(s.code), alerts.get(s.code, OpenAlerts()).total)
        for s in sites
        if s.code in counts
    ]


def site_detail(session: Session, code: str) -> SiteDetail:
    """One site with its rooms and their devices (retired ones left out). Raises
    SiteNotFound. Whether the caller may see it is checked before, by the permission
    (fleet.auth.permissions), on the code in the path."""
    site = session.get(Site, code)
    if site is None:
        raise SiteNotFound(code)
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


def site_events(
    session: Session,
    code: str,
    *,
    kind: EventKind | None = None,
    limit: int = 50,
    after: str | None = None,
) -> Page[EventOut]:
    """A site's agent events (of `kind` only, when given), newest first: one page of up to
    `limit` after the cursor `after`. Raises SiteNotFound and fleet.paging.BadCursor.
    Whether the caller may see the site is checked before, by the permission."""
    if session.get(Site, code) is None:
        raise SiteNotFound(code)
    query = select(AgentMessage).where(AgentMessage.site_code == code, AgentMessage.kind == "event")
    if kind is not None:
        # The kind lives in the stored body: JSON_EXTRACT on SQLite, ->> on PostgreSQL.
        query = query.where(col(AgentMessage.body)["kind"].as_string() == kind.value)
    if after is not None:
        query = query.where(EVENTS.after(after))
    rows = session.exec(query.order_by(*EVENTS.order_by()).limit(limit + 1)).all()
    return EVENTS.page([_event_out(r) for r in rows], limit, lambda e: (e.id,))


def _event_out(row: AgentMessage) -> EventOut:
    body = row.body
    return EventOut(
        id=row.id or 0,
        kind=str(body.get("kind", "")),
        agent_id=str(body.get("agent_id", "")),
        ts=row.ts,
        received_at=row.received_at,
        device=body.get("device"),
        message=str(body.get("message", "")),
        data=body.get("data") or {},
    )


def _summary(
    site: _SiteFacts,
    counts: dict[str, int],
    agent: AgentStatus | Row[Any] | None,  # the agent's row, or its columns
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
