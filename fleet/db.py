"""Database engines and schema migrations (Alembic, no alembic.ini needed)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import StaticPool

# The database away or busy (a connection lost, a lock or pool timeout, a deadlock), or the
# deployment wrong (a missing table or privilege): no single message or row causes these, and
# every one would fail alike. Ingest retries its group, a scheduled job its next run.
DATABASE_FAULTS = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
    ProgrammingError,
)
# ...except the OperationalErrors that one message's values cause, which no retry cures.
_VALUE_FAULTS = ("ProgramLimitExceeded",)


def is_database_fault(exc: BaseException) -> bool:
    """True when `exc` is the database's or the deployment's fault (retry later), False when
    it is the data's (a value the store refuses: skip or dead-letter what carries it).
    `exc` is SQLAlchemy's, or psycopg's own from a cursor used directly (ingest's COPY)."""
    if isinstance(exc, DATABASE_FAULTS):
        return type(getattr(exc, "orig", None)).__name__ not in _VALUE_FAULTS
    # psycopg's error classes, only if it is loaded: else `exc` cannot be one of them, and
    # a process on SQLite need not import it.
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(
        exc, (driver.OperationalError, driver.InterfaceError, driver.ProgrammingError)
    ):
        return type(exc).__name__ not in _VALUE_FAULTS
    return False


MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `sqlite:///path` or `postgresql+psycopg://...`, tuned for each."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, **kwargs)
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_engine(url: str, database: str | None, **kwargs: Any) -> Engine:
    in_memory = not database or database == ":memory:"
    connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
    if in_memory:
        # One shared connection, or every checkout would see a different empty database.
        kwargs.setdefault("poolclass", StaticPool)
    else:
        Path(database or "").parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if not in_memory:
            # Readers (the API) never block the ingest writer, nor the other way round.
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def alembic_config(url: str | None = None) -> Config:
    """The Alembic config of fleet/migrations, pointed at the database `url` when given (else
    Alembic's own setting)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        # '%' is ConfigParser's interpolation character: URL-encoded passwords carry it.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Bring the schema up to `revision`; safe to run on every start."""
    if isinstance(engine_or_url, str):
        engine = make_engine(engine_or_url)
        try:
            migrate(engine, revision)
        finally:
            engine.dispose()
        return
    config = alembic_config()
    with engine_or_url.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
