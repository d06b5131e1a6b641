"""Report formats parse back to the same numbers; scheduled reports are stored once, caught up
after a restart, and the same bytes when made again; the API refuses bad input by name."""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from sqlalchemy import Engine, select

from fleet.api.app import create_app
from fleet.api.routes.reports import vendor_scope
from fleet.db import make_engine
from fleet.ingest.pipeline import Ingest
from fleet.reports.compute import ReportRequest, build_report
from fleet.reports.formats import ReportFormat, render_csv, render_xlsx, renderer, table
from fleet.reports.models import StoredReport
from fleet.reports.scheduled import store_due_reports
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers
from tests.reports_feed import BASIS, KATHMANDU, MONTHLY, at, every, feed, roll_up

PANEL = "tu-sc1-panel-1"
UPM_PANEL = "upm-sc1-panel-1"
RECEIVED_LATE = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture
def used(ingest: Ingest, registered: Engine) -> Engine:
    """Tribhuvan's panel and projector in use on 3 March 2025, a UPM panel on 20 February."""
    day = "2025-03-03"
    readings = every(PANEL, at(day, "06:30", KATHMANDU), at(day, "11:15", KATHMANDU), input="a")
    readings += every(PANEL, at(day, "11:15", KATHMANDU), at(day, "12:00", KATHMANDU), input="b")
    readings += every(
        "tu-sc1-projector",
        at(day, "07:00", KATHMANDU),
        at(day, "09:00", KATHMANDU),
        step_s=120,
        lamp_hours=100.5,
        firmware="1.4.0",
    )
    feed(ingest, "tribhuvan", readings, received_at=RECEIVED_LATE)
    start = datetime(2025, 2, 20, 1, 0, tzinfo=UTC)
    feed(ingest, "upm", every(UPM_PANEL, start, start + timedelta(hours=3)), RECEIVED_LATE)
    roll_up(registered)
    return registered


def make(engine: Engine, **kw: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        request = ReportRequest(date(2025, 3, 1), date(2025, 3, 31), **kw)
        return build_report(conn, request, BASIS)


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


def test_csv_and_xlsx_parse_back_to_the_reports_numbers(used: Engine) -> None:
    report = make(used, vendor="Seewo")
    header, rows = table(report)
    assert "input_share:a" in header and "input_share:b" in header

    parsed_csv = list(csv.reader(io.StringIO(render_csv(report).decode())))
    assert parsed_csv[0] == header
    assert [[_number(v) for v in row] for row in parsed_csv[1:]] == rows

    sheet = load_workbook(io.BytesIO(render_xlsx(report)))["Figures"]
    values = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert list(values[0]) == header
    assert values[1:] == rows
    panel = next(r for r in report["devices"] if r["id"] == PANEL)
    assert panel["hours_on"] == 5.5
    # Shares are by hour: 11:00-12:00 had 15 min on a and 45 min on b, so it counts as b.
    assert panel["inputs"] == {"a": round(270 / 330, 4), "b": round(60 / 330, 4)}


def test_every_format_is_the_same_bytes_when_made_again(used: Engine) -> None:
    first = make(used)
    again = make(used)
    for fmt in ReportFormat:
        assert renderer(fmt)(first) == renderer(fmt)(again), fmt
    html = renderer(ReportFormat.html)(first).decode()
    assert "<svg" in html and "@media print" in html and "<script" not in html


def test_monthly_reports_stored_on_the_first_and_caught_up_after_restart(
    used: Engine, db_url: str
) -> None:
    # 1 March, 05:00 UTC: February is over everywhere but the delay (6 h) has not passed.
    assert store_due_reports(used, MONTHLY, datetime(2025, 3, 1, 5, tzinfo=UTC)) == 0
    feb = store_due_reports(used, MONTHLY, datetime(2025, 3, 1, 7, tzinfo=UTC))
    with used.connect() as conn:
        names = sorted({r.vendor for r in conn.execute(select(StoredReport.vendor))})  # type: ignore[call-overload]
    vendors = len(names)
    assert feb == vendors * 4

    # The controller was down from March to June; a new process starts on 2 June.
    restarted = make_engine(db_url)
    try:
        caught_up = store_due_reports(restarted, MONTHLY, datetime(2025, 6, 2, tzinfo=UTC))
        assert caught_up == vendors * 4 * 3  # March, April, May
        assert store_due_reports(restarted, MONTHLY, datetime(2025, 6, 2, tzinfo=UTC)) == 0
        with restarted.connect() as conn:
            stored = conn.execute(
                select(StoredReport).where(  # type: ignore[call-overload]
                    StoredReport.vendor == "Seewo", StoredReport.period_start == date(2025, 3, 1)
                )
            ).all()
            report = build_report(
                conn, ReportRequest(date(2025, 3, 1), date(2025, 3, 31), "Seewo"), BASIS
            )
    finally:
        restarted.dispose()
    assert len(stored) == 4
    for row in stored:
        again = renderer(ReportFormat(row.format))(report)
        assert (
            hashlib.sha256(again).hexdigest()
            == row.sha256
            == hashlib.sha256(row.content).hexdigest()
        ), row.format


@pytest.fixture
def client(used: Engine, tmp_path: Path) -> TestClient:
    app = create_app(Settings(data_dir=tmp_path), used)
    return TestClient(app, headers=ops_headers(used))


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("vendor=Acme&from=2025-03-01&to=2025-03-31", 404, "Acme"),
        ("site=atlantis&from=2025-03-01&to=2025-03-31", 404, "atlantis"),
        ("from=2025-03-31&to=2025-03-01", 422, "swap them"),
        ("from=2024-01-01&to=2025-03-01", 422, "FLEET_REPORT_MAX_DAYS"),
        ("from=2025-03-01&to=2025-03-31&format=pdf", 422, "'pdf' is not supported"),
        ("from=March&to=2025-03-31", 422, "date"),
    ],
)
def test_usage_api_refuses_bad_input_by_name(
    client: TestClient, query: str, status: int, words: str
) -> None:
    response = client.get(f"/api/v1/reports/usage?{query}")
    assert response.status_code == status, response.text
    assert words in response.text


