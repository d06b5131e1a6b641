"""Every route of the app, for every role (ops, a technician of upm, a Seewo vendor, no token):
allowed or refused, as the roles are meant to be. A route that declares no permission fails
here, so a route added later must declare one (`dependencies=[Allow("...")]`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from starlette.routing import Mount, Route

from fleet.api.app import create_app
from fleet.auth.permissions import Permission
from fleet.settings import Settings
from tests.fixtures_auth import Tokens

ROLES = ("ops", "technician", "vendor", "anonymous")
EVERYONE = frozenset(ROLES)
STAFF = frozenset({"ops", "technician", "vendor"})
# What each role may do, written out here rather than read from fleet.auth.permissions.POLICY,
# so that a change to the policy is a change this test sees.
MAY = {
    "public": EVERYONE,
    "agent": EVERYONE,
    "authenticated": STAFF,
    "fleet:read": {"ops"},
    "dashboard:read": {"ops", "technician", "vendor"},
    "sites:read": {"ops", "technician"},
    "devices:read": {"ops", "technician", "vendor"},
    "devices:command": {"ops", "technician"},
    "alerts:read": {"ops", "technician", "vendor"},
    "alerts:write": {"ops", "technician"},
    "subscriptions:write": {"ops", "technician", "vendor"},
    "silences:read": {"ops", "technician"},
    "silences:write": {"ops", "technician"},
    "programme:read": {"ops", "technician"},
    "programme:write": {"ops"},
    "reports:read": {"ops", "vendor"},
    "firmware:read": {"ops"},
    "rollouts:read": {"ops"},
    "rollouts:write": {"ops"},
    "enrolment:create": {"ops", "technician"},
    "audit:read": {"ops"},
    "users:read": {"ops"},
    "users:write": {"ops"},
}
# FastAPI's own pages and the static files: open, and not APIRoutes (no dependencies).
FRAMEWORK_OPEN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static"}

# Path parameters: in the technician's site, of the vendor's make (upm-sc1-panel-1 is Seewo).
IN_SCOPE = {
    "code": "upm",
    "site": "upm",
    "device_id": "upm-sc1-panel-1",
    "alert_id": "1",
    "phase": "1",
    "milestone_name": "installed",
    "rollout_id": "1",
    "report_id": "1",
    "sha256": "0" * 64,
    "asset": "swagger-ui.css",
    "room_id": "upm-smart-1",
    "day": "2026-12-24",
    "subscription_id": "1",
    "silence_id": "1",
    "token_id": "1",
    "user_name": "nobody-here",  # no such user: ops' revoke and change answer 404
}
# Outside both scopes: another site, and a MAXHUB device at it.
OUT_OF_SCOPE = {**IN_SCOPE, "code": "usthb", "site": "usthb", "device_id": "usthb-sc1-panel-1"}


def declared_permissions(dependant: Dependant) -> list[Permission]:
    found = [dependant.call] if isinstance(dependant.call, Permission) else []
    for sub in dependant.dependencies:
        found += declared_permissions(sub)
    return found


def route_cells(app: FastAPI) -> Iterator[tuple[str, str, str]]:
    """(method, path, permission name) for every route; fails for one without a permission."""
    # FastAPI 0.16x keeps included routers whole: iter_route_contexts flattens them.
    for context in iter_route_contexts(app.routes):
        route = context.route
        if isinstance(route, APIRoute):
            permissions = declared_permissions(route.dependant)
            assert len(permissions) == 1, (
                f"{sorted(route.methods)} {context.path} declares {len(permissions)} "
                'permissions: give it exactly one, dependencies=[Allow("...")]'
            )
            for method in sorted(route.methods - {"HEAD"}):
                yield method, context.path, permissions[0].name
        elif isinstance(route, Route | Mount):
            assert route.path in FRAMEWORK_OPEN, f"{route.path} is not an APIRoute: declare it"


@pytest.fixture
def app(registered: Engine) -> FastAPI:
    return create_app(Settings(database_url=str(registered.url)), engine=registered)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def call(client: TestClient, method: str, path: str, values: dict[str, str], headers: Any) -> int:
    url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m.group(1)], path)
    if path == "/api/v1/firmware/artifacts/{sha256}":
        url += f"?site={values['site']}"
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    answer = client.request(method, url, headers=headers, follow_redirects=False, **body)
    if answer.status_code == 303 and answer.headers["location"].startswith("/login?"):
        return 401  # a dashboard page sends a browser without a login to the login form
    return answer.status_code


def test_every_route_allows_and_refuses_each_role(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    cells = list(route_cells(app))
    assert len(cells) > 40  # the whole app, not a part of it
    wrong = []
    for method, path, permission in cells:
        assert permission in MAY, f"{path}: permission {permission!r} is not in this test's MAY"
        for role in ROLES:
            client.cookies.clear()
            status = call(client, method, path, IN_SCOPE, tokens.headers(role))
            allowed = role in MAY[permission]
            expected = "allowed" if allowed else ("401" if role == "anonymous" else "403")
            ok = status not in (401, 403) if allowed else str(status) == expected
            if not ok:
                wrong.append(f"{method} {path} as {role}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_scoped_roles_are_refused_outside_their_scope_on_every_route(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    wrong = []
    for method, path, permission in route_cells(app):
        names = set(re.findall(r"\{(\w+)", path))
        for role in ("technician", "vendor"):
            if role not in MAY[permission] or not names & {"code", "site", "device_id"}:
                continue
            status = call(client, method, path, OUT_OF_SCOPE, tokens.headers(role))
            # A device of another vendor or site is 404 (its existence is not ours to tell).
            expected = (404,) if "device_id" in names else (403,)
            if status not in expected:
                wrong.append(f"{method} {path} as {role} out of scope: {status}, not {expected}")
    assert not wrong, "\n".join(wrong)


def test_a_route_without_a_permission_fails_the_matrix(app: FastAPI) -> None:
    @app.get("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(AssertionError, match="/api/v1/forgotten declares 0 permissions"):
        list(route_cells(app))


def test_healthz_and_metrics_stay_open(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 200
