"""Creating a rollout (refused with the reasons when it cannot work) and the operator's
moves: start, pause, resume, cancel."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update
from sqlmodel import Session, col, select

from fleet.models import Device
from fleet.protocol.messages import TEXT_PATTERN, SiteCode
from fleet.protocol.profiles import Profile
from fleet.rollouts.artifacts import ArtifactError, ArtifactStore, agent_download_url
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.rollouts.plan import (
    ENDED,
    DeviceUpdateState,
    Policy,
    RolloutState,
    Wave,
    assign_waves,
    policy_problems,
)
from fleet.rollouts.windows import WindowPolicy
from fleet.time_window import Instant


class RolloutRefused(ValueError):
    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class RolloutConflict(ValueError):
    """The move does not apply to the rollout's state."""


# Bounds of what a request may hold, so that every value fits a column and the arithmetic
# made with it (a wave's size, a timeout as a timedelta); zero stays in, for policy_problems
# to say why a zero threshold or count cannot work.
Name = Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)]
Version = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]


class TargetFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vendor: Version | None = None
    model: Name | None = None
    profile: Version | None = None
    sites: list[SiteCode] = Field(default_factory=list, max_length=1000)
    current_versions: list[Version] = Field(default_factory=list, max_length=100)


class WaveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: Count | None = None
    percent: Percent | None = None


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    margin_min: int = Field(default=30, ge=0, le=24 * 60)
    nights_only: bool = False
    weekends_only: bool = False


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(min_length=1)
    release_version: Version
    targets: TargetFilter
    waves: list[WaveIn] = Field(
        default_factory=lambda: [WaveIn(count=1), WaveIn(percent=100)], max_length=100
    )
    success_threshold_pct: Percent = 90.0
    pause_for_approval: bool = False
    abort_min_done: Count = 3
    abort_failure_pct: Percent = 20.0
    # Up to 30 days: a timeout is added to times, and must stay a date.
    device_timeout_s: float = Field(default=1800.0, ge=0, le=30 * 86400, allow_inf_nan=False)
    max_retries: int = Field(default=1, ge=0, le=100)
    window: WindowIn = WindowIn()
    # Start at once (start: true), at start_at, or stay a draft until POST .../start.
    start: bool = False
    start_at: Instant | None = None

    def policy(self) -> Policy:
        return Policy(
            waves=tuple(Wave(w.count, w.percent) for w in self.waves),
            success_threshold_pct=self.success_threshold_pct,
            pause_for_approval=self.pause_for_approval,
            abort_min_done=self.abort_min_done,
            abort_failure_pct=self.abort_failure_pct,
            device_timeout_s=self.device_timeout_s,
            max_retries=self.max_retries,
            window=WindowPolicy(**self.window.model_dump()),
        )


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


