"""Databases for tests: SQLite in a temporary file copied from one migrated per session, and
PostgreSQL in a database per test cloned from one migrated per worker (or an empty schema, for
what must start from nothing).

PostgreSQL (FLEET_TEST_POSTGRES_URL, default postgres@127.0.0.1:5432/test) is skipped when it
is not running, except in CI (CI=true), where every test must run.
Register with `pytest_plugins = ["tests.fixtures_db"]` in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
import uuid
import warnings
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
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own, already migrated to head: a copy of the session's
    migrated SQLite file, or a PostgreSQL database cloned from the session's template. A
    process started on it (the controller) finds nothing to migrate. For a test that asks for
    `registered` too, the copy is of a template whose registry already holds site_configs/."""
    registry = "registered" in request.fixturenames
    if request.param == "sqlite":
        template = "sqlite_registered_template" if registry else "sqlite_template"
        path = tmp_path / "fleet.db"
        _copy_sqlite(request.getfixturevalue(template), path)
        url = f"sqlite:///{path}"
    else:
        template = "postgres_registered_template" if registry else "postgres_template"
        clone = _postgres_clone_url(request.getfixturevalue(template))
        url = next(clone)
    database = make_url(url).database
    if registry:
        _REGISTERED.add(database)
    try:
        yield url
    finally:
        _REGISTERED.discard(database)
        if request.param != "sqlite":
            next(clone, None)  # drops the clone


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own with no schema at all, for the tests of the migrations."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    yield from _postgres_schema_url()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """PostgreSQL only, in an empty schema of the test's own, for what only runs there and
    must start from nothing (the installed controller's first migration, two schemas of one
    database)."""
    yield from _postgres_schema_url()


@pytest.fixture
def migrated_postgres_url(postgres_template: str) -> Iterator[str]:
    """PostgreSQL only, in a database of the test's own already migrated to head."""
    yield from _postgres_clone_url(postgres_template)


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


# Databases this suite makes are named with the time they were made (Unix seconds), so that a
# later run can drop what a killed one left behind without touching a run still going beside it.
CLONE_PREFIX, TEMPLATE_PREFIX = "fleet_t_", "fleet_tmpl_"
STALE_AFTER_S = 6 * 3600


def _database_name(prefix: str) -> str:
    return f"{prefix}{int(time.time())}_{uuid.uuid4().hex[:12]}"


def _database_url(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


def _drop_stale_databases(admin: psycopg.Connection[Any]) -> None:
    names = admin.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE 'fleet\\_t\\_%' "
        "OR datname LIKE 'fleet\\_tmpl\\_%'"
    ).fetchall()
    for (name,) in names:
        made = name.removeprefix(TEMPLATE_PREFIX).removeprefix(CLONE_PREFIX).split("_")[0]
        if made.isdigit() and time.time() - int(made) > STALE_AFTER_S:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Dropper:
    """Drops the test databases on a thread of its own: DROP DATABASE waits for a checkpoint
    (a second or more while the other workers write), which no test needs to wait for."""

    def __init__(self) -> None:
        self.names: queue.Queue[str | None] = queue.Queue()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name="drop-test-databases", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        admin: psycopg.Connection[Any] | None = None
        while (name := self.names.get()) is not None:
            try:
                if admin is None or admin.closed:
                    admin = _postgres_admin()
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except (psycopg.Error, pytest.skip.Exception, pytest.fail.Exception) as exc:
                self.failures.append(f"{name}: {exc}")
        if admin is not None:
            admin.close()

    def close(self) -> None:
        self.names.put(None)
        self.thread.join(120)


# Each worker's template, by name, and the thread that drops the databases cloned from it.
_DROPPERS: dict[str, _Dropper] = {}


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database migrated once per worker, the template each test's database is
    cloned from: a tenth of a second where migrating a schema again takes half a second on a
    quiet machine and two on a loaded one."""
    admin = _postgres_admin()
    _drop_stale_databases(admin)
    name = _database_name(TEMPLATE_PREFIX)
    admin.execute(f'CREATE DATABASE "{name}"')
    engine = make_engine(_database_url(name))
    try:
        migrate(engine)
    finally:
        engine.dispose()  # a template takes no connections while it is cloned
    dropper = _Dropper()
    _DROPPERS[name] = dropper
    try:
        yield name
    finally:
        dropper.close()
        del _DROPPERS[name]
        for failure in dropper.failures:
            warnings.warn(f"a test database was not dropped: {failure}", stacklevel=1)
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def postgres_registered_template(
    postgres_template: str, loaded_sites: list[LoadedSite]
) -> Iterator[str]:
    """A second template, cloned from the migrated one, whose registry holds every site of
    site_configs/: the clone of a test that asks for `registered` starts from it, where
    syncing the registry again took about a fifth of a second of the test's CPU and more of
    the server's (870 tests of the suite ask for it)."""
    clone = _postgres_clone_url(postgres_template)
    name = make_url(next(clone)).database
    assert name is not None
    engine = make_engine(_database_url(name))
    try:
        sync_registry(engine, loaded_sites)
    finally:
        engine.dispose()  # a template takes no connections while it is cloned
    _DROPPERS[name] = _DROPPERS[postgres_template]
    try:
        yield name
    finally:
        del _DROPPERS[name]
        next(clone, None)


def _postgres_clone_url(template: str) -> Iterator[str]:
    name = _database_name(CLONE_PREFIX)
    admin = _postgres_admin()
    try:
        # WAL_LOG (PostgreSQL 15's default) copies the template's pages without a checkpoint.
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY WAL_LOG')
    finally:
        admin.close()
    try:
        yield _database_url(name)
    finally:
        _DROPPERS[template].names.put(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session: a test's own database is a copy of it,
    a millisecond where running the migrations again takes a quarter of a second."""
    path = tmp_path_factory.mktemp("template") / "fleet.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def sqlite_registered_template(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, loaded_sites: list[LoadedSite]
) -> Path:
    """The migrated SQLite template with every site of site_configs/ in its registry, for the
    tests that ask for `registered`."""
    path = tmp_path_factory.mktemp("registered") / "fleet.db"
    engine = _migrated_sqlite(sqlite_template, path)
    sync_registry(engine, loaded_sites)
    engine.dispose()
    return path


def _copy_sqlite(template: Path, path: Path) -> None:
    source, target = sqlite3.connect(template), sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def _migrated_sqlite(template: Path, path: Path) -> Engine:
    _copy_sqlite(template, path)
    return make_engine(f"sqlite:///{path}")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the test's own database (`db_url`), migrated to head."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def loaded_sites() -> list[LoadedSite]:
    return load_sites()


@pytest.fixture
def sqlite_registered(tmp_path: Any, sqlite_registered_template: Path) -> Iterator[Engine]:
    """The registry in a SQLite database of the test's own, for tests about something else
    (the broker's ACL, TLS) where one database is enough."""
    engine = _migrated_sqlite(sqlite_registered_template, tmp_path / "fleet.db")
    yield engine
    engine.dispose()


# The test databases (SQLite paths, PostgreSQL names) `db_url` copied from a registered
# template: their registry is already synced.
_REGISTERED: set[str | None] = set()


@pytest.fixture
def registered(engine: Engine, loaded_sites: list[LoadedSite]) -> Engine:
    """An engine whose registry holds every site in site_configs/: the test's database came
    from a registered template (`db_url`), or, where a module gives its own `engine`, it is
    synced here."""
    if engine.url.database not in _REGISTERED:
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
