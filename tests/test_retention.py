"""Tables that grow with traffic keep rows for a bounded age and count, on SQLite and
PostgreSQL; a dead letter keeps a bounded part of its message."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, insert
from sqlmodel import Session, SQLModel, select

from fleet.alerts.models import Alert, WebhookDelivery
from fleet.ingest.pipeline import Ingest
from fleet.ingest.store import DEAD_LETTER_PAYLOAD_MAX
from fleet.models import DeadLetter, IngestedMessage
from fleet.retention import Retention, apply_retention, purge_table
from fleet.settings import Settings
from tests.fixtures_db import RECEIVED, message

NOW = RECEIVED
DAY = timedelta(days=1)


def dead_letters(engine: Engine, ages_days: list[float]) -> None:
    table = SQLModel.metadata.tables["dead_letter"]
    with engine.begin() as conn:
        conn.execute(
            insert(table),
            [
                {
                    "received_at": NOW - timedelta(days=age),
                    "topic": "fleet/v1/upm/health",
                    "reason": "not_json",
                    "detail": f"{age} days old",
                    "payload": b"{",
                    "size": 1,
                    "truncated": False,
                }
                for age in ages_days
            ],
        )


def count(engine: Engine, model: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def test_rows_past_the_age_go(registered: Engine) -> None:
    dead_letters(registered, [40, 31, 29, 1, 0])
    rule = Retention("dead_letter", "received_at", 30 * DAY, max_rows=1000)
    assert purge_table(registered, rule, NOW) == 2
    with Session(registered) as session:
        left = sorted(d.detail for d in session.exec(select(DeadLetter)))
    assert left == ["0 days old", "1 days old", "29 days old"]


def test_beyond_the_newest_max_rows_the_oldest_go(registered: Engine) -> None:
    """A flood of bad input inside the age limit still costs bounded rows."""
    dead_letters(registered, [i / 1000 for i in range(250)])
    rule = Retention("dead_letter", "received_at", 30 * DAY, max_rows=100)
    assert purge_table(registered, rule, NOW) == 150
    with Session(registered) as session:
        newest = session.exec(select(func.min(DeadLetter.received_at))).one()
    assert count(registered, DeadLetter) == 100
    assert newest == NOW - timedelta(days=99 / 1000)


def test_resolved_alerts_go_with_their_deliveries_and_due_ones_stay(registered: Engine) -> None:
    with Session(registered) as session:
        for state, resolved in (("resolved", NOW - 500 * DAY), ("open", None)):
            alert = Alert(
                kind="site_offline",
                severity="critical",
                state=state,
                subject=f"site:upm:{state}",
                site_code="upm",
                message="upm offline",
                opened_at=NOW - 600 * DAY,
                updated_at=NOW - 600 * DAY,
                resolved_at=resolved,
            )
            session.add(alert)
            session.flush()
            assert alert.id is not None
            session.add(
                WebhookDelivery(
                    delivery_id=f"d-{state}",
                    alert_id=alert.id,
                    event="alert.opened",
                    body="{}",
                    created_at=NOW - 600 * DAY,
                    # The open alert's is still due (its receiver down): never dropped.
                    delivered_at=NOW - 600 * DAY if resolved else None,
                    next_attempt_at=None if resolved else NOW,
                )
            )
        session.commit()
    apply_retention(registered, Settings().retention_rules(), NOW)
    with Session(registered) as session:
        assert [a.state for a in session.exec(select(Alert))] == ["open"]
        assert [d.delivery_id for d in session.exec(select(WebhookDelivery))] == ["d-open"]


def test_one_table_failing_does_not_stop_the_others(registered: Engine) -> None:
    dead_letters(registered, [100])
    broken = Retention("dead_letter", "no_such_column", DAY, max_rows=10)
    good = Retention("dead_letter", "received_at", DAY, max_rows=10)
    apply_retention(registered, [broken, good], NOW)
    assert count(registered, DeadLetter) == 0


def test_the_ledger_of_batches_is_purged_by_its_message_id(
    registered: Engine, ingest: Ingest
) -> None:
    from tests.fixtures_db import health, reading

    old = health("upm", [reading("upm-sc1-panel-1", NOW - 40 * DAY)], received_at=NOW - 40 * DAY)
    new = health("upm", [reading("upm-sc1-panel-2", NOW - DAY)], received_at=NOW - DAY)
    ingest.handle([old, new])
    rule = Retention("ingested_message", "received_at", 30 * DAY, 1000, key="msg_id")
    assert purge_table(registered, rule, NOW) == 1
    assert count(registered, IngestedMessage) == 1


def test_a_dead_letter_keeps_a_bounded_part_of_its_message(
    registered: Engine, ingest: Ingest
) -> None:
    garbage = b"x" * (200 * 1024)
    ingest.handle([message("fleet/v1/upm/health", garbage)])
    with Session(registered) as session:
        (dead,) = session.exec(select(DeadLetter)).all()
    assert dead.size == len(garbage) and dead.truncated
    assert len(dead.payload) == DEAD_LETTER_PAYLOAD_MAX


def test_the_ledger_must_outlive_the_broker_session() -> None:
    with pytest.raises(ValueError, match="FLEET_INGESTED_RETENTION_DAYS"):
        Settings(ingested_retention_days=8, mqtt_session_expiry_s=9 * 86400)
