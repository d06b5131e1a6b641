"""alert_condition: the counts behind alerts' hold times

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

One row per subject and kind while a raise waits out its hold or an open alert its clearing
(fleet.alerts.hold). Written against fleet.alerts.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alert_condition",
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("raise_since", TS, nullable=True),
        sa.Column("raise_count", sa.Integer(), nullable=False),
        sa.Column("last_raise_at", TS, nullable=True),
        sa.Column("clear_since", TS, nullable=True),
        sa.Column("clear_count", sa.Integer(), nullable=False),
        sa.Column("last_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("subject", "kind", name=op.f("pk_alert_condition")),
    )
    op.create_index(
        op.f("ix_alert_condition_site_code"), "alert_condition", ["site_code"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_alert_condition_site_code"), table_name="alert_condition")
    op.drop_table("alert_condition")
