"""Who is e-mailed about an alert, and when: the subscribers as soon as it is open, then, while
nobody acknowledges it, the next level after the severity's delay (the site's technicians,
then ops). Each level reached is recorded on the alert (notice_level, noticed_at,
escalated_at) in the same transaction as the e-mails it queues (email_delivery), so a restart
neither loses nor repeats them. Once it is resolved, everyone who was e-mailed about it is
told who resolved it and when (resolve_noticed_at marks that done). An alert under a silence
(fleet.alerts.silences) moves no level and queues nothing, and the silence is recorded on it;
once the silence is over, what is still open is notified on the next run. A scheduled job,
never on the ingest path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, Select, Table, and_, func, insert, or_, select, text
from sqlmodel import SQLModel
from ulid import ULID

# Importing the models registers their tables on SQLModel.metadata, read just below.
from fleet.alerts import models as _alert_models  # noqa: F401
from fleet.alerts.models import RESOLVE_UNTOLD, AlertState, Severity
from fleet.alerts.silences import SILENCES, Muted, active, covering
from fleet.auth import models as _auth_models  # noqa: F401
from fleet.protocol.zones import UnknownZone, zone_named

ALERTS: Table = SQLModel.metadata.tables["alert"]
SUBSCRIPTIONS: Table = SQLModel.metadata.tables["alert_subscription"]
EMAILS: Table = SQLModel.metadata.tables["email_delivery"]
USERS: Table = SQLModel.metadata.tables["fleet_user"]
SITES: Table = SQLModel.metadata.tables["site"]
DEVICES: Table = SQLModel.metadata.tables["device"]

RESOLVED, SUBSCRIBERS, TECHNICIANS, OPS = 0, 1, 2, 3  # RESOLVED: the word that it ended
LEVEL_NAMES = {SUBSCRIBERS: "subscribers", TECHNICIANS: "site technicians", OPS: "ops"}
RANK = {Severity.warning.value: 0, Severity.critical.value: 1}
BATCH = 500  # alerts judged per run


@dataclass(frozen=True)
class NoticePolicy:
    """`escalate_after`: severity -> how long an open, unacknowledged alert waits at one level
    before the next. `public_url`: the dashboard as its readers reach it (links in messages).
    `enabled`: False queues nothing (no SMTP server configured)."""

    public_url: str
    escalate_after: Mapping[str, timedelta]
    enabled: bool = True


def notify_due(engine: Engine, policy: NoticePolicy, now: datetime) -> None:
    """The scheduled job."""
    if policy.enabled:
        with engine.begin() as conn:
            advance(conn, policy, now)


def advance(conn: Connection, policy: NoticePolicy, now: datetime) -> list[tuple[int, int]]:
    """Move every unresolved alert that is due to its next level, in the caller's transaction;
    returns (alert id, level reached) for each move."""
    silences = active(conn, now)
    _tell_resolved(conn, policy, now)
    rows = _candidates(conn, policy, silences, now)
    if not rows:
        return []
    rooms = _rooms(conn, [r["device_id"] for r in rows if r["device_id"]])
    moved: list[tuple[int, int]] = []
    for alert in rows:
        silence = covering(
            silences, alert["site_code"], rooms.get(alert["device_id"]), alert["device_id"]
        )
        if silence is not None:
            _mark_silenced(conn, alert, silence, now)
            continue
        level = _due_level(alert, policy, now)
        if level is None:
            continue
        recipients = _recipients(conn, alert, level) - _already_mailed(conn, alert["id"])
        for address in sorted(recipients):
            _queue(conn, policy, alert, level, address, now)
        values: dict[str, Any] = {"notice_level": level}
        if level == SUBSCRIBERS:
            values["noticed_at"] = now
        else:
            values["escalated_at"] = now
        conn.execute(ALERTS.update().where(ALERTS.c.id == alert["id"]).values(**values))
        moved.append((alert["id"], level))
    return moved


def _candidates(
    conn: Connection, policy: NoticePolicy, silences: list[Muted], now: datetime
) -> list[Any]:
    """The alerts that may move now: those nobody was told of yet, and open ones whose
    severity's delay has passed at their level. An alert already marked with a silence still
    in force is left out, so a muted site's many alerts never crowd out another's new one."""
    not_muted = or_(
        ALERTS.c.silence_id.is_(None), ALERTS.c.silence_id.not_in([s.id for s in silences])
    )
    fresh = select(ALERTS).where(
        ALERTS.c.state != AlertState.resolved.value, ALERTS.c.notice_level == 0, not_muted
    )
    since = func.coalesce(ALERTS.c.escalated_at, ALERTS.c.noticed_at)
    due = [
        and_(ALERTS.c.severity == severity, since <= now - delay)
        for severity, delay in policy.escalate_after.items()
    ]
    rows = list(conn.execute(fresh.order_by(ALERTS.c.id).limit(BATCH)).mappings())
    if due:
        waiting = select(ALERTS).where(
            ALERTS.c.state == AlertState.open.value,
            ALERTS.c.notice_level.between(SUBSCRIBERS, OPS - 1),
            or_(*due),
            not_muted,
        )
        rows += conn.execute(waiting.order_by(ALERTS.c.id).limit(BATCH)).mappings()
    return rows


def resolved_untold() -> Select[Any]:
    """The query for resolved alerts whose recipients are not yet told the end, oldest first,
    BATCH at most; it reads the partial index ix_alert_resolve_untold, not every resolved
    alert."""
    return (
        select(ALERTS)
        # Word for word the partial index's condition, so that both databases use it.
        .where(ALERTS.c.state == AlertState.resolved.value, text(RESOLVE_UNTOLD))
        .order_by(ALERTS.c.id)
        .limit(BATCH)
    )


def _tell_resolved(conn: Connection, policy: NoticePolicy, now: datetime) -> None:
    """Everyone e-mailed about an alert now resolved, and still among its recipients, is sent
    word of who resolved it and when, through the same outbox; once per alert
    (resolve_noticed_at). Resolved while a silence covered it: nobody is told, as nobody was
    told of what happened under it, even when the silence is over by the time this runs."""
    rows = list(conn.execute(resolved_untold()).mappings())
    if not rows:
        return
    rooms = _rooms(conn, [r["device_id"] for r in rows if r["device_id"]])
    # In force when it was resolved, not now: a silence may have begun since (the end of an
    # alert nobody was kept from hearing of), or ended since (the run came late: a restart).
    spans = _silences_over(conn, min(r["resolved_at"] for r in rows), now)
    for alert in rows:
        at = alert["resolved_at"]
        then = [m for m, start, end in spans if start <= at < end]
        muted = covering(
            then, alert["site_code"], rooms.get(alert["device_id"]), alert["device_id"]
        )
        if muted is None:
            told = conn.execute(
                select(EMAILS.c.recipient)
                .where(EMAILS.c.alert_id == alert["id"], EMAILS.c.level >= SUBSCRIBERS)
                .distinct()
            ).scalars()
            # Only those who would still be told of it now: someone who unsubscribed, was
            # revoked or left the site since is not sent who resolved it and the note.
            current: set[str] = set()
            for level in range(SUBSCRIBERS, alert["notice_level"] + 1):
                current |= _recipients(conn, alert, level)
            for address in sorted(set(told) & current):
                _queue(conn, policy, alert, RESOLVED, address, now)
        conn.execute(
            ALERTS.update().where(ALERTS.c.id == alert["id"]).values(resolve_noticed_at=now)
        )


def _silences_over(
    conn: Connection, since: datetime, until: datetime
) -> list[tuple[Muted, datetime, datetime]]:
    """The silences in force at some time from `since` to `until`, each with when it was in
    force from and to (the end is when it was ended early, if it was)."""
    rows = conn.execute(
        select(SILENCES).where(
            SILENCES.c.starts_at <= until,
            SILENCES.c.ends_at > since,
            or_(SILENCES.c.expired_at.is_(None), SILENCES.c.expired_at > since),
        )
    ).mappings()
    out = []
    for r in rows:
        muted = Muted(
            r["id"], r["site_code"], r["room_id"], r["device_id"], r["created_by"], r["ends_at"]
        )
        end = min(r["ends_at"], r["expired_at"]) if r["expired_at"] else r["ends_at"]
        out.append((muted, r["starts_at"], end))
    return out


def _due_level(alert: Any, policy: NoticePolicy, now: datetime) -> int | None:
    level = alert["notice_level"]
    if level == 0:
        return SUBSCRIBERS
    if alert["state"] != AlertState.open.value:
        return None  # acknowledged: someone has it, nobody else is called
    delay = policy.escalate_after.get(alert["severity"])
    since = alert["escalated_at"] or alert["noticed_at"]
    if delay is None or since is None or now < since + delay:
        return None
    return int(level) + 1


def _mark_silenced(conn: Connection, alert: Any, silence: Muted, now: datetime) -> None:
    if alert["silence_id"] == silence.id:
        return
    conn.execute(
        ALERTS.update()
        .where(ALERTS.c.id == alert["id"])
        .values(silence_id=silence.id, silenced_by=silence.created_by, silenced_at=now)
    )


def _rooms(conn: Connection, device_ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    unique = sorted(set(device_ids))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        for device_id, room in conn.execute(
            select(DEVICES.c.id, DEVICES.c.room_id).where(DEVICES.c.id.in_(chunk))
        ):
            out[device_id] = room
    return out


def _recipients(conn: Connection, alert: Any, level: int) -> set[str]:
    """The addresses of this level for this alert, each within its user's scope."""
    rows = conn.execute(
        select(
            SUBSCRIPTIONS.c.email,
            SUBSCRIPTIONS.c.site_code,
            SUBSCRIPTIONS.c.min_severity,
            USERS.c.role,
            USERS.c.sites,
            USERS.c.vendor,
        )
        .join(USERS, USERS.c.name == SUBSCRIPTIONS.c.user_name)
        .where(USERS.c.revoked_at.is_(None))
    ).mappings()
    vendor = None
    if alert["device_id"]:
        vendor = conn.execute(
            select(DEVICES.c.vendor).where(DEVICES.c.id == alert["device_id"])
        ).scalar_one_or_none()
    site = alert["site_code"]
    out: set[str] = set()
    for row in rows:
        role = row["role"]
        in_scope = (
            role == "ops"
            or (role == "technician" and site in (row["sites"] or []))
            or (
                role == "vendor"
                and vendor is not None
                and row["vendor"] is not None
                and vendor.lower() == row["vendor"].lower()
            )
        )
        if not in_scope:
            continue
        if level == SUBSCRIBERS:
            wanted = row["site_code"] in (None, site) and RANK.get(
                alert["severity"], 0
            ) >= RANK.get(row["min_severity"], 0)
        elif level == TECHNICIANS:
            wanted = role == "technician"
        else:
            wanted = role == "ops"
        if wanted:
            out.add(row["email"])
    return out


