"""The controller's settings, from `FLEET_*` environment variables.

Domain code never reads them: the edges (service, scheduler, CLI, routes) hand each domain
the values it takes, built here by the methods at the end of `Settings`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.alerts.evaluation import AlertRules
from fleet.alerts.mail import Mailer
from fleet.alerts.notices import NoticePolicy
from fleet.alerts.webhook import Webhook
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, controller_sites_dir
from fleet.reports.compute import ReportBasis
from fleet.reports.scheduled import ReportSchedule
from fleet.retention import Retention
from fleet.rollouts.artifacts import ArtifactStore
from fleet.rollouts.engine import FirmwareDelivery

SEVEN_DAYS_S = 7 * 24 * 3600


class Settings(BaseSettings):
    """The controller's whole configuration, read from FLEET_* environment variables
    (FLEET_DATABASE_URL, FLEET_MQTT_URL, FLEET_DATA_DIR, ...); the service, scheduler, CLI and
    routes read it and hand each domain its values."""

    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    data_dir: Path = Path("./data")
    # Empty means SQLite in data_dir; PostgreSQL: postgresql+psycopg://user@host:5432/fleet
    database_url: str = ""
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = "fleet-controller"
    # The broker keeps our session (and queued QoS 1 health) this long while we are down.
    mqtt_session_expiry_s: int = Field(default=SEVEN_DAYS_S, ge=0)
    topic_root: str = "fleet/v1"
    # What this process runs: everything, or one part when the controller is scaled out
    # (several `ingest` workers on a shared subscription, one `scheduler`, any number of `api`).
    role: Literal["all", "api", "ingest", "scheduler"] = "all"
    # With MQTT v5, ingest workers sharing this group split the health stream between them
    # ($share/<group>/...); each worker keeps its own FLEET_MQTT_CLIENT_ID.
    ingest_shared_group: str = ""
    # site_configs/ of a source checkout, /etc/fleet/sites when installed; the firmware
    # profiles shipped with the package (fleet/protocol/site_config.py).
    sites_dir: Path = Field(default_factory=controller_sites_dir)
    profiles_dir: Path = DEFAULT_PROFILES_DIR
    # Ingest groups up to this many messages, or waits at most this long, per transaction.
    ingest_batch_max: int = Field(default=500, ge=1, le=100_000)
    ingest_batch_wait_ms: int = Field(default=50, ge=0, le=60_000)
    # Alerts: a device unreachable this long in class hours raises one.
    alert_unreachable_after_s: int = Field(default=600, ge=0)
    # Webhook notifications of alerts opened and resolved (none when the URL is empty); the
    # body is signed with HMAC-SHA256 under the secret, sent up to this many times.
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    # E-mail notifications to the users' subscriptions (none when the host is empty), through
    # this SMTP server; links in them point at FLEET_PUBLIC_URL. An open alert nobody
    # acknowledges goes to the next level (site technicians, then ops) after this long.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "classroom-fleet@localhost"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    smtp_max_attempts: int = Field(default=8, ge=1, le=50)
    escalate_warning_s: int = Field(default=4 * 3600, ge=1, le=30 * 86400)
    escalate_critical_s: int = Field(default=1800, ge=1, le=30 * 86400)
    # How often subscribers are told and escalations judged.
    notice_tick_s: float = Field(default=5.0, gt=0, le=3600)
    # Reports: raw samples are kept this many days (only once rolled up into usage_hour).
    sample_retention_days: int = Field(default=90, ge=1)
    # The longest period one usage report may cover.
    report_max_days: int = Field(default=93, ge=1, le=3660)
    # Scheduled reports wait this long after a period closed everywhere, for late outboxes.
    report_delay_h: int = Field(default=6, ge=0, le=24 * 14)
    report_weekly: bool = False
    report_formats: list[str] = ["json", "csv", "xlsx", "html"]
    # Illustrative power draw when on, by device kind, for after-hours energy (watts).
    report_power_draw_w: dict[str, float] = {"panel": 200.0, "projector": 300.0, "device": 65.0}

    # Rollouts: firmware artifacts are files here (default <data_dir>/artifacts); agents fetch
    # them from public_url (this controller as the sites reach it); the tick runs this often,
    # in the controller holding the scheduler lock (fleet.leader).
    artifacts_dir: Path | None = None
    public_url: str = "http://127.0.0.1:8000"
    rollout_tick_s: float = Field(default=10.0, gt=0, le=3600)
    # How often the power schedules (fleet/commands/schedules.py) are judged.
    power_schedule_s: float = Field(default=60.0, gt=0, le=3600)
    # How often devices' silence is judged (fleet/devices/liveness.py) and the alert rules run
    # (fleet/alerts/evaluation.py). Process tests set a second, rather than wait out a period.
    liveness_every_s: float = Field(default=30.0, gt=0, le=3600)
    alerts_every_s: float = Field(default=30.0, gt=0, le=3600)

    # Retention of what grows with traffic (fleet/retention.py): days, and the newest rows kept.
    # The ledger of ingested msg_ids outlives the broker's session (mqtt_session_expiry_s),
    # so that a batch redelivered after an outage is still known.
    dead_letter_retention_days: int = Field(default=30, ge=1)
    dead_letter_max_rows: int = Field(default=100_000, ge=100)
    audit_retention_days: int = Field(default=400, ge=1)
    audit_max_rows: int = Field(default=1_000_000, ge=1000)
    agent_message_retention_days: int = Field(default=90, ge=1)
    agent_message_max_rows: int = Field(default=1_000_000, ge=1000)
    ingested_retention_days: int = Field(default=30, ge=8)
    ingested_max_rows: int = Field(default=10_000_000, ge=100_000)
    alert_retention_days: int = Field(default=400, ge=1)
    alert_max_rows: int = Field(default=1_000_000, ge=1000)

    # Auth: a login token lives this long; an enrolment token at most this long. Agents are
    # told to reach the broker at agent_mqtt_url (empty: mqtt_url without its user).
    login_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    enrolment_ttl_s: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    agent_mqtt_url: str = ""
    # Failed logins allowed per account and per client address, as ladders of limits (the
    # `limits` notation); counted in memory, or in a shared store (redis://...) when several
    # API workers run. A second factor (TOTP) is required of these roles (ops, technician;
    # comma-separated; empty: optional for everyone).
    login_limits_account: str = "5/minute;20/hour;100/day"
    login_limits_address: str = "30/minute;300/hour;2000/day"
    login_limits_storage: str = "memory://"
    second_factor_roles: str = ""

    @model_validator(mode="after")
    def _known_second_factor_roles(self) -> Settings:
        unknown = set(self.required_second_factor()) - {"ops", "technician"}
        if unknown:
            raise ValueError(
                f"FLEET_SECOND_FACTOR_ROLES names {', '.join(sorted(unknown))}: only ops and "
                "technician log in with a second factor (vendors use API tokens)"
            )
        return self

    def required_second_factor(self) -> frozenset[str]:
        """The roles that must log in with a second factor."""
        return frozenset(r.strip() for r in self.second_factor_roles.split(",") if r.strip())

    @model_validator(mode="after")
    def _default_database_in_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'fleet.db'}"
        return self

    @model_validator(mode="after")
    def _ledger_outlives_the_broker_session(self) -> Settings:
        if self.ingested_retention_days * 86400 <= self.mqtt_session_expiry_s:
            raise ValueError(
                f"FLEET_INGESTED_RETENTION_DAYS ({self.ingested_retention_days}) is not longer "
                f"than the broker session (FLEET_MQTT_SESSION_EXPIRY_S, "
                f"{self.mqtt_session_expiry_s} s): a batch redelivered after an outage would "
                "not be known. Fix: keep the ledger longer than the session"
            )
        return self

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "FLEET_WEBHOOK_URL is set but FLEET_WEBHOOK_SECRET is empty. Fix: set a secret "
                "shared with the receiver, which checks X-Fleet-Signature with it"
            )
        return self

    def where(self) -> str:
        """Where this process's data lives, for the line each command that writes prints:
        `database sqlite:///data/fleet.db (data folder /abs/data)`, the password hidden."""
        from sqlalchemy.engine import make_url

        url = make_url(self.database_url).render_as_string(hide_password=True)
        return f"database {url} (data folder {self.data_dir.resolve()})"

    # --- the values the domains take -------------------------------------------------------

    def alert_rules(self) -> AlertRules:
        """What the alert rules take: the profiles, the unreachable limit, and whether to queue
        webhooks (a webhook URL is set)."""
        return AlertRules(
            profiles_dir=self.profiles_dir,
            unreachable_after=timedelta(seconds=self.alert_unreachable_after_s),
            notify=bool(self.webhook_url),
        )

    def webhook(self) -> Webhook:
        """The webhook receiver of alert notifications (none when FLEET_WEBHOOK_URL is empty)."""
        return Webhook(self.webhook_url, self.webhook_secret, self.webhook_max_attempts)

    def mailer(self) -> Mailer:
        """The SMTP server alert e-mail goes through (none when FLEET_SMTP_HOST is empty)."""
        return Mailer(
            host=self.smtp_host,
            port=self.smtp_port,
            sender=self.smtp_from,
            username=self.smtp_user,
            password=self.smtp_password,
            starttls=self.smtp_starttls,
            max_attempts=self.smtp_max_attempts,
        )

    def notice_policy(self) -> NoticePolicy:
        """Who is e-mailed about alerts and when an unacknowledged one escalates, by severity;
        enabled only with an SMTP host."""
        return NoticePolicy(
            public_url=self.public_url,
            escalate_after={
                "warning": timedelta(seconds=self.escalate_warning_s),
                "critical": timedelta(seconds=self.escalate_critical_s),
            },
            enabled=bool(self.smtp_host),
        )

    def report_basis(self) -> ReportBasis:
        """What usage reports rest on: the profiles and the power draw by device kind (watts)."""
        return ReportBasis(self.profiles_dir, dict(self.report_power_draw_w))

    def report_schedule(self) -> ReportSchedule:
        """When and in which formats the scheduled usage reports are made."""
        return ReportSchedule(
            basis=self.report_basis(),
            delay=timedelta(hours=self.report_delay_h),
            weekly=self.report_weekly,
            formats=tuple(self.report_formats),
        )

    def artifact_store(self) -> ArtifactStore:
        """Where firmware artifacts are kept (FLEET_ARTIFACTS_DIR, default <data_dir>/artifacts) and
        the public URL agents fetch them from."""
        return ArtifactStore(self.artifacts_dir or self.data_dir / "artifacts", self.public_url)

    def retention_rules(self) -> list[Retention]:
        """The retention of each table that grows with traffic, for fleet.retention."""

        def days(n: int) -> timedelta:
            return timedelta(days=n)

        return [
            Retention(
                "dead_letter",
                "received_at",
                days(self.dead_letter_retention_days),
                self.dead_letter_max_rows,
            ),
            Retention("audit_entry", "at", days(self.audit_retention_days), self.audit_max_rows),
            Retention(
                "agent_message",
                "received_at",
                days(self.agent_message_retention_days),
                self.agent_message_max_rows,
            ),
            Retention(
                "ingested_message",
                "received_at",
                days(self.ingested_retention_days),
                self.ingested_max_rows,
                key="msg_id",
            ),
            # Deliveries sent or given up; those still due are never dropped.
            Retention(
                "webhook_delivery",
                "created_at",
                days(self.alert_retention_days),
                self.alert_max_rows,
                only="next_attempt_at IS NULL",
            ),
            Retention(
                "email_delivery",
                "created_at",
                days(self.alert_retention_days),
                self.alert_max_rows,
                only="next_attempt_at IS NULL",
            ),
            Retention(
                "alert",
                "opened_at",
                days(self.alert_retention_days),
                self.alert_max_rows,
                only="resolved_at IS NOT NULL",
                children=(("webhook_delivery", "alert_id"), ("email_delivery", "alert_id")),
            ),
        ]

    def firmware_delivery(self) -> FirmwareDelivery:
        """What the rollout tick needs to get firmware to the sites: profiles, artifact store, MQTT
        topic root."""
        return FirmwareDelivery(self.profiles_dir, self.artifact_store(), self.topic_root)
