"""The programme page: each site's installation milestone and its phase timeline.

The figures come from `GET /api/v1/programme`'s own handler; each site's timeline is the
programme module's SVG, embedded as an image (an <img> SVG runs no script).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from fleet.api.deps import SessionDep
from fleet.api.routes.programme import get_programme
from fleet.auth.permissions import Allow
from fleet.programme.schemas import MilestoneRef
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)


def milestone_label(ref: MilestoneRef | None, *, room: bool = True) -> str:
    if ref is None:
        return "—"
    where = f"phase {ref.phase}" + (f", {ref.room}" if ref.room and room else "")
    return f"{ref.milestone.value.replace('_', ' ')} ({where})"


def milestones_by_site(session: Session) -> dict[str, tuple[str, bool]]:
    """Each site's latest reached milestone, and whether the programme is late there."""
    return {
        p.site: (milestone_label(p.current, room=False), p.late) for p in get_programme(session)
    }


@router.get("/programme", response_class=HTMLResponse, dependencies=[Allow("fleet:read")])
def programme_page(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    return render(
        request,
        "programme.html",
        viewer=viewer,
        sites=get_programme(session),
        label=milestone_label,
    )
