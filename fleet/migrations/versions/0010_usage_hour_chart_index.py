"""usage_hour: an index that answers a report's hour-of-day chart on its own

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

The chart sums minutes on by local hour and weekday over a period's local dates: with these
four columns in one index, that pass reads the index alone, never the roll-up rows
(fleet.reports.compute).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_usage_hour_local_date_local_hour"
COLUMNS = ["local_date", "local_hour", "local_weekday", "minutes_on"]


def upgrade() -> None:
    op.create_index(INDEX, "usage_hour", COLUMNS, unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="usage_hour")
