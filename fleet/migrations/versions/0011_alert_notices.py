"""alert_subscription, email_delivery, alert_silence, and on alert the notice level reached
and the silence that muted it: e-mail notifications, escalation and silences

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30

Written against fleet.alerts.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
ALERT_COLUMNS = (
    sa.Column("notice_level", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("noticed_at", TS, nullable=True),
    sa.Column("escalated_at", TS, nullable=True),
    sa.Column("silence_id", sa.Integer(), nullable=True),
    sa.Column("silenced_by", sa.String(), nullable=True),
    sa.Column("silenced_at", TS, nullable=True),
)


def upgrade() -> None:
    op.create_table(
        "alert_subscription",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_name", sa.String(), nullable=False),
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=True),
        sa.Column("min_severity", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_subscription")),
    )
    for column in ("user_name", "site_code"):
        op.create_index(
            op.f(f"ix_alert_subscription_{column}"), "alert_subscription", [column], unique=False
        )
    op.create_table(
        "email_delivery",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=False),
        sa.Column("recipient", sa.String(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("failed_at", TS, nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"], ["alert.id"], name=op.f("fk_email_delivery_alert_id_alert")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_delivery")),
        sa.UniqueConstraint("message_id", name=op.f("uq_email_delivery_message_id")),
    )
    op.create_index(
        op.f("ix_email_delivery_alert_id"), "email_delivery", ["alert_id"], unique=False
    )
    op.create_index(
        op.f("ix_email_delivery_next_attempt_at"),
        "email_delivery",
        ["next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "alert_silence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("room_id", sa.String(), nullable=True),
        sa.Column("device_id", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("expired_at", TS, nullable=True),
        sa.Column("expired_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_silence")),
    )
    op.create_index(
        op.f("ix_alert_silence_site_code"), "alert_silence", ["site_code"], unique=False
    )
    op.create_index(op.f("ix_alert_silence_ends_at"), "alert_silence", ["ends_at"], unique=False)
    for column in ALERT_COLUMNS:
        op.add_column("alert", column.copy())


def downgrade() -> None:
    with op.batch_alter_table("alert") as batch:
        for column in reversed(ALERT_COLUMNS):
            batch.drop_column(column.name)
    op.drop_table("alert_silence")
    op.drop_table("email_delivery")
    op.drop_table("alert_subscription")
