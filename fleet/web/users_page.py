"""The users page (ops): every user with role, scope and state; a form to add one; per user
a form to change role or scope, and a revoke button behind a second click.

Each form does what its API route does (`POST /api/v1/users`, `PATCH /api/v1/users/{name}`,
`POST /api/v1/users/{name}/revoke`), through the same domain functions (fleet.auth.users) and
the same permission, audited alike. What the API would refuse is said on the page: 422 for a
value, 409 for the last ops user or a name taken, the 404 page for a user who does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.audit import record
from fleet.auth.permissions import Allow, Caller
from fleet.auth.schemas import UserChange, UserIn, UserOut
from fleet.auth.users import (
    USER_NAME_RE,
    UserConflict,
    UserError,
    UserNotFound,
    change_user,
    known_vendors,
    list_users,
    record_scope,
    register_user,
    revoke_user,
)
from fleet.devices.profile_book import vendors_in
from fleet.models import Site
from fleet.settings import Settings
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

# Form fields are read whole and judged by the API's own models (UserIn, UserChange), so that a
# value too long is a 422 said on the page, not FastAPI's JSON; this only bounds the parsing.
FORM_TEXT = Form(max_length=100_000)


def _page(
    request: Request,
    session: Session,
    settings: Settings,
    viewer: Viewer,
    *,
    problem: str = "",
    refused: str = "",
    status_code: int = 200,
    entered: dict[str, Any] | None = None,
) -> HTMLResponse:
    """The page; `problem` is why the `refused` move ("add", "change" or "revoke") was not
    done, shown at the top."""
    if problem:
        request.state.audit_outcome = f"failed {status_code}"
    return render(
        request,
        "users.html",
        status_code=status_code,
        viewer=viewer,
        users=[UserOut.of(u) for u in list_users(session)],
        sites=list(session.exec(select(Site.code).order_by(col(Site.code))).all()),
        vendors=known_vendors(session, vendors_in(settings.profiles_dir)),
        problem=problem,
        refused=refused,
        entered=entered or {},
    )


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{e['loc'][0] if e['loc'] else 'form'}: {e['msg']}" for e in exc.errors())


@router.get("/users", response_class=HTMLResponse, dependencies=[Allow("users:read")])
def users_page(
    request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep
) -> HTMLResponse:
    return _page(request, session, settings, viewer)


@router.post("/users")
def add_from_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("users:write")],
    viewer: ViewerDep,
    name: Annotated[str, FORM_TEXT] = "",
    role: Annotated[str, FORM_TEXT] = "",
    sites: Annotated[list[str] | None, FORM_TEXT] = None,
    vendor: Annotated[str, FORM_TEXT] = "",
    password: Annotated[str, FORM_TEXT] = "",
) -> Response:
    """The add form: what `POST /api/v1/users` does. An empty password field is none."""
    entered = {"name": name, "role": role, "sites": sites or [], "vendor": vendor}
    try:
        body = UserIn.model_validate(
            {
                "name": name,
                "role": role,
                "sites": sites or [],
                "vendor": vendor or None,
                "password": password or None,
            }
        )
        user = register_user(
            session,
            body.name,
            body.role,
            sites=body.sites,
            vendor=body.vendor,
            password=body.password,
            profile_vendors=vendors_in(settings.profiles_dir),
        )
    except ValidationError as exc:
        return _page(
            request, session, settings, viewer, problem=_reasons(exc), refused="add",
            status_code=422, entered=entered,
        )  # fmt: skip
    except UserError as exc:
        session.rollback()
        status = 409 if isinstance(exc, UserConflict) else 422
        return _page(
            request, session, settings, viewer, problem=f"{exc.field}: {exc}",
            refused="add", status_code=status, entered=entered,
        )  # fmt: skip
    record_scope(session, user, "user.add", actor=caller.name, role=caller.role)
    session.commit()
    return RedirectResponse(f"/users#user-{user.name}", status_code=303)


@router.post("/users/{user_name}/change")
def change_from_page(
    user_name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("users:write")],
    viewer: ViewerDep,
    role: Annotated[str, FORM_TEXT] = "",
    sites: Annotated[list[str] | None, FORM_TEXT] = None,
    vendor: Annotated[str, FORM_TEXT] = "",
) -> Response:
    """A user's change form: what `PATCH /api/v1/users/{name}` does with the role, sites
    and vendor the form shows (the scope fields of other roles are ignored)."""
    if not USER_NAME_RE.fullmatch(user_name):
        raise _no_user(user_name)  # no user has it (nor can PostgreSQL look up a NUL)
    try:
        body = UserChange.model_validate(
            {
                "role": role,
                "sites": (sites or []) if role == "technician" else [],
                "vendor": (vendor or None) if role == "vendor" else None,
            }
        )
        user = change_user(
            session,
            user_name,
            role=body.role,
            sites=body.sites,
            vendor=body.vendor,
            profile_vendors=vendors_in(settings.profiles_dir),
        )
    except ValidationError as exc:
        return _page(
            request, session, settings, viewer, problem=f"{user_name}: {_reasons(exc)}",
            refused="change", status_code=422,
        )  # fmt: skip
    except UserNotFound:
        raise _no_user(user_name) from None
    except UserError as exc:
        session.rollback()
        status = 409 if isinstance(exc, UserConflict) else 422
        return _page(
            request, session, settings, viewer, problem=f"{user_name}: {exc}",
            refused="change", status_code=status,
        )  # fmt: skip
    record_scope(session, user, "user.change", actor=caller.name, role=caller.role)
    session.commit()
    return RedirectResponse(f"/users#user-{user.name}", status_code=303)


@router.post("/users/{user_name}/revoke")
def revoke_from_page(
    user_name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("users:write")],
    viewer: ViewerDep,
) -> Response:
    """A user's revoke button: what `POST /api/v1/users/{name}/revoke` does."""
    if not USER_NAME_RE.fullmatch(user_name):
        raise _no_user(user_name)  # no user has it (nor can PostgreSQL look up a NUL)
    try:
        count = revoke_user(session, user_name)
    except UserNotFound:
        raise _no_user(user_name) from None
    except UserError as exc:
        session.rollback()
        return _page(
            request, session, settings, viewer, problem=str(exc), refused="revoke",
            status_code=409,
        )  # fmt: skip
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="user.revoke",
        target=user_name,
        detail={"tokens": count},
    )
    session.commit()
    return RedirectResponse(f"/users#user-{user_name}", status_code=303)


def _no_user(name: str) -> PageNotFound:
    shown = name if len(name) <= 64 else name[:64] + "…"
    return PageNotFound(f"There is no user {shown!r}.", "The users page lists them.")
