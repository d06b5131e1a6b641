"""The alert rules as plain functions: facts, reading, profile and a fixed clock in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet.alerts.models import AlertKind, Severity
from fleet.alerts.rules import (
    Observation,
    SiteClock,
    after_hours_since,
    evaluate,
    evaluate_site,
    observe,
    observe_site,
    unjudged_kinds,
    version_key,
)
from fleet.devices.state import AgentFacts, DeviceFacts
from fleet.protocol.messages import Reading
from fleet.protocol.profiles import Profile, Thresholds
from fleet.protocol.site_config import load_site


def clock_of(site: str) -> SiteClock:
    config = load_site(f"site_configs/{site}.yaml").config
    return SiteClock(config.timetable, config.tz)


TRIBHUVAN = clock_of("tribhuvan")  # Asia/Kathmandu, UTC+05:45; Monday's last class ends 14:00
CASABLANCA = clock_of("dzv-ma")  # Africa/Casablanca: UTC+0 in Ramadan 2025, UTC+1 otherwise
PROJECTOR = Profile(
    id="test-projector",
    vendor="Test",
    model="P1",
    kind="projector",
    protocol="mqtt",
    thresholds=Thresholds(temperature_c_max=75, lamp_hours_life=5000, filter_hours_life=2000),
    firmware_minimum="1.10.0",
)


def local(clock: SiteClock, day: str, hh_mm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hh_mm}").replace(tzinfo=clock.tz).astimezone(UTC)


MONDAY_KTM = "2025-03-03"
NOON = local(TRIBHUVAN, MONDAY_KTM, "12:30")  # in class


def device(state: str = "online", since: datetime | None = None, **kw: object) -> DeviceFacts:
    values: dict[str, object] = {
        "id": "tu-sc1-projector",
        "site": "tribhuvan",
        "state": state,
        "state_since": since or NOON - timedelta(hours=1),
        "last_seen_at": NOON,
        "poll_interval_s": 120.0,
    }
    values.update(kw)
    return DeviceFacts(**values)  # type: ignore[arg-type]


def reading(ts: datetime = NOON, **fields: object) -> Reading:
    return Reading.model_validate(
        {"device": "tu-sc1-projector", "ts": ts, "reachable": True, "power": "on", **fields}
    )


def kinds(found: set) -> dict[AlertKind, Severity]:  # type: ignore[type-arg]
    return {f.kind: f.severity for f in found}


def test_healthy_projector_in_class_raises_nothing() -> None:
    found = evaluate(
        device(), reading(temperature_c=60, lamp_hours=100), PROJECTOR, TRIBHUVAN, NOON
    )
    assert found == set()


def test_over_temperature_is_above_the_profile_maximum_only() -> None:
    at_limit = evaluate(device(), reading(temperature_c=75), PROJECTOR, TRIBHUVAN, NOON)
    above = evaluate(device(), reading(temperature_c=75.5), PROJECTOR, TRIBHUVAN, NOON)
    assert at_limit == set()
    [finding] = above
    assert finding.kind == AlertKind.over_temperature and finding.severity == Severity.critical
    assert "75.5 °C" in finding.message and "75 °C" in finding.message


def test_lamp_and_filter_warn_at_90_percent_and_are_critical_at_100() -> None:
    def judge(**fields: object) -> dict[AlertKind, Severity]:
        return kinds(evaluate(device(), reading(**fields), PROJECTOR, TRIBHUVAN, NOON))

    assert judge(lamp_hours=4499, filter_hours=1799) == {}
    assert judge(lamp_hours=4500, filter_hours=1800) == {
        AlertKind.lamp_hours: Severity.warning,
        AlertKind.filter_hours: Severity.warning,
    }
    assert judge(lamp_hours=5000, filter_hours=2500) == {
        AlertKind.lamp_hours: Severity.critical,
        AlertKind.filter_hours: Severity.critical,
    }


def test_error_flags_give_severity_by_the_worst_flag() -> None:
    warn = evaluate(device(), reading(errors={"filter": "warning"}), PROJECTOR, TRIBHUVAN, NOON)
    err = evaluate(
        device(state="faulty"),
        reading(errors={"filter": "warning", "lamp": "error"}),
        PROJECTOR,
        TRIBHUVAN,
        NOON,
    )
    assert kinds(warn) == {AlertKind.device_error: Severity.warning}
    [finding] = err
    assert finding.severity == Severity.critical
    assert finding.message == "tu-sc1-projector reports lamp=error, filter=warning"


def test_firmware_versions_compare_numerically() -> None:
    assert version_key("1.9.9") < version_key("1.10.0")  # type: ignore[operator]
    assert version_key("v1.10") == version_key("1.10.0")
    assert version_key("2.0.1-beta") == (2, 0, 1)
    assert version_key("unknown") is None
    old = evaluate(device(), reading(firmware="1.9.9"), PROJECTOR, TRIBHUVAN, NOON)
    new = evaluate(device(), reading(firmware="1.10.0"), PROJECTOR, TRIBHUVAN, NOON)
    unreadable = evaluate(device(), reading(firmware="build-7"), PROJECTOR, TRIBHUVAN, NOON)
    assert kinds(old) == {AlertKind.firmware_below_minimum: Severity.warning}
    assert new == unreadable == set()


def test_unreachable_needs_ten_minutes_of_class_time() -> None:
    # Unreachable since 11:20 local: the 11:15-12:00 gap is not class time; class from 12:00.
    since = local(TRIBHUVAN, MONDAY_KTM, "11:20")
    facts = device(state="unreachable", since=since)
    before = evaluate(facts, None, PROJECTOR, TRIBHUVAN, local(TRIBHUVAN, MONDAY_KTM, "12:09"))
    after = evaluate(facts, None, PROJECTOR, TRIBHUVAN, local(TRIBHUVAN, MONDAY_KTM, "12:10"))
    assert before == set()
    [finding] = after
    assert finding.kind == AlertKind.device_unreachable
    assert finding.message == "tu-sc1-projector unreachable for 50 min, 10 of them in class hours"


def test_unreachable_overnight_alone_raises_nothing_but_the_next_class_does() -> None:
    since = local(TRIBHUVAN, MONDAY_KTM, "18:00")
    facts = device(state="unreachable", since=since)
    night = local(TRIBHUVAN, "2025-03-04", "06:59")
    morning = local(TRIBHUVAN, "2025-03-04", "07:10")
    assert evaluate(facts, None, PROJECTOR, TRIBHUVAN, night) == set()
    assert kinds(evaluate(facts, None, PROJECTOR, TRIBHUVAN, morning)) == {
        AlertKind.device_unreachable: Severity.critical
    }


def test_kathmandu_left_on_after_hours_counts_from_its_own_1400_plus_30_min() -> None:
    # 14:00 in Kathmandu is 08:15 UTC: the 45-minute offset must not be rounded away.
    last_end = datetime(2025, 3, 3, 8, 15, tzinfo=UTC)
    assert local(TRIBHUVAN, MONDAY_KTM, "14:00") == last_end
    just_before = last_end + timedelta(minutes=29)
    just_after = last_end + timedelta(minutes=30)
    assert after_hours_since(TRIBHUVAN, just_before) is None
    assert after_hours_since(TRIBHUVAN, just_after) == just_after

    on = reading(ts=just_after - timedelta(minutes=1))
    found = evaluate(device(), on, PROJECTOR, TRIBHUVAN, just_after)
    [finding] = found
    assert finding.kind == AlertKind.left_on_after_hours
    assert "since 14:30 Asia/Kathmandu" in finding.message
    standby = reading(ts=just_after, power="standby")
    assert evaluate(device(state="standby"), standby, PROJECTOR, TRIBHUVAN, just_after) == set()


def test_casablanca_after_hours_follows_the_ramadan_offset() -> None:
    # Monday 16:00 local is 16:00 UTC in Ramadan (UTC+0) and 15:00 UTC after it (UTC+1).
    ramadan = datetime(2025, 3, 10, 16, 30, tzinfo=UTC)
    after = datetime(2025, 4, 14, 15, 30, tzinfo=UTC)
    assert after_hours_since(CASABLANCA, ramadan - timedelta(minutes=1)) is None
    assert after_hours_since(CASABLANCA, ramadan) == ramadan
    assert after_hours_since(CASABLANCA, after - timedelta(minutes=1)) is None
    assert after_hours_since(CASABLANCA, after) == after


def test_switched_on_shortly_before_the_first_class_is_not_after_hours() -> None:
    assert after_hours_since(TRIBHUVAN, local(TRIBHUVAN, "2025-03-04", "06:40")) is None
    early = local(TRIBHUVAN, "2025-03-04", "06:00")
    assert after_hours_since(TRIBHUVAN, early) == local(TRIBHUVAN, MONDAY_KTM, "14:30")


def test_a_stale_or_unreachable_reading_leaves_reading_alerts_as_they_are() -> None:
    late = NOON + timedelta(hours=3)
    stale = reading(ts=NOON)
    assert unjudged_kinds(device(), stale, late) == {AlertKind.left_on_after_hours}
    silent = device(state="site_offline")
    assert AlertKind.lamp_hours in unjudged_kinds(silent, stale, late)
    assert evaluate(silent, reading(lamp_hours=9000), PROJECTOR, TRIBHUVAN, NOON) == set()
    assert unjudged_kinds(device(), reading(), NOON) == set()


def test_site_offline_after_a_grace_for_will_and_for_silence() -> None:
    went = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    will = AgentFacts("upm", "upm-agent-1", "offline", went, went)
    assert evaluate_site(will, timedelta(minutes=3), went + timedelta(minutes=4)) == set()
    [finding] = evaluate_site(will, timedelta(minutes=3), went + timedelta(minutes=5))
    assert finding.kind == AlertKind.site_offline and finding.severity == Severity.critical
    quiet = AgentFacts("upm", "upm-agent-1", "online", went, went)
    assert evaluate_site(quiet, timedelta(minutes=6), went + timedelta(minutes=6)) == set()
    [silent] = evaluate_site(quiet, timedelta(minutes=6), went + timedelta(minutes=7))
    assert "silent for 7 min" in silent.message
    assert evaluate_site(None, timedelta(minutes=3), went) == set()


def test_site_clock_timezone_is_the_sites() -> None:
    assert TRIBHUVAN.tz == ZoneInfo("Asia/Kathmandu")


def observed(found: list[Observation], kind: AlertKind) -> str:
    """ "raise", "clear" or "band" for `kind`, or "unjudged" when it was not observed."""
    [seen] = [o for o in found if o.kind == kind] or [None]
    if seen is None:
        return "unjudged"
    return "raise" if seen.finding else "clear" if seen.cleared else "band"


def test_temperature_raises_above_its_limit_and_clears_3_degrees_below() -> None:
    def level(celsius: float) -> str:
        found = observe(device(), reading(temperature_c=celsius), PROJECTOR, TRIBHUVAN, NOON)
        return observed(found, AlertKind.over_temperature)

    assert [level(c) for c in (75.4, 75, 72.1, 72, 50)] == [
        "raise",
        "band",
        "band",
        "clear",
        "clear",
    ]


def test_lamp_and_filter_clear_below_85_percent_of_their_life() -> None:
    def level(hours: float) -> str:
        found = observe(device(), reading(lamp_hours=hours), PROJECTOR, TRIBHUVAN, NOON)
        return observed(found, AlertKind.lamp_hours)

    assert [level(h) for h in (4500, 4300, 4249, 3)] == ["raise", "band", "clear", "clear"]


def test_a_reading_without_flags_or_firmware_says_nothing_of_them() -> None:
    found = observe(device(), reading(), PROJECTOR, TRIBHUVAN, NOON)
    assert observed(found, AlertKind.device_error) == "unjudged"
    assert observed(found, AlertKind.firmware_below_minimum) == "unjudged"
    flagged = observe(device(), reading(errors={"fan": "ok"}), PROJECTOR, TRIBHUVAN, NOON)
    assert observed(flagged, AlertKind.device_error) == "clear"


def test_unreachable_not_yet_for_long_is_between_and_behind_an_offline_site_unjudged() -> None:
    since = NOON - timedelta(minutes=5)
    short = observe(device(state="unreachable", since=since), None, PROJECTOR, TRIBHUVAN, NOON)
    assert observed(short, AlertKind.device_unreachable) == "band"
    back = observe(device(), reading(), PROJECTOR, TRIBHUVAN, NOON)
    assert observed(back, AlertKind.device_unreachable) == "clear"
    behind = observe(device(state="site_offline"), reading(), PROJECTOR, TRIBHUVAN, NOON)
    assert {o.kind for o in behind} == set()


def test_a_site_offline_for_less_than_five_minutes_neither_raises_nor_clears() -> None:
    went = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    will = AgentFacts("upm", "upm-agent-1", "offline", went, went)
    silence = timedelta(minutes=3)
    assert observe_site(will, silence, went + timedelta(minutes=4)) == Observation(
        AlertKind.site_offline, went + timedelta(minutes=4)
    )
    online = AgentFacts("upm", "upm-agent-1", "online", went, went)
    seen = observe_site(online, silence, went + timedelta(minutes=1))
    assert seen is not None and seen.cleared


def test_evidence_is_stamped_with_the_readings_time_or_the_clocks() -> None:
    facts = device(state="unreachable", since=NOON - timedelta(hours=2))
    later = NOON + timedelta(minutes=1)
    found = observe(device(), reading(ts=NOON, temperature_c=80), PROJECTOR, TRIBHUVAN, later)
    assert {o.kind: o.at for o in found} == {
        AlertKind.over_temperature: NOON,  # judged again later, it counts once
        AlertKind.left_on_after_hours: NOON,
        AlertKind.device_unreachable: later,  # what time alone decides
    }
    [unreachable] = observe(facts, None, PROJECTOR, TRIBHUVAN, later)
    assert unreachable.at == later
