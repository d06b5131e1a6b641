"""Bearer tokens and enrolment tokens: random, shown once, stored as SHA-256.

A token carries a prefix saying what it is (`fleet_` for API and login tokens, `enrol_` for
enrolment), so a token pasted in the wrong place is refused as malformed, not looked up.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from fleet.auth.models import ApiToken, EnrolmentToken, User
from fleet.protocol.enrolment import enrol_token_problem
from fleet.protocol.messages import utcnow

API_PREFIX = "fleet_"
ENROL_PREFIX = "enrol_"
_TOKEN_BYTES = 32  # 43 url-safe characters
_BODY = r"[A-Za-z0-9_-]{43}"
API_TOKEN_RE = re.compile(rf"^{API_PREFIX}{_BODY}$")
ENROL_TOKEN_RE = re.compile(rf"^{ENROL_PREFIX}{_BODY}$")
LOGIN_TTL = timedelta(hours=1)
# The kind of a login token that may only set up the user's second factor.
SETUP_SESSION = "setup"
# Kinds of token a login makes (and logout revokes); "api" tokens are made by `fleet tokens`.
SESSION_KINDS = ("session", SETUP_SESSION)
ENROL_TTL = timedelta(hours=24)


class TokenRefused(Exception):
    """Why a token does not let its bearer in; `reason` is one word for logs and the audit."""

    def __init__(self, reason: str, message: str, user: str | None = None) -> None:
        """`reason` is one word (`missing`, `malformed`, `unknown`, `revoked`, `expired`,
        `used`), `message` what the bearer reads and what to do, `user` whose token it was when
        known."""
        super().__init__(message)
        self.reason = reason
        # Whose token it was, when the token is known (expired, revoked): someone to audit.
        self.user = user


def token_hash(token: str) -> str:
    """A token's SHA-256, in hex: what is stored and looked up, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh token and its hash; only the hash is kept."""
    token = prefix + secrets.token_urlsafe(_TOKEN_BYTES)
    return token, token_hash(token)


def issue_api_token(
    session: Session,
    user: User,
    *,
    ttl: timedelta | None,
    kind: str = "api",
    label: str = "",
    now: datetime | None = None,
) -> tuple[str, ApiToken]:
    """A new bearer token for `user`: (the token, shown once, and its stored row). `kind` is
    `api`, or a login's (`session`, SETUP_SESSION); `ttl` None never expires. Commits."""
    assert user.id is not None
    now = now or utcnow()
    token, digest = new_token(API_PREFIX)
    row = ApiToken(
        user_id=user.id,
        token_hash=digest,
        kind=kind,
        label=label,
        created_at=now,
        expires_at=now + ttl if ttl is not None else None,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return token, row


# Tokens verified in the last few seconds, with what they resolved to: most requests then
# need no database look-up to know who asks. A revocation in this process (logout, `revoke_user`)
# forgets them at once; one made by another process (the `fleet users revoke` CLI, another API
# worker) takes effect within VERIFIED_TTL_S. Expiry is checked on every use.
VERIFIED_TTL_S = 5.0
VERIFIED_MAX = 10_000


class VerifiedTokens:
    """token hash -> (what it resolved to, its expiry, until when this answer is trusted)."""

    def __init__(self, ttl_s: float = VERIFIED_TTL_S) -> None:
        """An empty cache whose answers are trusted for `ttl_s` seconds."""
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[Any, datetime | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str | None, now: datetime | None = None) -> Any | None:
        """What `token` resolved to, while that answer is trusted and the token unexpired at
        `now` (default: the current UTC time); else None."""
        if not token:
            return None
        entry = self._entries.get(token_hash(token))
        if entry is None:
            return None
        value, expires_at, trusted_until = entry
        if time.monotonic() >= trusted_until:
            return None
        if expires_at is not None and expires_at <= (now or utcnow()):
            return None
        return value

    def put(self, token: str, value: Any, expires_at: datetime | None) -> None:
        """Remember what `token` resolved to, trusted for `ttl_s` and never past `expires_at`
        (None: no expiry). A full cache (VERIFIED_MAX entries) is emptied first."""
        with self._lock:
            if len(self._entries) >= VERIFIED_MAX:
                self._entries.clear()
            self._entries[token_hash(token)] = (value, expires_at, time.monotonic() + self.ttl_s)

    def forget_all(self) -> None:
        """Drop every answer, after a logout, a revocation or a change of role: the next request
        is checked in the database."""
        with self._lock:
            self._entries.clear()


VERIFIED = VerifiedTokens()


@dataclass(frozen=True)
class Bearer:
    """A bearer token that let its bearer in: its user and its stored row."""

    user: User
    token: ApiToken


def resolve_api_token(session: Session, token: str | None, now: datetime | None = None) -> Bearer:
    """The user a bearer token belongs to. Raises TokenRefused saying why not."""
    if not token:
        raise TokenRefused(
            "missing",
            "no bearer token: send 'Authorization: Bearer <token>' (POST /api/v1/auth/token "
            "to log in, or `fleet tokens create`)",
        )
    if not API_TOKEN_RE.match(token):
        raise TokenRefused(
            "malformed", "the bearer token is malformed: it should start with 'fleet_'"
        )
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).first()
    if row is None:
        raise TokenRefused("unknown", "the bearer token is not known: log in again")
    now = now or utcnow()
    user = session.get(User, row.user_id)
    name = user.name if user is not None else None
    if row.revoked_at is not None:
        raise TokenRefused(
            "revoked", "the bearer token was revoked: ask ops for a new one", user=name
        )
    if row.expires_at is not None and row.expires_at <= now:
        raise TokenRefused("expired", "the bearer token has expired: log in again", user=name)
    if user is None or user.revoked_at is not None:
        raise TokenRefused("revoked", "the token's user was revoked: ask ops", user=name)
    return Bearer(user, row)


