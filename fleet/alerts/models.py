"""Alert tables: the alerts themselves (history kept), the webhook and e-mail outboxes, who
subscribes to which alerts by e-mail, and the silences that mute a site, room or device."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Text, text
from sqlmodel import Field, SQLModel

from fleet.models import BigId, utc_column


class AlertKind(StrEnum):
    """What an alert is about; the value is stored in `alert.kind` and each kind has its hold
    (fleet.alerts.rules.HOLDS)."""

    device_unreachable = "device_unreachable"
    site_offline = "site_offline"
    over_temperature = "over_temperature"
    lamp_hours = "lamp_hours"
    filter_hours = "filter_hours"
    device_error = "device_error"
    left_on_after_hours = "left_on_after_hours"
    firmware_below_minimum = "firmware_below_minimum"
    programme_overdue = "programme_overdue"


class Severity(StrEnum):
    """How bad an alert is; a subscription asks for a severity or worse."""

    warning = "warning"
    critical = "critical"


class AlertState(StrEnum):
    """Where an alert is in its life: open, acknowledged by a person, or resolved (by itself or by
    hand)."""

    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"


# The partial unique index that makes "one open alert per subject and kind" hold even when
# ingest and the scheduler raise the same alert at once; SQLite and PostgreSQL both have them.
NOT_RESOLVED = "state != 'resolved'"
# Resolved alerts someone was e-mailed about and not yet told the end of
# (fleet.alerts.notices): a few, where resolved alerts grow without end, and the notice job
# looks for them every run.
RESOLVE_UNTOLD = "state = 'resolved' AND resolve_noticed_at IS NULL AND notice_level >= 1"


class Alert(SQLModel, table=True):
    """One alert: a condition of one device or one site, from when it opened until it resolved;
    resolved rows are kept as history."""

    __tablename__ = "alert"
    __table_args__ = (
        Index(
            "uq_alert_open_subject_kind",
            "subject",
            "kind",
            unique=True,
            sqlite_where=text(NOT_RESOLVED),
            postgresql_where=text(NOT_RESOLVED),
        ),
        Index(
            "ix_alert_resolve_untold",
            "state",
            "id",
            sqlite_where=text(RESOLVE_UNTOLD),
            postgresql_where=text(RESOLVE_UNTOLD),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    kind: str = Field(index=True)
    severity: str
    state: str = Field(index=True)
    # "device:<id>" or "site:<code>": one key for both, so the unique index needs no NULLs.
    subject: str
    site_code: str = Field(foreign_key="site.code", index=True)
    device_id: str | None = Field(default=None, foreign_key="device.id", index=True)
    message: str
    opened_at: datetime = utc_column(nullable=False, index=True)
    updated_at: datetime = utc_column(nullable=False)
    acknowledged_at: datetime | None = utc_column()
    acknowledged_by: str | None = None
    ack_note: str | None = None
    resolved_at: datetime | None = utc_column()
    # None when the condition cleared by itself; who resolved it by hand otherwise.
    resolved_by: str | None = None
    resolution: str | None = None
    # E-mail notification (fleet.alerts.notices): 0 nobody told yet, 1 the subscribers, 2 the
    # site's technicians, 3 ops; escalated_at is when the last level above 1 was reached.
    notice_level: int = 0
    noticed_at: datetime | None = utc_column()
    escalated_at: datetime | None = utc_column()
    # When those e-mailed about it were sent word that it is resolved (or it was judged that
    # none is due: resolved under a silence), so that word goes out once.
    resolve_noticed_at: datetime | None = utc_column()
    # The silence that muted it (fleet.alerts.silences), who made it, and since when.
    silence_id: int | None = None
    silenced_by: str | None = None
    silenced_at: datetime | None = utc_column()


class WebhookDelivery(SQLModel, table=True):
    """One notification to send; written in the transaction that opened or resolved the alert,
    so a controller restart between the two cannot lose it."""

    __tablename__ = "webhook_delivery"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    delivery_id: str = Field(unique=True)  # X-Fleet-Delivery: the receiver's dedup key
    alert_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("alert.id"), nullable=False, index=True)
    )
    event: str  # "alert.opened" or "alert.resolved"
    # The exact bytes signed and sent, kept as text so every retry sends the same body.
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = utc_column(nullable=False)
    attempts: int = 0
    # None once delivered or given up; due deliveries are those with next_attempt_at <= now.
    next_attempt_at: datetime | None = utc_column(index=True)
    delivered_at: datetime | None = utc_column()
    failed_at: datetime | None = utc_column()
    last_error: str | None = None


class AlertCondition(SQLModel, table=True):
    """The counts behind an alert's hold times (fleet.alerts.hold.Counts), kept between
    judgements: a row per subject and kind while a raise is pending or an open alert is
    clearing, none otherwise."""

    __tablename__ = "alert_condition"

    subject: str = Field(primary_key=True)  # as Alert.subject
    kind: str = Field(primary_key=True)
    site_code: str = Field(index=True)
    raise_since: datetime | None = utc_column()
    raise_count: int = 0
    last_raise_at: datetime | None = utc_column()
    clear_since: datetime | None = utc_column()
    clear_count: int = 0
    last_at: datetime | None = utc_column()
    updated_at: datetime = utc_column(nullable=False)


class AlertSubscription(SQLModel, table=True):
    """One user's wish to be e-mailed of alerts: at one site (None: every site in the user's
    scope) and of this severity or worse. A vendor's are narrowed to its own devices."""

    __tablename__ = "alert_subscription"

    id: int | None = Field(default=None, primary_key=True)
    user_name: str = Field(index=True)
    email: str
    site_code: str | None = Field(default=None, index=True)
    min_severity: str = Severity.warning.value
    created_at: datetime = utc_column(nullable=False)


class EmailDelivery(SQLModel, table=True):
    """One e-mail to send, written in the transaction that decided it (fleet.alerts.notices),
    so a controller restart cannot lose it; fleet.alerts.mail sends it with backoff."""

    __tablename__ = "email_delivery"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True))
    message_id: str = Field(unique=True)  # Message-ID: a receiver may drop a repeat
    alert_id: int = Field(
        sa_column=Column(BigInteger, ForeignKey("alert.id"), nullable=False, index=True)
    )
    recipient: str
    level: int  # the notice level it was sent at (Alert.notice_level); 0: word it is resolved
    subject: str
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = utc_column(nullable=False)
    attempts: int = 0
    next_attempt_at: datetime | None = utc_column(index=True)
    delivered_at: datetime | None = utc_column()
    failed_at: datetime | None = utc_column()
    last_error: str | None = None


class Silence(SQLModel, table=True):
    """A site, a room of it or a device muted from `starts_at` to `ends_at`: its alerts are
    still recorded but notify no one. `expired_at`: ended early by hand."""

    __tablename__ = "alert_silence"

    id: int | None = Field(default=None, primary_key=True)
    site_code: str = Field(index=True)
    room_id: str | None = None
    device_id: str | None = None
    reason: str
    created_by: str
    created_at: datetime = utc_column(nullable=False)
    starts_at: datetime = utc_column(nullable=False)
    ends_at: datetime = utc_column(nullable=False, index=True)
    expired_at: datetime | None = utc_column()
    expired_by: str | None = None
