"""No API request gets a 500: the field's examples (issue 15, kind 6), on SQLite and PostgreSQL,
and the rule they are examples of: every path and query parameter is bounded in the OpenAPI
schema itself, and what no handler answered becomes a problem with a request id.

- An offset or id of 2^63 or more (eleven operations answered 500): 422.
- A usage report for 0001-01-01..0001-01-31: 422 naming the window.
- A device whose stored reading holds Infinity (kept from before ingest refused it): its page
  and its JSON answer 200.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from fleet.api.app import create_app
from fleet.auth.models import AuditEntry
from fleet.ingest.pipeline import Ingest
from fleet.models import Device, Sample
from fleet.reports.models import StoredReport, UsageHour
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, read_at_answer
from tests.fixtures_db import RECEIVED, health, reading

PROJECTOR = "upm-sc2-projector"
BIG = 2**63  # one past what a 64-bit id column holds
# The eleven operations of the issue that answered 500 for an id or phase number of 2^63.
BY_ID = [
    ("GET", f"/api/v1/alerts/{BIG}", None),
    ("POST", f"/api/v1/alerts/{BIG}/ack", {"by": "ops"}),
    ("POST", f"/api/v1/alerts/{BIG}/resolve", {"by": "ops"}),
    ("GET", f"/api/v1/reports/{BIG}", None),
    ("GET", f"/api/v1/rollouts/{BIG}", None),
    ("POST", f"/api/v1/rollouts/{BIG}/start", None),
    ("POST", f"/api/v1/rollouts/{BIG}/pause", None),
    ("POST", f"/api/v1/rollouts/{BIG}/resume", None),
    ("POST", f"/api/v1/rollouts/{BIG}/cancel", None),
    ("POST", f"/api/v1/sites/upm/phases/{BIG}/milestones", {"milestone": "installed"}),
    ("PATCH", f"/api/v1/sites/upm/phases/{BIG}/milestones/installed", {"note": "x"}),
]


@pytest.fixture
def app(registered: Engine, tmp_path: Any) -> FastAPI:
    settings = Settings(data_dir=tmp_path, database_url=str(registered.url))
    return create_app(settings, engine=registered)


@pytest.fixture
def client(app: FastAPI, tokens: Tokens) -> Iterator[TestClient]:
    with TestClient(app, headers=tokens.headers("ops"), raise_server_exceptions=False) as c:
        yield c


def locations(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in response.json()["detail"]]


def test_an_offset_past_64_bits_is_refused_not_a_500(client: TestClient) -> None:
    response = client.get("/api/v1/devices?offset=36780845201108533044307820544")
    assert response.status_code == 422, response.text
    assert locations(response) == [["query", "offset"]]
    assert "after" in response.text  # what to use instead


@pytest.mark.parametrize(("method", "path", "body"), BY_ID, ids=[f"{m} {p}" for m, p, _ in BY_ID])
def test_an_id_or_phase_of_2_to_the_63_is_refused_not_a_500(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == 422, response.text
    [location] = locations(response)
    assert location[0] == "path" and location[1] in ("alert_id", "report_id", "rollout_id", "phase")


def test_the_largest_id_each_column_holds_is_a_404(client: TestClient) -> None:
    """In bounds, but no such row: the query runs, on SQLite and PostgreSQL alike."""
    for path in (f"/api/v1/alerts/{BIG - 1}", f"/api/v1/reports/{BIG - 1}"):
        assert client.get(path).status_code == 404, path
    assert client.get(f"/api/v1/rollouts/{2**31 - 1}").status_code == 404
    assert client.get(f"/api/v1/rollouts/{2**31}").status_code == 422  # a 32-bit column


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01&to=0001-01-31",
        "from=9999-12-01&to=9999-12-31",
        "from=1999-12-31&to=2000-01-02",
    ],
)
def test_a_usage_report_outside_the_window_is_refused_not_a_500(
    client: TestClient, query: str
) -> None:
    response = client.get(f"/api/v1/reports/usage?{query}")
    assert response.status_code == 422, response.text
    assert "2000-01-01 to 2099-12-31" in response.text


def test_a_usage_report_at_the_edges_of_the_window_is_made(client: TestClient) -> None:
    for query in ("from=2000-01-01&to=2000-01-31", "from=2099-12-01&to=2099-12-31"):
        response = client.get(f"/api/v1/reports/usage?{query}")
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/alerts?since=0001-01-01T00:00:00%2B14:00",
        "/api/v1/audit?since=9999-12-31T23:59:59-12:00",
        f"/api/v1/devices/{PROJECTOR}/health?from=0001-01-01T00:00:00%2B05:00",
        f"/api/v1/devices/{PROJECTOR}/health?to=2100-01-01T00:00:00Z",
        "/api/v1/programme?as_of=0001-01-01",
    ],
)
def test_instants_and_dates_outside_the_window_are_refused_not_a_500(
    client: TestClient, path: str
) -> None:
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert "2000-01-01" in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/devices?vendor=%00",
        "/api/v1/devices?site=upm%00",
        "/api/v1/audit?actor=a%00b",
        f"/api/v1/devices/{'x' * 65}",
        "/api/v1/sites/upm%00/events",
        "/api/v1/alerts?after=bm90IGEgY3Vyc29y",
    ],
)
def test_names_and_text_out_of_bounds_are_refused(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), response.text


def test_a_vendor_name_is_no_pattern(client: TestClient, registered: Engine) -> None:
    """Stored reports were matched with ILIKE, so '%' matched every vendor and '_' any letter;
    a name is matched as a name, in any case."""
    with Session(registered) as session:
        session.add(
            StoredReport(
                vendor="Seewo",
                period="monthly",
                period_start=date(2025, 2, 1),
                period_end=date(2025, 2, 28),
                format="csv",
                media_type="text/csv",
                filename="usage-seewo-2025-02.csv",
                sha256="0" * 64,
                size=1,
                content=b"x",
                created_at=RECEIVED,
            )
        )
        session.commit()
    assert len(client.get("/api/v1/reports", params={"vendor": "seewo"}).json()) == 1
    for vendor in ("Seewo\\", "%", "S_ewo"):
        response = client.get("/api/v1/reports", params={"vendor": vendor})
        assert response.status_code == 200 and response.json() == [], response.text


def test_scoped_callers_naming_what_nothing_can_be_get_a_refusal_not_a_500(
    app: FastAPI, tokens: Tokens
) -> None:
    """The scope check runs before the route validates its parameters: it must not look up a
    name with a NUL in it (PostgreSQL refuses it) or an id past 64 bits (SQLite cannot bind)."""
    with TestClient(app, raise_server_exceptions=False) as client:
        for role in ("technician", "vendor"):
            headers = tokens.headers(role)
            for path in (
                "/api/v1/devices?device=a%00b",  # not a filter of this list: the scope's
                "/api/v1/alerts?device=a%00b",
                f"/api/v1/alerts/{BIG}",
                "/devices/a%00b",
                "/api/v1/devices/a%00b",
            ):
                response = client.get(path, headers=headers)
                assert response.status_code in (200, 403, 404, 422), (role, path, response.text)


def test_hostile_paths_are_refused_anonymous_ones_counted_and_known_ones_audited_escaped(
    app: FastAPI, registered: Engine, tokens: Tokens
) -> None:
    """Nobody's requests are counted, not stored; a known user's refusal is stored with its
    hostile path escaped, never a NUL in the table."""
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/api/v1/devices/a%00b", "/api/v1/sites/%ED%A0%80/events", "/api/v1/audit"):
            assert client.get(path).status_code == 401, path
        login = client.post("/api/v1/auth/token", data={"username": "x\x00y", "password": "p"})
        assert login.status_code == 401
        refused = client.get("/api/v1/rollouts/a%00b", headers=tokens.headers("technician"))
        assert refused.status_code == 403, refused.text
    with Session(registered) as session:
        denied = session.exec(select(AuditEntry).where(AuditEntry.outcome == "denied")).all()
    assert [(e.actor, e.target) for e in denied] == [("tech-upm", "GET /api/v1/rollouts/a\\x00b")]


@pytest.fixture
def infinite(registered: Engine) -> Engine:
    """A projector whose samples and latest reading hold values no reading may hold any more:
    rows kept from before ingest refused them."""
    t0 = RECEIVED - timedelta(minutes=30)
    Ingest(registered).handle(
        [
            health(
                "upm",
                [
                    reading(PROJECTOR, t0 + timedelta(minutes=i), lamp_hours=100.0 + i)
                    for i in range(10)
                ],
            )
        ]
    )
    with Session(registered) as session:
        session.execute(
            update(Sample)
            .where(col(Sample.device_id) == PROJECTOR, col(Sample.ts) >= t0 + timedelta(minutes=5))
            .values(lamp_hours=float("inf"), temperature_c=float("-inf"))
        )
        if registered.dialect.name == "sqlite":
            # PostgreSQL's json cannot hold Infinity at all; SQLite kept what Python wrote.
            device = session.get(Device, PROJECTOR)
            assert device is not None and device.last_reading is not None
            last = {**device.last_reading, "lamp_hours": math.inf, "uptime_s": math.nan}
            session.execute(
                update(Device).where(col(Device.id) == PROJECTOR).values(last_reading=last)
            )
        session.commit()
    return registered


def test_a_device_with_infinite_values_stored_still_has_its_page(
    infinite: Engine, client: TestClient
) -> None:
    page = client.get(f"/devices/{PROJECTOR}")
    assert page.status_code == 200, page.text
    assert 'aria-label="Lamp hours"' in page.text  # the chart, of the finite samples
    site = client.get("/sites/upm")
    assert site.status_code == 200, site.text
    if infinite.dialect.name == "sqlite":
        assert "inf (not a number a device can report)" in page.text


def test_a_device_with_infinite_values_stored_still_has_its_json(
    infinite: Engine, client: TestClient
) -> None:
    for path in (f"/api/v1/devices/{PROJECTOR}", f"/api/v1/devices/{PROJECTOR}/health"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        # Strict JSON: no Infinity or NaN token, which most parsers refuse.
        body = json.loads(response.text, parse_constant=_refuse_constant)
        assert body is not None
    health_items = client.get(f"/api/v1/devices/{PROJECTOR}/health").json()["items"]
    assert None in {s["lamp_hours"] for s in health_items}  # written as null


def test_a_usage_report_over_non_finite_roll_ups_is_made_in_every_format(
    registered: Engine, client: TestClient
) -> None:
    """Roll-ups of samples stored before ingest refused Infinity: a lamp counter of -Infinity
    made its end-of-life date overflow (a 500 in every format). Such values are unknown."""
    with Session(registered) as session:
        for hour in range(3):
            session.add(
                UsageHour(
                    device_id=PROJECTOR,
                    hour_start=RECEIVED.replace(hour=hour),
                    local_date=RECEIVED.date(),
                    local_hour=hour + 8,
                    local_weekday=0,
                    minutes=60,
                    minutes_known=60,
                    minutes_unknown=0,
                    minutes_reachable=60,
                    minutes_on=60,
                    minutes_faulty=0,
                    class_minutes_known=60,
                    class_minutes_on=60,
                    class_minutes_available=60,
                    fault_starts=0,
                    peak_temperature_c=math.inf,
                    lamp_hours_added=1.0,
                    filter_hours_added=math.inf,
                    lamp_hours_last=-math.inf,
                    filter_hours_last=math.inf,
                )
            )
        session.commit()
    url = f"/api/v1/reports/usage?from=2025-03-01&to=2025-03-31&device={PROJECTOR}&format="
    for fmt in ("json", "csv", "xlsx", "html"):
        assert client.get(url + fmt).status_code == 200, fmt
    report = json.loads(client.get(url + "json").text, parse_constant=_refuse_constant)
    [row] = report["devices"]
    assert (row["lamp_hours_now"], row["lamp_end_of_life"], row["filter_hours_used"]) == (
        None,
        None,
        0.0,
    )
    assert row["hours_on"] == 3.0  # the finite figures still count


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"the JSON holds {name}")


@pytest.mark.provokes_500
def test_an_unforeseen_failure_is_a_problem_with_a_request_id_and_no_internals(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    @app.get("/api/v1/broken")
    def broken() -> None:
        raise RuntimeError("secret detail: /etc/fleet/credentials at line 3")

    with TestClient(app, raise_server_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="fleet.api.last_resort"):
            response = client.get("/api/v1/broken")
        fine = client.get("/healthz", headers={"X-Request-ID": "probe-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    request_id = response.headers["X-Request-ID"]
    assert problem["request_id"] == request_id and request_id in problem["detail"]
    assert problem["status"] == 500
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert request_id in caplog.text and "secret detail" in caplog.text  # the log has it all
    assert fine.headers["X-Request-ID"] == "probe-1"  # a caller's own id is kept


def test_every_path_and_query_parameter_is_bounded_in_the_schema(app: FastAPI) -> None:
    """The rule the examples are of: a new parameter without a bound fails here."""
    unbounded = []
    for path, operations in app.openapi()["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("path", "query"):
                    continue
                if not _bounded(parameter["schema"], parameter.get("description", "")):
                    unbounded.append(f"{method.upper()} {path}: {parameter['name']}")
    assert not unbounded, "parameters without a bound:\n" + "\n".join(unbounded)


def _bounded(schema: dict[str, Any], description: str) -> bool:
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    return all(_one_bounded(s, description) for s in options)


def _one_bounded(schema: dict[str, Any], description: str) -> bool:
    if "$ref" in schema or "enum" in schema or schema.get("type") == "boolean":
        return True  # an enum
    if schema.get("type") == "integer":
        return "minimum" in schema and "maximum" in schema
    if schema.get("type") != "string":
        return False
    if schema.get("format") in ("date", "date-time"):
        return "2000-01-01 to 2099-12-31" in description  # the window, stated
    pattern = schema.get("pattern", "")
    return "maxLength" in schema or bool(pattern and not re.search(r"[*+]", pattern))


HEADER = "site,phase,phase_name,room,milestone,planned,actual,actual_end,reached,note,evidence,correction,recorded_by,recorded_at"  # noqa: E501
# Evidence nested past the json module's recursion limit, within a cell's 10,000 characters.
DEEP_LIST = ',"' + "[" * 5000 + '",false,ops'
DEEP_OBJECT = ',"' + '{""a"":' * 2000 + '",false,ops'
GOOD = "upm,7,Phase 7,,installed,2024-05-01,,,false,,,false,ops,2025-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("row", "column"),
    [
        (GOOD.replace("upm,7,", f"upm,{2**40},"), "phase"),
        (GOOD.replace("2024-05-01", "0001-01-01"), "planned"),
        (GOOD.replace("2024-05-01", "9999-12-31"), "planned"),
        (GOOD.replace("Phase 7", "Phase\x007"), "phase_name"),
        (GOOD.replace("upm,", "upm\x00,"), "site"),
        (GOOD.replace(",,false,ops", ',"{""a"": NaN}",false,ops'), "evidence"),
        (GOOD.replace(",,false,ops", ',"[1, 2]",false,ops'), "evidence"),
        (GOOD.replace(",,false,ops", DEEP_LIST), "evidence"),
        (GOOD.replace(",,false,ops", DEEP_OBJECT), "evidence"),
        (GOOD.replace("2025-01-01T00:00:00+00:00", "0001-01-01T00:00:00+14:00"), "recorded_at"),
        ("upm", "phase"),  # a short line: the cells it leaves out are empty
        (GOOD.replace("Phase 7", "x" * 200_000), "csv"),  # past the csv module's field limit
    ],
)
def test_a_programme_csv_with_values_out_of_bounds_is_refused_by_column(
    client: TestClient, row: str, column: str
) -> None:
    response = client.post(
        "/api/v1/programme.csv", content=f"{HEADER}\n{row}\n", headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", column] and error["msg"].startswith("line 2: "), error


def test_a_programme_csv_in_bounds_imports_and_one_too_large_is_413(client: TestClient) -> None:
    imported = client.post(
        "/api/v1/programme.csv", content=f"{HEADER}\n{GOOD}\n", headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    huge = f"{HEADER}\n" + f"{GOOD}\n" * 70_000  # some 6 MB
    response = client.post(
        "/api/v1/programme.csv", content=huge, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 413


def test_a_refused_change_that_wrote_first_is_audited_before_its_answer(
    registered: Engine, tokens: Tokens, tmp_path: Any
) -> None:
    """A CSV whose first row is good and second is not: the first row's phase was written
    (uncommitted) when the second was refused. The refusal's audit entry is in the log when the
    answer starts and nothing of the import is: on SQLite the request's uncommitted write held
    the database's one write lock, and the entry waited busy_timeout (10 s) for it."""
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)

    def programme_audit() -> list[tuple[str, str]]:
        with Session(registered) as session:
            rows = session.exec(
                select(AuditEntry)
                .where(col(AuditEntry.action).startswith("programme."))
                .order_by(col(AuditEntry.id))
            ).all()
            return [(r.action, r.outcome) for r in rows]

    watched, at_answer = read_at_answer(app, programme_audit)
    bad = GOOD.replace("upm,7,Phase 7", "upm,8,Phase 8").replace("2024-05-01", "0001-01-01")
    with TestClient(watched, headers=tokens.headers("ops")) as client:
        refused = client.post(
            "/api/v1/programme.csv",
            content=f"{HEADER}\n{GOOD}\n{bad}\n",
            headers={"Content-Type": "text/csv"},
        )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["msg"].startswith("line 3: "), refused.text
    assert at_answer == [[("programme.post_programme_csv", "failed 422")]]
    with TestClient(app, headers=tokens.headers("ops")) as client:
        exported = client.get("/api/v1/programme.csv").text
    assert "Phase 7" not in exported  # all rows or none


