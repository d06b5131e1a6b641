"""The dashboard's login: a form that does what POST /api/v1/auth/token does and keeps the
token in an HttpOnly cookie. A page asked for without one sends the browser here."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.login import (
    KNOWN_CLIENT_COOKIE,
    KNOWN_CLIENT_MAX_AGE_S,
    WRONG,
    LoginRefused,
    log_in,
)
from fleet.auth.permissions import SESSION_COOKIE, Allow
from fleet.auth.tokens import issue_api_token
from fleet.web.i18n import language_of, translations
from fleet.web.templating import render
from fleet.web.words import N_

router = APIRouter(include_in_schema=False)


# The login's refusals (fleet.auth.login says them in English, for the API) as the page says
# them in its language; the policy behind them stays in fleet.auth.login.
WRONG_LOGIN = N_("Wrong user name or password, or the user is revoked: check them, or ask ops.")
WRONG_CODE = N_(
    "The second factor is wrong or missing: give the 6-digit code your authenticator app "
    "shows now (or an unused recovery code)."
)
THROTTLED = {
    "account": N_(
        "Too many failed logins for this account: wait %(seconds)s s and try again, or ask ops."
    ),
    "address": N_(
        "Too many failed logins from this address: wait %(seconds)s s and try again, or ask ops."
    ),
    "client": N_(
        "Too many failed logins from this browser: wait %(seconds)s s and try again, or ask ops."
    ),
}
MUST_ENROL = N_(
    "Your role needs a second factor before the dashboard opens: set it up through the API "
    "(POST /api/v1/auth/totp, then /api/v1/auth/totp/confirm), then log in here with its code."
)


def refusal_text(refused: LoginRefused, lang: str) -> str:
    """A refused login's reason in the page's language: a wrong name or password, a wrong or
    missing code, or too many failures (by account or by address, with the seconds to wait).
    A reason this page does not know is shown as the login gave it."""
    t = translations(lang)
    if refused.status == 429 and refused.retry_after is not None:
        by = next((b for b in THROTTLED if f"this {b}" in refused.message), "address")
        return t.gettext(THROTTLED[by]) % {"seconds": refused.retry_after}
    if refused.status == 401:
        return t.gettext(WRONG_LOGIN if refused.message == WRONG else WRONG_CODE)
    return refused.message[:1].upper() + refused.message[1:] + "."


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
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=2000)] = "/",
    otp: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    try:
        done = log_in(
            session,
            request.app.state.login_throttle,
            name=username,
            password=password,
            code=otp or None,
            address=request.client.host if request.client else "",
            target="dashboard",
            second_factor_roles=settings.required_second_factor(),
            known_client=request.cookies.get(KNOWN_CLIENT_COOKIE),
        )
    except LoginRefused as refused:
        page = render(
            request,
            "login.html",
            status_code=refused.status,
            next=_safe_next(next),
            problem=refusal_text(refused, language_of(request)),
        )
        if refused.retry_after is not None:
            page.headers["Retry-After"] = str(refused.retry_after)
        return page
    if done.must_enrol_second_factor:
        problem = translations(language_of(request)).gettext(MUST_ENROL)
        return render(
            request, "login.html", status_code=403, next=_safe_next(next), problem=problem
        )
    ttl = timedelta(seconds=settings.login_ttl_s)
    token, _ = issue_api_token(session, done.user, ttl=ttl, kind="session", label="dashboard")
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.login_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    # The password was right: this client is the account owner's (see fleet.auth.login).
    response.set_cookie(
        KNOWN_CLIENT_COOKIE,
        done.known_client,
        max_age=KNOWN_CLIENT_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response
