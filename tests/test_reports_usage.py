"""Usage derivation as plain functions: timeline gaps, local hours, sessions, roll-ups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet.reports.usage import (
    Point,
    hour_rollups,
    local_hours,
    point_from_sample,
    sessions,
    timeline,
)

T = datetime(2025, 3, 3, 10, 0, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")


def on(minute: float, **kw: object) -> Point:
    return point_from_sample(T + timedelta(minutes=minute), True, "on", **kw)  # type: ignore[arg-type]


def test_gap_longer_than_three_polls_is_unknown_after_one_poll() -> None:
    points = [on(0), on(1), on(2), on(30)]
    segments = [(s.start, s.end) for s in timeline(points, 60)]
    assert segments == [
        (T, T + timedelta(minutes=1)),
        (T + timedelta(minutes=1), T + timedelta(minutes=2)),
        (T + timedelta(minutes=2), T + timedelta(minutes=3)),  # then 27 min unknown
        (T + timedelta(minutes=30), T + timedelta(minutes=31)),
    ]


def test_gap_of_three_polls_is_still_bridged() -> None:
    segments = timeline([on(0), on(3)], 60)
    assert segments[0].end == T + timedelta(minutes=3)


def test_hour_rollup_counts_unknown_time_as_neither_on_nor_off() -> None:
    points = [on(m, input="hdmi1") for m in range(0, 20)] + [on(m) for m in range(40, 60)]
    hours = [(T, T + timedelta(hours=1))]
    classes = [(T, T + timedelta(minutes=30))]
    (row,) = hour_rollups(points, 60, hours, classes, UTC_ZONE)
    assert row["minutes_on"] == 40
    assert row["minutes_unknown"] == 20
    assert row["class_minutes_known"] == 20  # 10:00-10:20; 10:20-10:30 unknown
    assert row["class_minutes_on"] == 20
    assert row["top_input"] == "hdmi1"


def test_faults_split_by_a_gap_count_once() -> None:
    bad = {"fan": "error"}
    points = [on(0, errors=bad), on(1, errors=bad), on(30, errors=bad), on(31), on(32, errors=bad)]
    (row,) = hour_rollups(points, 60, [(T, T + timedelta(hours=1))], [], UTC_ZONE)
    assert row["fault_starts"] == 2
    assert row["minutes_faulty"] == 4


def test_lamp_hours_added_telescope_across_hours() -> None:
    points = [on(m * 30, lamp_hours=100 + m * 0.5) for m in range(5)]  # 0..120 min, +2 h
    hours = [(T + timedelta(hours=h), T + timedelta(hours=h + 1)) for h in range(3)]
    rows = hour_rollups(points, 1800, hours, [], UTC_ZONE)
    assert [r["lamp_hours_added"] for r in rows] == [0.5, 1.0, 0.5]
    assert rows[-1]["lamp_hours_last"] == 102


def test_sessions_split_on_input_and_end_at_unknown() -> None:
    points = [
        on(0, input="hdmi1"),
        on(1, input="hdmi1"),
        on(2, input="vga1"),
        on(3, input="vga1"),
        point_from_sample(T + timedelta(minutes=4), True, "standby"),
        on(10, input="vga1"),
    ]
    found = sessions(timeline(points, 60), T, T + timedelta(hours=1))
    assert found == [
        (T, T + timedelta(minutes=2), "hdmi1"),
        (T + timedelta(minutes=2), T + timedelta(minutes=4), "vga1"),
        (T + timedelta(minutes=10), T + timedelta(minutes=11), "vga1"),
    ]


def test_local_hours_at_kathmandu_start_at_quarter_past_utc() -> None:
    hours = local_hours(T, T + timedelta(hours=2), ZoneInfo("Asia/Kathmandu"))
    assert [h[0].strftime("%H:%M") for h in hours] == ["09:15", "10:15", "11:15"]


def test_casablanca_repeated_local_hour_is_two_buckets() -> None:
    # 2025-02-23 03:00 (+01) became 02:00 (+00): local 02:00-03:00 happens twice.
    start = datetime(2025, 2, 22, 23, 0, tzinfo=UTC)
    hours = local_hours(start, start + timedelta(hours=5), ZoneInfo("Africa/Casablanca"))
    local = [h[0].astimezone(ZoneInfo("Africa/Casablanca")).hour for h in hours]
    assert local == [0, 1, 2, 2, 3]
    assert all(b - a == timedelta(hours=1) for a, b in hours)
