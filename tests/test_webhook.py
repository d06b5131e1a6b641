"""Webhook notifications against a real HTTP server on loopback: signed, retried with
backoff from the outbox table, delivered once."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.alerts.delivery_attempts import retry_delay
from fleet.alerts.evaluation import AlertRules, evaluate_devices
from fleet.alerts.models import WebhookDelivery
from fleet.alerts.webhook import Webhook, send_due
from fleet.ingest.pipeline import Ingest
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.settings import Settings
from tests.fixtures_db import health, reading
from tests.webhook_receiver import Receiver, running_receiver

SECRET = "s3cret-shared-with-the-receiver"
T = datetime.fromisoformat("2025-03-03T03:00:00+00:00")
# A webhook is configured: every alert opened or resolved queues a notification.
NOTIFYING = AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver(failures=2) as r:
        yield r


def deliveries(engine: Engine) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(WebhookDelivery)).all())


def projector_at(ingest: Ingest, engine: Engine, celsius: float, *minutes: int) -> datetime:
    """Readings of the projector at `celsius`, T + each of `minutes`, each judged as ingest
    would; returns the time of the last."""
    for minute in minutes:
        t = T + timedelta(minutes=minute)
        ingest.handle([health("upm", [reading("upm-sc2-projector", t, temperature_c=celsius)])])
        evaluate_devices(engine, NOTIFYING, t, ["upm-sc2-projector"])
    return t


def test_signed_notification_retried_with_backoff_and_delivered_once(
    ingest: Ingest, registered: Engine, receiver: Receiver
) -> None:
    webhook = Webhook(receiver.url, SECRET, max_attempts=8)
    projector_at(ingest, registered, 90, -2, -1, 0)  # hot for long enough: opened at T
    [queued] = deliveries(registered)
    assert queued.event == "alert.opened" and queued.next_attempt_at == T

    assert send_due(registered, webhook, T) == 0  # 500
    assert send_due(registered, webhook, T + timedelta(seconds=0.5)) == 0  # not due: waits 1 s
    assert len(receiver.received) == 1
    assert send_due(registered, webhook, T + timedelta(seconds=1)) == 0  # 500, then waits 2 s
    assert send_due(registered, webhook, T + timedelta(seconds=2.5)) == 0
    assert send_due(registered, webhook, T + timedelta(seconds=3)) == 1  # 204
    assert send_due(registered, webhook, T + timedelta(hours=1)) == 0  # nothing left

    assert len(receiver.received) == 3
    [sent] = deliveries(registered)
    assert sent.attempts == 3 and sent.delivered_at == T + timedelta(seconds=3)
    assert sent.next_attempt_at is None and sent.last_error is None
    ids = {headers["X-Fleet-Delivery"] for headers, _ in receiver.received}
    assert ids == {sent.delivery_id}  # the same delivery each time: the receiver can dedup
    for headers, body in receiver.received:
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Fleet-Signature"], f"sha256={expected}")
    payload = json.loads(receiver.received[-1][1])
    assert payload["event"] == "alert.opened" and payload["delivery"] == sent.delivery_id
    assert payload["alert"]["kind"] == "over_temperature"
    assert payload["alert"]["device_id"] == "upm-sc2-projector"


def test_resolution_is_notified_and_a_dead_receiver_is_given_up_on(
    ingest: Ingest, registered: Engine
) -> None:
    # Port 9 on loopback (discard) has no listener here: every attempt fails at once.
    webhook = Webhook("http://127.0.0.1:9/none", SECRET, max_attempts=2)
    projector_at(ingest, registered, 90, -2, -1, 0)
    later = projector_at(ingest, registered, 50, 1, 3, 6)  # cool for long enough
    assert [d.event for d in deliveries(registered)] == ["alert.opened", "alert.resolved"]

    send_due(registered, webhook, later)
    send_due(registered, webhook, later + timedelta(seconds=1))
    for delivery in deliveries(registered):
        assert delivery.attempts == 2 and delivery.failed_at is not None
        assert delivery.next_attempt_at is None
        assert delivery.last_error is not None and "cannot reach http://127.0.0.1:9/none" in (
            delivery.last_error
        )


def test_backoff_doubles_from_one_second() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(40).total_seconds() == 3600


def test_webhook_url_without_a_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="FLEET_WEBHOOK_SECRET is empty"):
        Settings(webhook_url="http://127.0.0.1:1/x")
