"""Who may use the controller: users, their API tokens, agents' enrolment tokens, the
per-site broker credentials, and the audit log of what was done (and refused).

Secrets are never stored: tokens as SHA-256 of the random token, passwords as PBKDF2.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from fleet.models import BigId, json_column, utc_column

ROLES = ("ops", "technician", "vendor")


class User(SQLModel, table=True):
    """A person who uses the controller: ops, a technician (with their sites) or a vendor user
    (with their vendor); a password hash when they log in with a password, and `revoked_at` (UTC)
    once revoked."""

    __tablename__ = "fleet_user"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    role: str  # one of ROLES
    # technician: the site codes they look after; empty for ops and vendor.
    sites: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # vendor: the vendor they speak for, as written in the profiles ("Seewo").
    vendor: str | None = None
    password_hash: str | None = None
    created_at: datetime = utc_column(nullable=False)
    revoked_at: datetime | None = utc_column()


class ApiToken(SQLModel, table=True):
    """A bearer token: `fleet tokens create` (long-lived, kind "api") or a login ("session")."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="fleet_user.id", index=True)
    token_hash: str = Field(index=True, unique=True)
    kind: str = "api"
    label: str = ""
    created_at: datetime = utc_column(nullable=False)
    expires_at: datetime | None = utc_column()
    revoked_at: datetime | None = utc_column()
    last_used_at: datetime | None = utc_column()


class EnrolmentToken(SQLModel, table=True):
    """One-time: lets one agent fetch its site's config and broker credential, once."""

    __tablename__ = "enrolment_token"

    id: int | None = Field(default=None, primary_key=True)
    site_code: str = Field(foreign_key="site.code", index=True)
    token_hash: str = Field(index=True, unique=True)
    created_by: str
    created_at: datetime = utc_column(nullable=False)
    expires_at: datetime = utc_column(nullable=False)
    used_at: datetime | None = utc_column()


class MqttCredential(SQLModel, table=True):
    """A site agent's broker login. The hash is Mosquitto's own `$7$` form, so the password
    file is written from it without the controller ever keeping the password."""

    __tablename__ = "mqtt_credential"

    site_code: str = Field(primary_key=True, foreign_key="site.code")
    username: str = Field(unique=True)
    password_hash: str
    rotated_at: datetime = utc_column(nullable=False)


class AuditEntry(SQLModel, table=True):
    """One row of the audit log ops read: who did what to what, when (UTC), with what outcome
    (`ok`, `denied` or `failed <status>`) and any detail."""

    __tablename__ = "audit_entry"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    at: datetime = utc_column(nullable=False, index=True)
    actor: str = Field(index=True)  # a user name, "anonymous" or "cli:<user>"
    role: str = ""
    action: str = Field(index=True)  # "login", "enrol", "milestone.edit", "rollout.start", ...
    target: str = ""
    outcome: str = "ok"  # "ok" or "denied"
    detail: dict[str, Any] | None = json_column()
