"""Power schedules from the timetable, as plain decisions: which displays go off, and why."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from fleet.commands.schedules import Display, SchedulePolicy, due_offs
from fleet.protocol.timetable import Timetable

KTM = ZoneInfo("Asia/Kathmandu")  # +05:45
# Monday 2026-03-02, classes 08:00-10:00 and 10:15-12:15 local (Kathmandu).
TIMETABLE = Timetable.model_validate({"weekly": {"mon": ["08:00-10:00", "10:15-12:15"]}})
ACT = {"": SchedulePolicy("act", off_after_last_class_min=30, off_after_idle_min=60)}


def at(local: str) -> datetime:
    return datetime.fromisoformat(f"2026-03-02T{local}").replace(tzinfo=KTM).astimezone(UTC)


def on(device: str = "p1", room: str = "r1", since: datetime | None = None) -> Display:
    return Display(device, room, "on", since or at("07:00"))


def test_off_n_minutes_after_the_last_class_and_not_before() -> None:
    assert due_offs(at("12:40"), TIMETABLE, KTM, ACT, set(), set(), [on()]) == []
    (off,) = due_offs(at("12:46"), TIMETABLE, KTM, ACT, set(), set(), [on()])
    assert off.device_id == "p1" and off.mode == "act"
    assert off.reason == "30 min after the day's last class (ended 12:15 local time)"


def test_never_during_a_class_nor_in_a_room_in_use_nor_on_an_exception_date() -> None:
    assert due_offs(at("09:00"), TIMETABLE, KTM, ACT, set(), set(), [on()]) == []
    assert due_offs(at("13:00"), TIMETABLE, KTM, ACT, set(), {"r1"}, [on()]) == []
    # The exception is the site's local date (13:00 in Kathmandu is 07:15 UTC).
    assert due_offs(at("13:00"), TIMETABLE, KTM, ACT, {date(2026, 3, 2)}, set(), [on()]) == []
    assert due_offs(at("13:00"), TIMETABLE, KTM, ACT, {date(2026, 3, 1)}, set(), [on()])


def test_off_after_m_minutes_on_with_no_class() -> None:
    # 07:00 on a day whose first class is at 08:00: on since 05:50, no class in the last hour.
    early = on(since=at("05:50"))
    (off,) = due_offs(at("07:00"), TIMETABLE, KTM, ACT, set(), set(), [early])
    assert off.reason == "on for 60 min or more with no class"
    # On since 06:30: not yet an hour.
    assert due_offs(at("07:00"), TIMETABLE, KTM, ACT, set(), set(), [on(since=at("06:30"))]) == []


def test_a_room_overrides_the_site_and_standby_displays_are_left_alone() -> None:
    policies = {**ACT, "r2": SchedulePolicy("notify_only", off_after_last_class_min=120)}
    displays = [on("p1", "r1"), on("p2", "r2"), Display("p3", "r1", "standby", None)]
    offs = due_offs(at("12:50"), TIMETABLE, KTM, policies, set(), set(), displays)
    assert [(o.device_id, o.mode) for o in offs] == [("p1", "act")]
    offs = due_offs(at("14:20"), TIMETABLE, KTM, policies, set(), set(), displays)
    assert [(o.device_id, o.mode) for o in offs] == [("p1", "act"), ("p2", "notify_only")]


@given(
    now=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ),
    n=st.one_of(st.none(), st.integers(1, 1440)),
    m=st.one_of(st.none(), st.integers(1, 1440)),
)
def test_nothing_is_ever_switched_off_during_a_class(
    now: datetime, n: int | None, m: int | None
) -> None:
    policies = {"": SchedulePolicy("act", n, m)}
    offs = due_offs(
        now, TIMETABLE, KTM, policies, set(), set(), [on(since=now - timedelta(days=1))]
    )
    if TIMETABLE.in_class(now, KTM):
        assert offs == []
    if n is None and m is None:
        assert offs == []


# --- the scheduled job, on the real database (SQLite and PostgreSQL) ----------------------


def _job_scenario(registered: Engine) -> None:
    from sqlmodel import Session, select

    from fleet.commands.models import DeviceCommand, PowerException, PowerSchedule
    from fleet.commands.schedules import run_power_schedules
    from fleet.models import Device, Site
    from fleet.protocol.messages import Command

    with Session(registered) as session:
        site = session.get(Site, "upm")
        assert site is not None
        tz = ZoneInfo(site.timezone)
        # Monday 2026-03-02 at 20:00 local: long after upm's last class (16:00).
        now = datetime(2026, 3, 2, 20, 0, tzinfo=tz).astimezone(UTC)
        panel = session.get(Device, "upm-sc1-panel-1")
        assert panel is not None
        panel.power, panel.state_since, panel.last_seen_at = "on", now - timedelta(hours=5), now
        session.add(panel)
        session.add(PowerSchedule(site_code="upm", off_after_last_class_min=30, updated_at=now))
        session.commit()
    published: list[tuple[str, bytes, bool]] = []

    def publish(topic: str, payload: bytes, retain: bool = False) -> None:
        published.append((topic, payload, retain))

    def rows() -> list[DeviceCommand]:
        with Session(registered) as session:
            return list(session.exec(select(DeviceCommand).order_by(DeviceCommand.id)))

    run_power_schedules(registered, now, publish)
    run_power_schedules(registered, now + timedelta(minutes=1), publish)  # noted once only
    assert published == []
    (note,) = rows()
    assert (note.device_id, note.state) == ("upm-sc1-panel-1", "notified")
    assert note.reason == (
        "power schedule would switch off: 30 min after the day's last class "
        "(ended 16:00 local time)"
    )

    with Session(registered) as session:
        schedule = session.get(PowerSchedule, ("upm", ""))
        assert schedule is not None
        schedule.mode = "act"
        session.add(schedule)
        session.add(PowerException(site_code="upm", day=date(2026, 3, 2), created_at=now))
        session.commit()
    run_power_schedules(registered, now + timedelta(minutes=2), publish)
    assert published == [] and len(rows()) == 1  # the exception date holds it back

    with Session(registered) as session:
        exception = session.get(PowerException, ("upm", date(2026, 3, 2)))
        session.delete(exception)
        session.commit()
    run_power_schedules(registered, now + timedelta(minutes=3), publish)
    run_power_schedules(registered, now + timedelta(minutes=4), publish)  # sent once only
    commands = [Command.model_validate_json(p) for _, p, retain in published if not retain]
    assert [(c.kind.value, c.devices, c.args) for c in commands] == [
        ("power", ["upm-sc1-panel-1"], {"power": "off"})
    ]
    assert any(retain for _, _, retain in published)  # the word that lets the agent start it
    sent = rows()[-1]
    assert (sent.state, sent.requested_by) == ("sent", "schedule")

    # The display refuses (ERR3 while cooling): it is not asked again at every run.
    with Session(registered) as session:
        refused = session.get(DeviceCommand, sent.id)
        assert refused is not None
        refused.state, refused.answer = "failed", "POWR 0: ERR3 (unavailable time (busy))"
        session.add(refused)
        session.commit()
    for minute in (5, 6, 20):
        run_power_schedules(registered, now + timedelta(minutes=minute), publish)
    assert len([p for _, p, retain in published if not retain]) == 1


def test_power_schedule_job_notes_then_acts_and_keeps_exception_dates(
    registered: Engine,
) -> None:
    _job_scenario(registered)
