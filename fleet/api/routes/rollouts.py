"""Firmware rollouts: create (refused with reasons when it cannot work), list, one with its
devices and the bytes its sites downloaded, and the operator's start, pause, resume, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlmodel import Session

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.paging import cursor_refused, link_next
from fleet.api.params import After, Row32IdPath, limit_query
from fleet.auth.permissions import Allow
from fleet.devices.profile_book import profiles_in
from fleet.paging import BadCursor
from fleet.protocol.messages import utcnow
from fleet.rollouts import moves, queries
from fleet.rollouts.campaigns import (
    RolloutConflict,
    RolloutRefused,
    RolloutRequest,
    create_rollout,
)
from fleet.rollouts.proposal import preview_out, propose
from fleet.rollouts.queries import RolloutNotFound, rollout_out
from fleet.rollouts.schemas import RolloutDetailOut, RolloutOut, RolloutPreviewOut, StartIn

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


@router.post("", status_code=201, dependencies=[Allow("rollouts:write")])
def create(body: RolloutRequest, session: SessionDep, settings: SettingsDep) -> RolloutOut:
    try:
        rollout = create_rollout(
            session, profiles_in(settings.profiles_dir), settings.artifact_store(), body, utcnow()
        )
    except RolloutRefused as exc:
        # FastAPI's 422 shape, one entry a reason: what the OpenAPI schema declares.
        raise RequestValidationError(
            [
                {"loc": ("body",), "msg": f"rollout refused: {r}", "type": "value_error"}
                for r in exc.reasons
            ]
        ) from None
    return rollout_out(session, rollout)


@router.post("/preview", dependencies=[Allow("rollouts:write")])
def preview(body: RolloutRequest, session: SessionDep, settings: SettingsDep) -> RolloutPreviewOut:
    """What POST /api/v1/rollouts would do with this body, storing nothing: the devices it
    would target by wave, or `refused` with the reasons it would answer 422 with. Devices
    another rollout holds are named with that rollout."""
    proposal = propose(session, profiles_in(settings.profiles_dir), settings.artifact_store(), body)
    return preview_out(proposal)  # nothing committed: a preview takes no lock either


@router.get("", dependencies=[Allow("rollouts:read")])
def list_rollouts(
    request: Request,
    response: Response,
    session: SessionDep,
    limit: Annotated[int, limit_query(1000)] = 100,
    after: After = None,
) -> list[RolloutOut]:
    """Newest first; the next page's URL is in the Link header (rel="next")."""
    try:
        page = queries.list_rollouts(session, limit=limit, after=after)
    except BadCursor as exc:
        raise cursor_refused(exc) from None
    link_next(request, response, page.next)
    return page.items


@router.get("/{rollout_id}", dependencies=[Allow("rollouts:read")])
def get_rollout(rollout_id: Row32IdPath, session: SessionDep) -> RolloutDetailOut:
    try:
        return queries.rollout_detail(session, rollout_id)
    except RolloutNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _move(session: Session, rollout_id: int, move: moves.Move) -> RolloutOut:
    try:
        return move(session, rollout_id, utcnow())
    except RolloutNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except RolloutConflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/{rollout_id}/start", dependencies=[Allow("rollouts:write")])
def start(rollout_id: Row32IdPath, session: SessionDep, body: StartIn | None = None) -> RolloutOut:
    start_at = body.start_at if body else None
    return _move(session, rollout_id, lambda s, i, now: moves.start(s, i, now, start_at))


@router.post("/{rollout_id}/pause", dependencies=[Allow("rollouts:write")])
def pause(rollout_id: Row32IdPath, session: SessionDep) -> RolloutOut:
    return _move(session, rollout_id, moves.pause)


@router.post("/{rollout_id}/resume", dependencies=[Allow("rollouts:write")])
def resume(rollout_id: Row32IdPath, session: SessionDep) -> RolloutOut:
    """Also the approval that lets a rollout paused after a wave go on."""
    return _move(session, rollout_id, moves.resume)


@router.post("/{rollout_id}/cancel", dependencies=[Allow("rollouts:write")])
def cancel(rollout_id: Row32IdPath, session: SessionDep) -> RolloutOut:
    return _move(session, rollout_id, moves.cancel)
