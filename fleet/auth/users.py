"""Users: add, list and revoke them, and give them tokens. Used by `fleet users` and the demo."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlmodel import Session, col, select

from fleet.auth.models import ROLES, ApiToken, EnrolmentToken, User
from fleet.auth.passwords import hash_password
from fleet.auth.tokens import VERIFIED, issue_api_token
from fleet.models import Site
from fleet.protocol.messages import utcnow

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class UserError(ValueError):
    """A user cannot be added or changed as asked: the message says why and what to do."""


def add_user(
    session: Session,
    name: str,
    role: str,
    *,
    sites: list[str] | None = None,
    vendor: str | None = None,
    password: str | None = None,
) -> User:
    if not USER_NAME_RE.match(name):
        raise UserError(
            f"user name {name!r} is not allowed: use letters, digits and . _ @ - (up to 64)"
        )
    if role not in ROLES:
        raise UserError(f"role {role!r} is unknown: use one of {', '.join(ROLES)}")
    sites = sorted(set(sites or []))
    if role == "technician":
        if not sites:
            raise UserError("a technician needs at least one site: pass --site CODE")
        known = set(session.exec(select(Site.code)).all())
        unknown = [s for s in sites if s not in known]
        if unknown:
            raise UserError(
                f"unknown site {', '.join(unknown)}: known sites are {', '.join(sorted(known))}"
                " (run `fleet serve` once to load site_configs/)"
            )
    elif sites:
        raise UserError(f"only a technician has sites; a {role} sees {_reach(role)}")
    if role == "vendor" and not vendor:
        raise UserError("a vendor user needs its vendor: pass --vendor, e.g. --vendor Seewo")
    if role != "vendor" and vendor:
        raise UserError("only a vendor user has a vendor: drop --vendor")
    if session.exec(select(User).where(User.name == name)).first() is not None:
        raise UserError(f"user {name!r} exists: pick another name, or revoke it first")
    user = User(
        name=name,
        role=role,
        sites=sites,
        vendor=vendor,
        password_hash=hash_password(password) if password else None,
        created_at=utcnow(),
    )
    session.add(user)
    session.commit()
    session.refresh(user)
    return user


def _reach(role: str) -> str:
    return "every site" if role == "ops" else "its vendor's devices"


def get_user(session: Session, name: str) -> User:
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise UserError(f"no user {name!r}: `fleet users list` shows them")
    return user


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(col(User.name))).all())


def revoke_user(session: Session, name: str) -> int:
    """Revoke the user and every credential they hold or issued: API tokens, login sessions,
    and the enrolment tokens they made that no agent has used yet (ended by expiring them
    now). Returns how many were revoked."""
    user = get_user(session, name)
    now = utcnow()
    user.revoked_at = user.revoked_at or now
    tokens = session.exec(
        select(ApiToken).where(ApiToken.user_id == user.id, col(ApiToken.revoked_at).is_(None))
    ).all()
    for token in tokens:
        token.revoked_at = now
        session.add(token)
    enrolments = session.exec(
        select(EnrolmentToken).where(
            EnrolmentToken.created_by == user.name,
            col(EnrolmentToken.used_at).is_(None),
            col(EnrolmentToken.expires_at) > now,
        )
    ).all()
    for enrolment in enrolments:
        enrolment.expires_at = now
        session.add(enrolment)
    session.add(user)
    session.commit()
    VERIFIED.forget_all()
    return len(tokens) + len(enrolments)


def create_token(
    session: Session, name: str, *, ttl: timedelta | None, label: str = ""
) -> tuple[str, ApiToken]:
    user = get_user(session, name)
    if user.revoked_at is not None:
        raise UserError(f"user {name!r} is revoked: add a new user instead")
    return issue_api_token(session, user, ttl=ttl, label=label)
