"""alerts: the alert table (history kept) and the webhook delivery outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Written against fleet.alerts.models with plain sa types, like 0001. The partial unique index
(one unresolved alert per subject and kind) works on SQLite (3.8+) and PostgreSQL.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NOT_RESOLVED = "state != 'resolved'"


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=True),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(), nullable=True),
        sa.Column("ack_note", sa.String(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(), nullable=True),
        sa.Column("resolution", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_alert_device_id_device")
        ),
        sa.ForeignKeyConstraint(["site_code"], ["site.code"], name=op.f("fk_alert_site_code_site")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert")),
    )
    op.create_index(op.f("ix_alert_device_id"), "alert", ["device_id"], unique=False)
    op.create_index(op.f("ix_alert_kind"), "alert", ["kind"], unique=False)
    op.create_index(op.f("ix_alert_opened_at"), "alert", ["opened_at"], unique=False)
    op.create_index(op.f("ix_alert_site_code"), "alert", ["site_code"], unique=False)
    op.create_index(op.f("ix_alert_state"), "alert", ["state"], unique=False)
    op.create_index(
        "uq_alert_open_subject_kind",
        "alert",
        ["subject", "kind"],
        unique=True,
        sqlite_where=sa.text(NOT_RESOLVED),
        postgresql_where=sa.text(NOT_RESOLVED),
    )

    op.create_table(
        "webhook_delivery",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("delivery_id", sa.String(), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name=op.f("fk_webhook_delivery_alert_id_alert")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_delivery")),
        sa.UniqueConstraint("delivery_id", name=op.f("uq_webhook_delivery_delivery_id")),
    )
    op.create_index(
        op.f("ix_webhook_delivery_alert_id"), "webhook_delivery", ["alert_id"], unique=False
    )
    op.create_index(
        op.f("ix_webhook_delivery_next_attempt_at"),
        "webhook_delivery",
        ["next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("webhook_delivery")
    op.drop_table("alert")
