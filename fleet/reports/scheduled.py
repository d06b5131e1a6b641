"""Scheduled reports: each vendor's monthly (and, if configured, weekly) report, stored once.

`generate_due_reports(engine, schedule, now)` makes every report of a closed period that is not
stored yet, from the first month with usage up to `now`. Run every hour, it makes a month's
reports on the 1st (UTC, after FLEET_REPORT_DELAY_H); run on start, it catches up on months
missed while the controller was down. A stored report is never rewritten: its bytes and SHA-256
stay as first made.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, func, select
from sqlmodel import col

from fleet.db import DATABASE_FAULTS
from fleet.job_rows import each
from fleet.models import Device, Site
from fleet.reports.compute import ReportBasis, ReportRequest, build_report
from fleet.reports.formats import MEDIA_TYPES, ReportFormat, filename, renderer
from fleet.reports.models import StoredReport, UsageHour

log = logging.getLogger(__name__)

JOB = "scheduled_reports"


@dataclass(frozen=True)
class ReportSchedule:
    """Which reports are made and stored without being asked for, and when."""

    basis: ReportBasis
    # How long after a period closed everywhere its reports wait, for late outboxes.
    delay: timedelta
    # Weekly reports (ISO weeks) besides the monthly ones.
    weekly: bool
    # Format names (fleet.reports.formats.ReportFormat values): one stored report each.
    formats: tuple[str, ...]


def months(first: date, last_end: date) -> Iterator[tuple[date, date]]:
    """Calendar months from the one holding `first` whose last day is before `last_end`."""
    start = first.replace(day=1)
    while True:
        nxt = (start + timedelta(days=32)).replace(day=1)
        end = nxt - timedelta(days=1)
        if end >= last_end:
            return
        yield start, end
        start = nxt


def weeks(first: date, last_end: date) -> Iterator[tuple[date, date]]:
    """ISO weeks (Monday to Sunday) from the one holding `first`, ending before `last_end`."""
    start = first - timedelta(days=first.weekday())
    while start + timedelta(days=6) < last_end:
        yield start, start + timedelta(days=6)
        start += timedelta(days=7)


def closed_before(conn: Connection, now: datetime, delay: timedelta) -> date:
    """The first local date not yet closed everywhere (with the delay for late outboxes):
    a period ending before it is closed at every site. A site whose zone is not one is
    left out (logged and counted)."""
    names = list(conn.execute(select(col(Site.timezone)).distinct()).scalars())
    zones = each(JOB, names, lambda chunk: [ZoneInfo(name) for name in chunk], chunk=1)
    day = (now - delay).astimezone(UTC).date() + timedelta(days=1)
    while day > date.min + timedelta(days=2):
        # `day` is closed once every site has reached the local midnight that ends it.
        ends = [datetime.combine(day, time(0), tzinfo=tz) for tz in zones or [ZoneInfo("UTC")]]
        if all(end + delay <= now for end in ends):
            return day
        day -= timedelta(days=1)
    return day


def generate_due_reports(engine: Engine, schedule: ReportSchedule, now: datetime) -> None:
    """The scheduled job (hourly, and at start): see store_due_reports."""
    store_due_reports(engine, schedule, now)


def store_due_reports(engine: Engine, schedule: ReportSchedule, now: datetime) -> int:
    """Store every missing report of a closed period, each in its own transaction; returns
    how many were stored. A report that cannot be made (a roll-up row its figures cannot
    take) is logged, counted and skipped (fleet.job_rows), and tried again at the next run;
    the others are stored. Raises ValueError for a format name that is not a ReportFormat."""
    formats = [ReportFormat(f) for f in schedule.formats]
    with engine.connect() as conn:
        first = _first_day(engine, conn)
        if first is None:
            return 0
        vendors = sorted(set(conn.execute(select(col(Device.vendor)).distinct()).scalars()))
        limit = closed_before(conn, now, schedule.delay)
        periods = [("monthly", p) for p in months(first, limit)]
        if schedule.weekly:
            periods += [("weekly", p) for p in weeks(first, limit)]
        have = _stored_keys(engine, conn)
    due = []
    for vendor in vendors:
        for kind, (start, end) in periods:
            missing = [f for f in formats if (vendor, kind, start, f.value) not in have]
            if missing:
                due.append(_Due(vendor, kind, start, end, tuple(missing)))

    def store(chunk: list[_Due]) -> list[int]:
        with engine.begin() as conn:
            return [_store(conn, schedule.basis, d, now) for d in chunk]

    stored = sum(each(JOB, due, store, chunk=1))
    if stored:
        log.info("stored %d scheduled reports", stored)
    return stored


@dataclass(frozen=True)
class _Due:
    """One vendor's report of one period, in the formats not stored yet."""

    vendor: str
    kind: str
    start: date
    end: date
    formats: tuple[ReportFormat, ...]

    def __str__(self) -> str:  # how a skipped one is named in the log
        return f"{self.kind} report of {self.vendor} from {self.start}"


def _first_day(engine: Engine, conn: Connection) -> date | None:
    """The first local date with usage. If one roll-up row's date cannot be read, the first
    is taken device by device, leaving that device out (logged and counted)."""
    first = select(func.min(col(UsageHour.local_date)))
    try:
        return conn.execute(first).scalar()
    except DATABASE_FAULTS:
        raise
    except Exception as exc:
        log.warning("%s: first usage date unreadable (%r); reading device by device", JOB, exc)
    ids = list(conn.execute(select(col(Device.id))).scalars())

    def firsts(chunk: list[str]) -> list[date]:
        with engine.connect() as alone:
            days = [
                alone.execute(first.where(col(UsageHour.device_id) == device_id)).scalar()
                for device_id in chunk
            ]
        return [d for d in days if d is not None]

    return min(each(JOB, ids, firsts, chunk=500), default=None)


def _stored_keys(engine: Engine, conn: Connection) -> set[tuple[str, str, date, str]]:
    ids = [i for i in conn.execute(select(col(StoredReport.id))).scalars() if i is not None]

    def keys(chunk: list[int]) -> list[tuple[str, str, date, str]]:
        query = select(
            StoredReport.vendor,  # type: ignore[call-overload]
            StoredReport.period,
            StoredReport.period_start,
            StoredReport.format,
        ).where(col(StoredReport.id).in_(chunk))
        with engine.connect() as alone:
            return [tuple(row) for row in alone.execute(query)]

    return set(each(JOB, ids, keys, chunk=5000))


def _store(conn: Connection, basis: ReportBasis, due: _Due, now: datetime) -> int:
    report = build_report(conn, ReportRequest(due.start, due.end, vendor=due.vendor), basis)
    for fmt in due.formats:
        content = renderer(fmt)(report)
        conn.execute(
            StoredReport.__table__.insert().values(  # type: ignore[attr-defined]
                vendor=due.vendor,
                period=due.kind,
                period_start=due.start,
                period_end=due.end,
                format=fmt.value,
                media_type=MEDIA_TYPES[fmt],
                filename=f"{due.kind}-{filename(report, fmt)}",
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                content=content,
                created_at=now,
            )
        )
    return len(due.formats)
