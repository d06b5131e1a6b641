"""Tables of derived usage (hourly roll-ups, power-on sessions) and of stored reports.

Reports read only these tables, never raw samples, so raw samples can be purged after their
retention while the figures derived from them stay.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet.models import BigId, UtcDateTime, utc_column


class UsageHour(SQLModel, table=True):
    """One device's usage in one hour of its site's local clock (minutes, as floats).

    `hour_start` is the UTC instant the local hour begins: at UTC+05:45 it is hh:15 UTC, and
    a local hour repeated by a DST change is two rows with the same `local_hour`.
    Minutes not covered by any reading (a gap longer than 3 polls) are `unknown`: they count
    in no other column.
    """

    __tablename__ = "usage_hour"
    __table_args__ = (
        Index("ix_usage_hour_local_date_device_id", "local_date", "device_id"),
        # A report's hour-of-day chart from the index alone (migration 0010).
        Index(
            "ix_usage_hour_local_date_local_hour",
            "local_date",
            "local_hour",
            "local_weekday",
            "minutes_on",
        ),
    )

    device_id: str = Field(primary_key=True, foreign_key="device.id")
    hour_start: datetime = Field(sa_column=Column("hour_start", UtcDateTime(), primary_key=True))
    local_date: date
    local_hour: int
    local_weekday: int  # Monday is 0
    minutes: float  # length of this local hour (60, or less at the edges of data)
    minutes_known: float
    minutes_unknown: float
    minutes_reachable: float
    minutes_on: float
    minutes_faulty: float
    class_minutes_known: float
    class_minutes_on: float
    class_minutes_available: float  # reachable and not faulty, in class
    fault_starts: int  # times the device turned faulty in this hour
    top_input: str | None = None  # the input on longest while on
    peak_temperature_c: float | None = None
    lamp_hours_added: float = 0.0
    filter_hours_added: float = 0.0
    lamp_hours_last: float | None = None
    filter_hours_last: float | None = None
    firmware_last: str | None = None


class PowerSession(SQLModel, table=True):
    """A stretch of time a device was on with one input; a new input starts a new session."""

    __tablename__ = "power_session"

    device_id: str = Field(primary_key=True, foreign_key="device.id")
    start: datetime = Field(sa_column=Column("start", UtcDateTime(), primary_key=True))
    end: datetime = utc_column(nullable=False)
    input: str | None = None


class UsageWatermark(SQLModel, table=True):
    """How far (by `received_at`) raw samples have been rolled up."""

    __tablename__ = "usage_watermark"

    name: str = Field(primary_key=True)
    received_at: datetime = utc_column(nullable=False)


class StoredReport(SQLModel, table=True):
    """A scheduled report of a closed period, kept byte for byte with its SHA-256."""

    __tablename__ = "stored_report"
    __table_args__ = (UniqueConstraint("vendor", "period", "period_start", "format"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    vendor: str = Field(index=True)
    period: str  # "monthly" or "weekly"
    period_start: date
    period_end: date  # inclusive, in each site's local calendar
    format: str
    media_type: str
    filename: str
    sha256: str
    size: int
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = utc_column(nullable=False)
