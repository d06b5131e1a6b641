"""Schema migrations on SQLite and PostgreSQL: 0007 (alert_condition) goes up and down, and
what it makes is what the model declares."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

from fleet.db import alembic_config, make_engine, migrate

TABLE = "alert_condition"


def test_0007_adds_alert_condition_as_the_model_declares_and_goes_back(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
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


def test_0011_adds_notices_and_silences_as_the_models_declare_and_goes_back(
    empty_db_url: str,
) -> None:
    engine = make_engine(empty_db_url)
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
                and "resolve_noticed_at" not in str(d)  # 0012's
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


def test_0012_marks_alerts_resolved_before_it_as_told_and_goes_back(empty_db_url: str) -> None:
    """Alerts resolved before the upgrade are not mailed as resolved all at once after it."""
    engine = make_engine(empty_db_url)
    try:
        migrate(engine, "0011")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO site (code, name, institution, country, timezone, vendor,"
                    " timetable, config_path, config_hash, synced_at) VALUES ('upm', 'UPM', '',"
                    " 'MY', 'UTC', '', '{}', '', '', '2025-03-03T02:00:00+00:00')"
                )
            )
            for state, resolved in (("open", None), ("resolved", "2025-03-03T03:00:00+00:00")):
                conn.execute(
                    text(
                        "INSERT INTO alert (kind, severity, state, subject, site_code, message,"
                        " opened_at, updated_at, resolved_at, notice_level) VALUES ('offline',"
                        " 'warning', :state, :subject, 'upm', 'm', :at, :at, :resolved, 1)"
                    ),
                    {
                        "state": state,
                        "subject": f"site:upm:{state}",
                        "at": "2025-03-03T02:00:00+00:00",
                        "resolved": resolved,
                    },
                )
        migrate(engine, "0012")
        with engine.connect() as conn:
            told = dict(
                conn.execute(text("SELECT state, resolve_noticed_at FROM alert")).tuples().all()
            )
            context = MigrationContext.configure(conn)
            drift = [
                d
                for d in compare_metadata(context, SQLModel.metadata)
                if "resolve_noticed_at" in str(d) or "ix_alert_resolve_untold" in str(d)
            ]
        assert drift == []
        assert "ix_alert_resolve_untold" in {
            i["name"] for i in inspect(engine).get_indexes("alert")
        }
        assert told["open"] is None and told["resolved"] is not None
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0011")
        assert "resolve_noticed_at" not in {c["name"] for c in inspect(engine).get_columns("alert")}
        assert "ix_alert_resolve_untold" not in {
            i["name"] for i in inspect(engine).get_indexes("alert")
        }
        migrate(engine)
    finally:
        engine.dispose()


def test_0013_adds_the_device_site_state_index_as_the_model_declares_and_goes_back(
    empty_db_url: str,
) -> None:
    """The (site_code, state) index the device list counts from is there after 0013, matches
    the model, and goes again on the way down."""
    index = "ix_device_site_code_state"

    def device_indexes() -> dict[str, list[str | None]]:
        return {str(i["name"]): i["column_names"] for i in inspect(engine).get_indexes("device")}

    engine = make_engine(empty_db_url)
    try:
        migrate(engine, "0012")
        assert index not in device_indexes()
        migrate(engine, "0013")
        assert device_indexes()[index] == ["site_code", "state"]
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            drift = [d for d in compare_metadata(context, SQLModel.metadata) if "device" in str(d)]
        assert drift == []

        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0012")
        assert index not in device_indexes()
    finally:
        engine.dispose()