def issue_enrolment_token(
    session: Session,
    site_code: str,
    created_by: str,
    *,
    ttl: timedelta = ENROL_TTL,
    now: datetime | None = None,
) -> tuple[str, EnrolmentToken]:
    """A one-time enrolment token for site `site_code`, made by `created_by`: (the token, shown
    once, and its stored row), expiring `ttl` after `now`. Commits."""
    now = now or utcnow()
    token, digest = new_token(ENROL_PREFIX)
    row = EnrolmentToken(
        site_code=site_code,
        token_hash=digest,
        created_by=created_by,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.commit()
    session.refresh(row)
    return token, row


def redeem_enrolment_token(
    session: Session, token: str, now: datetime | None = None
) -> EnrolmentToken:
    """Mark the token used (in the caller's transaction) and return it, or raise TokenRefused."""
    if not ENROL_TOKEN_RE.match(token or ""):
        # Says what is wrong with it (cut short, a wrong prefix, a stray character).
        raise TokenRefused("malformed", enrol_token_problem(token or "") or "malformed")
    row = session.exec(
        select(EnrolmentToken).where(EnrolmentToken.token_hash == token_hash(token))
    ).first()
    now = now or utcnow()
    if row is None:
        raise TokenRefused("unknown", "the enrolment token is not known: ask for a new one")
    if row.used_at is not None:
        raise TokenRefused(
            "used",
            "the enrolment token was already used: ask ops or the site's technician for a new one",
        )
    if row.expires_at <= now:
        raise TokenRefused("expired", "the enrolment token has expired: ask for a new one")
    # Revoking a user reaches what they issued: checked here too, so that a revocation made
    # by another process (`fleet users revoke`) holds at once, whatever revoke_user did.
    maker = session.exec(select(User).where(User.name == row.created_by)).first()
    if maker is None or maker.revoked_at is not None:
        raise TokenRefused(
            "revoked",
            "the enrolment token's maker was revoked: ask ops or the site's technician for a "
            "new one",
        )
    # A maker whose sites no longer hold this one (moved to another campus, made a vendor)
    # could no longer make it: what they made before is theirs no more either.
    if not (
        maker.role == "ops" or (maker.role == "technician" and row.site_code in (maker.sites or []))
    ):
        raise TokenRefused(
            "revoked",
            f"the enrolment token's maker no longer looks after site {row.site_code}: ask ops "
            "or the site's technician for a new one",
        )
    # Conditional update: of two agents racing with one token, exactly one wins; and a
    # revoke committed since the read above (it moves expires_at to its own now, which may
    # be later than ours) wins over both: the token must be as read.
    won = session.execute(
        update(EnrolmentToken)
        .where(
            col(EnrolmentToken.id) == row.id,
            col(EnrolmentToken.used_at).is_(None),
            col(EnrolmentToken.expires_at) == row.expires_at,
        )
        .values(used_at=now)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise TokenRefused(
            "used", "the enrolment token was already used or revoked: ask for a new one"
        )
    session.refresh(row)
    return row
