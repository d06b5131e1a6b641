"""Databases for tests: SQLite in a temporary file, and PostgreSQL in a fresh schema per test.

PostgreSQL (FLEET_TEST_POSTGRES_URL, default postgres@127.0.0.1:5432/test) is skipped when it
is not running, except in CI (CI=true), where every test must run.
Register with `pytest_plugins = ["tests.fixtures_db"]` in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from ulid import ULID

from fleet.db import make_engine, migrate
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import IncomingMessage, Ingest
from fleet.protocol.site_config import LoadedSite, load_sites

POSTGRES_URL = os.environ.get(
    "FLEET_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
RECEIVED = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


def _postgres_admin() -> psycopg.Connection[Any]:
    url = make_url(POSTGRES_URL)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {url.host}:{url.port} is not reachable ({exc})"
        fix = "start it, or set FLEET_TEST_POSTGRES_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: CI must run the PostgreSQL tests. Fix: {fix}")
        pytest.skip(f"{message}; {fix} to run these tests")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    yield from _postgres_schema_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """PostgreSQL only, in a schema of the test's own, for what only runs there."""
    yield from _postgres_schema_url()


def _postgres_schema_url() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = _postgres_admin()
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session: a test's own database is a copy of it,
    a millisecond where running the migrations again takes a quarter of a second."""
    path = tmp_path_factory.mktemp("template") / "fleet.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def _migrated_sqlite(template: Path, path: Path) -> Engine:
    source, target = sqlite3.connect(template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return make_engine(f"sqlite:///{path}")


@pytest.fixture
def engine(db_url: str, sqlite_template: Path) -> Iterator[Engine]:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database:
        engine = _migrated_sqlite(sqlite_template, Path(url.database))
    else:
        engine = make_engine(db_url)
        migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def loaded_sites() -> list[LoadedSite]:
    return load_sites()


@pytest.fixture
def sqlite_registered(
    tmp_path: Any, loaded_sites: list[LoadedSite], sqlite_template: Path
) -> Iterator[Engine]:
    """The registry in a SQLite database of the test's own, for tests about something else
    (the broker's ACL, TLS) where one database is enough."""
    engine = _migrated_sqlite(sqlite_template, tmp_path / "fleet.db")
    sync_registry(engine, loaded_sites)
    yield engine
    engine.dispose()


@pytest.fixture
def registered(engine: Engine, loaded_sites: list[LoadedSite]) -> Engine:
    """An engine whose registry holds every site in site_configs/."""
    sync_registry(engine, loaded_sites)
    return engine


@pytest.fixture
def ingest(registered: Engine) -> Ingest:
    return Ingest(registered)


# --- message builders ---------------------------------------------------------------------


def reading(device: str, ts: datetime, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"device": device, "ts": ts.isoformat(), "reachable": True}
    out.setdefault("power", "on")
    out.update(fields)
    return out


def batch(
    site: str, readings: list[dict[str, Any]], *, msg_id: str | None = None, seq: int = 1
) -> dict[str, Any]:
    return {
        "schema": 1,
        "msg_id": msg_id or str(ULID()),
        "site": site,
        "agent_id": f"{site}-agent-1",
        "seq": seq,
        "sent_at": RECEIVED.isoformat(),
        "readings": readings,
    }


def message(
    topic: str, payload: dict[str, Any] | bytes, received_at: datetime = RECEIVED
) -> IncomingMessage:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return IncomingMessage(topic, body, received_at)


def health(site: str, readings: list[dict[str, Any]], **kw: Any) -> IncomingMessage:
    received_at = kw.pop("received_at", RECEIVED)
    return message(f"fleet/v1/{site}/health", batch(site, readings, **kw), received_at)


def agent_state(site: str, state: str, ts: datetime, received_at: datetime) -> IncomingMessage:
    body = {
        "state": state,
        "agent_id": f"{site}-agent-1",
        "version": "0.1.0",
        "boot_id": "boot-1",
        "ts": ts.isoformat(),
    }
    return message(f"fleet/v1/{site}/agent/state", body, received_at)
