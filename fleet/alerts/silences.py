"""Silences: a site, one room of it, or one device muted for a period, with a reason. Alerts
under a silence are still recorded (and shown as silenced) but notify no one: neither the
webhook nor e-mail. When the silence ends, whatever is still open is notified then
(fleet.alerts.notices and fleet.alerts.webhook look a silence up here at send time)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Table, select
from sqlmodel import Session, SQLModel

from fleet.alerts.models import Silence
from fleet.alerts.schemas import SilenceIn
from fleet.auth.audit import record
from fleet.auth.permissions import Caller

SILENCES: Table = SQLModel.metadata.tables["alert_silence"]


class SilenceNotFound(LookupError):
    """No silence has that id (or the caller may not see it: the same words)."""


class SilenceOutOfPlace(ValueError):
    """The room or device a silence names is not at the site it names (or the site is unknown,
    or outside the caller's sites: the same words)."""


class SilencePeriodRefused(ValueError):
    """The period is empty, over, or longer than MAX_LENGTH: what is wrong, for the caller."""


MAX_LENGTH = timedelta(days=90)  # longer is a retirement, not a silence


@dataclass(frozen=True)
class Muted:
    """One active silence as the notifiers need it."""

    id: int
    site: str
    room: str | None
    device: str | None
    created_by: str
    ends_at: datetime

    def covers(self, site: str, room: str | None, device: str | None) -> bool:
        """A site-wide silence covers every alert of the site; a room's, the alerts of the
        devices in it; a device's, that device's."""
        if site != self.site:
            return False
        if self.device is not None:
            return device == self.device
        if self.room is not None:
            return room is not None and room == self.room
        return True


def active(conn: Connection, now: datetime) -> list[Muted]:
    """The silences in force at `now`."""
    rows = conn.execute(
        select(SILENCES).where(
            SILENCES.c.starts_at <= now, SILENCES.c.ends_at > now, SILENCES.c.expired_at.is_(None)
        )
    ).mappings()
    return [
        Muted(r["id"], r["site_code"], r["room_id"], r["device_id"], r["created_by"], r["ends_at"])
        for r in rows
    ]


def covering(
    silences: Iterable[Muted], site: str, room: str | None, device: str | None
) -> Muted | None:
    """The silence that mutes an alert of this site/room/device, the longest first."""
    found = [s for s in silences if s.covers(site, room, device)]
    return max(found, key=lambda s: s.ends_at) if found else None


def room_of(conn: Connection, device_id: str | None) -> str | None:
    """The room a device is in; None for a site's own alert (no device) or a device not in the
    registry."""
    if device_id is None:
        return None
    devices = SQLModel.metadata.tables["device"]
    return conn.execute(
        select(devices.c.room_id).where(devices.c.id == device_id)
    ).scalar_one_or_none()


def create(
    session: Session,
    *,
    site: str,
    room: str | None,
    device: str | None,
    reason: str,
    by: str,
    starts_at: datetime,
    ends_at: datetime,
    now: datetime,
) -> Silence:
    """Record a silence and commit. Raises SilenceOutOfPlace when the room or device is not
    at `site` (or does not exist)."""
    from fleet.models import Device, Room

    if room is not None:
        found = session.get(Room, room)
        if found is None or found.site_code != site:
            raise SilenceOutOfPlace(f"no room {room!r} at site {site!r}")
    if device is not None:
        dev = session.get(Device, device)
        if dev is None or dev.site_code != site:
            raise SilenceOutOfPlace(f"no device {device!r} at site {site!r}")
        if room is not None and dev.room_id != room:
            raise SilenceOutOfPlace(f"device {device!r} is not in room {room!r}")
    silence = Silence(
        site_code=site,
        room_id=room,
        device_id=device,
        reason=reason,
        created_by=by,
        created_at=now,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    session.add(silence)
    session.commit()
    session.refresh(silence)
    return silence


def create_for(session: Session, caller: Caller, body: SilenceIn, now: datetime) -> Silence:
    """What `POST /api/v1/silences` and the silences page both do: check the site is the
    caller's and the period sound, record the silence, audit `silence.create`, commit.
    Raises SilenceOutOfPlace (an unknown site, one outside the caller's sites, or a room or
    device not at it) and SilencePeriodRefused."""
    from fleet.models import Site

    if session.get(Site, body.site) is None or not (
        caller.sites is None or body.site in caller.sites
    ):
        raise SilenceOutOfPlace(f"no site {body.site!r}: GET /api/v1/sites lists the codes")
    starts = body.starts_at or now
    if body.ends_at <= max(starts, now):
        raise SilencePeriodRefused("ends_at must be after starts_at and in the future")
    if body.ends_at - starts > MAX_LENGTH:
        raise SilencePeriodRefused(
            f"a silence lasts at most {MAX_LENGTH.days} days: retire the device instead"
        )
    silence = create(
        session,
        site=body.site,
        room=body.room,
        device=body.device,
        reason=body.reason,
        by=caller.name,
        starts_at=starts,
        ends_at=body.ends_at,
        now=now,
    )
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="silence.create",
        target=body.device or body.room or body.site,
        detail={"silence": silence.id, "ends_at": body.ends_at.isoformat()},
    )
    session.commit()
    return silence


def expire_for(session: Session, caller: Caller, silence_id: int, now: datetime) -> Silence:
    """What `POST /api/v1/silences/{id}/expire` and the page's "end now" both do: end it,
    audit `silence.expire`, commit. Raises SilenceNotFound (also outside the caller's sites)."""
    silence = expire(session, silence_id, caller.sites, caller.name, now)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="silence.expire",
        target=str(silence_id),
    )
    session.commit()
    return silence


