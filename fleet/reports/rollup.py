"""The scheduled jobs that turn raw samples into usage, and purge raw samples after retention.

`derive_usage` reads which devices got samples since its watermark (by `received_at`, so an
agent's outbox drained hours late is seen like any other batch), and recomputes each affected
device-hour from the samples: delete and insert, so a rerun gives the same rows. Ingest is not
touched: this runs beside it, a minute or so behind.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlmodel import SQLModel, col

from fleet.db import DATABASE_FAULTS
from fleet.devices.profile_book import poll_interval_s, profiles_in
from fleet.devices.registry import timetable_from_json
from fleet.job_rows import each
from fleet.protocol.timetable import Timetable
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
BEFORE = SAMPLES.alias("before")
DEVICES = SQLModel.metadata.tables["device"]
SITES = SQLModel.metadata.tables["site"]
JOB = "usage_rollup"


@dataclass(frozen=True)
class DeviceClock:
    """What usage needs to know of a device besides its samples."""

    tz: ZoneInfo
    timetable: Timetable
    poll_interval_s: float


def device_clocks(conn: Connection, profiles_dir: Path) -> dict[str, DeviceClock]:
    """Every device's clock by id: its site's timezone and timetable, its profile's poll. A
    site whose zone or timetable cannot be read is left out (its devices have no clock), and
    so is a device that cannot be read: each logged and counted (fleet.job_rows)."""
    profiles = profiles_in(profiles_dir)

    def site_rows(codes: list[str]) -> list[tuple[str, tuple[ZoneInfo, Timetable]]]:
        query = select(SITES.c.code, SITES.c.timezone, SITES.c.timetable)
        return [
            (code, (ZoneInfo(tz), timetable_from_json(tt)))
            for code, tz, tt in conn.execute(query.where(SITES.c.code.in_(codes)))
        ]

    def device_rows(ids: list[str]) -> list[tuple[str, str, str]]:
        query = select(DEVICES.c.id, DEVICES.c.site_code, DEVICES.c.profile)
        return [tuple(row) for row in conn.execute(query.where(DEVICES.c.id.in_(ids)))]

    codes = list(conn.execute(select(SITES.c.code)).scalars())
    sites = dict(each(JOB, codes, site_rows, chunk=1000))
    ids = list(conn.execute(select(DEVICES.c.id)).scalars())
    out = {}
    for device_id, site_code, profile in each(JOB, ids, device_rows, chunk=5000):
        if site_code in sites:
            tz, timetable = sites[site_code]
            out[device_id] = DeviceClock(tz, timetable, poll_interval_s(profiles, profile))
    return out


def read_watermark(conn: Connection) -> datetime | None:
    """The receive time (UTC) up to which samples have been rolled up; None before the first run."""
    row = conn.execute(
        select(col(UsageWatermark.received_at)).where(col(UsageWatermark.name) == WATERMARK)
    ).first()
    return row[0] if row else None


def derive_usage(engine: Engine, profiles_dir: Path, now: datetime) -> None:
    """The scheduled job (every minute): see roll_up_new_samples."""
    roll_up_new_samples(engine, profiles_dir, now)


def roll_up_new_samples(engine: Engine, profiles_dir: Path, now: datetime) -> int:
    """Recompute the usage of every device-hour touched by samples received since the last
    run, each device by its profile's poll interval (read from `profiles_dir`). Returns how
    many devices were recomputed.

    Devices are recomputed in chunks, each in its own transaction, so that ingest is never
    kept waiting for the whole run (SQLite has one writer); the watermark moves only once
    every chunk is written, and recomputing is idempotent, so a run cut short is redone whole.
    A device whose samples or clock cannot be read, or whose hours cannot be computed (a
    sample stamped at the end of time), is logged, counted and skipped (fleet.job_rows): its
    hours are recomputed when its next samples come, once the bad one is fixed or removed.
    """
    with engine.connect() as conn:
        watermark = read_watermark(conn)
        touched = _touched(engine, conn, watermark)
        if not touched:
            return 0
        clocks = device_clocks(conn, profiles_dir)
    work = [(d, clocks[d], first, last) for d, first, last, _ in touched if d in clocks]

    def recompute(chunk: list[tuple[str, DeviceClock, datetime, datetime]]) -> list[str]:
        with engine.begin() as conn:
            recompute_devices(conn, chunk)
        return [device for device, *_ in chunk]

    done = each(JOB, work, recompute, chunk=ROLLUP_CHUNK, name=lambda item: item[0])
    newest = max(row[3] for row in touched)
    with engine.begin() as conn:
        _write_watermark(conn, watermark, max(newest, watermark) if watermark else newest)
    log.debug("usage: recomputed %d devices", len(done))
    return len(done)


def _touched(
    engine: Engine, conn: Connection, watermark: datetime | None
) -> list[tuple[str, datetime, datetime, datetime]]:
    """(device, first ts, last ts, last received_at) of the samples received since the
    watermark (less the rescan margin), by device."""
    device: ColumnElement[str] = SAMPLES.c.device_id
    if conn.dialect.name == "sqlite":
        # Grouped by the bare column, SQLite walks the whole table in (device, ts) order to
        # group without sorting, rather than read the last minutes by received_at: every
        # run, however many days of samples are kept. An expression keeps it on the index.
        device = SAMPLES.c.device_id.concat(literal_column("''"))
    aggregates = (
        func.min(SAMPLES.c.ts),
        func.max(SAMPLES.c.ts),
        func.max(SAMPLES.c.received_at),
    )
    query = select(device, *aggregates).group_by(device)
    since = None if watermark is None else SAMPLES.c.received_at > watermark - RESCAN_MARGIN
    if since is not None:
        query = query.where(since)
    try:
        return [tuple(row) for row in conn.execute(query)]
    except DATABASE_FAULTS:
        raise
    except Exception as exc:
        log.warning("%s: new samples unreadable together (%r); reading device by device", JOB, exc)
    ids = list(conn.execute(select(DEVICES.c.id)).scalars())

    def one_by_one(chunk: list[str]) -> list[tuple[str, datetime, datetime, datetime]]:
        out = []
        with engine.connect() as alone:
            for device_id in chunk:
                where = [SAMPLES.c.device_id == device_id]
                if since is not None:
                    where.append(since)
                first, last, received = alone.execute(select(*aggregates).where(*where)).one()
                if first is not None:
                    out.append((device_id, first, last, received))
        return out

    return each(JOB, ids, one_by_one, chunk=500)


def recompute_device(
    conn: Connection, device_id: str, clock: DeviceClock, first_ts: datetime, last_ts: datetime
) -> None:
    """Rebuild the device's hours and sessions that samples in [first_ts, last_ts] can change."""
    recompute_devices(conn, [(device_id, clock, first_ts, last_ts)])


