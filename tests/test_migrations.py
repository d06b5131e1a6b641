"""Schema migrations on SQLite and PostgreSQL: 0007 (alert_condition) goes up and down, and
what it makes is what the model declares."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from fleet.db import alembic_config, make_engine, migrate

TABLE = "alert_condition"


def test_0007_adds_alert_condition_as_the_model_declares_and_goes_back(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine, "0006")
        assert TABLE not in inspect(engine).get_table_names()
        migrate(engine, "0007")
        columns = {c["name"] for c in inspect(engine).get_columns(TABLE)}
        assert {"subject", "kind", "raise_count", "clear_since", "last_at"} <= columns
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            drift = [d for d in compare_metadata(context, SQLModel.metadata) if TABLE in str(d)]
        assert drift == []

        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0006")
        assert TABLE not in inspect(engine).get_table_names()
        migrate(engine)
        assert TABLE in inspect(engine).get_table_names()
    finally:
        engine.dispose()


NOTICE_TABLES = ("alert_subscription", "email_delivery", "alert_silence")
NOTICE_COLUMNS = ("notice_level", "noticed_at", "escalated_at", "silence_id", "silenced_by")


def test_0011_adds_notices_and_silences_as_the_models_declare_and_goes_back(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine, "0010")
        assert not set(NOTICE_TABLES) & set(inspect(engine).get_table_names())
        migrate(engine, "0011")
        assert set(NOTICE_TABLES) <= set(inspect(engine).get_table_names())
        assert set(NOTICE_COLUMNS) <= {c["name"] for c in inspect(engine).get_columns("alert")}
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            drift = [
                d
                for d in compare_metadata(context, SQLModel.metadata)
                if any(name in str(d) for name in (*NOTICE_TABLES, *NOTICE_COLUMNS))
            ]
        assert drift == []

        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0010")
        assert not set(NOTICE_TABLES) & set(inspect(engine).get_table_names())
        assert not set(NOTICE_COLUMNS) & {c["name"] for c in inspect(engine).get_columns("alert")}
        migrate(engine)
        assert set(NOTICE_TABLES) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
