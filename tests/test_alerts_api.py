"""The alerts API through a TestClient: filters, pagination, acknowledge, resolve."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fleet.alerts.evaluation import AlertRules, evaluate_alerts, evaluate_devices
from fleet.api.app import create_app
from fleet.ingest.pipeline import Ingest
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers, user_token
from tests.fixtures_db import agent_state, health, reading

T = datetime.fromisoformat("2025-03-03T03:00:00+00:00")  # 11:00 in Kuala Lumpur, in class


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def rules() -> AlertRules:
    return AlertRules(DEFAULT_PROFILES_DIR, unreachable_after=timedelta(minutes=10), notify=False)


@pytest.fixture
def client(
    ingest: Ingest, registered: Engine, settings: Settings, rules: AlertRules
) -> Iterator[TestClient]:
    """upm: projector hot and at 95 % lamp, panel-1 with a fan warning, each for long enough
    to raise its alert; tuit offline."""
    for minute in (0, 1, 2):
        t = T + timedelta(minutes=minute)
        ingest.handle(
            [
                health(
                    "upm",
                    [
                        reading("upm-sc2-projector", t, temperature_c=80, lamp_hours=4750),
                        reading("upm-sc1-panel-1", t, errors={"fan": "warning"}),
                    ],
                    received_at=t,
                ),
                health("tuit", [reading("tuit-sc1-projector", t)], received_at=t),
            ]
        )
        evaluate_devices(registered, rules, t)
    ingest.handle([agent_state("tuit", "offline", T, T + timedelta(minutes=2))])
    evaluate_alerts(registered, rules, T + timedelta(minutes=8))
    app = create_app(settings, engine=registered)
    with TestClient(app, headers=ops_headers(registered)) as client:
        yield client


def kinds(page: dict[str, object]) -> list[str]:
    return sorted(item["kind"] for item in page["items"])  # type: ignore[attr-defined, index]


def test_filters_select_by_kind_site_device_severity_state_and_since(client: TestClient) -> None:
    everything = client.get("/api/v1/alerts").json()
    assert everything["total"] == 4
    assert kinds(everything) == ["device_error", "lamp_hours", "over_temperature", "site_offline"]

    def get(**params: str) -> list[str]:
        response = client.get("/api/v1/alerts", params=params)
        assert response.status_code == 200, response.text
        return kinds(response.json())

    assert get(site="tuit") == ["site_offline"]
    assert get(device="upm-sc2-projector") == ["lamp_hours", "over_temperature"]
    assert get(severity="warning") == ["device_error", "lamp_hours"]
    assert get(kind="over_temperature", state="open") == ["over_temperature"]
    assert get(state="resolved") == []
    assert get(since=(T + timedelta(hours=1)).isoformat()) == []
    assert len(get(since=T.isoformat())) == 4

    first = client.get("/api/v1/alerts", params={"limit": 3}).json()
    page = client.get("/api/v1/alerts", params={"limit": 3, "after": first["next"]}).json()
    assert (page["total"], len(page["items"]), page["limit"], page["next"]) == (4, 1, 3, None)
    assert page["items"] == everything["items"][3:]
    assert client.get("/api/v1/alerts", params={"kind": "nonsense"}).status_code == 422
    naive = client.get("/api/v1/alerts", params={"since": "2025-03-03T03:00:00"})
    assert naive.status_code == 422 and "no timezone" in naive.text


def test_ack_then_resolve_by_hand_keeps_the_alert_in_history(
    client: TestClient, registered: Engine, rules: AlertRules
) -> None:
    [hot] = client.get("/api/v1/alerts", params={"kind": "over_temperature"}).json()["items"]
    url = f"/api/v1/alerts/{hot['id']}"

    # A `by` in the body names someone else: the alert records who is logged in.
    acked = client.post(f"{url}/ack", json={"by": "someone-else", "note": "fan checked Tuesday"})
    assert acked.status_code == 200, acked.text
    body = acked.json()
    assert (body["state"], body["acknowledged_by"], body["ack_note"]) == (
        "acknowledged",
        "test-ops",
        "fan checked Tuesday",
    )
    # Still hot: acknowledged counts as open, so no second alert is raised.
    evaluate_devices(registered, rules, T + timedelta(minutes=9), ["upm-sc2-projector"])
    listed = client.get("/api/v1/alerts", params={"kind": "over_temperature"}).json()
    assert listed["total"] == 1

    resolved = client.post(f"{url}/resolve", json={"note": "fan replaced"})
    assert resolved.status_code == 200
    assert (resolved.json()["state"], resolved.json()["resolution"]) == ("resolved", "fan replaced")
    assert client.get(url).json()["resolved_by"] == "test-ops"
    again = client.post(f"{url}/ack", json={})
    assert again.status_code == 409 and "already resolved" in again.text

    assert client.get("/api/v1/alerts/999999").status_code == 404
    assert client.post(f"{url}/ack", json={"note": "bad\u0000note"}).status_code == 422


def test_site_list_counts_open_alerts(client: TestClient) -> None:
    sites = {s["code"]: s for s in client.get("/api/v1/sites").json()}
    assert sites["upm"]["open_alerts"] == 3
    assert sites["tuit"]["open_alerts"] == 1
    assert sites["ugb"]["open_alerts"] == 0
    assert client.get("/api/v1/sites/upm").json()["open_alerts"] == 3


def test_metrics_show_open_alerts_by_kind(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert 'fleet_alerts_open{kind="site_offline"} 1.0' in text


def test_a_vendor_reads_the_alerts_of_its_own_devices_only(
    client: TestClient, registered: Engine
) -> None:
    token = user_token(registered, "vendor-seewo", "vendor", vendor="Seewo")
    seewo = {"Authorization": f"Bearer {token}"}
    everything = client.get("/api/v1/alerts").json()["items"]
    mine = client.get("/api/v1/alerts", headers=seewo).json()
    # The Seewo panel's fan warning; not the projector's, nor tuit's site_offline.
    assert [(a["device_id"], a["kind"]) for a in mine["items"]] == [
        ("upm-sc1-panel-1", "device_error")
    ]
    assert mine["total"] == 1
    by_device = {a["device_id"]: a["id"] for a in everything}
    assert (
        client.get(f"/api/v1/alerts/{by_device['upm-sc1-panel-1']}", headers=seewo).status_code
        == 200
    )
    # Another make's alert and a site's alert are not there for a vendor, as if they were not.
    assert (
        client.get(f"/api/v1/alerts/{by_device['upm-sc2-projector']}", headers=seewo).status_code
        == 404
    )
    assert client.get(f"/api/v1/alerts/{by_device[None]}", headers=seewo).status_code == 404
    # Reading is all: acknowledging is the site's and ops' business.
    ack = client.post(
        f"/api/v1/alerts/{by_device['upm-sc1-panel-1']}/ack", json={"by": "vendor"}, headers=seewo
    )
    assert ack.status_code == 403