@dataclass
class _Window:
    """What one device's recomputation covers: whole local hours [h0, h1), and its sessions
    from h0 to s1 (past h1 when an older session crosses h1)."""

    clock: DeviceClock
    limit: timedelta
    hours: list[tuple[datetime, datetime]]
    s1: datetime
    # The stored session running across h0: kept, and joined to the first rebuilt one.
    left: tuple[datetime, str | None] | None = None

    @property
    def h0(self) -> datetime:
        return self.hours[0][0]

    @property
    def h1(self) -> datetime:
        return self.hours[-1][1]


def recompute_devices(
    conn: Connection, work: Sequence[tuple[str, DeviceClock, datetime, datetime]]
) -> None:
    """Rebuild, for each (device, clock, first_ts, last_ts), the hours and sessions that
    samples in [first_ts, last_ts] can change: the same rows as rebuilding from every sample.

    A sample changes what is known at most one gap limit either side of it (how far the reading
    before it vouches, and how far it vouches itself), hence the window of whole local hours
    around it. Nothing before the window's first hour h0 changes, so a session running across
    h0 is not re-read from its start (hours ago, for a panel left on all day): its part before
    h0 stands, and the rebuilt session that starts at h0 continues it. The work per run is
    thus bounded by the hours touched, not by how long a device has been on.

    Every device of `work` is read with a few statements, and written with a few more only
    once all is computed, so a chunk holds SQLite's write lock for its writes alone.
    """
    windows: dict[str, _Window] = {}
    for device_id, clock, first_ts, last_ts in work:
        limit = gap_limit(clock.poll_interval_s)
        hours = local_hours(first_ts - limit, last_ts + limit, clock.tz)
        windows[device_id] = _Window(clock, limit, hours, hours[-1][1])
    if not windows:
        return
    ids = list(windows)
    lo = min(w.h0 for w in windows.values())
    hi = max(w.h1 for w in windows.values())
    for device_id, start, end, input_ in conn.execute(
        select(SESSIONS.c.device_id, SESSIONS.c.start, SESSIONS.c.end, SESSIONS.c.input).where(
            SESSIONS.c.device_id.in_(ids), SESSIONS.c.start < hi, SESSIONS.c.end > lo
        )
    ):
        w = windows[device_id]
        if start < w.h1 and end > w.h0:
            # Sessions crossing the window are rebuilt whole, so none is cut in two.
            w.s1 = max(w.s1, end)
            if start < w.h0:
                w.left = (start, input_)
    points = _points_by_device(conn, windows, lo, max(w.s1 + w.limit for w in windows.values()))
    usage: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for device_id, w in windows.items():
        mine = points.get(device_id, [])
        # The reading before h0 says how the window begins; the rest is inside [h0, s1 + limit).
        first = bisect_left([p.ts for p in mine], w.h0)
        end = w.s1 + w.limit
        inside = [p for p in mine[first:] if p.ts < end]
        window_points = mine[first - 1 : first] + inside
        clock = w.clock
        class_intervals = clock.timetable.class_intervals(w.h0, w.h1, clock.tz)
        for row in hour_rollups(
            window_points, clock.poll_interval_s, w.hours, class_intervals, clock.tz
        ):
            usage.append({"device_id": device_id, **row})
        rebuilt = sessions(timeline(window_points, clock.poll_interval_s), w.h0, w.s1)
        if w.left is not None:
            start, input_ = w.left
            if rebuilt and rebuilt[0][0] == w.h0 and rebuilt[0][2] == input_:
                rebuilt[0] = (start, rebuilt[0][1], input_)
            else:  # cannot happen (what is before h0 did not change); never lose its start
                rebuilt.insert(0, (start, w.h0, input_))
        found.extend(
            {"device_id": device_id, "start": a, "end": b, "input": i} for a, b, i in rebuilt
        )
    conn.execute(
        delete(USAGE).where(
            USAGE.c.device_id == bindparam("w_device"),
            USAGE.c.hour_start >= bindparam("w_start"),
            USAGE.c.hour_start < bindparam("w_end"),
        ),
        [{"w_device": d, "w_start": w.h0, "w_end": w.h1} for d, w in windows.items()],
    )
    if usage:
        conn.execute(insert(USAGE), usage)
    conn.execute(
        delete(SESSIONS).where(
            SESSIONS.c.device_id == bindparam("w_device"),
            SESSIONS.c.start < bindparam("w_end"),
            SESSIONS.c.end > bindparam("w_start"),
        ),
        [{"w_device": d, "w_start": w.h0, "w_end": w.s1} for d, w in windows.items()],
    )
    if found:
        conn.execute(insert(SESSIONS), found)


