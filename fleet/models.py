"""The controller's tables: registry (sites, rooms, devices), raw samples and ingest bookkeeping.

Every datetime column is `UtcDateTime`: aware UTC in, aware UTC out, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Field, SQLModel

# Named constraints, so Alembic's batch mode on SQLite can find them again.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """SQLite keeps no offset: store UTC without it and attach UTC again when reading back."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The value to store: converted to UTC (without offset on SQLite). Raises ValueError for a
        naive datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """The stored value as an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utc_column(*, nullable: bool = True, index: bool = False) -> Any:
    """A model field for a `UtcDateTime` column; not nullable makes the field required."""
    return Field(
        default=None if nullable else ...,
        sa_column=Column(UtcDateTime(), nullable=nullable, index=index),
    )


def json_column(*, nullable: bool = True) -> Any:
    """A model field for a nullable JSON column (None stored as SQL NULL)."""
    return Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=nullable))


# An autoincrementing 64-bit id on PostgreSQL; SQLite only autoincrements INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Site(SQLModel, table=True):
    """One partner site, as its site config describes it: name, institution, country, time zone and
    timetable; written by the registry sync."""

    __tablename__ = "site"

    code: str = Field(primary_key=True)
    name: str
    institution: str = ""
    country: str
    timezone: str
    vendor: str = ""
    timetable: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    config_path: str = ""
    # sha256 of the validated config: a sync that finds the same hash has nothing to do.
    config_hash: str = ""
    synced_at: datetime = utc_column(nullable=False)


class Room(SQLModel, table=True):
    """One classroom of a site, from the site config."""

    __tablename__ = "room"

    id: str = Field(primary_key=True)
    site_code: str = Field(foreign_key="site.code", index=True)
    name: str
    building: str = ""


class Device(SQLModel, table=True):
    """One classroom device of the registry (from its site config), with its latest derived state
    and newest reading as ingest and liveness write them; a device dropped from its config is
    retired, not deleted."""

    __tablename__ = "device"
    # The device list filtered by site and state counts from this index alone (migration 0013).
    __table_args__ = (Index("ix_device_site_code_state", "site_code", "state"),)

    id: str = Field(primary_key=True)
    site_code: str = Field(foreign_key="site.code", index=True)
    room_id: str = Field(foreign_key="room.id", index=True)
    name: str = ""
    vendor: str = Field(index=True)
    model: str
    kind: str = Field(index=True)
    profile: str
    protocol: str
    address: str
    port: int | None = None
    # Removed from its site config: kept with its history, hidden from lists, readings rejected.
    retired_at: datetime | None = utc_column()
    # Latest state, derived from the newest reading (fleet.devices.state) or the site agent's
    # status.
    state: str = Field(default="unknown", index=True)
    state_reason: str = "never heard"
    state_since: datetime | None = utc_column()
    last_seen_at: datetime | None = utc_column()
    last_reading: dict[str, Any] | None = json_column()
    firmware: str | None = None
    power: str | None = None
    reachable: bool | None = None


class Sample(SQLModel, table=True):
    """One raw reading as received; (device, ts) is its identity, so redelivery stores it once."""

    __tablename__ = "sample"
    __table_args__ = (UniqueConstraint("device_id", "ts"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    device_id: str = Field(foreign_key="device.id")
    ts: datetime = utc_column(nullable=False, index=True)
    received_at: datetime = utc_column(nullable=False)
    # The batch that brought it (None for a device publishing on its own topic).
    msg_id: str | None = None
    reachable: bool
    power: str
    input: str | None = None
    temperature_c: float | None = None
    lamp_hours: float | None = None
    filter_hours: float | None = None
    uptime_s: float | None = None
    firmware: str | None = None
    errors: dict[str, Any] | None = json_column()
    error: str | None = None
    metrics: dict[str, Any] | None = json_column()


class IngestedMessage(SQLModel, table=True):
    """A health batch already stored: the same msg_id again is acknowledged and ignored."""

    __tablename__ = "ingested_message"

    msg_id: str = Field(primary_key=True)
    site_code: str = Field(index=True)
    agent_id: str
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    received_at: datetime = utc_column(nullable=False, index=True)
    readings: int


class DeadLetter(SQLModel, table=True):
    """A rejected message, kept whole (up to a cap) so it can be read or replayed."""

    __tablename__ = "dead_letter"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    received_at: datetime = utc_column(nullable=False, index=True)
    topic: str
    reason: str = Field(index=True)
    detail: str
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size: int
    truncated: bool = False


class AgentStatus(SQLModel, table=True):
    """The latest `agent/state` of each site's agent, and when we last heard from it at all."""

    __tablename__ = "agent_status"

    site_code: str = Field(primary_key=True, foreign_key="site.code")
    agent_id: str
    state: str
    version: str = ""
    boot_id: str = ""
    ts: datetime = utc_column(nullable=False)
    received_at: datetime = utc_column(nullable=False)
    last_message_at: datetime | None = utc_column()


class AgentMessage(SQLModel, table=True):
    """Events and command acks from agents, kept as received until their features use them."""

    __tablename__ = "agent_message"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    site_code: str = Field(index=True)
    kind: str  # "event" or "cmd_ack"
    ts: datetime = utc_column(nullable=False)
    received_at: datetime = utc_column(nullable=False, index=True)
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
