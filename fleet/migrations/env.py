"""Alembic environment: run by fleet.db.migrate with a live connection, or by the alembic CLI."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import fleet.alerts.models
import fleet.auth.models
import fleet.auth.second_factor
import fleet.commands.models
import fleet.models  # registers the tables on SQLModel.metadata (so do the others)
import fleet.programme.models
import fleet.reports.models
import fleet.rollouts.models  # noqa: F401
from fleet.db import make_engine

target_metadata = SQLModel.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: Alembic rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: set sqlalchemy.url, or call fleet.db.migrate(url)")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run them against a database")
main()
