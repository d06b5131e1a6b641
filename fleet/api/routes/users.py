"""Users: list them, add one, change a user's role or scope, revoke one. Ops only. The checks
are `fleet users`' own (fleet.auth.users): a technician's sites and a vendor user's vendor
must be known, a password must pass the policy, and the last active ops user can be neither
revoked nor given another role (409)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import refused
from fleet.auth.audit import record
from fleet.auth.permissions import Allow, Caller
from fleet.auth.schemas import UserChange, UserIn, UserOut
from fleet.auth.users import (
    USER_NAME_PATTERN,
    UserConflict,
    UserError,
    UserNotFound,
    change_user,
    get_user,
    list_users,
    record_scope,
    register_user,
    revoke_user,
)
from fleet.devices.profile_book import vendors_in

router = APIRouter(prefix="/api/v1/users", tags=["users"])

UserNamePath = Annotated[
    str,
    Path(
        pattern=USER_NAME_PATTERN,
        max_length=64,
        description="a user name",
        examples=["tech-upm"],
    ),
]


def user_refusal(exc: UserError) -> Exception:
    """The HTTP answer for a refused change: 404 no such user, 409 a conflict with the users
    as they are (a name taken, a revoked user, the last ops), else 422 on the field at fault."""
    if isinstance(exc, UserNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, UserConflict):
        return HTTPException(409, str(exc))
    return refused("body", exc.field, str(exc))


@router.get("", response_model=list[UserOut], dependencies=[Allow("users:read")])
def get_users(session: SessionDep) -> list[UserOut]:
    """Every user, revoked ones too, by name."""
    return [UserOut.of(u) for u in list_users(session)]


@router.post("", response_model=UserOut, status_code=201)
def add_user(
    body: UserIn,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("users:write")],
) -> UserOut:
    """422 for a scope that does not fit the role (a technician without known sites, a
    vendor the fleet does not know) or a weak password; 409 for a name taken."""
    try:
        user = register_user(
            session,
            body.name,
            body.role,
            sites=body.sites,
            vendor=body.vendor,
            password=body.password,
            profile_vendors=vendors_in(settings.profiles_dir),
        )
    except UserError as exc:
        session.rollback()
        raise user_refusal(exc) from None
    record_scope(session, user, "user.add", actor=caller.name, role=caller.role)
    session.commit()
    return UserOut.of(user)


@router.patch("/{user_name}", response_model=UserOut)
def change(
    user_name: UserNamePath,
    body: UserChange,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("users:write")],
) -> UserOut:
    """A new role (its scope given with it: a technician's sites, a vendor's vendor), or new
    sites or vendor for the same role. A new role ends the user's login sessions. 404 no such
    user; 409 a revoked user, or the last active ops user given another role."""
    try:
        user = change_user(
            session,
            user_name,
            role=body.role,
            sites=body.sites,
            vendor=body.vendor,
            profile_vendors=vendors_in(settings.profiles_dir),
        )
    except UserError as exc:
        session.rollback()
        raise user_refusal(exc) from None
    record_scope(session, user, "user.change", actor=caller.name, role=caller.role)
    session.commit()
    return UserOut.of(user)


@router.post("/{user_name}/revoke", response_model=UserOut)
def revoke(
    user_name: UserNamePath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("users:write")],
) -> UserOut:
    """Revoke the user at once: every API token and login session of theirs stops working,
    and the enrolment tokens they made and no agent used expire. 404 no such user; 409 the
    last active ops user. Revoking a revoked user again changes nothing."""
    try:
        count = revoke_user(session, user_name)
    except UserError as exc:
        session.rollback()
        raise user_refusal(exc) from None
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="user.revoke",
        target=user_name,
        detail={"tokens": count},
    )
    session.commit()
    return UserOut.of(get_user(session, user_name))
