"""Users: add, list, change and revoke them, and give them tokens. Used by `fleet users`,
`/api/v1/users`, the dashboard's `/users` page and the demo: the checks are here, once.

The fleet is never left without ops: the last active ops user can be neither revoked nor
given another role (LastOps), so that someone can still manage users from the browser."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import timedelta

from sqlmodel import Session, col, select

from fleet.auth.audit import record
from fleet.auth.models import ROLES, ApiToken, EnrolmentToken, User
from fleet.auth.password_policy import password_problem
from fleet.auth.passwords import hash_password
from fleet.auth.tokens import SESSION_KINDS, VERIFIED, issue_api_token
from fleet.models import Device, Site
from fleet.protocol.messages import utcnow

USER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"
USER_NAME_RE = re.compile(USER_NAME_PATTERN)
MAX_SITES = 200  # more than any partner has; a longer list is a mistake or an attack


class UserError(ValueError):
    """A user cannot be added or changed as asked: the message says why and what to do;
    `field` names what was wrong ("name", "role", "sites", "vendor" or "password")."""

    def __init__(self, message: str, field: str = "name") -> None:
        """`message` says why and what to do; `field` names the field at fault."""
        super().__init__(message)
        self.field = field


class UserNotFound(UserError):
    """No user of that name."""


class UserConflict(UserError):
    """The request is sound but the users as they are refuse it (a name taken, a revoked
    user changed): the API answers 409."""


class LastOps(UserConflict):
    """The change would leave no active ops user."""


def add_user(
    session: Session,
    name: str,
    role: str,
    *,
    sites: list[str] | None = None,
    vendor: str | None = None,
    password: str | None = None,
) -> User:
    """Add a user as given (no password policy: see `register_user`). Raises UserError when
    the name, role or scope is not allowed, UserConflict when the name is taken."""
    if not USER_NAME_RE.match(name):
        raise UserError(
            f"user name {name!r} is not allowed: use letters, digits and . _ @ - (up to 64)"
        )
    sites = check_scope(session, role, sites, vendor)
    if session.exec(select(User).where(User.name == name)).first() is not None:
        raise UserConflict(f"user {name!r} exists: pick another name, or revoke it first")
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


def check_scope(
    session: Session, role: str, sites: Iterable[str] | None, vendor: str | None
) -> list[str]:
    """The sorted site list a user of `role` is given. Raises UserError for an unknown role,
    a technician without sites or with a site the registry does not have, sites for another
    role, a vendor user without its vendor, or a vendor for another role."""
    if role not in ROLES:
        raise UserError(f"role {role!r} is unknown: use one of {', '.join(ROLES)}", "role")
    codes = sorted(set(sites or []))
    if len(codes) > MAX_SITES:
        raise UserError(f"{len(codes)} sites given: at most {MAX_SITES}", "sites")
    if role == "technician":
        if not codes:
            raise UserError(
                "a technician needs at least one site: give its code (e.g. upm)", "sites"
            )
        known = set(session.exec(select(Site.code)).all())
        unknown = [s for s in codes if s not in known]
        if unknown:
            lower = [s.lower() for s in unknown if s.lower() in known]
            hint = f"site codes are lowercase: use {', '.join(lower)}. " if lower else ""
            raise UserError(
                f"unknown site {', '.join(repr(s) for s in unknown)}: {hint}known sites are "
                f"{', '.join(sorted(known)) or 'none yet'}"
                " (`fleet serve` loads site_configs/)",
                "sites",
            )
    elif codes:
        raise UserError(f"only a technician has sites; a {role} sees {_reach(role)}", "sites")
    if role == "vendor" and not vendor:
        raise UserError("a vendor user needs its vendor, e.g. Seewo", "vendor")
    if role != "vendor" and vendor:
        raise UserError("only a vendor user has a vendor: leave it out", "vendor")
    return codes


def _reach(role: str) -> str:
    return "every site" if role == "ops" else "its vendor's devices"


def known_vendors(session: Session, profile_vendors: Iterable[str] = ()) -> list[str]:
    """The vendors the fleet knows, as it spells them: its devices' and the profiles'
    (`profile_vendors`, read by the caller from the profiles folder), sorted."""
    known = set(session.exec(select(Device.vendor).distinct()).all()) | set(profile_vendors)
    return sorted(v for v in known if v)


def known_vendor(session: Session, vendor: str, profile_vendors: Iterable[str] = ()) -> str:
    """The vendor as the fleet spells it, matched in any case. Raises UserError naming the
    near matches: a typo would give a user who sees nothing."""
    by_lower = {v.lower(): v for v in known_vendors(session, profile_vendors)}
    if vendor.lower() in by_lower:
        return by_lower[vendor.lower()]
    near = difflib.get_close_matches(vendor.lower(), list(by_lower), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(by_lower[n]) for n in near)}? " if near else ""
    shown = vendor if len(vendor) <= 64 else vendor[:64] + "…"
    raise UserError(
        f"unknown vendor {shown!r}: {hint}known vendors are "
        f"{', '.join(sorted(by_lower.values())) or 'none yet'}",
        "vendor",
    )


def register_user(
    session: Session,
    name: str,
    role: str,
    *,
    sites: list[str] | None = None,
    vendor: str | None = None,
    password: str | None = None,
    profile_vendors: Iterable[str] = (),
) -> User:
    """What `fleet users add`, `POST /api/v1/users` and the `/users` form do: the password
    policy (fleet.auth.password_policy) when a password is given, the vendor matched to the
    fleet's spelling, then `add_user`. Raises UserError (UserConflict for a name taken)."""
    if password is not None and (problem := password_problem(password, [name])):
        raise UserError(problem, "password")
    if vendor is not None and role == "vendor":
        vendor = known_vendor(session, vendor, profile_vendors)
    return add_user(session, name, role, sites=sites, vendor=vendor, password=password)


