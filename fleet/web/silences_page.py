"""The silences page: the silences in force and the recent ones (who, why, until when), a form
to mute a site, a room or a device for some hours with a reason, and "end now".

What it does is what `POST /api/v1/silences` and `/expire` do (fleet.alerts.silences'
create_for and expire_for: the same checks, the same audit entries), with the same permission
(ops, and technicians on their own sites). A form's values the API would refuse are said on
the page (422) and nothing is made; a site outside a technician's sites is the 403 page.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from fleet.alerts import silences
from fleet.alerts.schemas import SilenceIn
from fleet.alerts.silences import (
    MAX_LENGTH,
    SilenceNotFound,
    SilenceOutOfPlace,
    SilencePeriodRefused,
)
from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath
from fleet.auth.permissions import Allow, Caller
from fleet.models import Room, Site
from fleet.protocol.messages import CONTROL_RE, utcnow
from fleet.web.not_found import PageNotFound, PageRefused
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

RECENT = 100  # silences listed, newest first
MAX_FORM_TEXT = 1_000_000  # taken whole, so that too long is told on the page (422)


class FormRefused(ValueError):
    """A form value the page cannot use: which field, and why."""


@router.get("/silences", response_class=HTMLResponse)
def silences_page(
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("silences:read")],
    viewer: ViewerDep,
    # The form prefilled, from an alert's, a device's or a site's "Silence" link.
    site: Annotated[str, Query(max_length=64)] = "",
    room: Annotated[str, Query(max_length=64)] = "",
    device: Annotated[str, Query(max_length=64)] = "",
) -> HTMLResponse:
    return _page(request, session, caller, viewer, {"site": site, "room": room, "device": device})


def _page(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    form: dict[str, str],
    *,
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    now = utcnow()
    rows = silences.find(session, caller.sites, current_at=None, limit=RECENT)
    query = select(Site.code, Site.timezone).order_by(col(Site.code))
    zones = dict(session.exec(query).all())
    mine = sorted(code for code in zones if caller.may_see_site(code))
    rooms = session.exec(
        select(Room.id, Room.site_code).where(col(Room.site_code).in_(mine)).order_by(col(Room.id))
    ).all()
    return render(
        request,
        "silences.html",
        status_code=status_code,
        viewer=viewer,
        active=[s for s in rows if s.expired_at is None and s.starts_at <= now < s.ends_at],
        ended=[s for s in rows if not (s.expired_at is None and s.starts_at <= now < s.ends_at)],
        now=now,
        site_zones=zones,
        sites=mine,
        rooms=rooms,
        form=form,
        max_hours=int(MAX_LENGTH.total_seconds() // 3600),
        problem=problem,
    )


def _optional(value: str) -> str | None:
    value = value.strip()
    return value or None


def _period(starts: str, hours: str, zone: str) -> tuple[datetime | None, datetime]:
    """From the form's start (site local time, empty: now) and length in hours: (starts_at,
    ends_at) in UTC. Raises FormRefused."""
    try:
        length = float(hours.strip())
    except ValueError:
        raise FormRefused(f"hours: {hours[:40]!r} is not a number of hours") from None
    if not math.isfinite(length) or length <= 0:
        raise FormRefused("hours: the silence must last a positive number of hours")
    if length > MAX_LENGTH.total_seconds() / 3600:
        raise FormRefused(
            f"hours: a silence lasts at most {MAX_LENGTH.days} days: retire the device instead"
        )
    begin: datetime | None = None
    if starts.strip():
        try:
            begin = datetime.fromisoformat(starts.strip())
        except ValueError:
            raise FormRefused(f"from: {starts[:40]!r} is not a date and time") from None
        if begin.tzinfo is None:
            begin = begin.replace(tzinfo=ZoneInfo(zone))
        try:
            begin = begin.astimezone(ZoneInfo("UTC"))
        except OverflowError:
            raise FormRefused("from: that date is out of range") from None
    base = begin or utcnow()
    try:
        return begin, base + timedelta(hours=length)
    except OverflowError:
        raise FormRefused("from: that date is out of range") from None


@router.post("/silences", name="create_silence")
def create_from_page(
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("silences:write")],
    viewer: ViewerDep,
    site: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    room: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    device: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    reason: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    starts: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    hours: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
) -> Response:
    """The form: what `POST /api/v1/silences` does, audited alike; 303 to the list."""
    form = {"site": site, "room": room, "device": device, "reason": reason}
    form |= {"starts": starts, "hours": hours}
    code = site.strip()

    def refuse(reason: str) -> HTMLResponse:
        request.state.audit_outcome = "failed 422"
        return _page(request, session, caller, viewer, form, problem=reason, status_code=422)

    if not code:
        return refuse("site: choose the site to silence")
    if caller.sites is not None and code not in caller.sites:
        # Named whether or not such a site exists: a technician learns nothing of others'.
        raise PageRefused(f"{caller.name} may silence only their own sites: {viewer.scope}")

    known = session.get(Site, code) if code.isprintable() and len(code) <= 64 else None
    if known is None:
        return refuse(f"site: there is no site {code[:64]!r}")
    try:
        begin, end = _period(starts, hours, known.timezone)
        body = SilenceIn(
            site=code,
            room=_optional(room),
            device=_optional(device),
            # A pasted control character is dropped, as from the other forms.
            reason=CONTROL_RE.sub("", reason).strip(),
            starts_at=begin,
            ends_at=end,
        )
        silences.create_for(session, caller, body, utcnow())
    except FormRefused as exc:
        return refuse(str(exc))
    except ValidationError as exc:
        return refuse("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors()))
    except (SilenceOutOfPlace, SilencePeriodRefused) as exc:
        session.rollback()
        return refuse(str(exc))
    return RedirectResponse("/silences", status_code=303)


@router.post("/silences/{silence_id}/expire", name="expire_silence")
def expire_from_page(
    silence_id: Row32IdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("silences:write")],
) -> Response:
    """ "End now": what `POST /api/v1/silences/{id}/expire` does, audited alike."""
    try:
        silences.expire_for(session, caller, silence_id, utcnow())
    except SilenceNotFound:
        raise PageNotFound(
            f"There is no silence {silence_id}.", "The silences page lists yours."
        ) from None
    return RedirectResponse("/silences", status_code=303)
