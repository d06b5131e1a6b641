"""The dashboard's login: a form that does what POST /api/v1/auth/token does and keeps the
token in an HttpOnly cookie. A page asked for without one sends the browser here."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.audit import record
from fleet.auth.models import User
from fleet.auth.passwords import verify_password
from fleet.auth.permissions import SESSION_COOKIE, Allow
from fleet.auth.tokens import issue_api_token
from fleet.web.templating import render

router = APIRouter(include_in_schema=False)


def _safe_next(next_path: str) -> str:
    # Only a path on this site: never an open redirect to somewhere else.
    return next_path if next_path.startswith("/") and not next_path.startswith("//") else "/"


@router.get("/login", response_class=HTMLResponse, dependencies=[Allow("public")])
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "login.html", next=_safe_next(next), problem="")


@router.post("/login", dependencies=[Allow("public")])
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    user = session.exec(select(User).where(User.name == username)).first()
    if (
        user is None
        or user.revoked_at is not None
        or not verify_password(password, user.password_hash)
    ):
        record(session, actor=username[:64], action="login", target="dashboard", outcome="denied")
        session.commit()
        problem = "Wrong user name or password, or the user is revoked."
        return render(
            request, "login.html", status_code=401, next=_safe_next(next), problem=problem
        )
    ttl = timedelta(seconds=settings.login_ttl_s)
    token, _ = issue_api_token(session, user, ttl=ttl, kind="session", label="dashboard")
    record(session, actor=user.name, role=user.role, action="login", target="dashboard")
    session.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.login_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response
