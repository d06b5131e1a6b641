"""The enrolment page: ops (any site) or a site's technician (their own sites) makes a
one-time token for a site agent, and sees it once.

The same permission (`enrolment:create`), site scope, lifetime cap and audit entry as `POST
/api/v1/enrolment/tokens`: both call fleet.auth.enrolment. The list shows tokens' sites,
makers, expiry and whether an agent used them, never a secret (only hashes are kept), and
revokes an unused one (`POST /api/v1/enrolment/tokens/{id}/revoke`).

Shown once: the form's post makes the token and answers 303 to `/enrolment/new` with the token
in a cookie for that path alone (HttpOnly, SameSite=Strict, a minute at most); that page shows
it with `Cache-Control: no-store` and deletes the cookie. Reloading it, or coming back to it,
shows no token, and a reload never posts the form again (which would make a second token).
The cookie, not the server, holds the token between the two requests, so that any API worker
can answer the second.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.enrolment import (
    MAX_TTL_MINUTES,
    TokenNotFound,
    TokenSpent,
    enrol_command,
    enrolment_tokens,
    find_enrolment_token,
    make_enrolment_token,
    revoke_enrolment_token,
    token_state,
)
from fleet.auth.permissions import Allow, Caller, require_scope
from fleet.models import Site
from fleet.paging import INT32_MAX
from fleet.protocol.messages import SiteCode, utcnow
from fleet.settings import Settings
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

SHOWN_PATH = "/enrolment/new"
SHOWN_COOKIE = "fleet_enrolment_once"
SHOWN_FOR_S = 60  # long enough to follow one redirect, however slow the link
MAX_HOURS = MAX_TTL_MINUTES // 60
NO_STORE = {"Cache-Control": "no-store"}


class TokenForm(BaseModel):
    """The form's fields: the site, and the lifetime in whole hours (the API's ttl_minutes)."""

    model_config = ConfigDict(extra="forbid")

    site: SiteCode
    hours: int = Field(ge=1, le=MAX_HOURS)


def _sites_for(session: Session, caller: Caller) -> list[Site]:
    """The sites the caller may make a token for: every one for ops, their own for a
    technician."""
    query = select(Site).order_by(col(Site.code))
    if caller.sites is not None:
        query = query.where(col(Site.code).in_(sorted(caller.sites)))
    return list(session.exec(query))


def _default_hours(settings: Settings) -> int:
    return max(1, min(24, settings.enrolment_ttl_s // 3600))


def _page(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    settings: Settings,
    *,
    problem: str = "",
    revoke_problem: str = "",
    status_code: int = 200,
    site: str = "",
    hours: str = "",
) -> HTMLResponse:
    now = utcnow()
    response = render(
        request,
        "enrolment.html",
        status_code=status_code,
        viewer=viewer,
        sites=_sites_for(session, caller),
        tokens=[(row, token_state(row, now)) for row in enrolment_tokens(session, caller.sites)],
        problem=problem,
        revoke_problem=revoke_problem,
        chosen_site=site,
        hours=hours or str(_default_hours(settings)),
        max_hours=min(MAX_HOURS, max(1, settings.enrolment_ttl_s // 3600)),
    )
    response.headers.update(NO_STORE)
    return response


@router.get("/enrolment", response_class=HTMLResponse)
def enrolment_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("enrolment:create")],
    viewer: ViewerDep,
) -> HTMLResponse:
    return _page(request, session, caller, viewer, settings)


@router.post("/enrolment")
def make_token_from_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("enrolment:create")],
    viewer: ViewerDep,
    # Unbounded here so that any value is answered on the page: TokenForm bounds them.
    site: Annotated[str, Form()] = "",
    hours: Annotated[str, Form()] = "",
) -> Response:
    """The page's form: what `POST /api/v1/enrolment/tokens` does, audited alike. A value
    the API would refuse is said on the page (422); another site than the technician's own
    is the 403 page, and no token is made."""
    try:
        form = TokenForm.model_validate({"site": site, "hours": hours.strip()})
    except ValidationError as exc:
        reasons = "; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors())
        return _page(
            request,
            session,
            caller,
            viewer,
            settings,
            problem=reasons,
            status_code=422,
            site=site if len(site) < 40 else "",
            hours=hours if len(hours) < 20 else "",
        )
    require_scope(session, caller, sites=[form.site])  # 403, audited, as the API's route
    if session.get(Site, form.site) is None:
        raise PageNotFound(f"There is no site {form.site!r}.", "The overview lists every site.")
    token, _ = make_enrolment_token(
        session,
        caller,
        form.site,
        ttl=timedelta(seconds=settings.enrolment_ttl_s),
        ttl_minutes=form.hours * 60,
    )
    response = RedirectResponse(SHOWN_PATH, status_code=303, headers=NO_STORE)
    response.set_cookie(
        SHOWN_COOKIE,
        token,
        max_age=SHOWN_FOR_S,
        path=SHOWN_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get(SHOWN_PATH, response_class=HTMLResponse)
def new_token_page(
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("enrolment:create")],
    viewer: ViewerDep,
) -> HTMLResponse:
    """The token just made, once: the cookie is deleted as it is read. Only a token this
    caller made in the last minute, for a site of theirs, that no agent has used yet, is
    shown."""
    token = request.cookies.get(SHOWN_COOKIE, "")
    row = find_enrolment_token(session, token) if token else None
    if (
        row is None
        or row.created_by != caller.name
        or not caller.may_see_site(row.site_code)
        or token_state(row) != "unused"
        # A cookie kept past its minute (a client that ignores its deletion) shows nothing.
        or utcnow() - row.created_at > timedelta(seconds=SHOWN_FOR_S)
    ):
        token, row = "", None
    response = render(
        request,
        "enrolment_new.html",
        viewer=viewer,
        token=token,
        row=row,
        command=enrol_command(str(request.base_url), token) if token else "",
    )
    response.headers.update(NO_STORE)
    response.delete_cookie(
        SHOWN_COOKIE,
        path=SHOWN_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/enrolment/tokens/{token_id}/revoke")
def revoke_token_from_page(
    token_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Allow("enrolment:create")],
    viewer: ViewerDep,
) -> Response:
    """The list's "Revoke" button: what `POST /api/v1/enrolment/tokens/{id}/revoke` does,
    audited alike. Another site's token is the 404 page, as one that does not exist; a token
    used or expired meanwhile is said on the page (409)."""
    number = int(token_id) if token_id.isascii() and token_id.isdigit() else 0
    try:
        if not 1 <= number <= INT32_MAX:
            raise TokenNotFound(token_id)
        revoke_enrolment_token(session, caller, number)
    except TokenNotFound:
        raise PageNotFound(
            f"There is no enrolment token {token_id!r}.", "The enrolment page lists them."
        ) from None
    except TokenSpent as exc:
        request.state.audit_outcome = "failed 409"
        return _page(
            request, session, caller, viewer, settings, revoke_problem=str(exc), status_code=409
        )
    return RedirectResponse("/enrolment#tokens-title", status_code=303, headers=NO_STORE)
