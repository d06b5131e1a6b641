"""Webhook notifications: the outbox rows reconcile.py writes are sent from here, signed,
retried with exponential backoff, and marked delivered or failed. Nothing here runs on the
ingest path: `deliver_due` is a scheduled job.

The receiver verifies `X-Fleet-Signature: sha256=<hex>`, the HMAC-SHA256 of the raw body
under FLEET_WEBHOOK_SECRET, and may drop a repeated `X-Fleet-Delivery` (a delivery is sent
again when our record of its success is lost, e.g. on a crash right after the POST).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import Engine, select

from fleet.alerts.delivery_attempts import (
    attempt,
    due_rows,
    record_unsendable,
)
from fleet.alerts.reconcile import DELIVERIES
from fleet.alerts.silences import hold_for
from fleet.job_rows import each

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0
BATCH = 50  # per run, so one slow receiver does not hold the scheduler's thread for long
USER_AGENT = "classroom-fleet-webhook/1"
JOB = "webhook"


def signature(secret: str, body: bytes) -> str:
    """The X-Fleet-Signature header value for `body`: "sha256=" and the hex HMAC-SHA256 of it under
    `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(url: str, secret: str, delivery_id: str, body: bytes) -> None:
    """One attempt; raises WebhookError with what the receiver (or the network) said."""
    request = urllib.request.Request(  # noqa: S310  (ops' FLEET_WEBHOOK_URL)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Fleet-Delivery": delivery_id,
            "X-Fleet-Signature": signature(secret, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310  (ops' FLEET_WEBHOOK_URL)
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WebhookError(f"cannot reach {url} ({reason})") from None


class WebhookError(Exception):
    """One delivery attempt failed: what the receiver answered, or why it could not be reached."""

    pass


@dataclass(frozen=True)
class Webhook:
    """The receiver of alert notifications; an empty `url` means none (nothing is sent)."""

    url: str
    secret: str = field(repr=False)  # a Webhook printed in a log never shows it
    # Attempts per delivery before it is given up (marked failed).
    max_attempts: int


def deliver_due(engine: Engine, webhook: Webhook, now: datetime) -> None:
    """The scheduled job."""
    send_due(engine, webhook, now)


def send_due(engine: Engine, webhook: Webhook, now: datetime) -> int:
    """Send what is due at `now`, one delivery at a time; returns how many were delivered.
    A failed attempt is recorded on its row (retried with backoff, or given up), never
    raised. A row that cannot even be read or sent (a delivery id no header can carry) is
    logged, counted (fleet.job_rows) and marked failed, so it does not hold up the rest."""
    if not webhook.url:
        return 0
    due = due_rows(engine, DELIVERIES, now, BATCH)

    def send(chunk: list[int]) -> list[int]:
        [row_id] = chunk
        with engine.connect() as conn:
            row = conn.execute(
                select(
                    DELIVERIES.c.delivery_id,
                    DELIVERIES.c.body,
                    DELIVERIES.c.attempts,
                    DELIVERIES.c.alert_id,
                ).where(DELIVERIES.c.id == row_id)
            ).one_or_none()
            if row is None:
                return []  # gone meanwhile
            hold = hold_for(conn, row[3], now)
        delivery_id, body, attempts, _ = row
        if hold.until is not None or hold.drop:
            _silenced(engine, row_id, hold.until, now)
            return []
        delivered = attempt(
            engine,
            DELIVERIES,
            row_id,
            attempts + 1,
            now,
            partial(post, webhook.url, webhook.secret, delivery_id, body.encode()),
            WebhookError,
            max_attempts=webhook.max_attempts,
            what=f"webhook delivery {delivery_id}",
            fix="Fix the receiver",
        )
        return [row_id] if delivered else []

    give_up = partial(record_unsendable, engine, DELIVERIES, now=now)
    return len(each(JOB, due, send, chunk=1, on_skip=give_up))


def _silenced(engine: Engine, row_id: int, until: datetime | None, now: datetime) -> None:
    # Held without counting an attempt; dropped (kept, marked) when the alert was resolved
    # while muted: an expired silence notifies only what is still open.
    values: dict[str, object] = (
        {"next_attempt_at": until}
        if until is not None
        else {"next_attempt_at": None, "failed_at": now, "last_error": "silenced"}
    )
    with engine.begin() as conn:
        conn.execute(DELIVERIES.update().where(DELIVERIES.c.id == row_id).values(**values))
