"""No scheduled job can be stopped by one bad row: each job runs with one row planted in the
real database (SQLite and PostgreSQL) that makes its Python raise, beside good rows. The bad
row is logged with its key and reason, counted in `fleet_job_row_failures_total{job}` and
skipped; every good row is handled.

The rows are written with SQL, past ingest's checks, as a restored backup, an older version
or a hand edit would leave them: a timestamp no `datetime` holds ('infinity' on PostgreSQL,
text on SQLite), one at the end of time, an hour of the day that is not one, a delivery id
no HTTP header can carry.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError

from fleet.alerts.evaluation import AlertRules, evaluate_alerts
from fleet.alerts.models import AlertKind, Severity
from fleet.alerts.reconcile import Judgement, _open, enqueue
from fleet.alerts.rules import Finding
from fleet.alerts.webhook import Webhook, send_due
from fleet.devices.liveness import apply_silence
from fleet.ingest.pipeline import Ingest
from fleet.job_rows import each
from fleet.programme.evidence import update_classroom_evidence
from fleet.programme.overview import check_overdue_milestones
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.reports.rollup import SAMPLES, USAGE, purge_rolled_up_samples
from fleet.reports.scheduled import store_due_reports
from tests.fixtures_db import agent_state, health, reading
from tests.reports_feed import MONTHLY, every, feed, roll_up
from tests.webhook_receiver import running_receiver

T0 = datetime(2025, 3, 3, 3, 0, tzinfo=UTC)  # 11:00 in Kuala Lumpur, in class
UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc", "upm-sc2-panel-1", "upm-sc2-projector"]
TUIT = ["tuit-sc1-projector", "tuit-sc1-pc"]
RULES = AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=False)


def failures(job: str) -> float:
    return REGISTRY.get_sample_value("fleet_job_row_failures_total", {"job": job}) or 0.0


def unreadable(engine: Engine) -> str:
    """A timestamp the column takes and no `datetime` holds, as an SQL literal."""
    return "'infinity'" if engine.dialect.name == "postgresql" else "'not a time'"


def plant(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        assert conn.execute(text(sql), params).rowcount == 1, sql


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.ERROR, logger="fleet.job_rows"):
        yield caplog


def skipped(caplog: pytest.LogCaptureFixture, job: str) -> list[str]:
    """The keys `job` logged as skipped."""
    return [
        r.getMessage().split(": skipped ", 1)[1].split(": ", 1)[0]
        for r in caplog.records
        if r.getMessage().startswith(f"{job}: skipped ")
    ]


def test_liveness_judges_every_site_past_a_device_it_cannot_read(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    ingest.handle([health("upm", [reading(d, T0) for d in UPM], received_at=T0)])
    ingest.handle([health("tuit", [reading(d, T0) for d in TUIT], received_at=T0)])
    plant(
        registered,
        f"UPDATE device SET state_since = {unreadable(registered)} WHERE id = 'upm-sc1-pc'",
    )
    before = failures("liveness")

    changes = apply_silence(registered, DEFAULT_PROFILES_DIR, T0 + timedelta(minutes=10))

    assert {c.device for c in changes} == set(UPM + TUIT) - {"upm-sc1-pc"}
    assert failures("liveness") == before + 1
    assert skipped(logged, "liveness") == ["upm-sc1-pc"]


def test_alerts_judge_every_device_and_site_past_a_device_they_cannot_read(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    plant(
        registered,
        f"UPDATE device SET state_since = {unreadable(registered)} WHERE id = 'upm-sc1-panel-2'",
    )
    ingest.handle([agent_state("tuit", "offline", T0, T0)])
    before = failures("alerts")
    for minute in range(3):  # hot for long enough to raise
        t = T0 + timedelta(minutes=minute)
        hot = reading("upm-sc2-projector", t, temperature_c=90)
        ingest.handle([health("upm", [hot], received_at=t)])
        evaluate_alerts(registered, RULES, t)
    evaluate_alerts(registered, RULES, T0 + timedelta(minutes=6))

    with registered.connect() as conn:
        opened = set(conn.execute(text("SELECT kind, subject FROM alert")).all())
    assert opened == {
        ("over_temperature", "device:upm-sc2-projector"),
        ("site_offline", "site:tuit"),
    }
    assert failures("alerts") > before
    assert set(skipped(logged, "alerts")) == {"upm-sc1-panel-2"}


def test_alerts_leave_a_site_alone_whose_agent_row_they_cannot_read(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    ingest.handle([agent_state("tuit", "offline", T0, T0), agent_state("upm", "offline", T0, T0)])
    evaluate_alerts(registered, RULES, T0 + timedelta(minutes=6))
    plant(
        registered,
        f"UPDATE agent_status SET received_at = {unreadable(registered)} WHERE site_code = 'tuit'",
    )
    for minutes in (7, 10, 15):  # were it taken as never heard, it would clear by now
        evaluate_alerts(registered, RULES, T0 + timedelta(minutes=minutes))
    with registered.connect() as conn:
        alerts = set(conn.execute(text("SELECT site_code, state FROM alert")).all())
    assert alerts == {("tuit", "open"), ("upm", "open")}
    assert set(skipped(logged, "alerts")) == {"tuit"}


def test_webhook_sends_the_rest_past_a_delivery_it_cannot_send(
    registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    finding = Finding(AlertKind.device_error, Severity.warning, "fan=warning")
    with registered.begin() as conn:
        alert = _open(conn, Judgement("upm", "upm-sc1-panel-1", ()), finding, T0)
        assert alert is not None
        bad = enqueue(conn, "alert.opened", alert, T0 - timedelta(seconds=1))  # first in line
        good = enqueue(conn, "alert.opened", alert, T0)
    plant(
        registered,
        "UPDATE webhook_delivery SET delivery_id = :v WHERE delivery_id = :d",
        v="no\r\nX-Injected: 1",
        d=bad,
    )
    before = failures("webhook")

    with running_receiver() as receiver:
        assert send_due(registered, Webhook(receiver.url, "s", 3), T0) == 1
        again = send_due(registered, Webhook(receiver.url, "s", 3), T0 + timedelta(hours=1))
        received = receiver.received

    assert again == 0  # the bad one is marked failed, not tried for ever
    assert [headers["X-Fleet-Delivery"] for headers, _ in received] == [good]
    with registered.connect() as conn:
        rows = conn.execute(
            text("SELECT delivered_at, failed_at, last_error FROM webhook_delivery ORDER BY id")
        ).all()
    assert rows[0][1] is not None and rows[0][2].startswith("cannot be sent: ValueError")
    assert rows[1][0] is not None
    assert failures("webhook") == before + 1
    assert len(skipped(logged, "webhook")) == 1


def test_classroom_evidence_judges_the_other_classrooms_past_a_device_it_cannot_read(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    ts = datetime(2025, 3, 3, 11, 0, tzinfo=UTC)
    good_room = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc"]
    bad_room = ["upm-sc2-panel-1", "upm-sc2-projector"]
    ingest.handle([health("upm", [reading(d, ts) for d in good_room + bad_room])])
    plant(
        registered,
        f"UPDATE device SET last_seen_at = {unreadable(registered)} WHERE id = 'upm-sc2-projector'",
    )
    before = failures("programme_evidence")

    statuses = update_classroom_evidence(registered, ts + timedelta(hours=1))

    assert statuses.get("upm-smart-1") in ("confirmed", "attached")
    # Left out, not judged without its projector (it could look complete when it is not).
    assert "upm-smart-2" not in statuses
    assert failures("programme_evidence") == before + 1
    assert skipped(logged, "programme_evidence") == ["upm-sc2-projector"]


def test_overdue_check_raises_the_other_sites_past_a_milestone_it_cannot_read(
    registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    bad_date = "'infinity'" if registered.dialect.name == "postgresql" else "'not a date'"
    with registered.connect() as conn:
        ugb_installed = conn.execute(
            text(
                "SELECT m.id FROM programme_milestone m JOIN programme_phase p "
                "ON p.id = m.phase_id WHERE p.site_code = 'ugb' AND m.milestone = 'installed'"
            )
        ).scalar_one()
    plant(
        registered,
        f"UPDATE programme_milestone SET planned = {bad_date} WHERE id = :i",
        i=ugb_installed,
    )
    before = failures("programme_overdue")

    check_overdue_milestones(registered, datetime(2026, 1, 1, 12, tzinfo=UTC), notify=False)

    with registered.connect() as conn:
        late = sorted(conn.execute(text("SELECT site_code FROM alert")).scalars())
    assert late == ["tuit", "usthb"]  # ugb's other milestones wait for its record's fix
    assert failures("programme_overdue") == before + 1
    assert skipped(logged, "programme_overdue") == ["ugb"]


@pytest.mark.parametrize("bad_ts", ["end_of_time", "unreadable"])
def test_roll_up_and_purge_go_on_past_a_sample_they_cannot_use(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture, bad_ts: str
) -> None:
    start = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)
    for device in ("upm-sc1-panel-1", "upm-sc1-panel-2"):
        readings = every(device, start, start + timedelta(hours=1), input="a")
        feed(ingest, "upm", readings, received_at=start + timedelta(hours=1))
    ts = "'9999-12-31 23:59:59'" if bad_ts == "end_of_time" else unreadable(registered)
    plant(
        registered,
        "INSERT INTO sample (device_id, ts, received_at, reachable, power) "
        f"VALUES ('upm-sc1-pc', {ts}, :r, true, 'on')",
        r=datetime(2025, 3, 3, 12, 0, tzinfo=UTC),
    )
    before = failures("usage_rollup")

    assert roll_up(registered, datetime(2025, 3, 3, 13, tzinfo=UTC)) == 2

    with registered.connect() as conn:
        hours = dict(
            conn.execute(select(USAGE.c.device_id, func.count()).group_by(USAGE.c.device_id)).all()
        )
    assert set(hours) == {"upm-sc1-panel-1", "upm-sc1-panel-2"} and min(hours.values()) >= 1
    assert failures("usage_rollup") == before + 1
    assert skipped(logged, "usage_rollup") == ["upm-sc1-pc"]

    # A later batch moves the roll-up's watermark past all of them; then purging what is
    # rolled up and past retention, plain SQL, is not stopped by the bad row either.
    later = datetime(2025, 3, 3, 14, 0, tzinfo=UTC)
    feed(ingest, "upm", [reading("upm-sc1-panel-2", later)], received_at=later)
    roll_up(registered, later)
    purged = purge_rolled_up_samples(
        registered, timedelta(days=1), datetime(2025, 4, 1, tzinfo=UTC)
    )
    with registered.connect() as conn:
        left = sorted(conn.execute(select(SAMPLES.c.device_id)).scalars())
    assert purged == 120 and left == ["upm-sc1-panel-2", "upm-sc1-pc"]


def test_scheduled_reports_store_the_other_vendors_past_a_report_they_cannot_make(
    ingest: Ingest, registered: Engine, logged: pytest.LogCaptureFixture
) -> None:
    start = datetime(2025, 2, 10, 2, 0, tzinfo=UTC)
    feed(ingest, "upm", every("upm-sc1-panel-1", start, start + timedelta(hours=2), input="a"))
    feed(ingest, "tuit", every("tuit-sc1-projector", start, start + timedelta(hours=2)))
    roll_up(registered, datetime(2025, 2, 11, tzinfo=UTC))
    with registered.connect() as conn:
        first = conn.execute(
            select(func.min(USAGE.c.hour_start)).where(USAGE.c.device_id == "upm-sc1-panel-1")
        ).scalar_one()
    with registered.begin() as conn:
        one_hour = USAGE.c.device_id == "upm-sc1-panel-1", USAGE.c.hour_start == first
        assert conn.execute(USAGE.update().where(*one_hour).values(local_hour=99)).rowcount == 1
    with registered.connect() as conn:
        vendors = set(conn.execute(text("SELECT DISTINCT vendor FROM device")).scalars())
    before = failures("scheduled_reports")

    stored = store_due_reports(registered, MONTHLY, datetime(2025, 3, 1, 7, tzinfo=UTC))

    with registered.connect() as conn:
        made = set(conn.execute(text("SELECT DISTINCT vendor FROM stored_report")).scalars())
    assert made == vendors - {"Seewo"} and stored == len(made) * len(MONTHLY.formats)
    assert failures("scheduled_reports") == before + 1
    assert skipped(logged, "scheduled_reports") == [
        f"monthly report of Seewo from {date(2025, 2, 1)}"
    ]


def test_a_chunk_that_raises_is_redone_key_by_key_and_only_the_bad_key_is_lost(
    logged: pytest.LogCaptureFixture,
) -> None:
    calls: list[list[int]] = []

    def work(keys: list[int]) -> list[int]:
        calls.append(keys)
        if 3 in keys:
            raise ValueError("three is bad")
        return [k * 10 for k in keys]

    marked: list[int] = []
    before = failures("unit")
    out = each("unit", list(range(6)), work, chunk=4, on_skip=lambda k, e: marked.append(k))
    assert out == [0, 10, 20, 40, 50]
    assert calls == [[0, 1, 2, 3], [0], [1], [2], [3], [4, 5]]
    assert marked == [3] and failures("unit") == before + 1
    assert skipped(logged, "unit") == ["3"]


def test_the_database_away_is_no_rows_fault_and_is_raised() -> None:
    def work(keys: list[int]) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    before = failures("unit")
    with pytest.raises(OperationalError):
        each("unit", [1, 2], work)
    assert failures("unit") == before
