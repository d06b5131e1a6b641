"""The rollout state machine and maintenance windows, as plain functions with a fake clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fleet.protocol.timetable import Timetable
from fleet.rollouts.plan import (
    DeviceUpdateState,
    DeviceView,
    MarkDevice,
    MoveRollout,
    Policy,
    RolloutState,
    RolloutView,
    Send,
    Wave,
    assign_waves,
    next_actions,
    on_device_report,
    policy_problems,
)
from fleet.rollouts.schemas import WindowIn
from fleet.rollouts.windows import WindowPolicy, next_window_start, window_open

S = DeviceUpdateState
NOW = datetime(2025, 3, 3, 20, 0, tzinfo=UTC)
KATHMANDU = ZoneInfo("Asia/Kathmandu")
TRIBHUVAN = Timetable.model_validate(
    {"weekly": {d: ["07:00-09:00", "09:15-11:15", "12:00-14:00"] for d in ("sun", "mon", "tue")}}
)


def always(_site: str) -> bool:
    return True


def never_next(_site: str) -> datetime | None:
    return None


def view(states: list[list[S]], policy: Policy, wave: int = 0, **kw: object) -> RolloutView:
    devices = tuple(
        DeviceView(f"d{w}-{i}", "upm", w, state, attempts=1 if state != S.pending else 0)
        for w, wave_states in enumerate(states)
        for i, state in enumerate(wave_states)
    )
    return RolloutView(RolloutState.running, wave, "3.3.0", policy, devices, **kw)  # type: ignore[arg-type]


def moves(actions: list[object]) -> list[MoveRollout]:
    return [a for a in actions if isinstance(a, MoveRollout)]


def test_wave_advances_only_after_its_success_threshold() -> None:
    policy = Policy(
        waves=(Wave(count=4), Wave(percent=100)), success_threshold_pct=75, abort_min_done=8
    )
    # 2 of 4 succeeded, 2 still installing: the next wave waits, nothing of it is sent.
    waiting = next_actions(
        view([[S.succeeded, S.succeeded, S.installing, S.installing], [S.pending] * 4], policy),
        NOW,
        always,
        never_next,
    )
    assert moves(waiting) == []
    assert not [a for a in waiting if isinstance(a, Send)]
    # 3 of 4: 75 % reached, wave 2 starts and its devices are sent in the same tick.
    passed = next_actions(
        view([[S.succeeded] * 3 + [S.installing], [S.pending] * 4], policy), NOW, always, never_next
    )
    assert moves(passed)[0].state == RolloutState.running and moves(passed)[0].current_wave == 1
    assert sorted(a.device_id for a in passed if isinstance(a, Send)) == [
        f"d1-{i}" for i in range(4)
    ]


def test_wave_below_threshold_pauses_and_resume_waives_it() -> None:
    policy = Policy(
        waves=(Wave(count=4), Wave(percent=100)), success_threshold_pct=100, abort_min_done=8
    )
    states = [[S.succeeded] * 3 + [S.failed], [S.pending] * 4]
    paused = moves(next_actions(view(states, policy), NOW, always, never_next))
    assert paused[0].state == RolloutState.paused and "cannot reach" in paused[0].reason
    resumed = moves(next_actions(view(states, policy, approved_through=0), NOW, always, never_next))
    assert resumed[0].state == RolloutState.running and resumed[0].current_wave == 1


def test_pause_for_approval_after_a_passed_wave() -> None:
    policy = Policy(waves=(Wave(count=2), Wave(percent=100)), pause_for_approval=True)
    actions = next_actions(
        view([[S.succeeded] * 2, [S.pending] * 3], policy), NOW, always, never_next
    )
    assert moves(actions) == [MoveRollout(RolloutState.paused, 1, moves(actions)[0].reason)]
    assert (
        "resume to start wave 3" in moves(actions)[0].reason or "resume" in moves(actions)[0].reason
    )
    assert not [a for a in actions if isinstance(a, Send)]


def test_half_the_canary_failing_aborts_the_rollout() -> None:
    policy = Policy(
        waves=(Wave(count=4), Wave(percent=100)),
        abort_min_done=4,
        abort_failure_pct=25,
        max_retries=0,
    )
    actions = next_actions(
        view([[S.succeeded, S.failed, S.succeeded, S.timed_out], [S.pending] * 20], policy),
        NOW,
        always,
        never_next,
    )
    aborted = moves(actions)
    assert aborted[0].state == RolloutState.aborted and "2 of 4" in aborted[0].reason
    assert not [a for a in actions if isinstance(a, Send)]


def test_a_failure_is_retried_while_retries_are_left() -> None:
    device = DeviceView("d", "upm", 0, S.installing, attempts=1)
    policy = Policy(max_retries=1)
    assert on_device_report(device, S.failed, policy, "bad").state == S.pending
    assert on_device_report(replace(device, attempts=2), S.failed, policy, "bad").state == S.failed


def test_in_flight_device_times_out() -> None:
    policy = Policy(waves=(Wave(count=1),), device_timeout_s=60, max_retries=0, abort_min_done=5)
    device = DeviceView(
        "d", "upm", 0, S.installing, attempts=1, sent_at=NOW - timedelta(seconds=61)
    )
    actions = next_actions(
        RolloutView(RolloutState.running, 0, "3.3.0", policy, (device,)), NOW, always, never_next
    )
    assert MarkDevice("d", S.timed_out, actions[0].message) == actions[0]  # type: ignore[union-attr]


def test_success_only_when_the_device_reports_the_version_after_the_update() -> None:
    policy = Policy(waves=(Wave(count=1),))
    sent = NOW - timedelta(minutes=5)
    stale = DeviceView(
        "d",
        "upm",
        0,
        S.installing,
        attempts=1,
        sent_at=sent,
        firmware="3.3.0",
        seen_at=sent - timedelta(seconds=1),
    )
    rollout = RolloutView(RolloutState.running, 0, "3.3.0", policy, (stale,))
    assert not [
        a for a in next_actions(rollout, NOW, always, never_next) if isinstance(a, MarkDevice)
    ]
    fresh = replace(stale, seen_at=sent + timedelta(seconds=30))
    actions = next_actions(replace(rollout, devices=(fresh,)), NOW, always, never_next)
    assert actions[0] == MarkDevice("d", S.succeeded, "reports 3.3.0")


def test_unreachable_device_or_offline_site_is_deferred_and_in_use_skipped() -> None:
    policy = Policy(waves=(Wave(percent=100),))
    devices = (
        DeviceView("gone", "upm", 0, S.pending, reachable=False),
        DeviceView("dark", "ugb", 0, S.pending, site_online=False),
        DeviceView("busy", "upm", 0, S.pending, in_use=True),
        DeviceView("free", "upm", 0, S.pending, reachable=True),
    )
    actions = next_actions(
        RolloutView(RolloutState.running, 0, "3.3.0", policy, devices), NOW, always, never_next
    )
    states = {a.device_id: a.state for a in actions if isinstance(a, MarkDevice)}
    assert states == {"gone": S.deferred, "dark": S.deferred, "busy": S.skipped}
    assert [a.device_id for a in actions if isinstance(a, Send)] == ["free"]


def test_nothing_is_sent_during_class_hours_in_kathmandu() -> None:
    policy = Policy(waves=(Wave(percent=100),))
    devices = (DeviceView("tu-1", "tribhuvan", 0, S.pending, reachable=True),)
    rollout = RolloutView(RolloutState.running, 0, "3.3.0", policy, devices)
    sent_at = []
    # Every 5 minutes of a Monday (local), UTC+05:45: 07:00 local is 01:15 UTC.
    start = datetime(2025, 3, 3, 0, 0, tzinfo=KATHMANDU).astimezone(UTC)
    for step in range(24 * 12):
        now = start + timedelta(minutes=5 * step)

        def is_open(_site: str, now: datetime = now) -> bool:
            return window_open(now, TRIBHUVAN, KATHMANDU, policy.window)

        def opens(_site: str, now: datetime = now) -> datetime | None:
            return next_window_start(now, TRIBHUVAN, KATHMANDU, policy.window)

        actions = next_actions(rollout, now, is_open, opens)
        if any(isinstance(a, Send) for a in actions):
            sent_at.append(now)
    assert sent_at, "the device was never sent"
    for when in sent_at:
        assert not TRIBHUVAN.in_class(when, KATHMANDU), (
            f"sent in class at {when.astimezone(KATHMANDU)}"
        )
        margin = timedelta(minutes=policy.window.margin_min)
        assert not TRIBHUVAN.class_intervals(when - margin, when + margin, KATHMANDU)
    first_local = min(sent_at).astimezone(KATHMANDU)
    assert first_local.hour == 0 and first_local.utcoffset() == timedelta(hours=5, minutes=45)


def test_deferred_outside_the_window_until_it_opens_in_local_time() -> None:
    # Monday 10:00 in Kathmandu (in class): the next window is 14:30 local (14:00 + 30 min).
    at = datetime(2025, 3, 3, 10, 0, tzinfo=KATHMANDU).astimezone(UTC)
    assert not window_open(at, TRIBHUVAN, KATHMANDU, WindowPolicy())
    opens = next_window_start(at, TRIBHUVAN, KATHMANDU, WindowPolicy())
    assert opens is not None and opens.astimezone(KATHMANDU).strftime("%H:%M") == "14:30"
    nights = next_window_start(at, TRIBHUVAN, KATHMANDU, WindowPolicy(nights_only=True))
    assert nights is not None and nights.astimezone(KATHMANDU).strftime("%H:%M") == "22:00"
    weekend = next_window_start(at, TRIBHUVAN, KATHMANDU, WindowPolicy(weekends_only=True))
    assert weekend is not None and weekend.astimezone(KATHMANDU).strftime("%a %H:%M") == "Wed 00:00"


def test_impossible_thresholds_are_refused_with_the_reason() -> None:
    assert policy_problems(Policy(), 10) == []
    problems = policy_problems(
        Policy(
            waves=(Wave(count=0),),
            success_threshold_pct=120,
            abort_failure_pct=100,
            abort_min_done=50,
        ),
        10,
    )
    text = " | ".join(problems)
    assert (
        "count 0" in text and "120" in text and "never abort" in text and "more than the 10" in text
    )


def test_a_night_that_ends_when_it_starts_is_refused_and_one_over_midnight_is_not() -> None:
    empty = WindowPolicy(nights_only=True, night_start=time(6, 0), night_end=time(6, 0))
    assert "no time at all" in " ".join(policy_problems(Policy(window=empty), 10))
    overnight = WindowPolicy(nights_only=True, night_start=time(22, 0), night_end=time(6, 0))
    assert policy_problems(Policy(window=overnight), 10) == []
    # Without nights_only the night is not used, so it is not judged.
    assert policy_problems(Policy(window=replace(empty, nights_only=False)), 10) == []


@pytest.mark.parametrize("night", ["22:00+05:00", "22:00Z", "22:00:00-03:30"])
def test_a_night_with_a_zone_offset_is_refused_as_site_local_time_has_none(night: str) -> None:
    # A night is in each site's local time: a time with an offset would be compared with the
    # site's naive local time and stop the window's check (TypeError), not be refused.
    with pytest.raises(ValidationError, match="site's local time"):
        WindowIn.model_validate({"nights_only": True, "night_start": night})
    with pytest.raises(ValidationError, match="site's local time"):
        WindowIn.model_validate({"nights_only": True, "night_end": night})
    ok = WindowIn.model_validate({"nights_only": True, "night_start": "21:30"})
    local = datetime(2025, 3, 3, 23, 0, tzinfo=ZoneInfo("Asia/Kathmandu"))
    assert window_open(
        local, Timetable(), ZoneInfo("Asia/Kathmandu"), WindowPolicy(**ok.model_dump())
    )


def test_canary_spans_sites_and_every_device_gets_a_wave() -> None:
    devices = [(f"a{i}", "upm") for i in range(6)] + [(f"b{i}", "ugb") for i in range(4)]
    waves = assign_waves(devices, (Wave(count=2), Wave(percent=50), Wave(percent=100)))
    canary = sorted(d for d, w in waves.items() if w == 0)
    assert canary == ["a0", "b0"]
    assert sorted(waves.values()).count(1) == 3 and len(waves) == 10


# --- a cancelled rollout: every device ends in a final state ---------------------------------


def test_every_device_of_a_cancelled_rollout_ends_final() -> None:
    policy = Policy(device_timeout_s=600, max_retries=1)
    sent_at = NOW - timedelta(seconds=60)
    devices = (
        DeviceView("never-sent", "upm", 1, S.pending),
        DeviceView("deferred", "upm", 1, S.deferred),
        DeviceView("in-flight", "upm", 1, S.sent, attempts=1, sent_at=sent_at),
        DeviceView(
            "updated",
            "upm",
            1,
            S.installing,
            attempts=1,
            sent_at=sent_at,
            firmware="3.3.0",
            seen_at=NOW,
        ),
        DeviceView("done", "upm", 0, S.succeeded, attempts=1),
    )
    cancelled = RolloutView(RolloutState.aborted, 1, "3.3.0", policy, devices)
    marks = {m.device_id: m.state for m in next_actions(cancelled, NOW, always, never_next)}  # type: ignore[union-attr]
    assert marks == {
        "never-sent": S.cancelled,
        "deferred": S.cancelled,
        "updated": S.succeeded,
    }
    # The one in flight waits for its agent's report, then times out: never pending again.
    later = next_actions(cancelled, NOW + timedelta(seconds=601), always, never_next)
    assert {m.device_id: m.state for m in later}["in-flight"] == S.timed_out  # type: ignore[union-attr]


def test_a_failure_reported_after_the_cancel_is_final_not_a_retry() -> None:
    policy = Policy(max_retries=1)
    device = DeviceView("d", "upm", 0, S.sent, attempts=1)
    running = on_device_report(device, S.failed, policy, "held command failed")
    ended = on_device_report(device, S.failed, policy, "held command failed", ended=True)
    assert running.state == S.pending and "retry 1 of 1" in running.message
    assert ended.state == S.failed and "retry" not in ended.message
    # An agent's `cancelled` counts only for a cancelled rollout; otherwise it is a failure.
    assert on_device_report(device, S.cancelled, policy, "x", ended=True).state == S.cancelled
    assert on_device_report(device, S.cancelled, policy, "x").state == S.pending
