"""Creating a rollout (refused with the reasons when it cannot work) and the operator's
moves: start, pause, resume, cancel."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, time
from typing import Any

from sqlmodel import Session

from fleet.protocol.profiles import Profile
from fleet.rollouts.artifacts import ArtifactStore
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.rollouts.plan import (
    ENDED,
    DeviceUpdateState,
    Policy,
    RolloutState,
    Wave,
)
from fleet.rollouts.proposal import propose

# The request's models live with the API's other shapes; named here too, where callers that
# create rollouts have always found them.
from fleet.rollouts.schemas import RolloutRequest, TargetFilter, WaveIn, WindowIn
from fleet.rollouts.windows import WindowPolicy

__all__ = ["RolloutRequest", "TargetFilter", "WaveIn", "WindowIn"]


class RolloutRefused(ValueError):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class RolloutConflict(ValueError):
    """The move does not apply to the rollout's state."""


def policy_to_json(policy: Policy) -> dict[str, Any]:
    data = asdict(policy)
    window = data["window"]
    window["night_start"] = policy.window.night_start.isoformat()
    window["night_end"] = policy.window.night_end.isoformat()
    return data


def policy_from_json(data: dict[str, Any]) -> Policy:
    window = dict(data.get("window", {}))
    for key in ("night_start", "night_end"):
        if key in window:
            window[key] = time.fromisoformat(window[key])
    return Policy(
        waves=tuple(Wave(**w) for w in data.get("waves", [])),
        success_threshold_pct=data["success_threshold_pct"],
        pause_for_approval=data["pause_for_approval"],
        abort_min_done=data["abort_min_done"],
        abort_failure_pct=data["abort_failure_pct"],
        device_timeout_s=data["device_timeout_s"],
        max_retries=data["max_retries"],
        window=WindowPolicy(**window),
    )


def create_rollout(
    session: Session,
    profiles: dict[str, Profile],
    store: ArtifactStore,
    request: RolloutRequest,
    now: datetime,
) -> Rollout:
    """Validate and store a rollout with its target devices; raise RolloutRefused with every
    reason it cannot work (nothing is stored then). `profiles` by id give the release;
    `store` must hold a verified file for a release the agents push."""
    proposal = propose(session, profiles, store, request, claim=True)
    if proposal.reasons:
        raise RolloutRefused(proposal.reasons)
    profile, release, policy = proposal.profile, proposal.release, proposal.policy
    assert profile is not None and release is not None and proposal.method is not None
    method, todo, waves = proposal.method, proposal.todo, proposal.waves

    state = RolloutState.draft
    if request.start:
        state = (
            RolloutState.scheduled
            if request.start_at and request.start_at > now
            else RolloutState.running
        )
    rollout = Rollout(
        name=request.name,
        profile=profile.id,
        release_version=release.version,
        release_sha256=release.sha256,
        targets=request.targets.model_dump(),
        policy=policy_to_json(policy),
        state=state.value,
        created_at=now,
        start_at=request.start_at,
        started_at=now if state == RolloutState.running else None,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    for device in todo:
        session.add(
            RolloutDevice(
                rollout_id=rollout.id,
                device_id=device.id,
                site_code=device.site_code,
                wave=waves[device.id],
                state=DeviceUpdateState.pending.value,
                method=method,
                firmware_before=device.firmware,
                updated_at=now,
            )
        )
    session.commit()
    session.refresh(rollout)
    return rollout


def start_rollout(
    session: Session, rollout: Rollout, now: datetime, start_at: datetime | None
) -> None:
    if rollout.state != RolloutState.draft:
        raise RolloutConflict(f"rollout {rollout.id} is {rollout.state}: only a draft is started")
    if start_at is not None and start_at > now:
        rollout.state, rollout.start_at = RolloutState.scheduled.value, start_at
    else:
        rollout.state, rollout.started_at = RolloutState.running.value, now
    _save(session, rollout, now, "")


def pause_rollout(session: Session, rollout: Rollout, now: datetime) -> None:
    if rollout.state not in (RolloutState.running, RolloutState.scheduled):
        raise RolloutConflict(
            f"rollout {rollout.id} is {rollout.state}: only a running or scheduled one pauses"
        )
    rollout.state, rollout.pause_kind = RolloutState.paused.value, "operator"
    _save(session, rollout, now, "paused by an operator: resume to go on")


def resume_rollout(session: Session, rollout: Rollout, now: datetime) -> None:
    if rollout.state != RolloutState.paused:
        raise RolloutConflict(f"rollout {rollout.id} is {rollout.state}: only a paused one resumes")
    if rollout.pause_kind == "threshold":
        rollout.approved_through = rollout.current_wave  # the operator waives its threshold
    rollout.state, rollout.pause_kind = RolloutState.running.value, ""
    rollout.started_at = rollout.started_at or now
    _save(session, rollout, now, "resumed by an operator")


def cancel_rollout(session: Session, rollout: Rollout, now: datetime) -> None:
    if rollout.state in ENDED:
        raise RolloutConflict(f"rollout {rollout.id} is already {rollout.state}")
    rollout.state, rollout.finished_at = RolloutState.aborted.value, now
    _save(session, rollout, now, "cancelled by an operator: nothing more is sent")


def _save(session: Session, rollout: Rollout, now: datetime, reason: str) -> None:
    rollout.updated_at = now
    if reason:
        rollout.reason = reason
    session.add(rollout)
    session.commit()
