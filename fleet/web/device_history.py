"""A device's history for its page: samples in a window turned into chart series, and the
firmware versions it has reported. Reads only the `sample` table, bounded by time and count."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from fleet.models import Sample
from fleet.web.charts import GAP_FACTOR, Point, Segment, usual_interval

WINDOWS = {"6h": timedelta(hours=6), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
DEFAULT_WINDOW = "24h"
MAX_SAMPLES = 20_000  # a week at one sample every 30 s
MIN_SPAN = timedelta(minutes=10)


@dataclass
class History:
    """A device's samples in a window, for its page's charts: the window (UTC), how many samples
    were read and whether MAX_SAMPLES cut them short, and the temperature, lamp-hours and power
    series."""

    start: datetime
    end: datetime
    samples: int
    truncated: bool
    temperature: list[Point]
    lamp_hours: list[Point]
    power: list[Segment]


@dataclass(frozen=True)
class FirmwareSeen:
    """One firmware version a device reported: its first and last sample with it (UTC), and how
    many samples had it."""

    version: str
    first_seen: datetime
    last_seen: datetime
    samples: int


def history(session: Session, device_id: str, end: datetime, window: timedelta) -> History:
    """Samples in [end - window, end]; `end` is the newest sample, so a silent device still
    shows what it last did."""
    start = end - window
    # SQLAlchemy's select: sqlmodel's typed one takes at most four columns.
    query = (
        sa_select(
            col(Sample.ts),
            col(Sample.reachable),
            col(Sample.power),
            col(Sample.temperature_c),
            col(Sample.lamp_hours),
        )
        .where(col(Sample.device_id) == device_id, col(Sample.ts) >= start, col(Sample.ts) <= end)
        .order_by(col(Sample.ts).desc())
        .limit(MAX_SAMPLES)
    )
    rows = list(reversed(session.connection().execute(query).all()))
    truncated = len(rows) == MAX_SAMPLES
    if rows:
        # A device that began reporting recently: show its samples, not an empty window.
        start = max(start, min(rows[0][0], end - MIN_SPAN))
    return History(
        start=start,
        end=end,
        samples=len(rows),
        truncated=truncated,
        temperature=[Point(ts, t) for ts, _, _, t, _ in rows if t is not None],
        lamp_hours=[Point(ts, h) for ts, _, _, _, h in rows if h is not None],
        power=power_segments([(ts, "unreachable" if not ok else p) for ts, ok, p, _, _ in rows]),
    )


def power_segments(samples: list[tuple[datetime, str]]) -> list[Segment]:
    """Runs of the same power value; a sample holds until the next one, unless the pause is
    much longer than usual, in which case the run ends one usual interval after it."""
    if not samples:
        return []
    interval = usual_interval([ts for ts, _ in samples]) or timedelta(minutes=1)
    segments: list[Segment] = []
    run_start, run_label = samples[0]
    previous = samples[0][0]
    for ts, label in samples[1:]:
        if ts - previous > interval * GAP_FACTOR:
            segments.append(Segment(run_start, previous + interval, run_label))
            run_start, run_label = ts, label
        elif label != run_label:
            segments.append(Segment(run_start, ts, run_label))
            run_start, run_label = ts, label
        previous = ts
    segments.append(Segment(run_start, previous + interval, run_label))
    return segments


def newest_sample_at(session: Session, device_id: str) -> datetime | None:
    """When the device's newest kept sample was taken (UTC), or None when none is kept: where its
    page's history window ends."""
    return session.exec(select(func.max(Sample.ts)).where(Sample.device_id == device_id)).one()


def firmware_history(session: Session, device_id: str) -> list[FirmwareSeen]:
    """Each version the device reported, oldest first (within the samples kept)."""
    rows = session.exec(
        select(Sample.firmware, func.min(Sample.ts), func.max(Sample.ts), func.count())
        .where(Sample.device_id == device_id, col(Sample.firmware).is_not(None))
        .group_by(col(Sample.firmware))
        .order_by(func.min(Sample.ts))
    ).all()
    return [FirmwareSeen(v, a, b, n) for v, a, b, n in rows if v is not None]
