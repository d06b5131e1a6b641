"""Rollout tables: campaigns, each target device's progress, artifact bytes served per site,
the tick's lease and its place in the agents' message log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from fleet.models import BigId, utc_column


class Rollout(SQLModel, table=True):
    """One firmware rollout campaign: the release of one profile, the filter that chose its targets,
    its wave policy, and where it stands (state, current wave, why paused)."""

    __tablename__ = "rollout"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    profile: str = Field(index=True)
    release_version: str
    release_sha256: str
    # The filter the targets were chosen by (vendor, model, sites, current versions).
    targets: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # fleet.rollouts.plan.Policy as JSON.
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="draft", index=True)
    current_wave: int = 0
    approved_through: int = -1
    # Why it is paused: "approval" (after a wave, by policy), "threshold", "operator".
    pause_kind: str = ""
    reason: str = ""
    created_at: datetime = utc_column(nullable=False)
    start_at: datetime | None = utc_column()
    started_at: datetime | None = utc_column()
    finished_at: datetime | None = utc_column()
    updated_at: datetime = utc_column(nullable=False)


class RolloutDevice(SQLModel, table=True):
    """One target device of a rollout: its wave, its update state, the attempts and command of the
    current one, and the firmware it had before."""

    __tablename__ = "rollout_device"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    rollout_id: int = Field(foreign_key="rollout.id", index=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    site_code: str = Field(index=True)
    wave: int
    state: str = Field(default="pending", index=True)
    method: str = "agent"
    attempts: int = 0
    firmware_before: str | None = None
    # The command of the current attempt: an agent's report for an older one is stale.
    cmd_id: str | None = Field(default=None, index=True)
    sent_at: datetime | None = utc_column()
    next_try_at: datetime | None = utc_column()
    message: str = ""
    updated_at: datetime = utc_column(nullable=False)


class ArtifactDownload(SQLModel, table=True):
    """Bytes of each artifact the controller served to each site: what the metered link paid."""

    __tablename__ = "artifact_download"

    site_code: str = Field(primary_key=True)
    sha256: str = Field(primary_key=True)
    bytes_served: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    requests: int = 0
    range_requests: int = 0
    last_at: datetime = utc_column(nullable=False)


class TickLease(SQLModel, table=True):
    """The rollout tick's row: which controller ran the last tick and when (`expires_at`, a
    name kept from the first schema), and how far it has read the agents' reports. Each
    tick claims it first, which serialises ticks (fleet.rollouts.engine.claim_tick)."""

    __tablename__ = "tick_lease"

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime = utc_column(nullable=False)
    # The last agent_message id the tick has applied to rollout devices.
    cursor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
