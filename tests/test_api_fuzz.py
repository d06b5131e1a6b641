"""Schemathesis over the controller's OpenAPI schema, as ops, as a technician of upm, as a Seewo
vendor and with no token, against the app on a real database holding a row of every kind the
API lists (non-finite values stored before ingest refused them included): no request may get
a server error, and every answer whose status the schema declares must match its schema.

The run is bounded in examples (the schema's examples, its boundary values in and out of
bounds, then `FUZZ_EXAMPLES` generated requests an operation; see `Run.coverage`) and in
time (`MAX_SECONDS` a run, which a run that has not finished by then fails). The seed is
random and printed on a failure; FLEET_FUZZ_SEED=<seed> replays it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from schemathesis import engine as fuzz_engine
from schemathesis.engine import events
from sqlalchemy import Engine, update
from sqlmodel import Session, select

from fleet.alerts.evaluation import AlertRules, evaluate_alerts
from fleet.api.app import create_app
from fleet.auth.permissions import ANYONE, POLICY, Permission
from fleet.db import make_engine, migrate
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import Ingest
from fleet.models import AgentMessage, Device, Sample
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, LoadedSite
from fleet.reports.models import StoredReport
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, user_token
from tests.fixtures_db import RECEIVED, agent_state, health, reading

FUZZ_EXAMPLES = 6
# A bound for a run gone astray, under this test's own timeout: ops on PostgreSQL took 112 to
# 147 s in fresh clones' `make test` on a 2-core machine shared by six workers (2026-12-01).
MAX_SECONDS = 360
PANEL = "upm-sc1-panel-1"  # a Seewo panel at upm: in the technician's and the vendor's scope
PROJECTOR = "upm-sc2-projector"


@dataclass(frozen=True)
class Run:
    role: str
    database: str
    # Only the operations the role may use: the others answer 401 or 403 before a parameter is
    # read, which tests/test_permissions_matrix.py pins for every route. None: all of them.
    own_operations_only: bool = False
    # The coverage phase: each parameter's boundary values, in and out of bounds (2,435 of
    # ops' 2,756 requests). Every parameter is bounded in the schema
    # (tests/test_api_bounds.py), so what is out of bounds is a 422 before any query, the same
    # on either engine; what is in bounds and reaches the store at its extreme (the largest
    # id a column holds, the edges of the report window) is pinned on both engines there. So
    # it runs once a role, on PostgreSQL, and ops on SQLite gets the examples and more
    # generated requests instead.
    coverage: bool = True
    examples: int = FUZZ_EXAMPLES

    def __str__(self) -> str:
        return f"{self.role}-{self.database}"


RUNS = [
    Run("ops", "sqlite", coverage=False, examples=3 * FUZZ_EXAMPLES),
    pytest.param(Run("ops", "postgres"), marks=pytest.mark.postgres),
    pytest.param(Run("technician", "postgres", True), marks=pytest.mark.postgres),
    pytest.param(Run("vendor", "postgres", True), marks=pytest.mark.postgres),
    # The open operations: login, enrolment, artifacts, /healthz. What anonymous callers get
    # from the others, a 401 written to the audit log whatever the path holds, is
    # tests/test_api_bounds.py's.
    pytest.param(Run("anonymous", "postgres", True), marks=pytest.mark.postgres),
]


@dataclass
class Tally:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def seed(engine: Engine) -> None:
    """A row of every kind the API lists or names by id: readings and alerts, a non-finite
    value stored before ingest refused it, an agent event, a rollout with a device, stored
    reports of two vendors."""
    t0 = RECEIVED - timedelta(hours=1)
    Ingest(engine).handle(
        [
            health(
                "upm",
                [
                    reading(PANEL, t0 + timedelta(minutes=i), errors={"fan": "warning"})
                    for i in range(5)
                ]
                + [reading(PROJECTOR, t0, temperature_c=80, lamp_hours=4750)],
            ),
            health("usthb", [reading("usthb-sc1-panel-1", t0, reachable=False, error="timeout")]),
            agent_state("tuit", "offline", t0, t0),
        ]
    )
    evaluate_alerts(
        engine,
        AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=False),
        t0 + timedelta(minutes=30),
    )
    with Session(engine) as session:
        # Rows from before ingest refused non-finite values: the API must still answer.
        session.execute(
            update(Sample).where(Sample.device_id == PROJECTOR).values(lamp_hours=float("inf"))
        )
        session.add(
            AgentMessage(
                site_code="upm",
                kind="event",
                ts=t0,
                received_at=t0,
                body={"kind": "discovery", "agent_id": "upm-agent-1", "message": "found 1"},
            )
        )
        panel = session.get(Device, PANEL)
        assert panel is not None
        rollout = Rollout(
            name="seewo 3.3.0",
            profile=panel.profile,
            release_version="3.3.0",
            release_sha256="0" * 64,
            created_at=t0,
            updated_at=t0,
        )
        session.add(rollout)
        session.flush()
        assert rollout.id is not None
        session.add(
            RolloutDevice(
                rollout_id=rollout.id, device_id=PANEL, site_code="upm", wave=0, updated_at=t0
            )
        )
        other = session.exec(select(Device.vendor).where(Device.site_code == "usthb")).first()
        for vendor in ("Seewo", other or "MAXHUB"):
            content = f"vendor,hours\r\n{vendor},1\r\n".encode()
            session.add(
                StoredReport(
                    vendor=vendor,
                    period="monthly",
                    period_start=date(2025, 2, 1),
                    period_end=date(2025, 2, 28),
                    format="csv",
                    media_type="text/csv",
                    filename=f"usage-{vendor.lower()}-2025-02.csv",
                    sha256=hashlib.sha256(content).hexdigest(),
                    size=len(content),
                    content=content,
                    created_at=t0,
                )
            )
        session.commit()


@pytest.fixture
def fuzz_engine_of(
    request: pytest.FixtureRequest, tmp_path: Path, loaded_sites: list[LoadedSite]
) -> Iterator[Engine]:
    run: Run = request.param
    if run.database == "sqlite":
        engine = request.getfixturevalue("sqlite_registered")
    else:
        engine = make_engine(request.getfixturevalue("migrated_postgres_url"))
        migrate(engine)
        sync_registry(engine, loaded_sites)
    seed(engine)
    yield engine
    engine.dispose()


def permissions_by_operation(app: FastAPI) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the name of the permission the route declares."""

    def declared(dependant: Dependant) -> list[str]:
        found = [dependant.call.name] if isinstance(dependant.call, Permission) else []
        for sub in dependant.dependencies:
            found += declared(sub)
        return found

    out = {}
    for context in iter_route_contexts(app.routes):
        if isinstance(context.route, APIRoute):
            for method in context.route.methods:
                out[(method, context.path)] = declared(context.route.dependant)[0]
    return out


