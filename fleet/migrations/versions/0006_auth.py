"""auth: users, API tokens, enrolment tokens, per-site broker credentials, audit log

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Written against fleet.auth.models with plain sa types, like 0001.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fleet_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("vendor", sa.String(), nullable=True),
        sa.Column("password_hash", sa.String(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_user")),
    )
    op.create_index(op.f("ix_fleet_user_name"), "fleet_user", ["name"], unique=True)

    op.create_table(
        "api_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("last_used_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["fleet_user.id"], name=op.f("fk_api_token_user_id_fleet_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_token")),
    )
    op.create_index(op.f("ix_api_token_user_id"), "api_token", ["user_id"], unique=False)
    op.create_index(op.f("ix_api_token_token_hash"), "api_token", ["token_hash"], unique=True)

    op.create_table(
        "enrolment_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["site_code"], ["site.code"], name=op.f("fk_enrolment_token_site_code_site")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrolment_token")),
    )
    op.create_index(
        op.f("ix_enrolment_token_site_code"), "enrolment_token", ["site_code"], unique=False
    )
    op.create_index(
        op.f("ix_enrolment_token_token_hash"), "enrolment_token", ["token_hash"], unique=True
    )

    op.create_table(
        "mqtt_credential",
        sa.Column("site_code", sa.String(), nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=False),
        sa.Column("rotated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["site_code"], ["site.code"], name=op.f("fk_mqtt_credential_site_code_site")
        ),
        sa.PrimaryKeyConstraint("site_code", name=op.f("pk_mqtt_credential")),
        sa.UniqueConstraint("username", name=op.f("uq_mqtt_credential_username")),
    )

    op.create_table(
        "audit_entry",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entry")),
    )
    for column in ("at", "actor", "action"):
        op.create_index(op.f(f"ix_audit_entry_{column}"), "audit_entry", [column], unique=False)


def downgrade() -> None:
    op.drop_table("audit_entry")
    op.drop_table("mqtt_credential")
    op.drop_table("enrolment_token")
    op.drop_table("api_token")
    op.drop_table("fleet_user")
