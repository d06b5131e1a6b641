"""Alerts in the database: opened once, escalated in place, resolved when the condition clears,
history kept; raised after ingest through its hook and by the scheduled job."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from fleet.alerts.evaluation import AlertRules, after_ingest, evaluate_alerts
from fleet.alerts.models import Alert, AlertKind, AlertState, Severity, WebhookDelivery
from fleet.alerts.reconcile import Judgement, _open
from fleet.alerts.rules import Finding
from fleet.ingest.pipeline import Ingest
from fleet.models import Device
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_db import agent_state, health, reading

# 03:00 UTC on Monday 2025-03-03 is 11:00 in Kuala Lumpur: upm is in class (10:30-12:30).
CLASS = datetime.fromisoformat("2025-03-03T03:00:00+00:00")
PROJECTOR = "upm-sc2-projector"  # snmp-projector: lamp life 5000 h, 75 °C max


def alerts(engine: Engine, **where: str) -> list[Alert]:
    with Session(engine) as session:
        query = select(Alert).order_by(col(Alert.id))
        for name, value in where.items():
            query = query.where(getattr(Alert, name) == value)
        return list(session.exec(query).all())


def open_gauge(kind: str) -> float | None:
    return REGISTRY.get_sample_value("fleet_alerts_open", {"kind": kind})


@pytest.fixture
def rules() -> AlertRules:
    return AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=False)


@pytest.fixture
def clocked(ingest: Ingest, rules: AlertRules) -> Callable[[datetime], Ingest]:
    """Ingest with the alerts hook, its clock pinned to the time given."""
    ingest.after_commit.append(after_ingest(rules))

    def at(now: datetime) -> Ingest:
        ingest.clock = lambda: now
        return ingest

    return at


def lamp(ts: datetime, hours: float) -> list[dict[str, object]]:
    return [reading(PROJECTOR, ts, power="standby", lamp_hours=hours)]


def test_one_open_alert_per_device_and_kind_escalated_then_resolved_with_history(
    clocked: Callable[[datetime], Ingest], registered: Engine
) -> None:
    def at(minutes: int, hours: float) -> None:
        t = CLASS + timedelta(minutes=minutes)
        clocked(t).handle([health("upm", lamp(t, hours))])

    at(0, 4600)  # 92 % of its life: one reading is not yet an alert (2 over 2 min are)
    assert alerts(registered, kind="lamp_hours") == []
    at(2, 4600.1)
    [alert] = alerts(registered, kind="lamp_hours")
    assert (alert.state, alert.severity, alert.device_id) == ("open", "warning", PROJECTOR)
    assert alert.site_code == "upm" and alert.opened_at == CLASS + timedelta(minutes=2)
    assert "4600.1 h, 92% of its 5000 h life" in alert.message

    at(4, 5001)  # worse: escalated at once, in place
    [alert] = alerts(registered, kind="lamp_hours")
    assert (alert.state, alert.severity, alert.updated_at) == (
        "open",
        "critical",
        CLASS + timedelta(minutes=4),
    )

    at(6, 3)  # lamp replaced: cleared after two readings over two minutes
    assert alerts(registered, kind="lamp_hours")[0].state == "open"
    at(8, 3.03)
    [alert] = alerts(registered, kind="lamp_hours")
    assert (alert.state, alert.resolved_at, alert.resolution) == (
        "resolved",
        CLASS + timedelta(minutes=8),
        "condition cleared",
    )
    assert alert.resolved_by is None

    at(10, 4700)
    at(12, 4700.03)
    history = alerts(registered, kind="lamp_hours")
    assert [a.state for a in history] == ["resolved", "open"]


def test_unreachable_reading_keeps_reading_alerts_open(
    clocked: Callable[[datetime], Ingest], registered: Engine
) -> None:
    for minute in (0, 1, 2):  # three readings over the limit, over two minutes
        t = CLASS + timedelta(minutes=minute)
        clocked(t).handle([health("upm", [reading(PROJECTOR, t, temperature_c=80)])])
    [alert] = alerts(registered, kind="over_temperature")
    assert alert.state == "open"
    t2 = CLASS + timedelta(minutes=4)
    clocked(t2).handle([health("upm", [reading(PROJECTOR, t2, reachable=False, error="timeout")])])
    [alert] = alerts(registered, kind="over_temperature")
    assert alert.state == "open"


def test_scheduled_job_raises_time_based_alerts_and_the_gauge(
    ingest: Ingest, registered: Engine, rules: AlertRules
) -> None:
    t = CLASS
    ingest.handle(
        [
            health("upm", [reading(PROJECTOR, t, reachable=False, error="timeout")]),
            health("tuit", [reading("tuit-sc1-projector", t)]),
            agent_state("tuit", "offline", t, t),
        ]
    )
    evaluate_alerts(registered, rules, t + timedelta(minutes=4))
    assert alerts(registered) == []  # neither ten minutes of class nor five of outage yet

    evaluate_alerts(registered, rules, t + timedelta(minutes=11))
    [unreachable] = alerts(registered, kind="device_unreachable")
    [offline] = alerts(registered, kind="site_offline")
    assert unreachable.device_id == PROJECTOR and unreachable.severity == "critical"
    assert offline.site_code == "tuit" and offline.device_id is None
    assert "site agent tuit-agent-1 offline since" in offline.message
    assert open_gauge("site_offline") == 1

    later = t + timedelta(minutes=12)
    ingest.handle(
        [
            agent_state("tuit", "online", later, later),
            health("upm", [reading(PROJECTOR, later)], received_at=later),
        ]
    )
    evaluate_alerts(registered, rules, later)
    assert {a.state for a in alerts(registered)} == {"open"}  # back, not yet for long
    evaluate_alerts(registered, rules, later + timedelta(minutes=2))
    assert {a.state for a in alerts(registered)} == {"resolved"}
    assert open_gauge("site_offline") == 0
    with Session(registered) as session:
        assert session.exec(select(WebhookDelivery)).all() == []  # no URL, no outbox rows


def test_left_on_after_hours_is_judged_by_the_job_with_a_fresh_reading(
    ingest: Ingest, registered: Engine, rules: AlertRules
) -> None:
    # 08:40 UTC is 16:40 in Kuala Lumpur: 40 min after Monday's last class.
    at = datetime.fromisoformat("2025-03-03T08:40:00+00:00")
    for minutes in (6, 1):  # two fresh readings powered on, five minutes apart
        ingest.handle(
            [health("upm", [reading("upm-sc1-panel-1", at - timedelta(minutes=minutes))])]
        )
        evaluate_alerts(registered, rules, at - timedelta(minutes=minutes - 1))
    [alert] = alerts(registered, kind="left_on_after_hours")
    assert "since 16:30 Asia/Kuala_Lumpur" in alert.message


def test_second_unresolved_alert_for_the_same_subject_and_kind_is_refused(
    registered: Engine,
) -> None:
    judgement = Judgement("upm", PROJECTOR, ())
    finding = Finding(AlertKind.device_error, Severity.warning, "fan=warning")
    with registered.begin() as conn:
        first = _open(conn, judgement, finding, CLASS)
        again = _open(conn, judgement, finding, CLASS)  # a racing writer: no second row
    assert first is not None and again is None
    with pytest.raises(IntegrityError), registered.begin() as conn:
        conn.execute(
            Alert.__table__.insert().values(  # type: ignore[attr-defined]
                kind="device_error",
                severity="warning",
                state=AlertState.acknowledged.value,
                subject=f"device:{PROJECTOR}",
                site_code="upm",
                device_id=PROJECTOR,
                message="duplicate",
                opened_at=CLASS,
                updated_at=CLASS,
            )
        )


def test_an_open_site_alert_stays_open_while_a_restarted_controller_listens(
    ingest: Ingest, registered: Engine, rules: AlertRules
) -> None:
    """Not resolved and raised again, not raised for everyone: until the restarted controller
    has listened for the silence threshold, site alerts stay as they stood."""
    t = CLASS
    ingest.handle(
        [
            health("tuit", [reading("tuit-sc1-projector", t)], received_at=t),
            agent_state("tuit", "offline", t, t),
            health("upm", [reading(PROJECTOR, t)], received_at=t),
        ]
    )
    evaluate_alerts(registered, rules, t + timedelta(minutes=6))
    [offline] = alerts(registered, kind="site_offline")
    assert offline.site_code == "tuit" and offline.state == "open"

    # The controller was down for an hour; it starts again and runs the job at once.
    restarted = t + timedelta(hours=1)
    evaluate_alerts(registered, rules, restarted, watching_since=restarted)
    # tuit's will still stands (a fact, not a silence); upm is not yet called offline.
    assert [(a.site_code, a.state) for a in alerts(registered, kind="site_offline")] == [
        ("tuit", "open")
    ]
    # Three minutes on, upm's readings have not come: its silence counts from now on.
    evaluate_alerts(registered, rules, restarted + timedelta(minutes=3), watching_since=restarted)
    assert [a.site_code for a in alerts(registered, kind="site_offline")] == ["tuit"]
    evaluate_alerts(registered, rules, restarted + timedelta(minutes=7), watching_since=restarted)
    assert sorted(a.site_code for a in alerts(registered, kind="site_offline")) == ["tuit", "upm"]


def test_a_retired_devices_alerts_resolve_at_once(
    clocked: Callable[[datetime], Ingest], registered: Engine, rules: AlertRules
) -> None:
    for minute in (0, 1, 2):
        t = CLASS + timedelta(minutes=minute)
        clocked(t).handle([health("upm", [reading(PROJECTOR, t, temperature_c=80)])])
    [alert] = alerts(registered, kind="over_temperature")
    assert alert.state == "open"
    with registered.begin() as conn:
        conn.execute(
            Device.__table__.update()  # type: ignore[attr-defined]
            .where(Device.__table__.c.id == PROJECTOR)  # type: ignore[attr-defined]
            .values(retired_at=CLASS)
        )
    evaluate_alerts(registered, rules, CLASS + timedelta(minutes=3))
    [alert] = alerts(registered, kind="over_temperature")
    assert (alert.state, alert.resolution) == ("resolved", "device retired")
