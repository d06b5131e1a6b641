"""programme: phases, the classrooms they cover, milestones, classroom device evidence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

Written against fleet.programme.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "programme_phase",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("recorded_by", sa.String(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site_code"], ["site.code"], name=op.f("fk_programme_phase_site_code_site")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programme_phase")),
        sa.UniqueConstraint(
            "site_code", "number", name=op.f("uq_programme_phase_site_code_number")
        ),
    )
    op.create_index(
        op.f("ix_programme_phase_site_code"), "programme_phase", ["site_code"], unique=False
    )

    op.create_table(
        "programme_phase_room",
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["phase_id"],
            ["programme_phase.id"],
            name=op.f("fk_programme_phase_room_phase_id_programme_phase"),
        ),
        sa.ForeignKeyConstraint(
            ["room_id"], ["room.id"], name=op.f("fk_programme_phase_room_room_id_room")
        ),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_programme_phase_room")),
    )
    op.create_index(
        op.f("ix_programme_phase_room_phase_id"), "programme_phase_room", ["phase_id"], unique=False
    )

    op.create_table(
        "programme_milestone",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("milestone", sa.String(), nullable=False),
        sa.Column("planned", sa.Date(), nullable=True),
        sa.Column("actual", sa.Date(), nullable=True),
        sa.Column("actual_end", sa.Date(), nullable=True),
        sa.Column("reached", sa.Boolean(), nullable=False),
        sa.Column("note", sa.String(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("correction", sa.Boolean(), nullable=False),
        sa.Column("recorded_by", sa.String(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["phase_id"],
            ["programme_phase.id"],
            name=op.f("fk_programme_milestone_phase_id_programme_phase"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_programme_milestone")),
        sa.UniqueConstraint(
            "phase_id",
            "room_id",
            "milestone",
            name=op.f("uq_programme_milestone_phase_id_room_id_milestone"),
        ),
    )
    op.create_index(
        op.f("ix_programme_milestone_phase_id"), "programme_milestone", ["phase_id"], unique=False
    )

    op.create_table(
        "programme_classroom_evidence",
        sa.Column("room_id", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("first_healthy", sa.JSON(), nullable=False),
        sa.Column("all_healthy_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("scanned_through", sa.DateTime(timezone=True), nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"], ["room.id"], name=op.f("fk_programme_classroom_evidence_room_id_room")
        ),
        sa.PrimaryKeyConstraint("room_id", name=op.f("pk_programme_classroom_evidence")),
    )
    op.create_index(
        op.f("ix_programme_classroom_evidence_site_code"),
        "programme_classroom_evidence",
        ["site_code"],
        unique=False,
    )
    op.create_index(
        op.f("ix_programme_classroom_evidence_status"),
        "programme_classroom_evidence",
        ["status"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("programme_classroom_evidence")
    op.drop_table("programme_milestone")
    op.drop_table("programme_phase_room")
    op.drop_table("programme_phase")
