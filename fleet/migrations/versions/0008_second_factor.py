"""second_factor: ops' and technicians' TOTP secrets and recovery codes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30

One row per user who set up a second factor (fleet.auth.second_factor). Written against
fleet.auth.second_factor with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "second_factor",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("confirmed_at", TS, nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.Column("recovery_hashes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["fleet_user.id"], name=op.f("fk_second_factor_user_id_fleet_user")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_second_factor")),
    )


def downgrade() -> None:
    op.drop_table("second_factor")
