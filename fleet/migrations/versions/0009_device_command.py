"""device_command, power_schedule, power_exception, room_in_use: power and input commands
sent to devices (state and answer), and the power schedules that send them

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

Written against fleet.commands.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_command",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("cmd_id", sa.String(), nullable=False),
        sa.Column("campaign", sa.String(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("answer", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("answered_at", TS, nullable=True),
        sa.Column("confirmed_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_command")),
    )
    for column, unique in (
        ("cmd_id", True),
        ("campaign", False),
        ("device_id", False),
        ("site_code", False),
        ("state", False),
    ):
        op.create_index(
            op.f(f"ix_device_command_{column}"), "device_command", [column], unique=unique
        )

    op.create_table(
        "power_schedule",
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("mode", sa.String(), nullable=False),
        sa.Column("off_after_last_class_min", sa.Integer(), nullable=True),
        sa.Column("off_after_idle_min", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("site_code", "room_id", name=op.f("pk_power_schedule")),
    )
    op.create_table(
        "power_exception",
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("site_code", "day", name=op.f("pk_power_exception")),
    )
    op.create_table(
        "room_in_use",
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("until", TS, nullable=False),
        sa.Column("marked_by", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_room_in_use")),
    )
    op.create_index(op.f("ix_room_in_use_site_code"), "room_in_use", ["site_code"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_room_in_use_site_code"), table_name="room_in_use")
    op.drop_table("room_in_use")
    op.drop_table("power_exception")
    op.drop_table("power_schedule")
    for column in ("state", "site_code", "device_id", "campaign", "cmd_id"):
        op.drop_index(op.f(f"ix_device_command_{column}"), table_name="device_command")
    op.drop_table("device_command")