_POINT_COLUMNS = (
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


def _points_by_device(
    conn: Connection, windows: dict[str, _Window], start: datetime, end: datetime
) -> dict[str, list[Point]]:
    """Each device's samples in [start, end), and its last one before `start`, by ts."""
    ids = list(windows)
    newest_before = (
        select(func.max(BEFORE.c.ts))
        .where(BEFORE.c.device_id == DEVICES.c.id, BEFORE.c.ts < start)
        .scalar_subquery()
    )
    keys = [
        (device_id, ts)
        for device_id, ts in conn.execute(
            select(DEVICES.c.id, newest_before).where(DEVICES.c.id.in_(ids))
        )
        if ts is not None
    ]
    out: dict[str, list[Point]] = {device_id: [] for device_id in ids}
    if keys:
        for device_id, *values in conn.execute(
            select(SAMPLES.c.device_id, *_POINT_COLUMNS).where(
                tuple_(SAMPLES.c.device_id, SAMPLES.c.ts).in_(keys)
            )
        ):
            out[device_id].append(point_from_sample(*values))
    rows = conn.execute(
        select(SAMPLES.c.device_id, *_POINT_COLUMNS)
        .where(SAMPLES.c.device_id.in_(ids), SAMPLES.c.ts >= start, SAMPLES.c.ts < end)
        .order_by(SAMPLES.c.device_id, SAMPLES.c.ts)
    )
    for device_id, *values in rows:
        out[device_id].append(point_from_sample(*values))
    return out


def _write_watermark(conn: Connection, old: datetime | None, new: datetime) -> None:
    if old is None:
        conn.execute(insert(UsageWatermark).values(name=WATERMARK, received_at=new))
    else:
        conn.execute(
            update(UsageWatermark)
            .where(col(UsageWatermark.name) == WATERMARK)
            .values(received_at=new)
        )


def purge_samples(engine: Engine, retention: timedelta, now: datetime) -> None:
    """The scheduled job (hourly): see purge_rolled_up_samples."""
    purge_rolled_up_samples(engine, retention, now)


def purge_rolled_up_samples(engine: Engine, retention: timedelta, now: datetime) -> int:
    """Delete raw samples older than `retention` at `now`, but only those already rolled
    up; returns how many were deleted. Plain SQL on ids, in chunks: no sample is read into
    Python, so no sample's value can stop it."""
    cutoff = now - retention
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
