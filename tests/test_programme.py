"""The programme against a real database: seed facts, device evidence, overdue, CSV, timeline."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from fleet.db import make_engine, migrate
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import Ingest
from fleet.models import Site
from fleet.programme.csv_records import export_programme_csv, import_programme_csv
from fleet.programme.evidence import update_classroom_evidence
from fleet.programme.milestones import MilestoneFacts, MilestoneName
from fleet.programme.models import ClassroomEvidence, MilestoneRecord, Phase, PhaseRoom
from fleet.programme.overview import (
    check_overdue_milestones,
    located_milestones,
    programme_overview,
)
from fleet.programme.records import MilestoneInput, ProgrammeError, get_phase, write_milestone
from fleet.programme.timeline import build_timeline, timeline_json, timeline_svg
from fleet.protocol.site_config import LoadedSite
from tests.fixtures_db import health, reading

D = date.fromisoformat
UPM_ROOM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc"]
# (site, phase, room, milestone) -> (planned, actual, actual_end, reached, evidence)
SOURCE_FACTS: dict[tuple[str, int, str, str], tuple[Any, ...]] = {
    ("upm", 1, "", "installed"): (None, D("2024-03-25"), D("2024-04-02"), True, None),
    ("upm", 1, "", "training_done"): (None, None, None, True, {"trained_more_than": 70}),
    ("tribhuvan", 1, "", "installed"): (None, D("2024-09-25"), D("2024-10-01"), True, None),
    ("tribhuvan", 1, "", "training_done"): (None, None, None, True, None),
    ("tuit", 1, "", "installed"): (None, D("2024-06-01"), D("2024-06-30"), True, None),
    ("tuit", 1, "", "in_use"): (None, None, None, True, None),
    ("tuit", 2, "", "installed"): (D("2025-12-31"), None, None, False, None),
    ("ugb", 1, "", "agreement_signed"): (None, D("2024-12-13"), None, True, None),
    ("ugb", 1, "", "installed"): (D("2025-12-31"), None, None, False, None),
    ("ugb", 1, "", "in_use"): (D("2025-12-31"), None, None, False, None),
    ("usthb", 1, "", "agreement_signed"): (None, D("2024-12-13"), None, True, None),
    ("usthb", 1, "", "installed"): (D("2025-12-31"), None, None, False, None),
    ("usthb", 1, "", "in_use"): (D("2025-12-31"), None, None, False, None),
    ("dzv-ma", 1, "", "agreement_signed"): (None, D("2024-10-16"), None, True, None),
    ("dzv-uz", 1, "", "agreement_signed"): (None, D("2024-10-16"), None, True, None),
    ("dzv-zm", 1, "", "agreement_signed"): (None, D("2024-10-16"), None, True, None),
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def milestone_rows(engine: Engine) -> dict[tuple[str, int, str, str], MilestoneRecord]:
    with Session(engine) as session:
        rows = session.exec(
            select(MilestoneRecord, Phase).where(MilestoneRecord.phase_id == Phase.id)
        ).all()
        return {(p.site_code, p.number, r.room_id, r.milestone): r for r, p in rows}


def test_seed_loads_exactly_the_source_facts_as_site_config(registered: Engine) -> None:
    rows = milestone_rows(registered)
    found = {
        key: (r.planned, r.actual, r.actual_end, r.reached, r.evidence) for key, r in rows.items()
    }
    assert found == SOURCE_FACTS
    assert {r.recorded_by for r in rows.values()} == {"site_config"}
    assert rows[("upm", 1, "", "training_done")].note == (
        "training for over 70 faculty members and students"
    )
    with Session(registered) as session:
        covered = {link.room_id for link in session.exec(select(PhaseRoom))}
    assert "upm-smart-2" not in covered  # the source names one Smart Classroom at UPM


def test_seed_is_idempotent_and_keeps_what_ops_recorded_since(
    registered: Engine, loaded_sites: list[LoadedSite]
) -> None:
    before = {k: r.model_dump() for k, r in milestone_rows(registered).items()}
    again = sync_registry(registered, loaded_sites)
    assert again.programme == [] and not again.changed
    assert {k: r.model_dump() for k, r in milestone_rows(registered).items()} == before

    with Session(registered) as session:
        record = session.exec(
            select(MilestoneRecord).where(MilestoneRecord.milestone == "installed")
        ).first()
        assert record is not None
        record.note, record.recorded_by = "checked on site", "ops"
        session.add(record)
        session.commit()
        key = record.id
    sync_registry(registered, loaded_sites)
    with Session(registered) as session:
        kept = session.get(MilestoneRecord, key)
        assert kept is not None and kept.note == "checked on site"


def evidence_row(engine: Engine, room: str) -> ClassroomEvidence:
    with Session(engine) as session:
        row = session.get(ClassroomEvidence, room)
        assert row is not None
        return row


def run_evidence(engine: Engine, now: str) -> dict[str, str]:
    return update_classroom_evidence(engine, at(now))


def test_device_evidence_confirms_a_classroom_when_its_last_device_is_healthy(
    ingest: Ingest, registered: Engine
) -> None:
    first = [
        reading("upm-sc1-panel-1", at("2025-03-03T17:00:00")),
        reading("upm-sc1-panel-2", at("2025-03-03T17:00:00"), errors={"lamp": "error"}),
        reading("upm-sc1-pc", at("2025-03-03T17:00:00"), reachable=False, error="timeout"),
    ]
    ingest.handle([health("upm", first, received_at=at("2025-03-03T17:01:00"))])

    waiting = run_evidence(registered, "2025-03-03T18:00:00")
    assert waiting["upm-smart-1"] == "review"  # reports, but no installed milestone yet
    # Nothing new: the classroom's row stays as it is, only its watermark moves on.
    kept = evidence_row(registered, "upm-smart-1")
    assert run_evidence(registered, "2025-03-03T18:02:00")["upm-smart-1"] == "review"
    moved = evidence_row(registered, "upm-smart-1")
    assert moved.scanned_through == at("2025-03-03T18:02:00")
    assert (moved.first_healthy, moved.reason) == (kept.first_healthy, kept.reason)

    later = [
        reading("upm-sc1-panel-2", at("2025-03-03T17:20:00"), errors={"lamp": "warning"}),
        reading("upm-sc1-pc", at("2025-03-03T17:30:00")),
        reading("upm-sc1-panel-1", at("2025-03-03T17:40:00"), reachable=False, error="x"),
    ]
    ingest.handle([health("upm", later, received_at=at("2025-03-03T18:05:00"))])
    statuses = run_evidence(registered, "2025-03-03T18:10:00")

    assert statuses["upm-smart-1"] == "confirmed"
    record = milestone_rows(registered)[("upm", 1, "upm-smart-1", "installed")]
    # 17:30 UTC is already 4 March in Kuala Lumpur (UTC+8).
    assert (record.actual, record.reached) == (D("2025-03-04"), True)
    assert record.recorded_by == "device_evidence"
    proof = (record.evidence or {})["devices_healthy"]
    assert proof["all_healthy_at"] == "2025-03-03T17:30:00+00:00"
    assert proof["devices"] == {
        "upm-sc1-panel-1": "2025-03-03T17:00:00+00:00",
        "upm-sc1-panel-2": "2025-03-03T17:20:00+00:00",
        "upm-sc1-pc": "2025-03-03T17:30:00+00:00",
    }
    again = run_evidence(registered, "2025-03-03T18:20:00")
    assert again["upm-smart-1"] == "confirmed"
    assert milestone_rows(registered)[("upm", 1, "upm-smart-1", "installed")] == record


def test_device_evidence_is_attached_to_an_installed_milestone_already_recorded(
    ingest: Ingest, registered: Engine
) -> None:
    with Session(registered) as session:
        site = session.get(Site, "upm")
        assert site is not None
        phase = get_phase(session, "upm", 1)
        facts = MilestoneFacts(MilestoneName.installed, actual=D("2024-03-25"))
        given = MilestoneInput(facts, note="on site")
        write_milestone(
            session,
            site,
            phase,
            "upm-smart-1",
            given,
            recorded_by="ops",
            now=at("2025-01-01"),
            mode="create",
        )
        session.commit()
    ts = at("2025-03-03T11:00:00")
    ingest.handle([health("upm", [reading(d, ts) for d in UPM_ROOM])])

    assert run_evidence(registered, "2025-03-03T12:30:00")["upm-smart-1"] == "attached"
    record = milestone_rows(registered)[("upm", 1, "upm-smart-1", "installed")]
    assert (record.actual, record.recorded_by, record.note) == (D("2024-03-25"), "ops", "on site")
    assert (record.evidence or {})["devices_healthy"]["all_healthy_at"] == ts.isoformat()


def test_classroom_reporting_outside_any_phase_is_flagged_for_review(
    ingest: Ingest, registered: Engine
) -> None:
    ts = at("2025-03-03T11:00:00")
    readings = [reading(d, ts) for d in ("upm-sc2-panel-1", "upm-sc2-projector")]
    ingest.handle([health("upm", readings)])

    assert run_evidence(registered, "2025-03-03T12:30:00")["upm-smart-2"] == "review"
    with Session(registered) as session:
        evidence = session.get(ClassroomEvidence, "upm-smart-2")
        assert evidence is not None and "in no phase" in evidence.reason
        overview = {p.site.code: p for p in programme_overview(session, at("2025-03-03T13:00"))}
    assert overview["upm"].review == ["upm-smart-2"]
    assert ("upm", 1, "upm-smart-2", "installed") not in milestone_rows(registered)


def test_overdue_uses_the_site_date_on_a_fixed_clock(
    registered: Engine,
) -> None:
    def late(now: str) -> set[str]:
        with Session(registered) as session:
            return {p.site.code for p in programme_overview(session, at(now)) if p.late}

    assert late("2025-12-31T12:00:00") == set()
    # 20:00 UTC: already 1 January in Tashkent (UTC+5), still 31 December in Dakar (UTC+0).
    assert late("2025-12-31T20:00:00") == {"tuit"}
    assert late("2026-01-01T12:00:00") == {"tuit", "ugb", "usthb"}

    with Session(registered) as session:
        ugb = next(
            p for p in programme_overview(session, at("2026-01-01T12:00")) if p.site.code == "ugb"
        )
    assert ugb.current is not None and ugb.current.facts.milestone == "agreement_signed"
    assert ugb.next is not None and ugb.next.facts.planned == D("2025-12-31")
    assert [m.facts.milestone for m in ugb.overdue] == ["installed", "in_use"]

    # Raised through the alert mechanism: one open alert per late site, on a fixed clock.
    check_overdue_milestones(registered, at("2025-12-31T20:00:00"), notify=False)
    assert overdue_alerts(registered) == {"tuit": "open"}
    check_overdue_milestones(registered, at("2026-01-01T12:00:00"), notify=False)
    check_overdue_milestones(registered, at("2026-01-01T13:00:00"), notify=False)
    assert overdue_alerts(registered) == {"tuit": "open", "ugb": "open", "usthb": "open"}
    with registered.connect() as conn:
        message = conn.execute(
            text("SELECT message FROM alert WHERE site_code = 'ugb'")
        ).scalar_one()
    assert "installed planned 2025-12-31" in message


def overdue_alerts(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT site_code, state FROM alert WHERE kind = 'programme_overdue'")
        ).all()
    return {site: state for site, state in rows}


def test_csv_round_trips_into_another_database(
    ingest: Ingest, registered: Engine, loaded_sites: list[LoadedSite], tmp_path: Path
) -> None:
    ts = at("2025-03-03T11:00:00")
    ingest.handle([health("upm", [reading(d, ts) for d in UPM_ROOM])])
    run_evidence(registered, "2025-03-03T12:30:00")
    with Session(registered) as session:
        exported = export_programme_csv(session)
    assert "upm-smart-1,installed,,2025-03-03" in exported

    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        migrate(other)
        sync_registry(other, loaded_sites)
        with Session(other) as session:
            rows = import_programme_csv(session, exported, at("2025-03-04T00:00:00"))
            session.commit()
        with Session(other) as session:
            assert export_programme_csv(session) == exported
    finally:
        other.dispose()
    assert rows == exported.count("\n") - 1


def test_csv_import_with_a_bad_row_names_line_and_column_and_writes_nothing(
    registered: Engine,
) -> None:
    with Session(registered) as session:
        exported = export_programme_csv(session)
    lines = exported.splitlines()
    bad = (
        "upm,1,,upm-smart-1,installed,,2024-04-02,2024-03-25,true,,,false,ops,"
        "2025-03-04T00:00:00+00:00"
    )
    text = "\n".join([*lines[:3], "upm,9,,,,,,,,,,,ops,2025-03-04T00:00:00+00:00", bad]) + "\n"
    with Session(registered) as session, pytest.raises(ProgrammeError) as caught:
        import_programme_csv(session, text, at("2025-03-04T00:00:00"))
    assert caught.value.field == "actual_end"
    assert caught.value.message.startswith("line 5:")
    with Session(registered) as session:
        assert export_programme_csv(session) == exported


def test_timeline_shows_planned_against_actual_as_json_and_svg(registered: Engine) -> None:
    with Session(registered) as session:
        site = session.get(Site, "tuit")
        assert site is not None
        timeline = build_timeline(site, located_milestones(session, "tuit"), D("2026-01-15"))
    data = timeline_json(timeline)
    assert [row["subject"] for row in data["rows"]] == ["phase 1", "phase 2"]
    phase2 = data["rows"][1]["milestones"][0]
    assert phase2 == {
        "milestone": "installed",
        "planned": "2025-12-31",
        "actual": None,
        "actual_end": None,
        "reached": False,
        "overdue": True,
        "note": "full completion planned for 2025",
    }
    svg = timeline_svg(timeline)
    root = ElementTree.fromstring(svg)  # well-formed
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "installed 2024-06-01 to 2024-06-30" in svg
    assert "installed planned 2025-12-31 (late)" in svg
    assert "<script" not in svg and "http://" not in svg.replace("http://www.w3.org/2000/svg", "")


def ugb_progress(engine: Engine, now: str) -> Any:
    with Session(engine) as session:
        return next(p for p in programme_overview(session, at(now)) if p.site.code == "ugb")


def test_installed_confirmed_by_devices_closes_the_overdue_alert_and_late_mark(
    ingest: Ingest, registered: Engine
) -> None:
    """ugb: installed planned for 31 December 2025 and overdue; its classroom's devices then
    report healthy. The phase's installed is reached with its classroom, the overdue alert is
    resolved at once by the evidence job (not at the hourly check), and the late mark goes."""
    from fleet.programme.evidence import check_classroom_evidence

    with Session(registered) as session:
        # Ops moved the in-use date on: installed is the only thing late at ugb.
        in_use = milestone_rows(registered)[("ugb", 1, "", "in_use")]
        in_use.planned = D("2027-06-30")
        session.add(in_use)
        session.commit()
        devices = list(
            session.exec(
                text("SELECT id FROM device WHERE room_id = 'ugb-smart-1' AND retired_at IS NULL")
            ).scalars()
        )
    assert devices
    check_overdue_milestones(registered, at("2026-03-02T09:00:00"), notify=False)
    assert overdue_alerts(registered).get("ugb") == "open"
    with Session(registered) as session:
        ugb = next(
            p for p in programme_overview(session, at("2026-03-02T09:00")) if p.site.code == "ugb"
        )
    assert ugb.late and [m.facts.milestone for m in ugb.overdue] == ["installed"]

    ts = at("2026-03-02T10:00:00")
    ingest.handle([health("ugb", [reading(d, ts) for d in devices], received_at=ts)])
    check_classroom_evidence(registered, at("2026-03-02T10:05:00"))

    rows = milestone_rows(registered)
    assert rows[("ugb", 1, "ugb-smart-1", "installed")].reached
    phase = rows[("ugb", 1, "", "installed")]
    assert phase.reached and phase.actual == D("2026-03-02") and phase.planned == D("2025-12-31")
    assert phase.recorded_by == "device_evidence"
    assert overdue_alerts(registered).get("ugb") == "resolved"
    with Session(registered) as session:
        ugb = next(
            p for p in programme_overview(session, at("2026-03-02T10:06")) if p.site.code == "ugb"
        )
    assert not ugb.late and ugb.overdue == []
    from fleet.web.programme_page import milestones_by_site

    with Session(registered) as session:
        assert milestones_by_site(session)["ugb"][1] is False


def test_timeline_labels_never_overlap(registered: Engine) -> None:
    """ugb plans installed and in use for the same day: their names are not drawn over each
    other, in any row of any site's timeline."""
    from fleet.programme.timeline import label_width

    with Session(registered) as session:
        sites = list(session.exec(select(Site)))
        svgs = [
            timeline_svg(build_timeline(s, located_milestones(session, s.code), D("2026-01-15")))
            for s in sites
        ]
    for svg in svgs:
        root = ElementTree.fromstring(svg)
        labels = [
            (float(t.get("x", 0)), float(t.get("y", 0)), t.text or "")
            for t in root.iter("{http://www.w3.org/2000/svg}text")
            if t.get("font-size") == "9" and float(t.get("x", 0)) >= 190
        ]
        for n, (x1, y1, a) in enumerate(labels):
            for x2, y2, b in labels[n + 1 :]:
                if abs(y1 - y2) < 9:
                    apart = x1 + label_width(a) <= x2 or x2 + label_width(b) <= x1
                    assert apart, (a, x1, y1, b, x2, y2)
