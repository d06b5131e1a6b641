"""rollouts: campaigns, per-device progress, artifact bytes per site, the tick lease, and
APScheduler's job table (created here so the schema stays under Alembic)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Written against fleet.rollouts.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("profile", sa.String(), nullable=False),
        sa.Column("release_version", sa.String(), nullable=False),
        sa.Column("release_sha256", sa.String(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("approved_through", sa.Integer(), nullable=False),
        sa.Column("pause_kind", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("start_at", TS, nullable=True),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout")),
    )
    op.create_index(op.f("ix_rollout_profile"), "rollout", ["profile"], unique=False)
    op.create_index(op.f("ix_rollout_state"), "rollout", ["state"], unique=False)

    op.create_table(
        "rollout_device",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("firmware_before", sa.String(), nullable=True),
        sa.Column("cmd_id", sa.String(), nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("next_try_at", TS, nullable=True),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollout.id"], name=op.f("fk_rollout_device_rollout_id_rollout")
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["device.id"], name=op.f("fk_rollout_device_device_id_device")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_device")),
        sa.UniqueConstraint(
            "rollout_id", "device_id", name=op.f("uq_rollout_device_rollout_id_device_id")
        ),
    )
    for column in ("rollout_id", "device_id", "site_code", "state", "cmd_id"):
        op.create_index(
            op.f(f"ix_rollout_device_{column}"), "rollout_device", [column], unique=False
        )

    op.create_table(
        "artifact_download",
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("bytes_served", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("range_requests", sa.Integer(), nullable=False),
        sa.Column("last_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("site_code", "sha256", name=op.f("pk_artifact_download")),
    )

    op.create_table(
        "tick_lease",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tick_lease")),
    )

    # APScheduler 3's SQLAlchemyJobStore table, as it would create it itself.
    op.create_table(
        "apscheduler_jobs",
        sa.Column("id", sa.Unicode(191), nullable=False),
        sa.Column("next_run_time", sa.Float(25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apscheduler_jobs")),
    )
    op.create_index(
        op.f("ix_apscheduler_jobs_next_run_time"), "apscheduler_jobs", ["next_run_time"]
    )


def downgrade() -> None:
    op.drop_table("apscheduler_jobs")
    op.drop_table("tick_lease")
    op.drop_table("artifact_download")
    op.drop_table("rollout_device")
    op.drop_table("rollout")
