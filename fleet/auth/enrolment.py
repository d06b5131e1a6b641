"""Making enrolment tokens and listing them: what `POST /api/v1/enrolment/tokens` and the
enrolment page (fleet/web/enrolment_page.py) both do, with the same audit entry.

The caller checks the permission, the site's scope and that the site exists; a token's secret
is returned once, here, and never stored (fleet.auth.tokens keeps its SHA-256).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import update
from sqlmodel import Session, col, select

from fleet.auth.audit import record
from fleet.auth.models import EnrolmentToken
from fleet.auth.permissions import Caller
from fleet.auth.tokens import ENROL_TOKEN_RE, issue_enrolment_token, token_hash
from fleet.protocol.messages import utcnow

# The longest a token may be asked for (the API's `ttl_minutes` bound): 30 days.
MAX_TTL_MINUTES = 30 * 24 * 60
TokenState = Literal["unused", "used", "expired"]


def enrol_command(base_url: str, token: str) -> str:
    """The line a technician runs on site, as root: `fleet-agent enroll --controller URL
    --token enrol_…` (README, "Enrolling a site agent")."""
    return f"fleet-agent enroll --controller {base_url.rstrip('/')} --token {token}"


def make_enrolment_token(
    session: Session,
    caller: Caller,
    site: str,
    *,
    ttl: timedelta,
    ttl_minutes: int | None = None,
) -> tuple[str, EnrolmentToken]:
    """A new one-time token for `site`, valid for `ttl_minutes` but never longer than `ttl`
    (FLEET_ENROLMENT_TTL_S), audited `enrolment.token` and committed. Returns the token, to
    be shown once, and its stored row (no secret in it)."""
    if ttl_minutes is not None:
        ttl = min(ttl, timedelta(minutes=ttl_minutes))
    token, row = issue_enrolment_token(session, site, caller.name, ttl=ttl)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="enrolment.token",
        target=site,
        detail={"token_id": row.id, "expires_at": row.expires_at.isoformat()},
    )
    session.commit()
    return token, row


def enrolment_tokens(
    session: Session, sites: frozenset[str] | None, *, limit: int = 100
) -> list[EnrolmentToken]:
    """The newest tokens of these sites (None: every site), newest first, at most `limit`."""
    query = select(EnrolmentToken).order_by(col(EnrolmentToken.created_at).desc()).limit(limit)
    if sites is not None:
        query = query.where(col(EnrolmentToken.site_code).in_(sorted(sites)))
    return list(session.exec(query))


def token_state(row: EnrolmentToken, now: datetime | None = None) -> TokenState:
    """Used (an agent redeemed it), expired (unused, too late now) or unused."""
    if row.used_at is not None:
        return "used"
    if row.expires_at <= (now or utcnow()):
        return "expired"
    return "unused"


def find_enrolment_token(session: Session, token: str) -> EnrolmentToken | None:
    """The stored row of a token given in full, or None (malformed, or never issued)."""
    if not ENROL_TOKEN_RE.match(token):
        return None
    query = select(EnrolmentToken).where(EnrolmentToken.token_hash == token_hash(token))
    return session.exec(query).first()


class TokenNotFound(LookupError):
    """No enrolment token with that id among the caller's sites (the two read the same)."""


class TokenSpent(ValueError):
    """The token was used by an agent, or has expired: there is nothing left to revoke."""


def revoke_enrolment_token(
    session: Session, caller: Caller, token_id: int, now: datetime | None = None
) -> EnrolmentToken:
    """End an unused token now (it expires at once, as `fleet users revoke` ends its maker's),
    audited `enrolment.revoke` and committed. Ops revoke any; a technician, a token of their
    sites. Raises TokenNotFound (none, or another site's: the same words), TokenSpent."""
    row = session.get(EnrolmentToken, token_id)
    if row is None or not caller.may_see_site(row.site_code):
        raise TokenNotFound(f"no enrolment token {token_id}: the enrolment page lists them")
    now = now or utcnow()
    state = token_state(row, now)
    if state != "unused":
        raise TokenSpent(f"enrolment token {token_id} is {state} already: nothing to revoke")
    # Conditional, as redeeming is: an agent that used the token since the read above wins,
    # and the caller is told so rather than that it was revoked.
    ended = session.execute(
        update(EnrolmentToken)
        .where(
            col(EnrolmentToken.id) == row.id,
            col(EnrolmentToken.used_at).is_(None),
            col(EnrolmentToken.expires_at) > now,
        )
        .values(expires_at=now)
    )
    if ended.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise TokenSpent(f"enrolment token {token_id} was used meanwhile: nothing to revoke")
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="enrolment.revoke",
        target=row.site_code,
        detail={"token_id": row.id},
    )
    session.commit()
    session.refresh(row)
    return row