def get_user(session: Session, name: str) -> User:
    """Raises UserNotFound."""
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise UserNotFound(f"no user {name!r}: `fleet users list` or GET /api/v1/users lists them")
    return user


def list_users(session: Session) -> list[User]:
    """Every user, revoked ones too, by name."""
    return list(session.exec(select(User).order_by(col(User.name))).all())


def _refuse_last_ops(session: Session, user: User, doing: str) -> None:
    """Raise LastOps when `user` is the only active ops user. Every active ops row is locked
    (PostgreSQL) until the caller commits, so that two ops revoking each other at once cannot
    both pass: the second waits, then sees the first's change."""
    if user.role != "ops" or user.revoked_at is not None:
        return
    active = session.exec(
        select(User.id).where(User.role == "ops", col(User.revoked_at).is_(None)).with_for_update()
    ).all()
    if not [i for i in active if i != user.id]:
        raise LastOps(
            f"{user.name} is the last active ops user: {doing} would leave nobody to manage "
            "users. Add another ops user first"
        )


def change_user(
    session: Session,
    name: str,
    *,
    role: str | None = None,
    sites: list[str] | None = None,
    vendor: str | None = None,
    profile_vendors: Iterable[str] = (),
) -> User:
    """Give a user another role or scope. What is not given is kept, but a new role drops the
    scope of the old one (a technician made ops has no sites). A new role ends the user's
    login sessions, so the next login meets the new role's rules (a second factor); API tokens
    stay and carry the new role. Raises UserNotFound, UserError (as `add_user`), UserConflict
    for a revoked user, LastOps for the last ops made something else."""
    user = get_user(session, name)
    if user.revoked_at is not None:
        raise UserConflict(f"user {name!r} is revoked: add a new user instead")
    new_role = role or user.role
    same_role = new_role == user.role
    new_sites = sites if sites is not None else (user.sites if same_role else [])
    new_vendor = vendor if vendor is not None else (user.vendor if same_role else None)
    if new_role == "vendor" and new_vendor:
        new_vendor = known_vendor(session, new_vendor, profile_vendors)
    new_sites = check_scope(session, new_role, new_sites, new_vendor)
    if not same_role:
        _refuse_last_ops(session, user, f"making them {new_role}")
        _end_sessions(session, user)
    user.role, user.sites, user.vendor = new_role, new_sites, new_vendor or None
    session.add(user)
    session.commit()
    session.refresh(user)
    VERIFIED.forget_all()  # a cached caller holds the old role and scope
    return user


def _end_sessions(session: Session, user: User) -> int:
    now = utcnow()
    rows = session.exec(
        select(ApiToken).where(
            ApiToken.user_id == user.id,
            col(ApiToken.kind).in_(SESSION_KINDS),
            col(ApiToken.revoked_at).is_(None),
        )
    ).all()
    for row in rows:
        row.revoked_at = now
        session.add(row)
    return len(rows)


def revoke_user(session: Session, name: str) -> int:
    """Revoke the user and every credential they hold or issued: API tokens, login sessions,
    and the enrolment tokens they made that no agent has used yet (ended by expiring them
    now). Returns how many were revoked. Raises UserNotFound, LastOps for the last active
    ops user. Revoking a revoked user again changes nothing."""
    user = get_user(session, name)
    _refuse_last_ops(session, user, "revoking them")
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
    """A new API token for user `name`: (the token, shown once, and its stored row); `ttl` None
    never expires. Raises UserNotFound, or UserError for a revoked user."""
    user = get_user(session, name)
    if user.revoked_at is not None:
        raise UserError(f"user {name!r} is revoked: add a new user instead")
    return issue_api_token(session, user, ttl=ttl, label=label)


def record_scope(session: Session, user: User, action: str, *, actor: str, role: str) -> None:
    """Audit `action` ("user.add", "user.change") on `user` with the role and scope it now
    has, by `actor` in `role`: the one row the API, the users page and the CLI all write.
    Joins the caller's transaction."""
    record(
        session,
        actor=actor,
        role=role,
        action=action,
        target=user.name,
        detail={"role": user.role, "sites": user.sites, "vendor": user.vendor},
    )