def _matching(session: Session, targets: TargetFilter) -> list[Device]:
    query = select(Device).where(col(Device.retired_at).is_(None))
    if targets.vendor:
        query = query.where(col(Device.vendor).ilike(targets.vendor))
    if targets.model:
        query = query.where(Device.model == targets.model)
    if targets.profile:
        query = query.where(Device.profile == targets.profile)
    if targets.sites:
        query = query.where(col(Device.site_code).in_(targets.sites))
    if targets.current_versions:
        query = query.where(col(Device.firmware).in_(targets.current_versions))
    return list(session.exec(query.order_by(col(Device.id))))


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
    devices = _matching(session, request.targets)
    filter_text = request.targets.model_dump(exclude_defaults=True) or "everything"
    if not devices:
        raise RolloutRefused(
            [f"no device matches the targets ({filter_text}): widen the filter or sync sites"]
        )
    reasons: list[str] = []
    by_profile: dict[str, list[Device]] = {}
    for device in devices:
        by_profile.setdefault(device.profile, []).append(device)
    releases = {}
    for profile_id, members in sorted(by_profile.items()):
        profile = profiles.get(profile_id)
        release = profile.release(request.release_version) if profile else None
        if profile is None or release is None:
            reasons.append(
                f"release {request.release_version} does not apply to model "
                f"{members[0].model!r} (profile {profile_id}, {len(members)} targets, e.g. "
                f"{members[0].id}): narrow the targets to a model that has this release"
            )
            continue
        releases[profile_id] = (profile, release)
    if len(releases) > 1:
        reasons.append(
            f"targets span models {', '.join(sorted(releases))}, each with its own artifact: "
            "make one rollout per model (targets.profile)"
        )
    if reasons:
        raise RolloutRefused(reasons)
    profile, release = next(iter(releases.values()))
    todo = [d for d in devices if d.firmware != release.version]
    if not todo:
        raise RolloutRefused([f"every target already runs {release.version}: nothing to do"])
    stuck = [d for d in todo if not release.applies_to(d.firmware)]
    if stuck:
        shown = ", ".join(f"{d.id} on {d.firmware or 'unknown'}" for d in stuck[:5])
        reasons.append(
            f"release {release.version} upgrades only from {', '.join(release.upgrades_from)}; "
            f"{len(stuck)} targets are not on those ({shown}): add current_versions to the "
            "targets, or update them in steps"
        )
    policy = request.policy()
    reasons += policy_problems(policy, len(todo))
    method = profile.method_of(release)
    problem = profile.agent_push_problem() if method == "agent" else None
    if problem:
        # The profile loader refuses this too; a profile made in code is checked here.
        reasons.append(f"release {release.version} has method agent, but {problem}")
    elif method == "agent":
        try:
            # A URL release is checked by each agent against its SHA-256 once downloaded.
            agent_download_url(store, release)
        except ArtifactError as exc:
            reasons.append(str(exc))
    if reasons:
        raise RolloutRefused(reasons)
    claim_devices(session, [d.id for d in todo])
    busy = devices_in_other_rollouts(session, [d.id for d in todo], None)
    if busy:
        raise RolloutRefused([busy])

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
    waves = assign_waves([(d.id, d.site_code) for d in todo], policy.waves)
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


# A rollout holds its devices from creation (a draft too) until it ends; one device is in
# one rollout's command stream at a time, or two ticks would send it two updates.
HOLDING = (
    RolloutState.draft.value,
    RolloutState.scheduled.value,
    RolloutState.running.value,
    RolloutState.paused.value,
)


def claim_devices(session: Session, device_ids: list[str]) -> None:
    """Lock the devices' registry rows for this transaction (a no-op UPDATE: PostgreSQL's
    row locks, SQLite's write lock), so that two rollouts created at once over the same
    devices are judged one after the other, each seeing the other's rows."""
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start : start + 500]
        session.execute(update(Device).where(col(Device.id).in_(chunk)).values(id=Device.id))


def devices_in_other_rollouts(
    session: Session, device_ids: list[str], rollout_id: int | None
) -> str | None:
    """Why these devices cannot go in a rollout (other than `rollout_id`): the rollouts
    that hold some of them, named, with a few device ids each; or None."""
    held: dict[int, list[str]] = {}
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start : start + 500]
        rows = session.exec(
            select(RolloutDevice.rollout_id, RolloutDevice.device_id)
            .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
            .where(col(RolloutDevice.device_id).in_(chunk), col(Rollout.state).in_(HOLDING))
        ).all()
        for other, device in rows:
            if other != rollout_id:
                held.setdefault(other, []).append(device)
    if not held:
        return None
    names = {
        r.id: r.name for r in session.exec(select(Rollout).where(col(Rollout.id).in_(list(held))))
    }
    parts = []
    for other, devices in sorted(held.items()):
        shown = ", ".join(sorted(devices)[:5]) + (" ..." if len(devices) > 5 else "")
        parts.append(f"rollout {other} ({names.get(other, '')!r}) holds {len(devices)}: {shown}")
    return (
        "a device is in one rollout at a time: "
        + "; ".join(parts)
        + ". Fix: wait for that rollout to end, cancel it, or leave those devices out"
    )


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
