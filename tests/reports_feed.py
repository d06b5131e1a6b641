"""Helpers for the report tests: readings at a site's local times, fed through real ingest."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from fleet.ingest.pipeline import Ingest
from fleet.protocol.messages import MAX_READINGS_PER_BATCH
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.reports.compute import ReportBasis
from fleet.reports.rollup import roll_up_new_samples
from fleet.reports.scheduled import ReportSchedule
from tests.fixtures_db import RECEIVED, health, reading

KATHMANDU = ZoneInfo("Asia/Kathmandu")
CASABLANCA = ZoneInfo("Africa/Casablanca")
# The repository's profiles, and illustrative draws when on (W) by device kind.
BASIS = ReportBasis(
    DEFAULT_PROFILES_DIR, power_draw_w={"panel": 200.0, "projector": 300.0, "device": 65.0}
)
# Monthly reports in every format, made 6 h after a month closed everywhere.
MONTHLY = ReportSchedule(
    BASIS, delay=timedelta(hours=6), weekly=False, formats=("json", "csv", "xlsx", "html")
)
MAX_DAYS = 93


def at(day: str, hhmm: str, tz: ZoneInfo) -> datetime:
    """A site's local wall time as aware UTC."""
    local = datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmm), tzinfo=tz)
    return local.astimezone(UTC)


def every(
    device: str, start: datetime, end: datetime, step_s: float = 60, **fields: Any
) -> list[dict[str, Any]]:
    """One reading per poll in [start, end), all with `fields`."""
    out = []
    ts = start
    while ts < end:
        out.append(reading(device, ts, **fields))
        ts += timedelta(seconds=step_s)
    return out


def feed(
    ingest: Ingest, site: str, readings: list[dict[str, Any]], received_at: datetime = RECEIVED
) -> None:
    for i in range(0, len(readings), MAX_READINGS_PER_BATCH):
        chunk = readings[i : i + MAX_READINGS_PER_BATCH]
        ingest.handle([health(site, chunk, received_at=received_at)])


def roll_up(engine: Engine, now: datetime | None = None) -> int:
    return roll_up_new_samples(engine, DEFAULT_PROFILES_DIR, now or datetime.now(UTC))
