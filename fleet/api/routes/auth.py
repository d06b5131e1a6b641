"""Login (OAuth2 password flow: POST form `username`, `password`, and `otp` where a second
factor is on), who am I, logout, and setting up the second factor (TOTP).

The login token is short-lived (FLEET_LOGIN_TTL_S). It is returned as JSON, the FastAPI
convention, and also set as an HttpOnly cookie so that the dashboard pages work after login.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth import second_factor
from fleet.auth.audit import record
from fleet.auth.login import KNOWN_CLIENT_COOKIE, KNOWN_CLIENT_MAX_AGE_S, LoginRefused, log_in
from fleet.auth.models import ApiToken, User
from fleet.auth.permissions import SESSION_COOKIE, Allow, Caller
from fleet.auth.tokens import SESSION_KINDS, SETUP_SESSION, VERIFIED, issue_api_token
from fleet.protocol.messages import utcnow

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenOut(BaseModel):
    """A login's answer: the bearer token (also set as the dashboard's session cookie) and its
    lifetime in seconds."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105  (OAuth2's token type)
    expires_in: int
    # True: this token may only set up the second factor (POST /api/v1/auth/totp), which
    # FLEET_SECOND_FACTOR_ROLES requires of the user's role; then log in again.
    second_factor_setup_required: bool = False


class TotpOut(BaseModel):
    """A new second factor, shown to the user this once: the TOTP secret, the otpauth:// URI for
    an authenticator app, and the recovery codes."""

    secret: str
    otpauth_uri: str
    recovery_codes: list[str]


class TotpConfirmIn(BaseModel):
    """A current code from the authenticator app, which switches the new second factor on."""

    code: str = Field(min_length=6, max_length=16)


class MeOut(BaseModel):
    """Who the token or session belongs to: name, role and scope (a technician's `sites`, a
    vendor user's `vendor`; null where the role is not limited by it)."""

    name: str
    role: str
    sites: list[str] | None
    vendor: str | None


@router.post(
    "/token",
    response_model=TokenOut,
    dependencies=[Allow("public")],
    responses={429: {"description": "too many failed logins: wait Retry-After seconds"}},
)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    otp: Annotated[
        str | None, Form(max_length=64, description="the authenticator app's code, if set up")
    ] = None,
) -> TokenOut:
    try:
        done = log_in(
            session,
            request.app.state.login_throttle,
            name=form.username,
            password=form.password,
            code=otp,
            address=request.client.host if request.client else "",
            target="api",
            second_factor_roles=settings.required_second_factor(),
            known_client=request.cookies.get(KNOWN_CLIENT_COOKIE),
        )
    except LoginRefused as refused:
        headers = {"WWW-Authenticate": "Bearer"}
        if refused.retry_after is not None:
            headers["Retry-After"] = str(refused.retry_after)
        raise HTTPException(refused.status, refused.message, headers=headers) from None
    ttl = timedelta(seconds=settings.login_ttl_s)
    kind = SETUP_SESSION if done.must_enrol_second_factor else "session"
    token, _row = issue_api_token(session, done.user, ttl=ttl, kind=kind, label="login")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.login_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    # Set even when the login is only good for setting up a second factor: the password
    # was right, so this client is the account owner's.
    response.set_cookie(
        KNOWN_CLIENT_COOKIE,
        done.known_client,
        max_age=KNOWN_CLIENT_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return TokenOut(
        access_token=token,
        expires_in=settings.login_ttl_s,
        second_factor_setup_required=done.must_enrol_second_factor,
    )


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
    if token is not None and token.kind in SESSION_KINDS:
        token.revoked_at = utcnow()
        session.add(token)
        session.commit()
        VERIFIED.forget_all()
    response.delete_cookie(SESSION_COOKIE)


@router.post("/totp", response_model=TotpOut, status_code=201)
def begin_second_factor(
    caller: Annotated[Caller, Allow("authenticated")], session: SessionDep
) -> TotpOut:
    """Set up a second factor: a new TOTP secret (add `otpauth_uri` to an authenticator app)
    and ten recovery codes, all shown this once. Not in force until confirmed."""
    user = _logged_in_user(session, caller)
    try:
        enrolment = second_factor.begin(session, user)
    except second_factor.SecondFactorError as exc:
        raise HTTPException(409, str(exc)) from None
    record(session, actor=caller.name, role=caller.role, action="second_factor.begin")
    session.commit()
    return TotpOut(
        secret=enrolment.secret, otpauth_uri=enrolment.uri, recovery_codes=enrolment.recovery_codes
    )


@router.post("/totp/confirm", status_code=204)
def confirm_second_factor(
    body: TotpConfirmIn, caller: Annotated[Caller, Allow("authenticated")], session: SessionDep
) -> None:
    """Switch the second factor on with a current code; every login then needs one."""
    user = _logged_in_user(session, caller)
    try:
        second_factor.confirm(session, user, body.code)
    except second_factor.SecondFactorError as exc:
        raise HTTPException(422, str(exc)) from None
    record(session, actor=caller.name, role=caller.role, action="second_factor.on")
    session.commit()
    VERIFIED.forget_all()


def _logged_in_user(session: SessionDep, caller: Caller) -> User:
    token = session.get(ApiToken, caller.token_id)
    if token is None or token.kind not in SESSION_KINDS:
        # An API token is no login: a second factor is set up by the person, logged in.
        # 409, not 403: the caller may use this route, only not with this kind of token.
        raise HTTPException(
            409, "set up a second factor from a login (POST /api/v1/auth/token), not an API token"
        )
    user = session.get(User, token.user_id)
    assert user is not None  # resolve_api_token refused a token without its user
    return user
