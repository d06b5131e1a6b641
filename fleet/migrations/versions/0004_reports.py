"""reports: hourly usage roll-ups, power-on sessions, the roll-up watermark, stored reports

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Written against fleet.reports.models with plain sa types, like 0001. Also indexes
sample.received_at: the roll-up job (and programme evidence) read samples by arrival.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_hour",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("hour_start", UTC_TS, nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("local_hour", sa.Integer(), nullable=False),
        sa.Column("local_weekday", sa.Integer(), nullable=False),
        sa.Column("minutes", sa.Float(), nullable=False),
        sa.Column("minutes_known", sa.Float(), nullable=False),
        sa.Column("minutes_unknown", sa.Float(), nullable=False),
        sa.Column("minutes_reachable", sa.Float(), nullable=False),
        sa.Column("minutes_on", sa.Float(), nullable=False),
        sa.Column("minutes_faulty", sa.Float(), nullable=False),
        sa.Column("class_minutes_known", sa.Float(), nullable=False),
        sa.Column("class_minutes_on", sa.Float(), nullable=False),
        sa.Column("class_minutes_available", sa.Float(), nullable=False),
        sa.Column("fault_starts", sa.Integer(), nullable=False),
        sa.Column("top_input", sa.String(), nullable=True),
        sa.Column("peak_temperature_c", sa.Float(), nullable=True),
        sa.Column("lamp_hours_added", sa.Float(), nullable=False),
        sa.Column("filter_hours_added", sa.Float(), nullable=False),
        sa.Column("lamp_hours_last", sa.Float(), nullable=True),
        sa.Column("filter_hours_last", sa.Float(), nullable=True),
        sa.Column("firmware_last", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_usage_hour_device_id_device")
        ),
        sa.PrimaryKeyConstraint("device_id", "hour_start", name=op.f("pk_usage_hour")),
    )
    op.create_index(
        "ix_usage_hour_local_date_device_id",
        "usage_hour",
        ["local_date", "device_id"],
        unique=False,
    )
    op.create_table(
        "power_session",
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("start", UTC_TS, nullable=False),
        sa.Column("end", UTC_TS, nullable=False),
        sa.Column("input", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_power_session_device_id_device")
        ),
        sa.PrimaryKeyConstraint("device_id", "start", name=op.f("pk_power_session")),
    )
    op.create_table(
        "usage_watermark",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("received_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_usage_watermark")),
    )
    op.create_table(
        "stored_report",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("vendor", sa.String(), nullable=False),
        sa.Column("period", sa.String(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("format", sa.String(), nullable=False),
        sa.Column("media_type", sa.String(), nullable=False),
        sa.Column("filename", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTC_TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_report")),
        sa.UniqueConstraint(
            "vendor",
            "period",
            "period_start",
            "format",
            name=op.f("uq_stored_report_vendor_period_period_start_format"),
        ),
    )
    op.create_index(op.f("ix_stored_report_vendor"), "stored_report", ["vendor"], unique=False)
    op.create_index("ix_sample_received_at", "sample", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_sample_received_at", table_name="sample")
    op.drop_index(op.f("ix_stored_report_vendor"), table_name="stored_report")
    op.drop_table("stored_report")
    op.drop_table("usage_watermark")
    op.drop_table("power_session")
    op.drop_index("ix_usage_hour_local_date_device_id", table_name="usage_hour")
    op.drop_table("usage_hour")
