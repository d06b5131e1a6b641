"""alert.resolve_noticed_at: when those e-mailed about an alert were told it is resolved

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

Alerts already resolved are marked told, so the upgrade does not mail their ends at once. A
partial index holds the alerts not yet told, which the notice job reads every run.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


INDEX = "ix_alert_resolve_untold"
UNTOLD = "state = 'resolved' AND resolve_noticed_at IS NULL AND notice_level >= 1"  # models


def upgrade() -> None:
    op.add_column("alert", sa.Column("resolve_noticed_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE alert SET resolve_noticed_at = resolved_at WHERE resolved_at IS NOT NULL")
    op.create_index(
        INDEX,
        "alert",
        ["state", "id"],
        sqlite_where=sa.text(UNTOLD),
        postgresql_where=sa.text(UNTOLD),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="alert")
    with op.batch_alter_table("alert") as batch:
        batch.drop_column("resolve_noticed_at")