def test_usage_api_streams_each_format(client: TestClient) -> None:
    for fmt in ("json", "csv", "xlsx", "html"):
        response = client.get(f"/api/v1/reports/usage?from=2025-03-01&to=2025-03-31&format={fmt}")
        assert response.status_code == 200, response.text
        # The printable HTML opens in the browser; the others download.
        how = "inline" if fmt == "html" else "attachment"
        assert response.headers["content-disposition"].startswith(how), fmt
    body = client.get("/api/v1/reports/usage?vendor=seewo&from=2025-03-01&to=2025-03-31").json()
    assert {d["vendor"] for d in body["devices"]} == {"Seewo"}


def test_vendor_scope_limits_a_caller_to_its_own_vendor(client: TestClient, used: Engine) -> None:
    client.app.dependency_overrides[vendor_scope] = lambda: "Seewo"  # type: ignore[attr-defined]
    url = "/api/v1/reports/usage?from=2025-03-01&to=2025-03-31"
    body = client.get(url).json()
    assert body["vendor"] == "Seewo"
    assert {d["vendor"] for d in body["devices"]} == {"Seewo"}
    refused = client.get(url + "&vendor=MAXHUB")
    assert refused.status_code == 403 and "Seewo" in refused.text


def test_stored_reports_listed_and_downloaded_with_checksum(
    client: TestClient, used: Engine
) -> None:
    store_due_reports(used, MONTHLY, datetime(2025, 4, 1, 7, tzinfo=UTC))
    listed = client.get("/api/v1/reports?vendor=Seewo").json()
    assert {r["period_start"] for r in listed} == {"2025-02-01", "2025-03-01"}
    xlsx = next(r for r in listed if r["format"] == "xlsx" and r["period_start"] == "2025-03-01")
    download = client.get(xlsx["url"])
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == xlsx["sha256"]
    assert download.headers["x-content-sha256"] == xlsx["sha256"]
    assert client.get("/api/v1/reports/999999").status_code == 404
