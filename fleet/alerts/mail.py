"""E-mail notifications: the outbox rows fleet.alerts.notices writes are sent from here over
SMTP, retried with the webhook's backoff, and marked delivered or failed. A scheduled job,
never on the ingest path.

The client is the standard library's smtplib: the scheduler runs each job in a worker thread
(as the webhook's urllib), so a blocking client fits, and it speaks STARTTLS and AUTH itself.
Each message carries its outbox row's Message-ID, so a message sent again after a crash right
after the server took it (our record of success lost) can be recognised as a repeat.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import partial

from sqlalchemy import Engine, Table, select
from sqlmodel import SQLModel

from fleet.alerts.delivery_attempts import (
    attempt,
    due_rows,
    record_unsendable,
)
from fleet.job_rows import each

log = logging.getLogger(__name__)

DELIVERIES: Table = SQLModel.metadata.tables["email_delivery"]
TIMEOUT_S = 10.0
BATCH = 50  # per run, so one slow server does not hold the scheduler's thread for long
JOB = "email"


class MailError(Exception):
    """One attempt failed: what the server (or the network) said."""


@dataclass(frozen=True)
class Mailer:
    """The SMTP server alert e-mail goes through; an empty `host` means none (nothing is
    sent, nothing is queued). `starttls`: upgrade the connection before AUTH."""

    host: str
    port: int
    sender: str
    username: str = ""
    password: str = field(default="", repr=False)  # never in a log line
    starttls: bool = False
    max_attempts: int = 8

    @property
    def enabled(self) -> bool:
        """True when a server is configured and alert e-mail is sent."""
        return bool(self.host)


def send(
    mailer: Mailer, message_id: str, recipient: str, subject: str, body: str, now: datetime
) -> None:
    """One attempt at one message; raises MailError."""
    message = EmailMessage()
    message["From"] = mailer.sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{message_id}@classroom-fleet>"
    message.set_content(body)
    try:
        with smtplib.SMTP(mailer.host, mailer.port, timeout=TIMEOUT_S) as client:
            if mailer.starttls:
                client.starttls(context=ssl.create_default_context())
            if mailer.username:
                client.login(mailer.username, mailer.password)
            client.send_message(message)
    except smtplib.SMTPResponseException as exc:
        raise MailError(
            f"{mailer.host}:{mailer.port} answered {exc.smtp_code} {exc.smtp_error!r}"
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailError(f"cannot send through {mailer.host}:{mailer.port} ({exc})") from None


def deliver_due(engine: Engine, mailer: Mailer, now: datetime) -> None:
    """The scheduled job."""
    send_due(engine, mailer, now)


def send_due(engine: Engine, mailer: Mailer, now: datetime) -> int:
    """Send what is due at `now`, one message at a time; returns how many were sent. A failed
    attempt is recorded on its row (retried with backoff, or given up after
    `mailer.max_attempts`), never raised."""
    if not mailer.enabled:
        return 0
    due = due_rows(engine, DELIVERIES, now, BATCH)

    def one(chunk: list[int]) -> list[int]:
        [row_id] = chunk
        with engine.connect() as conn:
            row = (
                conn.execute(select(DELIVERIES).where(DELIVERIES.c.id == row_id))
                .mappings()
                .one_or_none()
            )
        if row is None or row["next_attempt_at"] is None:
            return []  # gone or done meanwhile
        delivered = attempt(
            engine,
            DELIVERIES,
            row_id,
            row["attempts"] + 1,
            now,
            partial(
                send, mailer, row["message_id"], row["recipient"], row["subject"], row["body"], now
            ),
            MailError,
            max_attempts=mailer.max_attempts,
            what=f"e-mail {row['message_id']}",
            fix="Fix the SMTP server or FLEET_SMTP_*",
        )
        return [row_id] if delivered else []

    give_up = partial(record_unsendable, engine, DELIVERIES, now=now)
    return len(each(JOB, due, one, chunk=1, on_skip=give_up))
