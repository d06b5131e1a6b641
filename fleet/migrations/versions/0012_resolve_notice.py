"""alert.resolve_noticed_at: when those e-mailed about an alert were told it is resolved

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30

Alerts already resolved are marked told, so the upgrade does not mail their ends at once.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("alert", sa.Column("resolve_noticed_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE alert SET resolve_noticed_at = resolved_at WHERE resolved_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("alert") as batch:
        batch.drop_column("resolve_noticed_at")
