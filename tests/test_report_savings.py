"""What the power schedules saved, in the usage report: on-time avoided, lamp hours and
(illustrative) kWh, per device and summed per site and vendor, on SQLite and PostgreSQL.

Tribhuvan (Asia/Kathmandu, UTC+05:45) has classes 07:00-09:00, 09:15-11:15 and 12:00-14:00,
Sunday to Thursday, and on Friday until 11:15; none on Saturday."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from fleet.commands.models import DeviceCommand
from tests.reports_feed import KATHMANDU, at
from tests.test_reports import device_row, report


def switched_off(
    device: str, confirmed: datetime, *, by: str = "schedule", state: str = "done"
) -> DeviceCommand:
    return DeviceCommand(
        cmd_id=f"p-{device}-{confirmed.timestamp():.0f}-{by}-{state}",
        campaign="power-1",
        device_id=device,
        site_code="tribhuvan",
        kind="power",
        value="off",
        state=state,
        answer="POWR 0: OK",
        requested_by=by,
        reason="power schedule: 30 min after the day's last class",
        created_at=confirmed - timedelta(seconds=5),
        expires_at=confirmed + timedelta(minutes=5),
        answered_at=confirmed,
        confirmed_at=confirmed if state == "done" else None,
        updated_at=confirmed,
    )


def test_savings_from_confirmed_schedule_switch_offs_by_device_site_and_vendor(
    registered: Engine,
) -> None:
    with Session(registered) as session:
        session.add_all(
            [
                # Monday 14:30: the projector would be wanted again on Tuesday at 07:00.
                switched_off("tu-sc1-projector", at("2025-03-03", "14:30", KATHMANDU)),
                # Friday 12:00: the next class is Sunday 07:00; credited 24 h at most.
                switched_off("tu-sc1-panel-1", at("2025-03-07", "12:00", KATHMANDU)),
                # Not counted: a note, a refusal, a technician's own command, another week.
                switched_off(
                    "tu-sc1-panel-2", at("2025-03-03", "15:00", KATHMANDU), state="notified"
                ),
                switched_off(
                    "tu-sc1-panel-2", at("2025-03-04", "15:00", KATHMANDU), state="failed"
                ),
                switched_off("tu-sc1-panel-2", at("2025-03-05", "15:00", KATHMANDU), by="tech"),
                switched_off("tu-sc1-panel-2", at("2025-03-11", "15:00", KATHMANDU)),
            ]
        )
        session.commit()
    rep = report(registered, "2025-03-03", "2025-03-09")
    projector = device_row(rep, "tu-sc1-projector")
    panel = device_row(rep, "tu-sc1-panel-1")
    other = device_row(rep, "tu-sc1-panel-2")
    site = next(r for r in rep["sites"] if r["id"] == "tribhuvan")
    seewo = next(r for r in rep["vendors"] if r["id"] == "Seewo")
    assert (projector["saved_on_hours"], projector["saved_lamp_hours"]) == (16.5, 16.5)
    assert projector["saved_energy_kwh"] == 4.95  # 16.5 h x 300 W, illustrative
    assert (panel["saved_on_hours"], panel["saved_lamp_hours"]) == (24.0, 0.0)
    assert panel["saved_energy_kwh"] == 4.8  # 24 h x 200 W
    assert other["saved_on_hours"] == 0.0
    assert (site["saved_on_hours"], site["saved_energy_kwh"]) == (40.5, 9.75)
    assert seewo["saved_on_hours"] == 24.0 and seewo["saved_lamp_hours"] == 0.0
    assert "illustrative" in rep["definitions"]["saved_energy_kwh"]
