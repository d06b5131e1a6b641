"""Silences: mute a site, a room or a device for a period, with a reason (its alerts are
still recorded but notify no one); list them; end one early. Technicians on their own sites;
a silence of another site answers as a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from fleet.alerts import silences
from fleet.alerts.schemas import SilenceIn, SilenceOut
from fleet.alerts.silences import SilenceNotFound, SilenceOutOfPlace, SilencePeriodRefused
from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath, limit_query, refused
from fleet.auth.permissions import Allow, Caller
from fleet.protocol.messages import utcnow

router = APIRouter(prefix="/api/v1/silences", tags=["alerts"])

MAX_PAGE = 500


@router.get("", response_model=list[SilenceOut])
def list_silences(
    session: SessionDep,
    caller: Annotated[Caller, Allow("silences:read")],
    active: Annotated[bool, Query(description="only those in force now")] = False,
    limit: Annotated[int, limit_query(MAX_PAGE)] = 100,
) -> list[SilenceOut]:
    """Newest first, within the caller's sites."""
    rows = silences.find(
        session, caller.sites, current_at=utcnow() if active else None, limit=limit
    )
    return [SilenceOut.model_validate(r) for r in rows]


@router.post("", response_model=SilenceOut, status_code=201)
def create_silence(
    body: SilenceIn, session: SessionDep, caller: Annotated[Caller, Allow("silences:write")]
) -> SilenceOut:
    """404 for a site unknown or outside the caller's sites, or a room or device not at it;
    422 for a period that is empty, over, or longer than MAX_LENGTH."""
    try:
        silence = silences.create_for(session, caller, body, utcnow())
    except SilenceOutOfPlace as exc:
        raise HTTPException(404, str(exc)) from None
    except SilencePeriodRefused as exc:
        raise refused("body", "ends_at", str(exc), body.ends_at.isoformat()) from None
    return SilenceOut.model_validate(silence)


@router.post("/{silence_id}/expire", response_model=SilenceOut)
def expire_silence(
    silence_id: Row32IdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("silences:write")],
) -> SilenceOut:
    """End it now: what is still open under it is notified on the next notice run."""
    try:
        silence = silences.expire_for(session, caller, silence_id, utcnow())
    except SilenceNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return SilenceOut.model_validate(silence)
