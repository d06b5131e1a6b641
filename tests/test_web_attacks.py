"""The attacks on the controller's HTTP side, each as the kind it stands for, against the real
app and database: scope checked on the body the route uses, existence told by no answer,
cross-site requests refused on every state-changing route, and the security headers on every
response. Routes are walked (app.routes), so a new one is tried as it is added."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session, func, select

from fleet.api.app import create_app
from fleet.api.browser_policy import cross_site_reason
from fleet.auth.models import EnrolmentToken
from fleet.devices.profile_book import profiles_in
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import PASSWORD, Tokens
from tests.test_permissions_matrix import IN_SCOPE, declared_permissions, route_cells

SCOPE_FIELDS = {"site", "site_code", "vendor", "device", "device_id"}
# Spellings FastAPI parses as JSON: the media type is case-insensitive, and +json suffixes.
JSON_TYPES = (
    "application/json",
    "Application/JSON",
    "APPLICATION/JSON; charset=utf-8",
    "application/vnd.fleet+json",
)
OUT_OF_SCOPE_VALUES = {
    "site": "usthb",
    "site_code": "usthb",
    "vendor": "MAXHUB",
    "device": "usthb-sc1-panel-1",
    "device_id": "usthb-sc1-panel-1",
}
# The other fields a body needs, valid, so that only its scope can refuse it.
VALID_OTHERWISE = {
    "email": "someone@example.edu",
    "reason": "planned power cut",
    "ends_at": "2099-01-01T00:00:00Z",
}


@pytest.fixture
def app(registered: Engine, tmp_path: Path) -> FastAPI:
    settings = Settings(database_url=str(registered.url), artifacts_dir=tmp_path / "artifacts")
    return create_app(settings, engine=registered)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def all_routes(app: FastAPI) -> list[tuple[str, Any]]:
    return [(context.path, context.route) for context in iter_route_contexts(app.routes)]


def _body_models(route: APIRoute) -> list[type[BaseModel]]:
    field = route.body_field
    if field is None:
        return []
    annotation = field.field_info.annotation
    candidates = getattr(annotation, "__args__", (annotation,))
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def scoped_body_routes(app: FastAPI) -> list[tuple[str, str, type[BaseModel], str]]:
    """(method, path, body model, the role) of every route a scoped role may call whose
    body names a site, vendor or device."""
    found = []
    for path, route in all_routes(app):
        if not isinstance(route, APIRoute):
            continue
        permissions = declared_permissions(route.dependant)
        for model in _body_models(route):
            named = SCOPE_FIELDS & set(model.model_fields)
            for role in ("technician", "vendor"):
                if named and permissions and role in permissions[0].roles:
                    for method in route.methods - {"HEAD"}:
                        found.append((method, path, model, role))
    return found


def test_scope_is_checked_on_the_validated_body_whatever_its_content_type(
    app: FastAPI, client: TestClient, tokens: Tokens, registered: Engine
) -> None:
    routes = scoped_body_routes(app)
    assert {("POST", "/api/v1/enrolment/tokens"), ("POST", "/enrolment")} <= {
        (m, p) for m, p, _, _ in routes
    }
    wrong = []
    for method, path, model, role in routes:
        body = {name: OUT_OF_SCOPE_VALUES[name] for name in SCOPE_FIELDS & set(model.model_fields)}
        body |= {k: v for k, v in VALID_OTHERWISE.items() if k in model.model_fields}
        if not path.startswith("/api/"):
            # A page's form (the silences and e-mail screens): posted as a form, as a browser
            # does, from the same origin; refused by the page itself, as the 403 page.
            answer = client.request(
                method,
                path,
                data={**body, "hours": "2"},
                headers={**tokens.headers(role), "Origin": "http://testserver"},
            )
            if answer.status_code != 403 or 'data-testid="refused"' not in answer.text:
                wrong.append(f"{method} {path} as {role}, a form: {answer.status_code}")
            continue
        for content_type in JSON_TYPES:
            headers = tokens.headers(role)
            if content_type:
                headers["Content-Type"] = content_type
            answer = client.request(method, path, content=json.dumps(body), headers=headers)
            if answer.status_code not in (403, 404):
                wrong.append(f"{method} {path} as {role}, {content_type}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)
    with Session(registered) as session:
        assert session.exec(select(func.count()).select_from(EnrolmentToken)).one() == 0


def test_a_technician_still_makes_tokens_for_their_own_site_in_any_json_spelling(
    client: TestClient, tokens: Tokens
) -> None:
    for content_type in JSON_TYPES:
        headers = tokens.headers("technician")
        if content_type:
            headers["Content-Type"] = content_type
        answer = client.post(
            "/api/v1/enrolment/tokens", content=b'{"site": "upm"}', headers=headers
        )
        assert answer.status_code == 201, (content_type, answer.text)


def test_every_value_of_a_repeated_query_key_is_checked(client: TestClient, tokens: Tokens) -> None:
    for query in ("site=upm&site=usthb", "site=usthb&site=upm"):
        answer = client.get(f"/api/v1/alerts?{query}", headers=tokens.headers("technician"))
        assert answer.status_code == 403, (query, answer.text)


def _same_answer(a: Any, b: Any, a_id: str, b_id: str) -> bool:
    def masked(text: str, id_: str) -> str:
        return re.sub(rf"(?<![\w-]){re.escape(id_)}(?![\w-])", "X", text)

    return a.status_code == b.status_code and masked(a.text, a_id) == masked(b.text, b_id)


def test_another_tenants_device_answers_as_a_made_up_one_on_every_route(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    """Path ids and `device` query filters, for the technician and the vendor alike."""
    other, made_up = "usthb-sc1-panel-1", "zz-no-such-device-1"
    routes = {p: r for p, r in all_routes(app) if isinstance(r, APIRoute)}
    tried, wrong = 0, []
    for method, path, _ in route_cells(app):
        if method != "GET":
            continue
        route = routes[path]
        query_names = {p.alias for p in route.dependant.query_params}
        in_path = "device_id" in path
        if not in_path and "device" not in query_names:
            continue
        for role in ("technician", "vendor"):
            perm = declared_permissions(route.dependant)[0]
            if role not in perm.roles:
                continue

            def url(device: str, path: str = path, in_path: bool = in_path) -> str:
                base = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: IN_SCOPE[m.group(1)], path)
                if in_path:
                    return base.replace(IN_SCOPE["device_id"], device)
                extra = "&from=2025-03-01&to=2025-03-02" if "reports" in path else ""
                return f"{base}?device={device}{extra}"

            headers = tokens.headers(role)
            a = client.get(url(other), headers=headers, follow_redirects=False)
            b = client.get(url(made_up), headers=headers, follow_redirects=False)
            tried += 1
            if not _same_answer(a, b, other, made_up):
                wrong.append(f"{path} as {role}: {a.status_code} {a.text[:120]} / {b.status_code}")
    assert tried >= 4
    assert not wrong, "\n".join(wrong)


def test_another_sites_alert_answers_as_a_made_up_one_on_every_route(
    app: FastAPI, client: TestClient, tokens: Tokens, registered: Engine
) -> None:
    from fleet.alerts.models import Alert
    from fleet.protocol.messages import utcnow

    now = utcnow()
    with Session(registered) as session:
        alert = Alert(
            id=424242,  # an id no other text of a page holds (masked when answers are compared)
            kind="device_unreachable",
            severity="warning",
            state="open",
            subject="device:usthb-sc1-panel-1",
            site_code="usthb",
            device_id="usthb-sc1-panel-1",
            message="unreachable",
            opened_at=now,
            updated_at=now,
        )
        session.add(alert)
        session.commit()
        other = str(alert.id)
    made_up = "987654"
    tried, wrong = 0, []
    for method, path, _ in route_cells(app):
        if "{alert_id}" not in path:
            continue
        for role in ("technician", "vendor"):
            answers = []
            for alert_id in (other, made_up):
                url = path.replace("{alert_id}", alert_id)
                body = {"json": {"by": "x"}} if method == "POST" else {}
                answers.append(
                    client.request(
                        method, url, headers=tokens.headers(role), follow_redirects=False, **body
                    )
                )
            if answers[0].status_code in (401, 403) and answers[1].status_code in (401, 403):
                continue  # the role may not use the route at all: nothing told
            tried += 1
            if not _same_answer(answers[0], answers[1], other, made_up):
                wrong.append(
                    f"{method} {path} as {role}: {answers[0].status_code} / "
                    f"{answers[1].status_code} {answers[0].text[:100]!r}"
                )
    assert tried >= 3
    assert not wrong, "\n".join(wrong)


def test_alerts_filtered_by_another_sites_device_answer_an_empty_page(
    client: TestClient, tokens: Tokens
) -> None:
    headers = tokens.headers("technician")
    other = client.get("/api/v1/alerts?device=usthb-sc1-panel-1", headers=headers)
    made_up = client.get("/api/v1/alerts?device=upm-no-such-1", headers=headers)
    assert other.status_code == made_up.status_code == 200
    assert other.json()["items"] == made_up.json()["items"] == []


def test_a_vendor_without_devices_is_not_told_the_other_vendors(
    client: TestClient, tokens: Tokens
) -> None:
    answer = client.get(
        "/api/v1/reports/usage?from=2025-03-01&to=2025-03-02&vendor=Nobody",
        headers=tokens.headers("ops"),
    )
    assert answer.status_code == 404
    for vendor in ("Seewo", "MAXHUB", "Dazzleview"):
        assert vendor not in answer.text


def test_public_artifact_download_names_no_server_path(client: TestClient, tmp_path: Path) -> None:
    sha = next(
        r.sha256
        for p in profiles_in(DEFAULT_PROFILES_DIR).values()
        for r in p.releases
        if r.url is None
    )
    answer = client.get(f"/api/v1/firmware/artifacts/{sha}?site=upm")
    assert answer.status_code == 409
    assert str(tmp_path) not in answer.text
    assert "FLEET_ARTIFACTS_DIR" not in answer.text
    assert not re.search(r"\.(bin|img|zip)\b", answer.text), answer.text


def _login_cookie(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/auth/token",
        data={"username": "ops-centre", "password": PASSWORD},
        headers={"Origin": "http://testserver"},
    )
    assert answer.status_code == 200, answer.text
    assert client.cookies.get("fleet_token")


def test_every_state_changing_route_refuses_a_cross_site_request_with_the_cookie(
    app: FastAPI, client: TestClient, tokens: Tokens, registered: Engine
) -> None:
    _login_cookie(client)
    cells = [(m, p) for m, p, _ in route_cells(app) if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(cells) >= 10
    wrong = []
    for method, path in cells:
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: IN_SCOPE[m.group(1)], path)
        for headers in (
            {"Origin": "http://evil.example", "Content-Type": "text/plain"},
            {"Origin": "null", "Content-Type": "application/x-www-form-urlencoded"},
            {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
            {"Referer": "http://evil.example/page", "Content-Type": "text/plain"},
        ):
            answer = client.request(method, url, content=b'{"site": "upm"}', headers=headers)
            if answer.status_code != 403 or "cross-site" not in answer.text:
                wrong.append(f"{method} {path} {headers}: {answer.status_code}")
    assert not wrong, "\n".join(wrong)


def test_same_origin_forms_and_api_clients_pass(client: TestClient, tokens: Tokens) -> None:
    _login_cookie(client)
    same = client.post(
        "/api/v1/enrolment/tokens",
        json={"site": "upm"},
        headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    )
    assert same.status_code == 201, same.text
    client.cookies.clear()
    # A bearer token cannot come from another site's page: a foreign Origin does not matter.
    api = client.post(
        "/api/v1/enrolment/tokens",
        json={"site": "upm"},
        headers={**tokens.headers("ops"), "Origin": "http://evil.example"},
    )
    assert api.status_code == 201, api.text


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]),
    origin=st.text(min_size=1, max_size=60).map(lambda s: "http://" + s),
)
def test_any_foreign_origin_is_refused(method: str, origin: str) -> None:
    scope = {
        "type": "http",
        "method": method,
        "headers": [(b"host", b"fleet.example"), (b"origin", origin.encode("utf-8"))],
    }
    if origin.lower() != "http://fleet.example":
        assert cross_site_reason(scope) is not None


REQUIRED_HEADERS = {
    "content-security-policy": "frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _check_headers(answer: Any) -> list[str]:
    missing = []
    for name, value in REQUIRED_HEADERS.items():
        if value not in answer.headers.get(name, ""):
            missing.append(f"{name}: {answer.headers.get(name)!r}")
    csp = answer.headers.get("content-security-policy", "")
    if "http" in csp and not answer.request.url.path.startswith(("/docs", "/redoc")):
        missing.append(f"CSP names another host: {csp}")
    return missing


def test_every_response_carries_the_security_headers(
    app: FastAPI, client: TestClient, tokens: Tokens
) -> None:
    wrong = []
    paths = [p for m, p, _ in route_cells(app) if m == "GET"]
    paths += ["/static/dashboard.css", "/no-such-page", "/api/v1/no-such", "/openapi.json"]
    for path in paths:
        url = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: IN_SCOPE[m.group(1)], path)
        for headers in (tokens.headers("ops"), {}):
            answer = client.get(url, headers=headers, follow_redirects=False)
            missing = _check_headers(answer)
            if missing:
                wrong.append(f"GET {path} ({answer.status_code}): {missing}")
    # Refusals and failed validation too.
    refused = client.post(
        "/api/v1/enrolment/tokens", content=b"x", headers={"Origin": "http://e.x"}
    )
    wrong += _check_headers(refused)
    assert not wrong, "\n".join(wrong)


@pytest.mark.provokes_500
def test_an_unhandled_failure_still_carries_the_headers(app: FastAPI) -> None:
    @app.get("/api/v1/boom", dependencies=[])
    def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/api/v1/boom")
    assert answer.status_code == 500
    assert not _check_headers(answer)


def test_over_real_http_the_cookie_cannot_post_cross_site_and_pages_carry_the_headers(
    registered: Engine, tokens: Tokens
) -> None:
    """The example as a browser would send it, to a controller served by uvicorn."""
    import threading
    import time

    import httpx
    import uvicorn

    from fleet.embedded_broker import free_port

    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base) as browser:
            page = browser.get("/login")
            assert page.status_code == 200 and not _check_headers(page)
            logged_in = browser.post(
                "/login",
                data={"username": "tech-upm", "password": PASSWORD},
                headers={"Origin": base},
            )
            assert logged_in.status_code == 303 and browser.cookies.get("fleet_token")
            forged = browser.post(
                "/api/v1/enrolment/tokens",
                content=b'{"site": "upm"}',
                headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
            )
            assert forged.status_code == 403 and "cross-site" in forged.text
            assert not _check_headers(forged)
            own = browser.post(
                "/api/v1/enrolment/tokens", json={"site": "upm"}, headers={"Origin": base}
            )
            assert own.status_code == 201, own.text
    finally:
        server.should_exit = True
        thread.join(10)
    with Session(registered) as session:
        assert session.exec(select(func.count()).select_from(EnrolmentToken)).one() == 1


def test_a_site_typed_in_capitals_is_told_as_a_site_code_not_as_out_of_scope(
    client: TestClient, tokens: Tokens
) -> None:
    answer = client.post(
        "/api/v1/enrolment/tokens", json={"site": "UPM"}, headers=tokens.headers("technician")
    )
    assert answer.status_code == 422, answer.text
    assert "outside" not in answer.text
    assert "lowercase" in answer.text and "'upm'" in answer.text, answer.text
    for path in ("/api/v1/sites/UPM", "/api/v1/devices?site=UPM"):
        answer = client.get(path, headers=tokens.headers("technician"))
        assert answer.status_code == 422 and "did you mean 'upm'" in answer.text, answer.text
