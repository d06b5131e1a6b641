"""Firmware rollouts: create (refused with reasons when it cannot work), list, one with its
devices and the bytes its sites downloaded, and the operator's start, pause, resume, cancel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.schemas import Out
from fleet.auth.permissions import Allow
from fleet.devices.profile_book import profiles_in
from fleet.protocol.messages import utcnow
from fleet.rollouts.campaigns import (
    RolloutConflict,
    RolloutRefused,
    RolloutRequest,
    cancel_rollout,
    create_rollout,
    pause_rollout,
    resume_rollout,
    start_rollout,
)
from fleet.rollouts.engine import final_counts
from fleet.rollouts.models import ArtifactDownload, Rollout, RolloutDevice

router = APIRouter(prefix="/api/v1/rollouts", tags=["rollouts"])


class RolloutOut(Out):
    id: int
    name: str
    profile: str
    release_version: str
    release_sha256: str
    targets: dict[str, Any]
    policy: dict[str, Any]
    state: str
    current_wave: int
    pause_kind: str
    reason: str
    created_at: datetime
    start_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int] = {}


class RolloutDeviceOut(Out):
    device_id: str
    site_code: str
    wave: int
    state: str
    method: str
    attempts: int
    firmware_before: str | None
    cmd_id: str | None
    sent_at: datetime | None
    next_try_at: datetime | None
    message: str


class SiteBytesOut(BaseModel):
    site_code: str
    bytes_downloaded: int
    devices_updated: int
    devices_targeted: int


class RolloutDetailOut(RolloutOut):
    devices: list[RolloutDeviceOut]
    sites: list[SiteBytesOut]


class StartIn(BaseModel):
    start_at: datetime | None = None


def _rows(session: Session, rollout_id: int) -> list[RolloutDevice]:
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    return list(session.exec(query.order_by(col(RolloutDevice.wave), col(RolloutDevice.device_id))))


def _out(session: Session, rollout: Rollout) -> RolloutOut:
    assert rollout.id is not None
    out = RolloutOut.model_validate(rollout, from_attributes=True)
    out.counts = final_counts(_rows(session, rollout.id))
    return out


def _get(session: Session, rollout_id: int) -> Rollout:
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise HTTPException(404, f"no rollout {rollout_id}: GET /api/v1/rollouts lists them")
    return rollout


@router.post("", status_code=201, dependencies=[Allow("rollouts:write")])
def create(body: RolloutRequest, session: SessionDep, settings: SettingsDep) -> RolloutOut:
    try:
        rollout = create_rollout(
            session, profiles_in(settings.profiles_dir), settings.artifact_store(), body, utcnow()
        )
    except RolloutRefused as exc:
        raise HTTPException(422, {"message": "rollout refused", "reasons": exc.reasons}) from None
    return _out(session, rollout)


@router.get("", dependencies=[Allow("rollouts:read")])
def list_rollouts(session: SessionDep) -> list[RolloutOut]:
    rollouts = session.exec(select(Rollout).order_by(col(Rollout.id).desc()))
    return [_out(session, r) for r in rollouts]


@router.get("/{rollout_id}", dependencies=[Allow("rollouts:read")])
def get_rollout(rollout_id: int, session: SessionDep) -> RolloutDetailOut:
    rollout = _get(session, rollout_id)
    rows = _rows(session, rollout_id)
    downloads = session.exec(
        select(ArtifactDownload).where(ArtifactDownload.sha256 == rollout.release_sha256)
    )
    paid = {d.site_code: d.bytes_served for d in downloads}
    sites = sorted({r.site_code for r in rows})
    return RolloutDetailOut(
        **_out(session, rollout).model_dump(),
        devices=[RolloutDeviceOut.model_validate(r, from_attributes=True) for r in rows],
        sites=[
            SiteBytesOut(
                site_code=site,
                bytes_downloaded=paid.get(site, 0),
                devices_updated=sum(r.site_code == site and r.state == "succeeded" for r in rows),
                devices_targeted=sum(r.site_code == site for r in rows),
            )
            for site in sites
        ],
    )


def _move(
    session: Session, rollout_id: int, move: Callable[[Session, Rollout, datetime], None]
) -> RolloutOut:
    rollout = _get(session, rollout_id)
    try:
        move(session, rollout, utcnow())
    except RolloutConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return _out(session, rollout)


@router.post("/{rollout_id}/start", dependencies=[Allow("rollouts:write")])
def start(rollout_id: int, session: SessionDep, body: StartIn | None = None) -> RolloutOut:
    start_at = body.start_at if body else None
    return _move(session, rollout_id, lambda s, r, now: start_rollout(s, r, now, start_at))


@router.post("/{rollout_id}/pause", dependencies=[Allow("rollouts:write")])
def pause(rollout_id: int, session: SessionDep) -> RolloutOut:
    return _move(session, rollout_id, pause_rollout)


@router.post("/{rollout_id}/resume", dependencies=[Allow("rollouts:write")])
def resume(rollout_id: int, session: SessionDep) -> RolloutOut:
    """Also the approval that lets a rollout paused after a wave go on."""
    return _move(session, rollout_id, resume_rollout)


@router.post("/{rollout_id}/cancel", dependencies=[Allow("rollouts:write")])
def cancel(rollout_id: int, session: SessionDep) -> RolloutOut:
    return _move(session, rollout_id, cancel_rollout)
