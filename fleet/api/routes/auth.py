"""Login (OAuth2 password flow: POST form `username`, `password`), who am I, and logout.

The login token is short-lived (FLEET_LOGIN_TTL_S). It is returned as JSON, the FastAPI
convention, and also set as an HttpOnly cookie so that the dashboard pages work after login.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel
from sqlmodel import select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.audit import record
from fleet.auth.models import ApiToken, User
from fleet.auth.passwords import verify_password
from fleet.auth.permissions import SESSION_COOKIE, Allow, Caller
from fleet.auth.tokens import VERIFIED, issue_api_token
from fleet.protocol.messages import CONTROL_RE, utcnow

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

MAX_NAME = 200


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class MeOut(BaseModel):
    name: str
    role: str
    sites: list[str] | None
    vendor: str | None


@router.post("/token", response_model=TokenOut, dependencies=[Allow("public")])
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
) -> TokenOut:
    # A name no user can have is not looked up (PostgreSQL's text holds no NUL, say).
    plausible = len(form.username) <= MAX_NAME and not CONTROL_RE.search(form.username)
    user = (
        session.exec(select(User).where(User.name == form.username)).first() if plausible else None
    )
    ok = (
        user is not None
        and user.revoked_at is None
        and verify_password(form.password, user.password_hash)
    )
    if not ok or user is None:
        record(
            session,
            actor=form.username[:64],
            action="login",
            target=request.client.host if request.client else "",
            outcome="denied",
        )
        session.commit()
        # The same answer for an unknown user and a wrong password: no user enumeration.
        raise HTTPException(
            401,
            "wrong user name or password, or the user is revoked: check them, or ask ops",
            headers={"WWW-Authenticate": "Bearer"},
        )
    ttl = timedelta(seconds=settings.login_ttl_s)
    token, _row = issue_api_token(session, user, ttl=ttl, kind="session", label="login")
    record(session, actor=user.name, role=user.role, action="login", target="api")
    session.commit()
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.login_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return TokenOut(access_token=token, expires_in=settings.login_ttl_s)


@router.get("/me", response_model=MeOut)
def me(caller: Annotated[Caller, Allow("authenticated")]) -> MeOut:
    return MeOut(
        name=caller.name,
        role=caller.role,
        sites=sorted(caller.sites) if caller.sites is not None else None,
        vendor=caller.vendor,
    )


@router.post("/logout", status_code=204)
def logout(
    caller: Annotated[Caller, Allow("authenticated")], session: SessionDep, response: Response
) -> None:
    token = session.get(ApiToken, caller.token_id)
    if token is not None and token.kind == "session":
        token.revoked_at = utcnow()
        session.add(token)
        session.commit()
        VERIFIED.forget_all()
    response.delete_cookie(SESSION_COOKIE)
