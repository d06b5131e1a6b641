"""The scheduled jobs that turn raw samples into usage, and purge raw samples after retention.

`derive_usage` reads which devices got samples since its watermark (by `received_at`, so an
agent's outbox drained hours late is seen like any other batch), and recomputes each affected
device-hour from the samples: delete and insert, so a rerun gives the same rows. Ingest is not
touched: this runs beside it, a minute or so behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlmodel import SQLModel, col

from agent.timetable import Timetable
from fleet.models import Device, Site
from fleet.profile_book import poll_interval_s, profiles_in
from fleet.registry import timetable_from_json
from fleet.reports.models import PowerSession, UsageHour, UsageWatermark
from fleet.reports.usage import (
    Point,
    gap_limit,
    hour_rollups,
    local_hours,
    point_from_sample,
    sessions,
    timeline,
)
from fleet.settings import Settings

log = logging.getLogger(__name__)

WATERMARK = "samples"
# Ingest stamps received_at before its transaction commits (and several ingest workers commit
# out of order): re-read this much before the watermark so a late commit is never skipped.
RESCAN_MARGIN = timedelta(minutes=2)
PURGE_CHUNK = 10_000
# Devices recomputed per transaction.
ROLLUP_CHUNK = 200

USAGE = SQLModel.metadata.tables[str(UsageHour.__tablename__)]
SESSIONS = SQLModel.metadata.tables[str(PowerSession.__tablename__)]
SAMPLES = SQLModel.metadata.tables["sample"]


@dataclass(frozen=True)
class DeviceClock:
    """What usage needs to know of a device besides its samples."""

    tz: ZoneInfo
    timetable: Timetable
    poll_interval_s: float


def device_clocks(conn: Connection, settings: Settings) -> dict[str, DeviceClock]:
    profiles = profiles_in(settings.profiles_dir)
    sites = {
        code: (ZoneInfo(tz), timetable_from_json(tt))
        for code, tz, tt in conn.execute(select(Site.code, Site.timezone, Site.timetable))  # type: ignore[call-overload]
    }
    out = {}
    for device_id, site_code, profile in conn.execute(
        select(Device.id, Device.site_code, Device.profile)  # type: ignore[call-overload]
    ):
        tz, timetable = sites[site_code]
        out[device_id] = DeviceClock(tz, timetable, poll_interval_s(profiles, profile))
    return out


def read_watermark(conn: Connection) -> datetime | None:
    row = conn.execute(
        select(col(UsageWatermark.received_at)).where(col(UsageWatermark.name) == WATERMARK)
    ).first()
    return row[0] if row else None


def derive_usage(engine: Engine, settings: Settings, now: datetime) -> None:
    """The scheduled job (every minute): see roll_up_new_samples."""
    roll_up_new_samples(engine, settings, now)


def roll_up_new_samples(engine: Engine, settings: Settings, now: datetime) -> int:
    """Recompute the usage of every device-hour touched by samples received since the last
    run. Returns how many devices were recomputed.

    Devices are recomputed in chunks, each in its own transaction, so that ingest is never
    kept waiting for the whole run (SQLite has one writer); the watermark moves only once
    every chunk is written, and recomputing is idempotent, so a run cut short is redone whole.
    """
    with engine.connect() as conn:
        watermark = read_watermark(conn)
        query = select(
            SAMPLES.c.device_id,
            func.min(SAMPLES.c.ts),
            func.max(SAMPLES.c.ts),
            func.max(SAMPLES.c.received_at),
        ).group_by(SAMPLES.c.device_id)
        if watermark is not None:
            query = query.where(SAMPLES.c.received_at > watermark - RESCAN_MARGIN)
        touched = conn.execute(query).all()
        if not touched:
            return 0
        clocks = device_clocks(conn, settings)
    for start in range(0, len(touched), ROLLUP_CHUNK):
        with engine.begin() as conn:
            for device_id, first_ts, last_ts, _ in touched[start : start + ROLLUP_CHUNK]:
                recompute_device(conn, device_id, clocks[device_id], first_ts, last_ts)
    newest = max(row[3] for row in touched)
    with engine.begin() as conn:
        _write_watermark(conn, watermark, max(newest, watermark) if watermark else newest)
    log.debug("usage: recomputed %d devices", len(touched))
    return len(touched)


def recompute_device(
    conn: Connection, device_id: str, clock: DeviceClock, first_ts: datetime, last_ts: datetime
) -> None:
    """Rebuild the device's hours and sessions that samples in [first_ts, last_ts] can change.

    A sample changes what is known at most one gap limit either side of it (how far the reading
    before it vouches, and how far it vouches itself), hence the widened window.
    """
    limit = gap_limit(clock.poll_interval_s)
    hours = local_hours(first_ts - limit, last_ts + limit, clock.tz)
    h0, h1 = hours[0][0], hours[-1][1]
    old_sessions = conn.execute(
        select(SESSIONS.c.start, SESSIONS.c.end).where(
            SESSIONS.c.device_id == device_id, SESSIONS.c.start < h1, SESSIONS.c.end > h0
        )
    ).all()
    # Sessions crossing the window are rebuilt whole, so none is cut in two.
    s0 = min([h0, *(s for s, _ in old_sessions)])
    s1 = max([h1, *(e for _, e in old_sessions)])
    points = _points(conn, device_id, s0, s1 + limit)
    class_intervals = clock.timetable.class_intervals(h0, h1, clock.tz)
    rows = hour_rollups(points, clock.poll_interval_s, hours, class_intervals, clock.tz)
    conn.execute(
        delete(USAGE).where(
            USAGE.c.device_id == device_id, USAGE.c.hour_start >= h0, USAGE.c.hour_start < h1
        )
    )
    if rows:
        conn.execute(insert(USAGE), [{"device_id": device_id, **row} for row in rows])
    conn.execute(
        delete(SESSIONS).where(
            SESSIONS.c.device_id == device_id, SESSIONS.c.start < s1, SESSIONS.c.end > s0
        )
    )
    found = sessions(timeline(points, clock.poll_interval_s), s0, s1)
    if found:
        conn.execute(
            insert(SESSIONS),
            [{"device_id": device_id, "start": a, "end": b, "input": i} for a, b, i in found],
        )


def _points(conn: Connection, device_id: str, start: datetime, end: datetime) -> list[Point]:
    """Samples in [start, end) and the one before, which says how the window begins."""
    columns = (
        SAMPLES.c.ts,
        SAMPLES.c.reachable,
        SAMPLES.c.power,
        SAMPLES.c.input,
        SAMPLES.c.temperature_c,
        SAMPLES.c.lamp_hours,
        SAMPLES.c.filter_hours,
        SAMPLES.c.firmware,
        SAMPLES.c.errors,
    )
    mine = SAMPLES.c.device_id == device_id
    before = conn.execute(
        select(*columns).where(mine, SAMPLES.c.ts < start).order_by(SAMPLES.c.ts.desc()).limit(1)
    ).all()
    inside = conn.execute(
        select(*columns)
        .where(mine, SAMPLES.c.ts >= start, SAMPLES.c.ts < end)
        .order_by(SAMPLES.c.ts)
    ).all()
    return [point_from_sample(*row) for row in [*before, *inside]]


def _write_watermark(conn: Connection, old: datetime | None, new: datetime) -> None:
    if old is None:
        conn.execute(insert(UsageWatermark).values(name=WATERMARK, received_at=new))
    else:
        conn.execute(
            update(UsageWatermark)
            .where(col(UsageWatermark.name) == WATERMARK)
            .values(received_at=new)
        )


def purge_samples(engine: Engine, settings: Settings, now: datetime) -> None:
    """The scheduled job (hourly): see purge_rolled_up_samples."""
    purge_rolled_up_samples(engine, settings, now)


def purge_rolled_up_samples(engine: Engine, settings: Settings, now: datetime) -> int:
    """Delete raw samples older than the retention, but only those already rolled up."""
    cutoff = now - timedelta(days=settings.sample_retention_days)
    purged = 0
    with engine.begin() as conn:
        watermark = read_watermark(conn)
        if watermark is None:
            return 0  # nothing rolled up yet: keep everything
        rolled_up = watermark - RESCAN_MARGIN
        old = and_(SAMPLES.c.ts < cutoff, SAMPLES.c.received_at <= rolled_up)
        while True:
            ids = select(SAMPLES.c.id).where(old).limit(PURGE_CHUNK).scalar_subquery()
            deleted = conn.execute(delete(SAMPLES).where(SAMPLES.c.id.in_(ids))).rowcount
            purged += deleted
            if deleted < PURGE_CHUNK:
                break
    if purged:
        log.info("purged %d raw samples older than %s (already rolled up)", purged, cutoff)
    return purged