def role_may(app: FastAPI, role: str) -> Callable[[Any], bool]:
    """A filter of operations: those whose permission the role holds."""
    permissions = permissions_by_operation(app)
    holder = ANYONE if role == "anonymous" else role

    def holds(ctx: Any) -> bool:
        key = (ctx.operation.method.upper(), ctx.operation.path)
        return holder in POLICY[permissions[key]]

    return holds


def fuzz(app: FastAPI, headers: dict[str, str], run: Run, seed_value: int) -> Tally:
    config = schemathesis.Config.from_dict(
        {
            "seed": seed_value,
            # Nothing kept between runs: each run is its own, and writes nothing to the tree.
            "cache": {"enabled": False},
            "headers": headers,
            "generation": {"mode": "all", "max-examples": run.examples, "database": "none"},
            "phases": {
                # Stateful links are not declared; the examples and the coverage phase are
                # where out-of-bounds values (an id of 2^63, a date in year 1) come from.
                "stateful": {"enabled": False},
                "coverage": {"enabled": run.coverage, "unexpected-methods": []},
            },
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    if run.own_operations_only:
        schema = schema.include(role_may(app, run.role))
    tally = Tally()
    started = time.monotonic()
    stream = fuzz_engine.from_schema(schema).execute()
    finished = False
    for event in stream:
        if time.monotonic() - started > MAX_SECONDS:
            stream.stop()
            break
        if isinstance(event, events.ScenarioFinished):
            _count(event, tally)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            tally.errors.append(f"{getattr(event, 'label', '?')}: {event.value!r}")
        elif isinstance(event, events.EngineFinished):
            finished = True
    assert finished, f"{run}: the fuzz run did not finish within {MAX_SECONDS} s"
    return tally


def _count(event: Any, tally: Tally) -> None:
    recorder = event.recorder
    for interaction in recorder.interactions.values():
        tally.requests += 1
        if interaction.response is not None:
            tally.by_status[interaction.response.status_code] += 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status.name == "SUCCESS":
                continue
            case = recorder.cases[case_id].value
            interaction = recorder.interactions.get(case_id)
            response = interaction.response if interaction is not None else None
            status = response.status_code if response is not None else "no answer"
            body = response.content[:200] if response is not None else b""
            tally.failures.append(
                f"{check.name}: {case.method} {case.formatted_path} query={case.query} "
                f"-> {status} {body!r}"
            )


@pytest.mark.parametrize("fuzz_engine_of", RUNS, ids=str, indirect=True)
@pytest.mark.timeout(MAX_SECONDS + 120)
def test_no_request_gets_a_server_error(
    fuzz_engine_of: Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    run: Run = request.node.callspec.params["fuzz_engine_of"]
    engine = fuzz_engine_of
    tokens = Tokens(
        ops=user_token(engine, "fuzz-ops", "ops"),
        technician=user_token(engine, "fuzz-tech", "technician", sites=["upm"]),
        vendor=user_token(engine, "fuzz-vendor", "vendor", vendor="Seewo"),
    )
    settings = Settings(data_dir=tmp_path, database_url=str(engine.url))
    app = create_app(settings, engine=engine)
    seed_value = int(os.environ.get("FLEET_FUZZ_SEED") or random.randrange(2**32))
    started = time.monotonic()
    tally = fuzz(app, tokens.headers(run.role), run, seed_value)
    took = time.monotonic() - started
    server_errors = sum(n for status, n in tally.by_status.items() if status >= 500)
    print(
        f"\nfuzz {run}: {tally.requests} requests in {took:.1f} s, "
        f"{server_errors} server errors, by status {dict(sorted(tally.by_status.items()))}"
    )
    where = f"{run}, FLEET_FUZZ_SEED={seed_value}"
    assert not tally.errors, f"{where}: the app raised:\n" + "\n".join(tally.errors[:20])
    assert server_errors == 0 and not tally.failures, f"{where}:\n" + "\n".join(tally.failures[:20])
    # Not a run of refusals only: the role's own operations answered.
    assert tally.by_status[200] > (0 if run.role == "anonymous" else 20), tally.by_status
