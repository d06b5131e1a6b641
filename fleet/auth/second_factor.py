"""The second factor of ops and technicians: TOTP (RFC 6238, through pyotp) and one-time
recovery codes.

A user enrols in two steps: `begin` makes a secret (shown once, as an otpauth:// URI for an
authenticator app) and ten recovery codes (shown once, kept as SHA-256); `confirm` switches it
on when the user gives a current code, proving the app has the secret. From then on a password
login also needs a current code, or a recovery code, which works once. A code is accepted once
per 30-s step (a code seen on the wire cannot be replayed in its window).

Agents' enrolment tokens, broker credentials and API tokens (`fleet tokens create`) are
untouched: they are not logins.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import pyotp
from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, select

from fleet.auth.models import User
from fleet.models import utc_column
from fleet.protocol.messages import utcnow

ISSUER = "Classroom fleet"
ROLES_WITH_SECOND_FACTOR = ("ops", "technician")  # vendors pull reports with API tokens
RECOVERY_CODES = 10
STEP_S = 30
# A code from the step before or after is accepted too: phones' clocks drift.
VALID_WINDOW = 1


class SecondFactor(SQLModel, table=True):
    """A user's TOTP secret and unused recovery codes (their SHA-256)."""

    __tablename__ = "second_factor"

    user_id: int = Field(primary_key=True, foreign_key="fleet_user.id")
    secret: str  # base32, as authenticator apps take it
    created_at: datetime = utc_column(nullable=False)
    confirmed_at: datetime | None = utc_column()
    # The newest 30-s step a code was accepted for: no code of it or before works again.
    last_step: int | None = None
    recovery_hashes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class SecondFactorError(ValueError):
    """A second-factor step cannot be done as asked: the message says why and what to do."""


@dataclass(frozen=True)
class Enrolment:
    """What the user is shown once: the secret, as text and as an otpauth:// URI, and the
    recovery codes."""

    secret: str
    uri: str
    recovery_codes: list[str]


def _code_hash(code: str) -> str:
    return hashlib.sha256(_normal(code).encode()).hexdigest()


def _normal(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def get(session: Session, user: User) -> SecondFactor | None:
    """The user's second factor, confirmed or not yet, or None."""
    return session.get(SecondFactor, user.id)


def is_active(session: Session, user: User) -> bool:
    """Whether the user's second factor is confirmed, so that every password login needs a code."""
    factor = get(session, user)
    return factor is not None and factor.confirmed_at is not None


def begin(session: Session, user: User, now: datetime | None = None) -> Enrolment:
    """A new secret and recovery codes for the user, not yet in force (see `confirm`).
    Raises SecondFactorError for a vendor, or when one is already confirmed."""
    if user.role not in ROLES_WITH_SECOND_FACTOR:
        raise SecondFactorError(
            f"a {user.role} logs in with an API token and has no second factor: ask ops"
        )
    existing = get(session, user)
    if existing is not None and existing.confirmed_at is not None:
        raise SecondFactorError(
            "a second factor is already on: ask ops to reset it (`fleet users revoke` and add "
            "the user again) if its phone is lost and the recovery codes are gone"
        )
    secret = pyotp.random_base32()
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    assert user.id is not None
    at = now or utcnow()
    factor = existing or SecondFactor(user_id=user.id, secret=secret, created_at=at)
    factor.secret = secret
    factor.created_at = at
    factor.confirmed_at = None
    factor.last_step = None
    factor.recovery_hashes = [_code_hash(c) for c in codes]
    session.add(factor)
    session.commit()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=ISSUER)
    return Enrolment(secret=secret, uri=uri, recovery_codes=codes)


def confirm(session: Session, user: User, code: str, now: datetime | None = None) -> None:
    """Switch the second factor on, given a current code. Raises SecondFactorError."""
    factor = get(session, user)
    if factor is None:
        raise SecondFactorError("no second factor is being set up: POST /api/v1/auth/totp first")
    if factor.confirmed_at is not None:
        raise SecondFactorError("the second factor is already on")
    if not _accept_totp(factor, code, now or utcnow()):
        raise SecondFactorError(
            "the code does not match: type the 6 digits your authenticator app shows now "
            "(and check the phone's clock)"
        )
    factor.confirmed_at = now or utcnow()
    # The confirming code proves the app has the secret; it is no login, so the login that
    # follows at once may use the same step's code.
    factor.last_step = None
    session.add(factor)
    session.commit()


def check(session: Session, user: User, code: str | None, now: datetime | None = None) -> bool:
    """Whether `code` (a current TOTP, or an unused recovery code) lets the user in; a
    recovery code is used up. The caller commits.

    The factor's row is read FOR UPDATE (PostgreSQL), so that two logins racing with one
    code are taken one after the other: the second sees the step or recovery code the first
    used and is refused. SQLite has no row locks, but refuses the second writer of a stale
    snapshot, so the replay fails there too."""
    factor = session.exec(
        select(SecondFactor)
        .where(SecondFactor.user_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if factor is None or factor.confirmed_at is None:
        return True  # none in force
    if not code or len(code) > 64:
        return False
    if _accept_totp(factor, code, now or utcnow()):
        session.add(factor)
        return True
    digest = _code_hash(code)
    for stored in factor.recovery_hashes:
        if hmac.compare_digest(stored, digest):
            factor.recovery_hashes = [h for h in factor.recovery_hashes if h != stored]
            session.add(factor)
            return True
    return False


def _accept_totp(factor: SecondFactor, code: str, now: datetime) -> bool:
    digits = _normal(code)
    if not (digits.isdigit() and len(digits) == 6):
        return False
    totp = pyotp.TOTP(factor.secret)
    step = int(now.timestamp()) // STEP_S
    for offset in range(-VALID_WINDOW, VALID_WINDOW + 1):
        candidate = step + offset
        if factor.last_step is not None and candidate <= factor.last_step:
            continue  # that step's code was used: no replay
        if hmac.compare_digest(totp.at(candidate * STEP_S), digits):
            factor.last_step = candidate
            return True
    return False
