"""The rollouts page: each rollout's state, its progress per wave and per site, and the
operator's start, pause, resume and cancel (a new one is made on fleet.web.rollout_new_page).

Figures and moves are the rollouts domain's own (`fleet.rollouts.queries`,
`fleet.rollouts.moves`), the same the API calls, so the page and `GET /api/v1/rollouts/{id}`,
`POST .../pause` and the rest cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session

from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath
from fleet.auth.permissions import Allow
from fleet.paging import MAX_CURSOR_CHARS, BadCursor
from fleet.protocol.messages import utcnow
from fleet.rollouts.campaigns import RolloutConflict
from fleet.rollouts.moves import Move, cancel, pause, resume, start
from fleet.rollouts.plan import ENDED, FINAL, DeviceUpdateState, RolloutState
from fleet.rollouts.queries import RolloutNotFound, list_rollouts, rollout_detail
from fleet.rollouts.schemas import RolloutDetailOut, RolloutOut
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

# The columns of the progress tables, in the order a device goes through them.
UPDATE_STATES = tuple(s.value for s in DeviceUpdateState)
# Ended rollouts beyond this many are listed without their wave and site tables.
DETAILED = 20
PAGE_SIZE = 50


@dataclass
class Progress:
    """Devices by update state in one wave or at one site."""

    label: str
    counts: dict[str, int] = field(default_factory=dict)
    bytes_downloaded: int | None = None

    @property
    def total(self) -> int:
        """The devices counted here, in any update state."""
        return sum(self.counts.values())

    @property
    def succeeded(self) -> int:
        """The devices here whose update succeeded."""
        return self.counts.get(DeviceUpdateState.succeeded.value, 0)


@dataclass
class RolloutView:
    """A rollout as the rollouts page shows it: its figures and state, and its progress per wave
    and per site (empty for an ended rollout listed without its tables)."""

    rollout: RolloutOut
    waves: list[Progress] = field(default_factory=list)
    sites: list[Progress] = field(default_factory=list)

    @property
    def targeted(self) -> int:
        """The devices the rollout targets (its counts, without their `done` total)."""
        counts = self.rollout.counts
        return sum(counts.values()) - counts.get("done", 0)  # "done" sums the final states

    @property
    def succeeded(self) -> int:
        """The devices whose update succeeded."""
        return self.rollout.counts.get(DeviceUpdateState.succeeded.value, 0)

    @property
    def failed(self) -> int:
        """The devices that ended in a final state other than success."""
        counts = self.rollout.counts
        return sum(counts.get(s.value, 0) for s in FINAL if s != DeviceUpdateState.succeeded)

    @property
    def moves(self) -> list[str]:
        """The operator's moves that apply to the rollout's state, as the API allows them."""
        state = self.rollout.state
        moves = []
        if state == RolloutState.draft:
            moves.append("start")
        if state in (RolloutState.running, RolloutState.scheduled):
            moves.append("pause")
        if state == RolloutState.paused:
            moves.append("resume")
        if state not in ENDED:
            moves.append("cancel")
        return moves


def progress(detail: RolloutDetailOut) -> RolloutView:
    """A rollout's detail as the page shows it: its devices counted by update state per wave
    (numbered from 1) and per site, with the bytes each site has downloaded."""
    waves: dict[int, Progress] = {}
    sites: dict[str, Progress] = {}
    for device in detail.devices:
        wave = waves.setdefault(device.wave, Progress(f"Wave {device.wave + 1}"))
        site = sites.setdefault(device.site_code, Progress(device.site_code))
        for bucket in (wave, site):
            bucket.counts[device.state] = bucket.counts.get(device.state, 0) + 1
    for paid in detail.sites:
        site = sites.setdefault(paid.site_code, Progress(paid.site_code))
        site.bytes_downloaded = paid.bytes_downloaded
    return RolloutView(
        rollout=detail,
        waves=[waves[w] for w in sorted(waves)],
        sites=[sites[s] for s in sorted(sites)],
    )


def rollout_views(session: Session, after: str = "") -> tuple[list[RolloutView], str | None]:
    """A page of rollouts, newest first, as the page shows them, and the cursor of the next
    page. A cursor that is not one (an edited URL) gives the first page."""
    try:
        page = list_rollouts(session, limit=PAGE_SIZE, after=after or None)
    except BadCursor:
        page = list_rollouts(session, limit=PAGE_SIZE)
    views = []
    for index, rollout in enumerate(page.items):
        if (index < DETAILED and not after) or rollout.state not in ENDED:
            views.append(progress(rollout_detail(session, rollout.id)))
        else:
            views.append(RolloutView(rollout=rollout))
    return views, page.next


@router.get("/rollouts", response_class=HTMLResponse, dependencies=[Allow("rollouts:read")])
def rollouts_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    partial: bool = False,
    after: Annotated[str, Query(max_length=MAX_CURSOR_CHARS)] = "",
) -> HTMLResponse:
    return _page(request, session, viewer, partial, after=after)


def _page(
    request: Request,
    session: Session,
    viewer: object,
    partial: bool = False,
    problem: str = "",
    status_code: int = 200,
    after: str = "",
) -> HTMLResponse:
    views, following = rollout_views(session, after)
    return render(
        request,
        "_rollouts.html" if partial else "rollouts.html",
        status_code=status_code,
        viewer=viewer,
        rollouts=views,
        update_states=UPDATE_STATES,
        problem=problem,
        after=after,
        older=f"/rollouts?{urlencode({'after': following})}" if following else "",
    )


def _move(
    request: Request,
    session: Session,
    viewer: object,
    rollout_id: int,
    move: Move,
) -> Response:
    try:
        move(session, rollout_id, utcnow())
    except RolloutNotFound:
        raise PageNotFound(f"There is no rollout {rollout_id}.", "The page lists them.") from None
    except RolloutConflict as exc:  # the move does not apply any more: say why, on the page
        request.state.audit_outcome = "failed 409"
        return _page(request, session, viewer, problem=str(exc), status_code=409)
    return RedirectResponse(f"/rollouts#rollout-{rollout_id}", status_code=303)


@router.post("/rollouts/{rollout_id}/start", dependencies=[Allow("rollouts:write")])
def start_from_page(
    rollout_id: Row32IdPath, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    """A draft's Start button: starts it now, as `POST /api/v1/rollouts/{id}/start` with no
    body does."""
    return _move(request, session, viewer, rollout_id, start)


@router.post("/rollouts/{rollout_id}/pause", dependencies=[Allow("rollouts:write")])
def pause_from_page(
    rollout_id: Row32IdPath, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return _move(request, session, viewer, rollout_id, pause)


@router.post("/rollouts/{rollout_id}/resume", dependencies=[Allow("rollouts:write")])
def resume_from_page(
    rollout_id: Row32IdPath, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return _move(request, session, viewer, rollout_id, resume)


@router.post("/rollouts/{rollout_id}/cancel", dependencies=[Allow("rollouts:write")])
def cancel_from_page(
    rollout_id: Row32IdPath, request: Request, session: SessionDep, viewer: ViewerDep
) -> Response:
    return _move(request, session, viewer, rollout_id, cancel)