def _already_mailed(conn: Connection, alert_id: int) -> set[str]:
    return set(
        conn.execute(select(EMAILS.c.recipient).where(EMAILS.c.alert_id == alert_id)).scalars()
    )


def _queue(
    conn: Connection, policy: NoticePolicy, alert: Any, level: int, address: str, now: datetime
) -> None:
    subject, body = message(conn, policy, alert, level)
    conn.execute(
        insert(EMAILS).values(
            message_id=str(ULID()),
            alert_id=alert["id"],
            recipient=address,
            level=level,
            subject=subject,
            body=body,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )


def message(conn: Connection, policy: NoticePolicy, alert: Any, level: int) -> tuple[str, str]:
    """The subject and plain-text body: what, where, when in the site's local time, and the
    link to the alert's page; at level RESOLVED, who resolved it and when."""
    site = conn.execute(
        select(SITES.c.name, SITES.c.timezone).where(SITES.c.code == alert["site_code"])
    ).one_or_none()
    name, zone = (site[0], site[1]) if site is not None else (alert["site_code"], "UTC")
    try:
        tz = zone_named(zone)
    except UnknownZone:
        tz, zone = ZoneInfo("UTC"), "UTC"
    opened = alert["opened_at"].astimezone(tz)
    what = alert["device_id"] or "the site"
    link = f"{policy.public_url.rstrip('/')}/alerts/{alert['id']}"
    where = [f"Site: {name} ({alert['site_code']})", f"Device: {what}"]
    if level == RESOLVED:
        resolved = alert["resolved_at"].astimezone(tz)
        by = alert["resolved_by"] or "nobody: the condition cleared by itself"
        subject = f"[resolved] {alert['kind']} at {alert['site_code']}: {what}"
        lines = [
            f"Resolved: {alert['message']}",
            "",
            *where,
            f"Opened: {opened:%Y-%m-%d %H:%M} {zone} (site local time)",
            f"Resolved: {resolved:%Y-%m-%d %H:%M} {zone} (site local time)",
            f"Resolved by: {by}",
            *([f"Resolution: {alert['resolution']}"] if alert["resolution"] else []),
            f"Alert: {link}",
        ]
        return subject, "\n".join(lines)
    escalation = (
        "" if level == SUBSCRIBERS else f" (escalated to {LEVEL_NAMES[level]}: unacknowledged)"
    )
    subject = f"[{alert['severity']}] {alert['kind']} at {alert['site_code']}: {what}{escalation}"
    body = "\n".join(
        [
            f"{alert['message']}",
            "",
            *where,
            f"Severity: {alert['severity']}",
            f"Opened: {opened:%Y-%m-%d %H:%M} {zone} (site local time)",
            f"Alert: {link}",
            "",
            "Acknowledge it on that page to stop the escalation.",
        ]
    )
    return subject, body
