"""The rollout state machine as plain functions: rollout state in, next actions out.

No database, no broker, no clock of its own: `next_actions` gets a snapshot of a rollout
and its devices plus `now`, and says what to do (send an update, mark a device, move the
rollout). `fleet.rollouts.snapshot` reads the snapshot from the database and
`fleet.rollouts.engine` carries the actions out; tests call these functions directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from fleet.rollouts.windows import WindowPolicy


class RolloutState(StrEnum):
    """Where a rollout stands: a draft, scheduled to start, running, paused, aborted (also when
    cancelled) or completed."""

    draft = "draft"
    scheduled = "scheduled"
    running = "running"
    paused = "paused"
    aborted = "aborted"
    completed = "completed"


class DeviceUpdateState(StrEnum):
    """Where one target device's update stands, from pending through sent, downloading and
    installing to a final state."""

    pending = "pending"
    sent = "sent"
    downloading = "downloading"
    installing = "installing"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    skipped = "skipped"  # in use at the time: tried again in the next window
    deferred = "deferred"  # device or site unreachable, or outside the window: not a failure
    cancelled = "cancelled"  # the rollout was cancelled before the device's update started


FINAL = frozenset(
    {
        DeviceUpdateState.succeeded,
        DeviceUpdateState.failed,
        DeviceUpdateState.timed_out,
        DeviceUpdateState.cancelled,
    }
)
IN_FLIGHT = frozenset(
    {DeviceUpdateState.sent, DeviceUpdateState.downloading, DeviceUpdateState.installing}
)
WAITING = frozenset(
    {DeviceUpdateState.pending, DeviceUpdateState.deferred, DeviceUpdateState.skipped}
)
ENDED = frozenset({RolloutState.aborted, RolloutState.completed})


@dataclass(frozen=True)
class Wave:
    """A canary or later wave: `count` devices, or up to `percent` of all targets by its end
    (percentages are cumulative: 10, 50, 100)."""

    count: int | None = None
    percent: float | None = None


@dataclass(frozen=True)
class Policy:
    """How a rollout proceeds: its waves, the success share that lets the next wave start, when it
    aborts, the per-device timeout (seconds) and retries, and its maintenance window."""

    waves: tuple[Wave, ...] = (Wave(count=1), Wave(percent=100))
    # Share of a wave's devices that must succeed before the next wave starts.
    success_threshold_pct: float = 90.0
    # Wait for an operator's resume after each wave, even when its threshold is met.
    pause_for_approval: bool = False
    # Abort the whole rollout once at least this many devices are done and more than
    # abort_failure_pct of them failed or timed out.
    abort_min_done: int = 3
    abort_failure_pct: float = 20.0
    device_timeout_s: float = 1800.0
    max_retries: int = 1
    window: WindowPolicy = field(default_factory=WindowPolicy)


@dataclass(frozen=True)
class DeviceView:
    """One target device as `next_actions` judges it: its rollout row, and what the registry last
    knew of it (firmware, when seen, reachable, in use, its site online)."""

    device_id: str
    site_code: str
    wave: int
    state: DeviceUpdateState
    attempts: int = 0
    sent_at: datetime | None = None
    next_try_at: datetime | None = None
    message: str = ""
    # From the registry: what the device last reported, and when.
    firmware: str | None = None
    seen_at: datetime | None = None
    reachable: bool | None = None
    in_use: bool = False
    site_online: bool = True
    # agent: the site agent pushes it; vendor_cloud / technician: we only watch the version.
    method: str = "agent"


@dataclass(frozen=True)
class RolloutView:
    """A rollout as `next_actions` judges it: its state, current wave, target version, policy and
    devices."""

    state: RolloutState
    current_wave: int
    target_version: str
    policy: Policy
    devices: tuple[DeviceView, ...]
    start_at: datetime | None = None
    # Waves whose threshold an operator waived by resuming a rollout paused below it.
    approved_through: int = -1


@dataclass(frozen=True)
class Send:
    """Send the update command to this device (`push` False: nothing to send, only watch its
    version)."""

    device_id: str
    push: bool  # False: nothing to send (vendor cloud, technician), only watch the version


@dataclass(frozen=True)
class MarkDevice:
    """Put this device in `state`, with a message, and when to try it again."""

    device_id: str
    state: DeviceUpdateState
    message: str
    next_try_at: datetime | None = None


@dataclass(frozen=True)
class MoveRollout:
    """Move the rollout to `state` and `current_wave`, for `reason`."""

    state: RolloutState
    current_wave: int
    reason: str


Action = Send | MarkDevice | MoveRollout
WindowOpen = Callable[[str], bool]
NextWindow = Callable[[str], datetime | None]


def assign_waves(devices: list[tuple[str, str]], waves: tuple[Wave, ...]) -> dict[str, int]:
    """Wave of each (device id, site) pair. Sites take turns, so a canary spans sites rather
    than landing in one classroom; devices a wave list leaves over go in the last wave."""
    by_site: dict[str, list[str]] = {}
    for device_id, site in sorted(devices, key=lambda d: (d[1], d[0])):
        by_site.setdefault(site, []).append(device_id)
    order: list[str] = []
    queues = list(by_site.values())
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    total = len(order)
    out: dict[str, int] = {}
    start = 0
    for index, wave in enumerate(waves):
        if wave.count is not None:
            end = start + wave.count
        else:
            end = max(start, round(total * (wave.percent or 0) / 100))
        for device_id in order[start:end]:
            out[device_id] = index
        start = min(max(start, end), total)
    for device_id in order[start:]:
        out[device_id] = max(len(waves) - 1, 0)
    return out


def policy_problems(policy: Policy, targets: int) -> list[str]:
    """Why a policy cannot work as written, each with what to do; empty when it can."""
    problems = []
    if not policy.waves:
        problems.append(
            "no waves: give at least a canary, e.g. waves: [{count: 1}, {percent: 100}]"
        )
    for index, wave in enumerate(policy.waves):
        if (wave.count is None) == (wave.percent is None):
            problems.append(f"wave {index + 1}: give either count or percent, not both or neither")
        elif wave.count is not None and wave.count < 1:
            problems.append(f"wave {index + 1}: count {wave.count} is below 1")
        elif wave.percent is not None and not 0 < wave.percent <= 100:
            problems.append(f"wave {index + 1}: percent {wave.percent} is not in (0, 100]")
    if not 0 < policy.success_threshold_pct <= 100:
        problems.append(
            f"success threshold {policy.success_threshold_pct}% is not in (0, 100]: no wave "
            "could ever pass it, or every wave would"
        )
    if not 0 <= policy.abort_failure_pct < 100:
        problems.append(
            f"abort failure rate {policy.abort_failure_pct}% is not in [0, 100): a failure "
            "rate can never exceed it, so the rollout could never abort"
        )
    if policy.abort_min_done < 1:
        problems.append(f"abort_min_done {policy.abort_min_done} is below 1")
    elif targets and policy.abort_min_done > targets:
        problems.append(
            f"abort_min_done {policy.abort_min_done} is more than the {targets} targets: the "
            "rollout could never abort. Fix: lower it"
        )
    if policy.device_timeout_s <= 0:
        problems.append("device_timeout_s must be above 0")
    if policy.max_retries < 0:
        problems.append("max_retries must be 0 or more")
    window = policy.window
    if window.nights_only and window.night_start == window.night_end:
        problems.append(
            f"the night starts and ends at {window.night_start:%H:%M}: nights_only would leave "
            "no time at all. Fix: give the night's end, e.g. 22:00 to 06:00"
        )
    return problems


def on_device_report(
    device: DeviceView,
    reported: DeviceUpdateState,
    policy: Policy,
    message: str,
    *,
    ended: bool = False,
) -> MarkDevice:
    """What an agent's progress report makes of a device: a failure is retried while
    retries are left (the attempt already counted when the update was sent), unless the
    rollout has `ended` (cancelled or aborted): then nothing is sent again, so the failure
    is final."""
    failed = reported in (DeviceUpdateState.failed, DeviceUpdateState.timed_out)
    if reported == DeviceUpdateState.cancelled and not ended:
        # Only a cancelled rollout's commands are revoked; any other refusal is a failure.
        reported = DeviceUpdateState.failed
        failed = True
    if failed and not ended and device.attempts <= policy.max_retries:
        retry = f"{message}; retry {device.attempts} of {policy.max_retries}"
        return MarkDevice(device.device_id, DeviceUpdateState.pending, retry)
    return MarkDevice(device.device_id, reported, message)


def _device_marks(view: RolloutView, now: datetime) -> list[MarkDevice]:
    marks: list[MarkDevice] = []
    policy = view.policy
    timeout = timedelta(seconds=policy.device_timeout_s)
    for d in view.devices:
        if d.state in FINAL:
            continue
        on_target = d.firmware == view.target_version
        if on_target and d.state in WAITING and d.attempts == 0:
            marks.append(
                MarkDevice(d.device_id, DeviceUpdateState.succeeded, f"already on {d.firmware}")
            )
        elif (
            on_target and d.sent_at is not None and d.seen_at is not None and d.seen_at > d.sent_at
        ):
            marks.append(
                MarkDevice(d.device_id, DeviceUpdateState.succeeded, f"reports {d.firmware}")
            )
        elif d.state in IN_FLIGHT and d.sent_at is not None and now - d.sent_at > timeout:
            why = f"no confirmed {view.target_version} within {policy.device_timeout_s:.0f} s"
            marks.append(on_device_report(d, DeviceUpdateState.timed_out, policy, why))
    return marks


def _apply(devices: tuple[DeviceView, ...], marks: list[MarkDevice]) -> tuple[DeviceView, ...]:
    by_id = {m.device_id: m for m in marks}
    return tuple(
        replace(d, state=by_id[d.device_id].state) if d.device_id in by_id else d for d in devices
    )


def _abort_reason(devices: tuple[DeviceView, ...], policy: Policy) -> str | None:
    done = [d for d in devices if d.state in FINAL]
    bad = [d for d in done if d.state != DeviceUpdateState.succeeded]
    if len(done) < policy.abort_min_done or not done:
        return None
    rate = 100 * len(bad) / len(done)
    if rate <= policy.abort_failure_pct:
        return None
    return (
        f"aborted: {len(bad)} of {len(done)} done devices failed ({rate:.0f}% > "
        f"{policy.abort_failure_pct:g}%); nothing more is sent. Look at the failed devices' "
        "messages, fix the release, then start a new rollout"
    )


def _wave_move(view: RolloutView, devices: tuple[DeviceView, ...]) -> MoveRollout | None:
    wave = view.current_wave
    last = max((d.wave for d in devices), default=0)
    members = [d for d in devices if d.wave == wave]
    succeeded = sum(d.state == DeviceUpdateState.succeeded for d in members)
    pct = 100 * succeeded / len(members) if members else 100.0
    threshold = view.policy.success_threshold_pct
    if pct >= threshold or wave <= view.approved_through:
        if wave >= last:
            if all(d.state in FINAL for d in devices):
                ok = sum(d.state == DeviceUpdateState.succeeded for d in devices)
                return MoveRollout(
                    RolloutState.completed, wave, f"completed: {ok} of {len(devices)} updated"
                )
            return None
        if view.policy.pause_for_approval:
            return MoveRollout(
                RolloutState.paused,
                wave + 1,
                f"wave {wave + 1} passed ({pct:.0f}% succeeded): resume to start wave {wave + 2}",
            )
        return MoveRollout(RolloutState.running, wave + 1, f"wave {wave + 1} passed ({pct:.0f}%)")
    open_ = sum(d.state not in FINAL for d in members)
    if 100 * (succeeded + open_) / len(members) < threshold:
        return MoveRollout(
            RolloutState.paused,
            wave,
            f"wave {wave + 1} cannot reach its {threshold:g}% success threshold ({succeeded} of "
            f"{len(members)} succeeded): resume to go on regardless, or cancel",
        )
    return None


def _sends(
    view: RolloutView,
    devices: tuple[DeviceView, ...],
    wave: int,
    now: datetime,
    window_open: WindowOpen,
    next_window: NextWindow,
) -> list[Action]:
    actions: list[Action] = []
    for d in devices:
        if d.wave > wave or d.state not in WAITING:
            continue
        if d.next_try_at is not None and d.next_try_at > now:
            continue
        mark: MarkDevice | None = None
        if not d.site_online:
            mark = MarkDevice(d.device_id, DeviceUpdateState.deferred, "site agent offline")
        elif not window_open(d.site_code):
            opens = next_window(d.site_code)
            when = opens.isoformat() if opens else "not within 15 days: check the window policy"
            mark = MarkDevice(
                d.device_id,
                DeviceUpdateState.deferred,
                f"outside the maintenance window; next opens {when}",
                opens,
            )
        elif d.reachable is False:
            mark = MarkDevice(d.device_id, DeviceUpdateState.deferred, "device unreachable")
        elif d.in_use:
            mark = MarkDevice(
                d.device_id,
                DeviceUpdateState.skipped,
                "in use (on, with an active input): next window",
            )
        if mark is None:
            actions.append(Send(d.device_id, push=d.method == "agent"))
        elif (mark.state, mark.message) != (
            d.state,
            d.message,
        ) or mark.next_try_at != d.next_try_at:
            actions.append(mark)
    return actions


def settle_ended(view: RolloutView, now: datetime) -> list[MarkDevice]:
    """Marks that bring every device of an aborted (cancelled) rollout to a final state:
    one never sent is `cancelled`; one on the target version since its command is
    `succeeded`; one whose command went out is left to its agent's report (`cancelled` if
    the agent dropped it, or how the update it had started ended) until the device timeout,
    then `timed_out`."""
    if view.state != RolloutState.aborted:
        return []
    marks: list[MarkDevice] = []
    timeout = timedelta(seconds=view.policy.device_timeout_s)
    for d in view.devices:
        if d.state in FINAL:
            continue
        if d.state in WAITING:
            marks.append(
                MarkDevice(
                    d.device_id,
                    DeviceUpdateState.cancelled,
                    "the rollout was cancelled before this device's update was sent",
                )
            )
        elif (
            d.firmware == view.target_version
            and d.sent_at is not None
            and d.seen_at is not None
            and d.seen_at > d.sent_at
        ):
            marks.append(
                MarkDevice(d.device_id, DeviceUpdateState.succeeded, f"reports {d.firmware}")
            )
        elif d.sent_at is not None and now - d.sent_at > timeout:
            marks.append(
                MarkDevice(
                    d.device_id,
                    DeviceUpdateState.timed_out,
                    f"the rollout was cancelled and the site agent did not report on its "
                    f"command within {view.policy.device_timeout_s:.0f} s; the command "
                    "is revoked, so an agent that gets it later drops it",
                )
            )
    return marks


def next_actions(
    view: RolloutView, now: datetime, window_open: WindowOpen, next_window: NextWindow
) -> list[Action]:
    """What to do for the rollout at `now`: device marks, sends, and a move of the rollout;
    `window_open` and `next_window` say, by site code, whether the site's maintenance window is open
    now and when it next opens."""
    if view.state == RolloutState.scheduled:
        if view.start_at is not None and view.start_at <= now:
            return [MoveRollout(RolloutState.running, view.current_wave, "started on schedule")]
        return []
    if view.state == RolloutState.aborted:
        return list(settle_ended(view, now))
    if view.state != RolloutState.running:
        return []
    actions: list[Action] = list(_device_marks(view, now))
    devices = _apply(view.devices, [a for a in actions if isinstance(a, MarkDevice)])
    reason = _abort_reason(devices, view.policy)
    if reason:
        return [*actions, MoveRollout(RolloutState.aborted, view.current_wave, reason)]
    move = _wave_move(view, devices)
    wave = view.current_wave
    if move is not None:
        actions.append(move)
        if move.state != RolloutState.running:
            return actions
        wave = move.current_wave
    return actions + _sends(view, devices, wave, now, window_open, next_window)
