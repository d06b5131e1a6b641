"""What a rollout request would do, decided without storing anything: the devices it targets,
the wave of each, and every reason it would be refused.

`create_rollout` (fleet.rollouts.campaigns) stores exactly this; the API's
`POST /api/v1/rollouts/preview` and the New rollout page show it, so a preview and the
creation that follows cannot disagree (short of the fleet changing in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import update
from sqlmodel import Session, col, select

from fleet.models import Device
from fleet.protocol.profiles import Profile, Release
from fleet.rollouts.artifacts import ArtifactError, ArtifactStore, agent_download_url
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.rollouts.plan import Policy, RolloutState, assign_waves, policy_problems
from fleet.rollouts.schemas import (
    PreviewDeviceOut,
    PreviewWaveOut,
    RolloutPreviewOut,
    RolloutRequest,
    TargetFilter,
)

# A rollout holds its devices from creation (a draft too) until it ends; one device is in
# one rollout's command stream at a time, or two ticks would send it two updates.
HOLDING = (
    RolloutState.draft.value,
    RolloutState.scheduled.value,
    RolloutState.running.value,
    RolloutState.paused.value,
)


@dataclass
class Proposal:
    """A request judged: `reasons` empty means creation would store `todo` (the matched
    devices not yet on the release) in the waves of `waves` (device id -> wave from 0)."""

    request: RolloutRequest
    policy: Policy
    reasons: list[str] = field(default_factory=list)
    matched: list[Device] = field(default_factory=list)
    todo: list[Device] = field(default_factory=list)
    waves: dict[str, int] = field(default_factory=dict)
    profile: Profile | None = None
    release: Release | None = None
    method: str | None = None
    # Device id -> (rollout id, its name) for targets another rollout holds.
    held: dict[str, tuple[int, str]] = field(default_factory=dict)


def matching_devices(session: Session, targets: TargetFilter) -> list[Device]:
    """The registered, unretired devices the filter matches, by id."""
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


def propose(
    session: Session,
    profiles: dict[str, Profile],
    store: ArtifactStore,
    request: RolloutRequest,
    *,
    claim: bool = False,
) -> Proposal:
    """Judge the request as creation does, reasons in the same order and words. `claim`
    (creation only) locks the target devices' rows first, so that two rollouts created at once
    over the same devices are judged one after the other; a preview takes no lock."""
    proposal = Proposal(request=request, policy=request.policy())
    reasons = proposal.reasons
    devices = proposal.matched = matching_devices(session, request.targets)
    filter_text = request.targets.model_dump(exclude_defaults=True) or "everything"
    if not devices:
        reasons.append(
            f"no device matches the targets ({filter_text}): widen the filter or sync sites"
        )
        return proposal
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
        return proposal
    profile, release = next(iter(releases.values()))
    proposal.profile, proposal.release = profile, release
    todo = proposal.todo = [d for d in devices if d.firmware != release.version]
    if not todo:
        reasons.append(f"every target already runs {release.version}: nothing to do")
        return proposal
    proposal.waves = assign_waves([(d.id, d.site_code) for d in todo], proposal.policy.waves)
    stuck = [d for d in todo if not release.applies_to(d.firmware)]
    if stuck:
        shown = ", ".join(f"{d.id} on {d.firmware or 'unknown'}" for d in stuck[:5])
        reasons.append(
            f"release {release.version} upgrades only from {', '.join(release.upgrades_from)}; "
            f"{len(stuck)} targets are not on those ({shown}): add current_versions to the "
            "targets, or update them in steps"
        )
    reasons += policy_problems(proposal.policy, len(todo))
    method = proposal.method = profile.method_of(release)
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
    ids = [d.id for d in todo]
    if claim and not reasons:
        claim_devices(session, ids)
    proposal.held = holders(session, ids, None)
    if not reasons and proposal.held:
        reasons.append(held_reason(proposal.held))
    return proposal


def preview_out(proposal: Proposal) -> RolloutPreviewOut:
    """The proposal as the API and the page show it: the devices by wave, then by id."""
    by_wave: dict[int, list[PreviewDeviceOut]] = {}
    for device in sorted(proposal.todo, key=lambda d: d.id):
        held = proposal.held.get(device.id)
        by_wave.setdefault(proposal.waves.get(device.id, 0), []).append(
            PreviewDeviceOut(
                device_id=device.id,
                site_code=device.site_code,
                firmware=device.firmware,
                held_by=held[0] if held else None,
                held_by_name=held[1] if held else "",
            )
        )
    release = proposal.release
    return RolloutPreviewOut(
        refused=bool(proposal.reasons),
        reasons=list(proposal.reasons),
        profile=proposal.profile.id if proposal.profile else None,
        release_version=release.version if release else proposal.request.release_version,
        method=proposal.method,
        matched=len(proposal.matched),
        already_on_release=len(proposal.matched) - len(proposal.todo) if release else 0,
        waves=[PreviewWaveOut(wave=w, devices=by_wave[w]) for w in sorted(by_wave)],
    )


def claim_devices(session: Session, device_ids: list[str]) -> None:
    """Lock the devices' registry rows for this transaction (a no-op UPDATE: PostgreSQL's
    row locks, SQLite's write lock), so that two rollouts created at once over the same
    devices are judged one after the other, each seeing the other's rows."""
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start : start + 500]
        session.execute(update(Device).where(col(Device.id).in_(chunk)).values(id=Device.id))


def holders(
    session: Session, device_ids: list[str], rollout_id: int | None
) -> dict[str, tuple[int, str]]:
    """Device id -> (id, name) of the rollout other than `rollout_id` that holds it."""
    held: dict[str, int] = {}
    for start in range(0, len(device_ids), 500):
        chunk = device_ids[start : start + 500]
        rows = session.exec(
            select(RolloutDevice.rollout_id, RolloutDevice.device_id)
            .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
            .where(col(RolloutDevice.device_id).in_(chunk), col(Rollout.state).in_(HOLDING))
        ).all()
        for other, device in rows:
            if other != rollout_id:
                held[device] = other
    if not held:
        return {}
    ids = sorted(set(held.values()))
    names = {r.id: r.name for r in session.exec(select(Rollout).where(col(Rollout.id).in_(ids)))}
    return {device: (other, names.get(other, "")) for device, other in held.items()}


def held_reason(held: dict[str, tuple[int, str]]) -> str:
    """Why held devices cannot go in a rollout: the rollouts that hold them, named, with a
    few device ids each, and what to do."""
    by_rollout: dict[tuple[int, str], list[str]] = {}
    for device, holder in held.items():
        by_rollout.setdefault(holder, []).append(device)
    parts = []
    for (other, name), devices in sorted(by_rollout.items()):
        shown = ", ".join(sorted(devices)[:5]) + (" ..." if len(devices) > 5 else "")
        parts.append(f"rollout {other} ({name!r}) holds {len(devices)}: {shown}")
    return (
        "a device is in one rollout at a time: "
        + "; ".join(parts)
        + ". Fix: wait for that rollout to end, cancel it, or leave those devices out"
    )


def devices_in_other_rollouts(
    session: Session, device_ids: list[str], rollout_id: int | None
) -> str | None:
    """Why these devices cannot go in a rollout (other than `rollout_id`), or None."""
    held = holders(session, device_ids, rollout_id)
    return held_reason(held) if held else None
