"""Report figures from readings fed through real ingest, checked against hand-computed values.

Tribhuvan (Asia/Kathmandu, UTC+05:45) has classes 07:00-09:00, 09:15-11:15 and 12:00-14:00
on Monday to Thursday: six class hours a day.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from fleet.ingest.pipeline import Ingest
from fleet.models import Sample, Site
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.reports.compute import ReportRequest, build_report, check_request
from fleet.reports.models import PowerSession, UsageHour
from fleet.reports.rollup import purge_rolled_up_samples
from tests.fixtures_db import RECEIVED
from tests.reports_feed import BASIS, CASABLANCA, KATHMANDU, MAX_DAYS, at, every, feed, roll_up

PANEL = "tu-sc1-panel-1"
PROJECTOR = "tu-sc1-projector"
LATER = RECEIVED + timedelta(days=2)
HOUR = timedelta(hours=1)


def report(engine: Engine, start: str, end: str, **kw: Any) -> dict[str, Any]:
    request = ReportRequest(
        datetime.fromisoformat(start).date(), datetime.fromisoformat(end).date(), **kw
    )
    with engine.connect() as conn:
        return build_report(conn, check_request(conn, request, MAX_DAYS), BASIS)


def device_row(rep: dict[str, Any], device: str) -> dict[str, Any]:
    return next(r for r in rep["devices"] if r["id"] == device)


def monday(ingest: Ingest) -> None:
    """Panel on 06:30-11:15 on hdmi1, then standby until 16:00 (local, Monday 3 March)."""
    day = "2025-03-03"
    readings = every(PANEL, at(day, "06:30", KATHMANDU), at(day, "11:15", KATHMANDU), input="hdmi1")
    readings += every(
        PANEL, at(day, "11:15", KATHMANDU), at(day, "16:00", KATHMANDU), power="standby"
    )
    feed(ingest, "tribhuvan", readings, received_at=LATER)


def test_utilization_is_unknown_when_no_class_hour_is_known(
    ingest: Ingest, registered: Engine
) -> None:
    """A device never heard in the period: its class hours are unknown, and so is its
    utilization; never 0 %, which would say it stood unused."""
    from fleet.reports.html import render_html

    monday(ingest)  # the panel was heard; the projector was not
    roll_up(registered)
    rep = report(registered, "2025-03-03", "2025-03-03")
    row = device_row(rep, PROJECTOR)
    assert row["class_hours"] == 6 and row["class_hours_known"] == 0
    assert row["utilization"] is None
    assert device_row(rep, PANEL)["utilization"] == round(4 / 6, 4)
    html = render_html(rep).decode()
    projector = html[html.index(PROJECTOR) :].split("</tr>")[0]
    assert "unknown" in projector and "0.0 %" not in projector


def test_utilization_and_after_hours_by_hand(ingest: Ingest, registered: Engine) -> None:
    monday(ingest)
    roll_up(registered)
    row = device_row(report(registered, "2025-03-03", "2025-03-03"), PANEL)

    assert row["class_hours"] == 6
    assert row["hours_on"] == 4.75  # 06:30-11:15
    assert row["class_hours_on"] == 4  # 07:00-09:00 and 09:15-11:15
    assert row["utilization"] == round(4 / 6, 4)
    assert row["after_hours_on"] == 0.75  # 06:30-07:00 and the 09:00-09:15 break
    assert row["after_hours_energy_kwh"] == 0.15  # 0.75 h x 200 W (illustrative panel draw)
    assert row["availability"] == 1.0
    assert row["class_hours_unknown"] == 0
    assert row["inputs"] == {"hdmi1": 1.0}


def test_availability_across_an_agent_gap_and_a_fault(ingest: Ingest, registered: Engine) -> None:
    day = "2025-03-04"
    t = lambda hhmm: at(day, hhmm, KATHMANDU)  # noqa: E731
    late = every(PANEL, t("07:00"), t("08:00"), input="hdmi1")  # the outbox drains it later
    readings = every(PANEL, t("10:00"), t("10:30"), input="hdmi1")
    readings += every(PANEL, t("10:30"), t("10:45"), input="hdmi1", errors={"fan": "error"})
    readings += every(PANEL, t("10:45"), t("11:15"), input="hdmi1")
    readings += every(PANEL, t("11:15"), t("12:00"), power="standby")
    readings += every(PANEL, t("12:00"), t("12:30"), reachable=False, power="unknown")
    readings += every(PANEL, t("12:30"), t("14:00"), power="standby")
    feed(ingest, "tribhuvan", readings, received_at=LATER)
    roll_up(registered)
    feed(ingest, "tribhuvan", late, received_at=LATER + timedelta(hours=5))
    roll_up(registered)

    row = device_row(report(registered, day, day), PANEL)
    # Known class time: 07:00-08:00, 10:00-11:15 and 12:00-14:00 = 255 min; 08:00-10:00 is
    # the agent's gap: 105 class minutes unknown, left out of availability.
    assert row["class_hours_known"] == 4.25
    assert row["class_hours_unknown"] == 1.75
    # Unavailable: 15 min faulty, 30 min unreachable.
    assert row["class_hours_available"] == 3.5
    assert row["availability"] == round(210 / 255, 4)
    assert row["hours_on"] == 2.25
    assert row["utilization"] == round(135 / 360, 4)
    assert row["faults"] == 1
    assert row["mtbf_hours"] == 2.25


def test_late_out_of_order_samples_give_the_same_rollups_as_in_order(
    ingest: Ingest, registered: Engine
) -> None:
    day = "2025-03-03"
    readings = every(PANEL, at(day, "06:30", KATHMANDU), at(day, "12:00", KATHMANDU), input="a")
    for part in (readings[200:], readings[50:200], readings[:50]):  # newest first
        feed(ingest, "tribhuvan", part, received_at=LATER)
        roll_up(registered)
    first = _usage(registered)
    sessions = _sessions(registered)
    # The last reading (11:59) vouches for one poll: the session ends at 12:00.
    assert sessions == [(readings[0]["ts"], at(day, "12:00", KATHMANDU))]
    with registered.begin() as conn:  # recompute everything from scratch: same rows
        conn.execute(UsageHour.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(PowerSession.__table__.delete())  # type: ignore[attr-defined]
    feed(ingest, "tribhuvan", readings[:1], received_at=LATER)  # stored once: a duplicate
    from fleet.reports.rollup import device_clocks, recompute_device

    with registered.begin() as conn:
        clock = device_clocks(conn, DEFAULT_PROFILES_DIR)[PANEL]
        recompute_device(
            conn, PANEL, clock, at(day, "06:30", KATHMANDU), at(day, "12:00", KATHMANDU)
        )
    assert _usage(registered) == first
    assert _sessions(registered) == sessions


def _usage(engine: Engine) -> list[tuple[Any, ...]]:
    with Session(engine) as session:
        rows = session.exec(select(UsageHour).order_by(UsageHour.hour_start)).all()  # type: ignore[call-overload]
        return [tuple(r[0].model_dump().values()) for r in rows]


def _sessions(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(PowerSession.start, PowerSession.end)).all()  # type: ignore[call-overload]
    return [(a.isoformat(), b) for a, b in rows]


def test_lamp_and_filter_end_of_life_forecast(ingest: Ingest, registered: Engine) -> None:
    readings = []
    for day, lamp0, filter0 in (("2025-03-03", 4900.0, 1990.0), ("2025-03-04", 4902.0, 1992.0)):
        start = at(day, "07:00", KATHMANDU)
        for i in range(61):  # every 2 min (the projector's poll) for 2 h, then standby
            ts = start + timedelta(minutes=2 * i)
            fields: dict[str, Any] = {
                "power": "on" if i < 60 else "standby",
                "lamp_hours": lamp0 + i / 30,
                "filter_hours": filter0 + i / 30,
                "firmware": "1.1.0",
            }
            readings += every(PROJECTOR, ts, ts + timedelta(seconds=1), **fields)
    feed(ingest, "tribhuvan", readings, received_at=LATER)
    roll_up(registered)
    row = device_row(report(registered, "2025-03-03", "2025-03-04"), PROJECTOR)

    assert row["lamp_hours_used"] == 4.0  # 2 h a day for 2 days
    assert row["lamp_hours_now"] == 4904.0
    # 96 h left at 2 h a day: 48 days after 4 March.
    assert row["lamp_end_of_life"] == "2025-04-21"
    # 2000 - 1994 = 6 h left at 2 h a day: 3 days.
    assert row["filter_end_of_life"] == "2025-03-07"
    assert row["firmware"] == "1.1.0"
    assert row["firmware_compliance"] == 0.0  # the profile asks for 1.2.0
    assert row["hours_on"] == 4.0


def test_day_crossing_casablanca_dst_change_has_a_four_hour_class(
    ingest: Ingest, registered: Engine
) -> None:
    with Session(registered) as session:  # a Sunday class across the change (illustrative)
        site = session.get(Site, "dzv-ma")
        assert site is not None
        site.timetable = {"weekly": {"sun": ["01:00-04:00"]}, "closed": []}
        session.add(site)
        session.commit()
    ingest.refresh_registry()
    device = "dzv-ma-sc1-panel-1"
    # 2025-02-23: 03:00 (+01) became 02:00 (+00); class 01:00-04:00 is 00:00Z-04:00Z.
    start = datetime(2025, 2, 23, 0, 0, tzinfo=UTC)
    readings = every(device, start, start + timedelta(minutes=150), input="hdmi1")
    readings += every(
        device, start + timedelta(minutes=150), start + timedelta(hours=6), power="standby"
    )
    feed(ingest, "dzv-ma", readings, received_at=LATER)
    roll_up(registered)
    rep = report(registered, "2025-02-23", "2025-02-23")
    row = device_row(rep, device)

    assert row["class_hours"] == 4
    assert row["hours_on"] == 2.5
    assert row["utilization"] == 0.625
    # Local 02:00 happened twice: on all through the first, half of the repeated one.
    assert rep["charts"]["hours_on_by_local_hour"][1:4] == [1.0, 1.5, 0.0]
    assert at("2025-02-23", "01:00", CASABLANCA) == start


def test_report_filtered_by_vendor_has_only_that_vendors_devices(
    ingest: Ingest, registered: Engine
) -> None:
    monday(ingest)
    roll_up(registered)
    rep = report(registered, "2025-03-03", "2025-03-03", vendor="seewo")
    assert rep["vendor"] == "Seewo"
    assert rep["devices"] and {r["vendor"] for r in rep["devices"]} == {"Seewo"}
    assert PROJECTOR not in {r["id"] for r in rep["devices"]}  # a Generic projector
    assert [v["id"] for v in rep["vendors"]] == ["Seewo"]


def test_purge_keeps_samples_not_yet_rolled_up(ingest: Ingest, registered: Engine) -> None:
    monday(ingest)
    sunday = [at("2025-03-02", f"08:0{m}", KATHMANDU) for m in range(0, 10)]
    feed(ingest, "tribhuvan", every(PANEL, sunday[0], sunday[5]), received_at=LATER + HOUR)
    roll_up(registered)  # watermark: LATER + 1 h
    feed(ingest, "tribhuvan", every(PANEL, sunday[5], sunday[9]), received_at=LATER + 2 * HOUR)
    purged = purge_rolled_up_samples(registered, timedelta(days=1), LATER + timedelta(days=30))

    # Monday's 570 go. Kept: the 4 not rolled up yet, and the 5 received within the rescan
    # margin of the watermark (a later roll-up run may still read them).
    assert purged == 570
    with registered.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Sample)).scalar() == 9
    row = device_row(report(registered, "2025-03-03", "2025-03-03"), PANEL)
    assert row["hours_on"] == 4.75  # reports read roll-ups, not samples


@pytest.mark.parametrize(
    ("start", "end", "kw", "status", "words"),
    [
        ("2025-03-04", "2025-03-03", {}, 422, "swap"),
        ("2025-01-01", "2025-12-31", {}, 422, "FLEET_REPORT_MAX_DAYS"),
        (
            "2025-03-01",
            "2025-03-31",
            {"vendor": "Acme"},
            404,
            "spell it as the firmware profiles do",
        ),
        ("2025-03-01", "2025-03-31", {"site": "atlantis"}, 404, "atlantis"),
        ("2025-03-01", "2025-03-31", {"device": "nope"}, 404, "nope"),
        (
            "2025-03-01",
            "2025-03-31",
            {"vendor": "MAXHUB", "device": PANEL},
            404,
            f"no device {PANEL!r}",
        ),
    ],
)
def test_bad_requests_name_the_problem(
    registered: Engine,
    start: str,
    end: str,
    kw: dict[str, str],
    status: int,
    words: str,
) -> None:
    from fleet.reports.compute import ReportError

    with pytest.raises(ReportError) as caught:
        report(registered, start, end, **kw)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_rollup_in_chunks_of_one_device_gives_the_same_rows(
    ingest: Ingest, registered: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fleet.reports.rollup as rollup

    day = "2025-03-03"
    devices = ["tu-sc1-panel-1", "tu-sc1-panel-2", "tu-sc1-projector"]
    for device in devices:
        feed(
            ingest,
            "tribhuvan",
            every(device, at(day, "07:00", KATHMANDU), at(day, "09:00", KATHMANDU), input="hdmi1"),
        )
    assert roll_up(registered) == 3
    whole = _usage(registered)
    with registered.begin() as conn:
        conn.execute(UsageHour.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(PowerSession.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(rollup.UsageWatermark.__table__.delete())  # type: ignore[attr-defined]
    # One device per transaction: ingest never waits on the whole run; the rows are the same.
    monkeypatch.setattr(rollup, "ROLLUP_CHUNK", 1)
    assert roll_up(registered) == 3
    assert _usage(registered) == whole
    with registered.connect() as conn:
        rolled = conn.execute(select(UsageHour.device_id).distinct()).scalars().all()  # type: ignore[call-overload]
    assert set(rolled) == set(devices)


def test_rollup_every_few_minutes_through_a_long_session_gives_the_rows_of_one_rebuild(
    ingest: Ingest, registered: Engine
) -> None:
    # A panel on from 06:30 to 11:00 across hour boundaries, with an input change, a fault, a
    # gap and a standby: rolled up as it arrives (the sessions crossing each hour are not
    # re-read from their start), then rebuilt from every sample in one go: the same rows.
    day = "2025-03-03"
    t = lambda hhmm: at(day, hhmm, KATHMANDU)  # noqa: E731
    readings = every(PANEL, t("06:30"), t("08:10"), input="hdmi1")
    readings += every(PANEL, t("08:10"), t("08:40"), input="hdmi2")
    readings += every(PANEL, t("08:40"), t("08:55"), input="hdmi2", errors={"fan": "error"})
    readings += every(PANEL, t("09:10"), t("10:20"), input="hdmi2")  # 08:55-09:10: a gap
    readings += every(PANEL, t("10:20"), t("10:30"), power="standby")
    readings += every(PANEL, t("10:30"), t("11:00"), input="hdmi1")
    late = readings[100:104]  # the outbox drains these last
    arriving = [r for r in readings if r not in late]
    for k, start in enumerate(range(0, len(arriving), 7)):
        feed(ingest, "tribhuvan", arriving[start : start + 7], received_at=LATER + k * HOUR)
        roll_up(registered, now=LATER + k * HOUR)
    feed(ingest, "tribhuvan", late, received_at=LATER + 100 * HOUR)
    roll_up(registered, now=LATER + 100 * HOUR)
    incremental, incremental_sessions = _usage(registered), _sessions(registered)
    assert incremental_sessions[0][0] == readings[0]["ts"]
    assert len(incremental_sessions) == 4  # hdmi1, hdmi2 (to the gap), hdmi2, hdmi1

    from fleet.reports.rollup import device_clocks, recompute_device

    with registered.begin() as conn:
        conn.execute(UsageHour.__table__.delete())  # type: ignore[attr-defined]
        conn.execute(PowerSession.__table__.delete())  # type: ignore[attr-defined]
        clock = device_clocks(conn, DEFAULT_PROFILES_DIR)[PANEL]
        recompute_device(conn, PANEL, clock, t("06:30"), t("11:00"))
    assert _usage(registered) == incremental
    assert _sessions(registered) == incremental_sessions