# JSON may escape a lone surrogate ("\ud800"): valid JSON, no valid UTF-8 text.
SURROGATE = "\\ud800"
PATH_VALUES = {"code": "upm", "device_id": "upm-sc1-pc", "milestone": "installed"}


def _json_operations(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    """(method, path with its parameters filled, the body's top-level properties) of every
    operation whose request body is JSON."""
    schema = app.openapi()
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            body = content["application/json"]["schema"]
            if "$ref" in body:
                body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
            filled = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m[1], "1"), path)
            found.append((method.upper(), filled, sorted(body.get("properties", {}))))
    return found


def test_a_lone_surrogate_in_any_json_body_is_refused_not_a_500(client: TestClient) -> None:
    """Every operation with a JSON body, sent each of its fields (and an unknown one) as a
    lone surrogate, then as an object and a list holding them: a 4xx, never a 500 (FastAPI's
    422 echoed the refused value, which cannot be written as UTF-8: every such route
    answered 500)."""
    operations = _json_operations(client.app)  # type: ignore[arg-type]
    assert len(operations) >= 20, operations  # the schema's, not a list that could go stale
    failed = []
    for method, path, fields in operations:
        for value in (f'"{SURROGATE}"', f'{{"{SURROGATE}": ["{SURROGATE}"]}}'):
            body = "{" + ", ".join(f'"{f}": {value}' for f in [*fields, "extra"]) + "}"
            answer = client.request(
                method, path, content=body.encode(), headers={"Content-Type": "application/json"}
            )
            if answer.status_code >= 500:
                failed.append(f"{method} {path} {value}: {answer.status_code}")
            elif answer.status_code == 422:
                json.loads(answer.text)  # the refusal is JSON a client can read
    assert not failed, failed


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/v1/silences", {"Content-Type": "application/json"}),
        ("/api/v1/auth/token", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("/api/v1/enrolment", {"Content-Type": "application/json"}),  # anonymous, by token
        ("/login", {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
)
def test_a_body_over_the_cap_is_413_before_it_is_read(
    app: FastAPI, path: str, headers: dict[str, str], chunked: bool
) -> None:
    """Starlette reads a JSON or form body whole before a model can refuse it: without a cap,
    one request of gigabytes, anonymous ones included, took the controller's memory."""
    from fleet.api.body_limit import MAX_BODY_BYTES

    big = b'{"x": "' + b"a" * MAX_BODY_BYTES + b'"}'

    def pieces() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    with TestClient(app, raise_server_exceptions=False) as anonymous:
        answer = anonymous.post(
            path, content=pieces() if chunked else big, headers={**headers, "Origin": ""}
        )
    assert answer.status_code == 413, (answer.status_code, answer.text[:200])
    assert answer.json()["detail"].startswith(f"the request body is over {MAX_BODY_BYTES} bytes")


def test_a_body_under_the_cap_reaches_its_route_whole(client: TestClient) -> None:
    """Chunked, just under the cap: read, handed on whole, and judged by the route's model."""
    from fleet.api.body_limit import MAX_BODY_BYTES

    reason = "a" * (MAX_BODY_BYTES - 200)
    body = json.dumps({"site": "upm", "reason": reason, "ends_at": "2099-01-01T00:00:00Z"})
    answer = client.post(
        "/api/v1/silences",
        content=iter([body.encode()[:1000], body.encode()[1000:]]),
        headers={"Content-Type": "application/json"},
    )
    # The reason is past its own bound (max_length): the model, not the cap, refuses it.
    assert answer.status_code == 422, answer.text[:200]
    assert locations(answer) == [["body", "reason"]]