def find(
    session: Session, sites: frozenset[str] | None, *, current_at: datetime | None, limit: int
) -> list[Silence]:
    """Newest first; within `sites` (None: all); only those in force at `current_at` if given."""
    query = select(Silence).order_by(SILENCES.c.id.desc()).limit(limit)
    if sites is not None:
        query = query.where(SILENCES.c.site_code.in_(sorted(sites)))
    if current_at is not None:
        query = query.where(
            SILENCES.c.starts_at <= current_at,
            SILENCES.c.ends_at > current_at,
            SILENCES.c.expired_at.is_(None),
        )
    return list(session.execute(query).scalars())


def expire(
    session: Session, silence_id: int, sites: frozenset[str] | None, by: str, now: datetime
) -> Silence:
    """End a silence now (again on an ended one changes nothing) and commit. Raises
    SilenceNotFound, also for a silence outside `sites`."""
    silence = session.get(Silence, silence_id)
    if silence is None or (sites is not None and silence.site_code not in sites):
        raise SilenceNotFound(f"no silence {silence_id}: GET /api/v1/silences lists them")
    if silence.expired_at is None and silence.ends_at > now:
        silence.expired_at = now
        silence.expired_by = by
        session.add(silence)
        _release_held_webhooks(session, silence.id, now)
        session.commit()
        session.refresh(silence)
    return silence


def _release_held_webhooks(session: Session, silence_id: int | None, now: datetime) -> None:
    """Webhook deliveries held until the silence's planned end are due now: ended early, it
    notifies what is still open at once, as e-mail does (the delivery job judges each again)."""
    from fleet.alerts.reconcile import DELIVERIES

    alerts = SQLModel.metadata.tables["alert"]
    muted = select(alerts.c.id).where(alerts.c.silence_id == silence_id)
    session.execute(
        DELIVERIES.update()
        .where(
            DELIVERIES.c.alert_id.in_(muted),
            DELIVERIES.c.delivered_at.is_(None),
            DELIVERIES.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )


@dataclass(frozen=True)
class Hold:
    """What a silence says of one notification about an alert: send it now (`until` None and
    not `drop`), hold it until `until`, or `drop` it (the alert was resolved while muted)."""

    until: datetime | None = None
    drop: bool = False


def hold_for(conn: Connection, alert_id: int, now: datetime) -> Hold:
    """For a notification sent outside fleet.alerts.notices (the webhook): held while a
    silence covers its alert; dropped once the silence is over if the alert was resolved
    under it (an expired silence notifies only what is still open)."""
    alerts = SQLModel.metadata.tables["alert"]
    alert = (
        conn.execute(
            select(
                alerts.c.site_code,
                alerts.c.device_id,
                alerts.c.state,
                alerts.c.silence_id,
                alerts.c.resolved_at,
            ).where(alerts.c.id == alert_id)
        )
        .mappings()
        .one_or_none()
    )
    if alert is None:
        return Hold()
    silence = covering(
        active(conn, now), alert["site_code"], room_of(conn, alert["device_id"]), alert["device_id"]
    )
    if silence is not None:
        return Hold(until=silence.ends_at)
    if alert["silence_id"] is not None and alert["resolved_at"] is not None:
        ended = conn.execute(
            select(SILENCES.c.ends_at, SILENCES.c.expired_at).where(
                SILENCES.c.id == alert["silence_id"]
            )
        ).one_or_none()
        if ended is not None and alert["resolved_at"] <= (ended[1] or ended[0]):
            return Hold(drop=True)
    return Hold()


def silenced_now(
    conn: Connection, alerts: Iterable[tuple[int, str, str | None]], now: datetime
) -> dict[int, Muted]:
    """Of these (alert id, site, device), those a silence mutes at `now`, with the silence:
    what the dashboard marks as silenced, even before the notice job has recorded it."""
    silences = active(conn, now)
    if not silences:
        return {}
    out: dict[int, Muted] = {}
    for alert_id, site, device in alerts:
        found = covering(silences, site, room_of(conn, device), device)
        if found is not None:
            out[alert_id] = found
    return out
