"""The programme page: each site's installation milestone and its phase timeline.

The figures are `fleet.programme.queries`', the same `GET /api/v1/programme` returns; each
site's timeline is the programme module's SVG, embedded as an image (an <img> SVG runs no
script).
"""

from __future__ import annotations

import functools
import gettext
from collections import defaultdict

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep
from fleet.api.params import SiteCodePath
from fleet.auth.permissions import Allow
from fleet.models import Site
from fleet.programme.overview import Located, located_milestones, progress
from fleet.programme.queries import milestone_ref, site_programmes
from fleet.programme.records import ProgrammeError, get_site, site_today
from fleet.programme.schemas import MilestoneRef
from fleet.programme.timeline import build_timeline, timeline_svg
from fleet.protocol.messages import utcnow
from fleet.web.i18n import language_of, translations
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep
from fleet.web.words import milestone_text, timeline_words

router = APIRouter(include_in_schema=False)
NULL_TRANSLATIONS = gettext.NullTranslations()


def milestone_label(
    ref: MilestoneRef | None,
    *,
    room: bool = True,
    t: gettext.NullTranslations = NULL_TRANSLATIONS,
) -> str:
    """A milestone as the pages show it, in `t`'s language: "training done (phase 1)"; "—"
    for none. `room` False leaves the classroom out (the overview's one line a site)."""
    if ref is None:
        return "—"
    return milestone_text(t, ref.milestone.value, ref.phase, ref.room if room else None)


def milestones_by_site(
    session: Session, t: gettext.NullTranslations = NULL_TRANSLATIONS
) -> dict[str, tuple[str, bool]]:
    """Each site's latest reached milestone, and whether the programme is late there; a site
    with no milestone recorded is absent. As `GET /api/v1/programme` judges them, but only
    for the sites with milestones: the overview asks on every load."""
    by_site: dict[str, list[Located]] = defaultdict(list)
    for m in located_milestones(session):
        by_site[m.site_code].append(m)
    if not by_site:
        return {}
    now = utcnow()
    out = {}
    for site in session.exec(select(Site).where(col(Site.code).in_(sorted(by_site)))):
        p = progress(site, by_site[site.code], (), site_today(site, now))
        out[site.code] = (milestone_label(milestone_ref(p.current), room=False, t=t), p.late)
    return out


@router.get("/programme", response_class=HTMLResponse, dependencies=[Allow("fleet:read")])
def programme_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return render(
        request,
        "programme.html",
        viewer=viewer,
        sites=site_programmes(session, utcnow()),
        label=functools.partial(milestone_label, t=translations(language_of(request))),
    )


@router.get(
    "/programme/{code}/timeline.svg",
    response_class=Response,
    dependencies=[Allow("programme:read")],
)
def timeline_image(request: Request, code: SiteCodePath, session: SessionDep) -> Response:
    """The site's timeline as `GET /api/v1/sites/{code}/timeline.svg` draws it, its words in
    the page's language (the API's stays English, with its codes)."""
    try:
        site = get_site(session, code)
    except ProgrammeError:
        raise HTTPException(404, "no such site") from None
    timeline = build_timeline(
        site, located_milestones(session, site.code), site_today(site, utcnow())
    )
    words = timeline_words(translations(language_of(request)))
    return Response(timeline_svg(timeline, words), media_type="image/svg+xml")
