"""What the users API and the `/users` page take and return. A password is taken, never
returned: only whether the user has one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet.auth.models import User
from fleet.auth.users import MAX_SITES, USER_NAME_PATTERN
from fleet.protocol.messages import TEXT_PATTERN, SiteCode

Role = Literal["ops", "technician", "vendor"]
VendorName = Field(default=None, min_length=1, max_length=64, pattern=TEXT_PATTERN)


class UserIn(BaseModel):
    """A new user: a technician's `sites`, a vendor user's `vendor` (any case, as the fleet
    knows it), and an optional `password` for the login (at least 12 characters, hard to
    guess); without one, the user signs in with an API token (`fleet tokens create`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=USER_NAME_PATTERN, max_length=64, examples=["tech-upm-2"])
    role: Role
    sites: list[SiteCode] = Field(default_factory=list, max_length=MAX_SITES)
    vendor: str | None = VendorName
    password: str | None = Field(default=None, max_length=1000, pattern=TEXT_PATTERN)


class UserChange(BaseModel):
    """What changes; what is left out is kept, but a new role drops the old role's scope."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    sites: list[SiteCode] | None = Field(default=None, max_length=MAX_SITES)
    vendor: str | None = VendorName


class UserOut(BaseModel):
    """A user as ops see it in the users API and on the `/users` page: role, scope, whether
    active or revoked, and whether a password is set (never the password)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    role: str
    sites: list[str]
    vendor: str | None
    state: Literal["active", "revoked"]
    has_password: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        """The user's row as shown, without its password hash."""
        return cls(
            name=user.name,
            role=user.role,
            sites=list(user.sites),
            vendor=user.vendor,
            state="revoked" if user.revoked_at is not None else "active",
            has_password=user.password_hash is not None,
            created_at=user.created_at,
            revoked_at=user.revoked_at,
        )
