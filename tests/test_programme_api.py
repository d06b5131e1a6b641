"""The programme API: phases, milestones, overview, CSV, timeline, and the 4xx cases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers


@pytest.fixture
def client(registered: Engine) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    with TestClient(app, headers=ops_headers(registered)) as client:
        yield client


def field_of(response: Any) -> str:
    return response.json()["detail"][0]["loc"][-1]


def test_phases_of_a_site_with_their_milestones(client: TestClient) -> None:
    phases = client.get("/api/v1/sites/upm/phases").json()
    assert [(p["phase"], p["rooms"]) for p in phases] == [(1, ["upm-smart-1"])]
    installed = phases[0]["milestones"][0]
    assert (installed["milestone"], installed["actual"], installed["actual_end"]) == (
        "installed",
        "2024-03-25",
        "2024-04-02",
    )


def test_create_phase_then_record_and_patch_a_classroom_milestone(client: TestClient) -> None:
    created = client.post(
        "/api/v1/sites/upm/phases", json={"name": "second phase", "rooms": ["upm-smart-2"]}
    )
    assert created.status_code == 201, created.text
    assert created.json()["phase"] == 2
    url = "/api/v1/sites/upm/phases/2/milestones"
    body = {"milestone": "agreement_signed", "room": "upm-smart-2", "actual": "2025-01-10"}
    # Recorded by whoever the bearer token belongs to (the X-Fleet-User header is gone).
    recorder = ops_headers(client.app.state.engine, "ops-recorder")  # type: ignore[attr-defined]
    posted = client.post(url, json=body, headers=recorder)
    assert posted.status_code == 201, posted.text
    assert posted.json()["recorded_by"] == "ops-recorder"
    planned = {"milestone": "installed", "room": "upm-smart-2", "planned": "2025-05-01"}
    assert client.post(url, json=planned).status_code == 201
    patched = client.patch(
        f"{url}/installed",
        params={"room": "upm-smart-2"},
        json={"actual": "2025-05-03", "evidence": {"trained": 12}},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["reached"], patched.json()["evidence"]) == (True, {"trained": 12})


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "field"),
    [
        ("get", "/api/v1/sites/nowhere/phases", None, 404, "code"),
        ("post", "/api/v1/sites/nowhere/phases", {}, 404, "code"),
        ("post", "/api/v1/sites/upm/phases", {"rooms": ["tu-smart-1"]}, 422, "rooms"),
        ("post", "/api/v1/sites/upm/phases", {"phase": 1}, 409, "phase"),
        ("post", "/api/v1/sites/upm/phases/7/milestones", {"milestone": "installed"}, 404, "phase"),
        (
            "post",
            "/api/v1/sites/upm/phases/1/milestones",
            {"milestone": "unpacked", "planned": "2025-01-01"},
            422,
            "milestone",
        ),
        (
            "post",
            "/api/v1/sites/upm/phases/1/milestones",
            {"milestone": "installed", "room": "ghost-room", "actual": "2024-03-25"},
            422,
            "room",
        ),
        (
            "post",
            "/api/v1/sites/upm/phases/1/milestones",
            {"milestone": "in_use", "actual": "2024-03-01"},
            422,
            "actual",
        ),
        (
            "post",
            "/api/v1/sites/ugb/phases/1/milestones",
            {
                "milestone": "equipment_delivered",
                "actual": "2025-02-10",
                "actual_end": "2025-02-01",
            },
            422,
            "actual_end",
        ),
        (
            "post",
            "/api/v1/sites/upm/phases/1/milestones",
            {"milestone": "installed", "planned": "2025-01-01"},
            409,
            "milestone",
        ),
        (
            "patch",
            "/api/v1/sites/upm/phases/1/milestones/in_use",
            {"reached": True},
            404,
            "milestone",
        ),
        (
            "patch",
            "/api/v1/sites/upm/phases/1/milestones/installed",
            {"actual_end": "2024-03-01"},
            422,
            "actual_end",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field_and_writes_nothing(
    client: TestClient, method: str, url: str, body: Any, status: int, field: str
) -> None:
    before = client.get("/api/v1/programme.csv").text
    response = client.request(method, url, json=body)
    assert response.status_code == status, response.text
    assert field_of(response) == field
    assert client.get("/api/v1/programme.csv").text == before


def test_ugb_installation_recorded_while_delivery_is_only_planned_needs_a_correction(
    client: TestClient,
) -> None:
    url = "/api/v1/sites/ugb/phases/1/milestones"
    delivery = {"milestone": "equipment_delivered", "planned": "2025-06-01"}
    assert client.post(url, json=delivery).status_code == 201
    refused = client.patch(f"{url}/installed", json={"actual": "2025-07-01"})
    assert refused.status_code == 422 and field_of(refused) == "milestone"
    assert "equipment_delivered" in refused.json()["detail"][0]["msg"]
    corrected = client.patch(f"{url}/installed", json={"actual": "2025-07-01", "correction": True})
    assert corrected.status_code == 200 and corrected.json()["correction"] is True


def test_programme_overview_says_current_next_and_late(client: TestClient) -> None:
    rows = {r["site"]: r for r in client.get("/api/v1/programme?as_of=2026-01-15").json()}
    assert rows["ugb"]["current"]["milestone"] == "agreement_signed"
    assert rows["ugb"]["next"] == {
        "phase": 1,
        "room": None,
        "milestone": "installed",
        "planned": "2025-12-31",
        "actual": None,
        "actual_end": None,
        "reached": False,
    }
    assert rows["ugb"]["late"] is True
    assert rows["upm"]["current"]["milestone"] == "training_done"
    assert (rows["upm"]["next"], rows["upm"]["late"]) == (None, False)
    early = {r["site"]: r["late"] for r in client.get("/api/v1/programme?as_of=2025-06-01").json()}
    assert not any(early.values())


def test_csv_export_imports_back_through_the_api(client: TestClient) -> None:
    exported = client.get("/api/v1/programme.csv")
    assert exported.headers["content-type"].startswith("text/csv")
    imported = client.post(
        "/api/v1/programme.csv", content=exported.text, headers={"Content-Type": "text/csv"}
    )
    assert imported.status_code == 200, imported.text
    assert imported.json()["rows"] == exported.text.count("\n") - 1
    assert client.get("/api/v1/programme.csv").text == exported.text
    bad = client.post("/api/v1/programme.csv", content="site,phase\nupm,1\n")
    assert bad.status_code == 422 and field_of(bad) == "csv"


def test_timeline_json_and_svg(client: TestClient) -> None:
    data = client.get("/api/v1/sites/tribhuvan/timeline").json()
    assert data["rows"][0]["milestones"][0]["actual_end"] == "2024-10-01"
    svg = client.get("/api/v1/sites/tribhuvan/timeline.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    # A picture for a person: the milestone's words; its code stays in the JSON.
    assert svg.text.startswith("<svg") and "training done" in svg.text
    assert "training_done" not in svg.text
    assert data["rows"][0]["milestones"][-1]["milestone"] == "training_done"
    assert client.get("/api/v1/sites/nowhere/timeline.svg").status_code == 404


def test_overview_milestones_agree_with_the_programme_api(client: TestClient) -> None:
    from sqlmodel import Session

    from fleet.programme.schemas import MilestoneRef
    from fleet.web.programme_page import milestone_label, milestones_by_site

    url = "/api/v1/sites/upm/phases/1/milestones"
    overdue = {"milestone": "training_done", "room": "upm-smart-1", "planned": "2024-05-01"}
    assert client.post(url, json=overdue).status_code == 201
    programme = client.get("/api/v1/programme").json()
    with Session(client.app.state.engine) as session:  # type: ignore[attr-defined]
        shown = milestones_by_site(session)
    expected = {
        p["site"]: (
            milestone_label(MilestoneRef(**p["current"]) if p["current"] else None, room=False),
            p["late"],
        )
        for p in programme
    }
    # Sites with no milestone are left out: the overview shows them as "—", not late.
    assert shown == {site: v for site, v in expected.items() if v != ("—", False)}
    assert shown["upm"][1] is True
