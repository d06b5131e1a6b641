"""Alerts that do not flap: hysteresis and hold times, one notification per episode.

The field's example: a panel reading 65.4 and 64.6 °C around its 65 °C limit and a fan flag
toggling between warning and ok, one reading a minute for 30 min, gave 15 alerts and 30
webhooks per device. Here it is run through ingest, the alerts and the webhook against a real
database and a real HTTP receiver; then Hypothesis drives the rules with noisy series.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from fleet.alerts.evaluation import AlertRules, after_ingest, evaluate_alerts
from fleet.alerts.hold import NONE, Action, Counts, step
from fleet.alerts.models import AlertKind, Severity
from fleet.alerts.reconcile import ALERTS, DELIVERIES
from fleet.alerts.rules import HOLDS, Finding, Observation, SiteClock, observe
from fleet.alerts.webhook import Webhook, send_due
from fleet.devices.state import DeviceFacts
from fleet.ingest.pipeline import Ingest
from fleet.protocol.messages import Reading
from fleet.protocol.profiles import Profile, Thresholds
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.protocol.timetable import Timetable
from tests.fixtures_db import health, reading
from tests.webhook_receiver import Receiver, running_receiver

# 03:00 UTC on Monday 2025-03-03 is 11:00 in Kuala Lumpur: upm is in class until 12:30.
CLASS = datetime.fromisoformat("2025-03-03T03:00:00+00:00")
PANEL = "upm-sc1-panel-1"  # seewo-panel: 65 °C maximum
LIMIT = 65.0
NOTIFYING = AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=True)
SECRET = "hold-test-secret"
DRIVEN = (AlertKind.over_temperature.value, AlertKind.device_error.value)
FLAG = HOLDS[AlertKind.device_error]  # 2 over 1 min to raise, 5 in a row over 5 min to clear
CASES: Counter[str] = Counter()


# --- the field's example, end to end --------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def alert_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = text("SELECT kind, state, opened_at, resolved_at FROM alert ORDER BY id")
        return [dict(r) for r in conn.execute(query).mappings()]


def test_a_panel_at_its_limit_and_a_toggling_fan_notify_once_each_way(
    ingest: Ingest, registered: Engine, receiver: Receiver
) -> None:
    """30 min of 65.4/64.6 °C and fan warning/ok, then 10 min cool and quiet: one alert per
    condition, opened once and resolved once: four webhooks, where there were 30 per kind."""
    ingest.after_commit.append(after_ingest(NOTIFYING))
    webhook = Webhook(receiver.url, SECRET, max_attempts=3)
    for minute in range(40):
        t = CLASS + timedelta(minutes=minute)
        if minute < 30:
            hot = minute % 2 == 0
            fields = {
                "temperature_c": 65.4 if hot else 64.6,
                "errors": {"fan": "warning" if hot else "ok"},
            }
        else:
            fields = {"temperature_c": 55.0, "errors": {"fan": "ok"}}
        ingest.clock = lambda t=t: t
        ingest.handle([health("upm", [reading(PANEL, t, **fields)], received_at=t)])
        evaluate_alerts(registered, NOTIFYING, t + timedelta(seconds=30))  # the scheduled job
        send_due(registered, webhook, t + timedelta(seconds=31))
        if minute == 29:
            during = alert_rows(registered)

    events = [(e["event"], e["alert"]["kind"]) for e in receiver.events()]
    print(f"\n[flapping example] alerts {len(alert_rows(registered))}, webhooks {len(events)}")
    assert [(a["kind"], a["state"]) for a in during] == [
        ("device_error", "open"),
        ("over_temperature", "open"),
    ]
    assert [(a["kind"], a["state"]) for a in alert_rows(registered)] == [
        ("device_error", "resolved"),
        ("over_temperature", "resolved"),
    ]
    assert sorted(events) == [
        ("alert.opened", "device_error"),
        ("alert.opened", "over_temperature"),
        ("alert.resolved", "device_error"),
        ("alert.resolved", "over_temperature"),
    ]


# --- the rules and the hold, driven by noisy series ----------------------------------------

TEST_PANEL = Profile(
    id="test-panel",
    vendor="Test",
    model="P1",
    kind="panel",
    protocol="mqtt",
    thresholds=Thresholds(temperature_c_max=LIMIT),
)
# In class all week: being on is never "after hours", so only the driven kinds move.
ALWAYS_IN_CLASS = SiteClock(
    Timetable.model_validate(
        {"weekly": {d: ["00:00-23:59"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}
    ),
    ZoneInfo("UTC"),
)


@dataclass(frozen=True)
class Segment:
    """A stretch of readings the truth calls hot (the condition holds, however noisy) or cool
    (it is gone)."""

    hot: bool
    temperatures: list[float]
    fan: list[str]
    gaps_s: list[int]  # seconds from the previous reading to each of this segment's


@st.composite
def segments(draw: st.DrawFn) -> list[Segment]:
    """Alternating hot and cool segments. Hot: the temperature jitters around its limit but
    never down to where it clears, the fan toggles but is never ok 5 times in a row. Cool:
    well below the limit, fan ok."""
    out = []
    hot = draw(st.booleans())
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        n = draw(st.integers(min_value=1, max_value=25))
        gaps = draw(st.lists(st.integers(min_value=30, max_value=150), min_size=n, max_size=n))
        if hot:
            temps = draw(
                st.lists(
                    st.floats(min_value=LIMIT - 2.9, max_value=LIMIT + 2, allow_nan=False),
                    min_size=n,
                    max_size=n,
                )
            )
            fan = draw(
                st.lists(st.sampled_from(["warning", "ok", "error"]), min_size=n, max_size=n)
            )
            # It starts with the flag up, and is never ok long enough to clear.
            fan = _no_long_ok_runs(["warning", *fan[1:]], FLAG.clear_readings - 1)
        else:
            temps = draw(
                st.lists(
                    st.floats(min_value=20, max_value=LIMIT - 3, allow_nan=False),
                    min_size=n,
                    max_size=n,
                )
            )
            fan = ["ok"] * n
        out.append(Segment(hot, temps, fan, gaps))
        hot = not hot
    return out


def _no_long_ok_runs(flags: list[str], longest: int) -> list[str]:
    out, run = [], 0
    for flag in flags:
        run = run + 1 if flag == "ok" else 0
        if run > longest:
            flag, run = "warning", 0
        out.append(flag)
    return out


@dataclass
class Desk:
    """The hold applied in memory, as reconcile.py applies it to rows: per kind its counts,
    whether its alert is open, and the notifications sent (time, kind, event, segment)."""

    counts: dict[str, Counts] = field(default_factory=dict)
    open: dict[str, bool] = field(default_factory=dict)
    sent: list[tuple[datetime, str, str, int]] = field(default_factory=list)

    def take(self, seen: Observation, segment: int) -> None:
        kind = seen.kind.value
        after, action = step(
            self.counts.get(kind, NONE), self.open.get(kind, False), seen, HOLDS[seen.kind]
        )
        self.counts[kind] = after
        if action == Action.open:
            self.open[kind] = True
            self.sent.append((seen.at, kind, "opened", segment))
        elif action == Action.resolve:
            self.open[kind] = False
            self.sent.append((seen.at, kind, "resolved", segment))


def run_series(series: list[Segment], judge_twice: Callable[[int], bool]) -> Desk:
    desk = Desk()
    t = CLASS
    index = 0
    for number, segment in enumerate(series):
        for temp, fan, gap in zip(segment.temperatures, segment.fan, segment.gaps_s, strict=True):
            t += timedelta(seconds=gap)
            now_reading = Reading.model_validate(
                {
                    "device": "d",
                    "ts": t,
                    "reachable": True,
                    "power": "on",
                    "temperature_c": temp,
                    "errors": {"fan": fan},
                }
            )
            facts = DeviceFacts("d", "s", "online", CLASS, t, 60)
            # Ingest judges the reading, and the schedule may judge the same reading again.
            for _ in range(2 if judge_twice(index) else 1):
                for seen in observe(facts, now_reading, TEST_PANEL, ALWAYS_IN_CLASS, t):
                    if seen.kind.value in DRIVEN:
                        desk.take(seen, number)
            index += 1
    return desk


def raises_for_sure(segment: Segment, kind: str) -> bool:
    """True if the segment holds `raise_readings` readings in a row at the raising level
    over at least `raise_after`: enough that the alert must be open by its end."""
    hold = HOLDS[AlertKind(kind)]
    at_level = (
        [t > LIMIT for t in segment.temperatures]
        if kind == AlertKind.over_temperature.value
        else [f != "ok" for f in segment.fan]
    )
    run, run_start, elapsed = 0, 0, 0
    for up, gap in zip(at_level, segment.gaps_s, strict=True):
        elapsed += gap
        if not up:
            run = 0
            continue
        if run == 0:
            run_start = elapsed
        run += 1
        if run >= hold.raise_readings and elapsed - run_start >= hold.raise_after.total_seconds():
            return True
    return False


@settings(max_examples=600, deadline=None, derandomize=True)
@given(series=segments(), twice=st.sets(st.integers(min_value=0, max_value=150)))
def test_noisy_series_notify_at_most_once_per_episode(
    series: list[Segment], twice: set[int]
) -> None:
    desk = run_series(series, lambda i: i in twice)
    CASES["series"] += 1
    CASES["readings"] += sum(len(s.temperatures) for s in series)
    for kind in DRIVEN:
        mine = [(what, segment) for _, k, what, segment in desk.sent if k == kind]
        per_segment = Counter(segment for _, segment in mine)
        assert all(n <= 1 for n in per_segment.values()), mine
        for what, segment in mine:
            # Opens only while it is hot, clears only once it is gone.
            assert series[segment].hot == (what == "opened"), mine
        events = [what for what, _ in mine]
        assert events == ["opened", "resolved"] * (len(events) // 2) + ["opened"] * (
            len(events) % 2
        )
        # No alert missed: a hot stretch long enough opens one, and it is open at its end.
        for number, segment in enumerate(series):
            if segment.hot and raises_for_sure(segment, kind):
                so_far = [what for what, at in mine if at <= number]
                assert so_far and so_far[-1] == "opened", (kind, number, mine)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(series=segments())
def test_noisy_series_through_ingest_and_the_database_notify_once_per_episode(
    ingest: Ingest, registered: Engine, series: list[Segment]
) -> None:
    """The same, as the controller runs it: readings through ingest, judged after each group,
    notifications counted in the webhook outbox of the real database."""
    with registered.begin() as conn:
        for table in ("webhook_delivery", "alert_condition", "alert", "sample"):
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(
            text("UPDATE device SET last_seen_at = NULL, last_reading = NULL WHERE id = :d"),
            {"d": PANEL},
        )
    if not ingest.after_commit:
        ingest.after_commit.append(after_ingest(NOTIFYING))
    t = CLASS
    bounds: list[tuple[datetime, datetime]] = []
    for segment in series:
        first = t + timedelta(seconds=segment.gaps_s[0])
        for temp, fan, gap in zip(segment.temperatures, segment.fan, segment.gaps_s, strict=True):
            t += timedelta(seconds=gap)
            fields = {"temperature_c": temp, "errors": {"fan": fan}}
            ingest.clock = lambda t=t: t
            ingest.handle([health("upm", [reading(PANEL, t, **fields)], received_at=t)])
        bounds.append((first, t))
    CASES["db series"] += 1
    with registered.connect() as conn:
        sent = conn.execute(
            select(ALERTS.c.kind, DELIVERIES.c.event, DELIVERIES.c.created_at)
            .join(ALERTS, ALERTS.c.id == DELIVERIES.c.alert_id)
            .order_by(DELIVERIES.c.id)
        ).all()
    for kind in DRIVEN:
        mine = []
        for _, event, at in (row for row in sent if row[0] == kind):
            [number] = [i for i, (a, b) in enumerate(bounds) if a <= at <= b]
            mine.append((event, number))
        assert all(n <= 1 for n in Counter(mine).values()), mine
        for event, number in mine:
            assert series[number].hot == (event == "alert.opened"), mine


def test_the_property_ran_enough_cases() -> None:
    """Run after the property (same module, in order): how many series it judged."""
    if CASES["series"]:
        print(
            f"\n[hold property] {CASES['series']} series ({CASES['readings']} readings) "
            f"judged in memory, {CASES['db series']} through ingest and the database"
        )
        assert CASES["series"] >= 100


# --- the hold's rule, case by case ----------------------------------------------------------

T = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def seen(minute: float, state: str) -> Observation:
    finding = Finding(AlertKind.device_error, Severity.warning, "fan=warning")
    return Observation(
        AlertKind.device_error,
        T + timedelta(minutes=minute),
        finding if state == "raise" else None,
        cleared=state == "clear",
    )


def play(steps: list[tuple[float, str]], raised: bool = False) -> list[Action]:
    counts, out = NONE, []
    for minute, state in steps:
        counts, action = step(counts, raised, seen(minute, state), FLAG)
        raised = (raised or action == Action.open) and action != Action.resolve
        out.append(action)
    return out


def test_a_raise_waits_for_its_count_and_its_time() -> None:
    assert play([(0, "raise"), (0.5, "raise")]) == [Action.keep, Action.keep]  # 2, but 30 s
    assert play([(0, "raise"), (1, "raise")]) == [Action.keep, Action.open]


def test_the_same_evidence_counts_once() -> None:
    assert play([(0, "raise"), (0, "raise"), (0, "raise")]) == [Action.keep] * 3


def test_a_clearing_needs_several_in_a_row_and_one_raise_starts_it_over() -> None:
    minutely = [(m, "clear") for m in range(1, 7)]  # 5 in a row by minute 5, 5 min by 6
    assert play(minutely, raised=True) == [Action.keep] * 5 + [Action.resolve]
    broken = [(1, "clear"), (2, "clear"), (3, "raise"), *((m, "clear") for m in range(4, 9))]
    assert Action.resolve not in play(broken, raised=True)
    # Between the levels neither clears nor breaks the run.
    banded = [(1, "clear"), (2, "band"), *((m, "clear") for m in range(3, 7))]
    assert play(banded, raised=True)[-1] == Action.resolve


def test_a_pending_raise_lapses_when_the_condition_stops() -> None:
    # One warning, then nothing at the raising level for over 15 min: a new run starts.
    assert play([(0, "raise"), (1, "band"), (16, "raise")]) == [Action.keep] * 3
    assert play([(0, "raise"), (1, "band"), (14, "raise")]) == [Action.keep] * 2 + [Action.open]


@pytest.mark.parametrize("kind", list(AlertKind))
@pytest.mark.parametrize("every_s", [5, 30, 120])
def test_every_kind_held_steadily_opens_once_and_cleared_steadily_resolves_once(
    kind: AlertKind, every_s: int
) -> None:
    """Whatever the poll: a condition that holds opens its alert within its hold (plus one
    poll), and one that is gone clears it within its clearing hold (plus one poll)."""
    hold = HOLDS[kind]
    finding = Finding(kind, Severity.warning, "holds")
    counts, raised, actions = NONE, False, []
    poll = timedelta(seconds=every_s)
    for i in range(int(timedelta(hours=1) / poll)):
        on = i < int(timedelta(minutes=30) / poll)
        observed = Observation(kind, T + i * poll, finding if on else None, cleared=not on)
        counts, action = step(counts, raised, observed, hold)
        raised = (raised or action == Action.open) and action != Action.resolve
        if action != Action.keep:
            actions.append((action, i * poll))
    [(opened, open_at), (resolved, resolve_at)] = actions
    assert (opened, resolved) == (Action.open, Action.resolve)
    assert open_at <= max(hold.raise_after, (hold.raise_readings - 1) * poll) + poll
    clear_from = timedelta(minutes=30)
    assert resolve_at - clear_from <= max(hold.clear_after, (hold.clear_readings - 1) * poll) + poll


def test_every_kind_has_a_hold_before_raising_and_before_clearing() -> None:
    assert set(HOLDS) == set(AlertKind)
    for kind, hold in HOLDS.items():
        assert hold.raise_readings >= 1 and hold.clear_readings >= 1, kind
    # Those a reading can flap have more than one reading each way.
    for kind in (
        AlertKind.over_temperature,
        AlertKind.lamp_hours,
        AlertKind.filter_hours,
        AlertKind.device_error,
        AlertKind.firmware_below_minimum,
        AlertKind.left_on_after_hours,
    ):
        assert HOLDS[kind].raise_readings >= 2 and HOLDS[kind].clear_readings >= 2, kind
