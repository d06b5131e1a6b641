from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.api.app import create_app
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import Ingest
from fleet.models import Device, Room, Site
from fleet.protocol.site_config import LoadedSite
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers
from tests.fixtures_db import RECEIVED, agent_state, health, reading

T0 = RECEIVED - timedelta(hours=1)


@pytest.fixture
def fed(ingest: Ingest, registered: Engine) -> Engine:
    """upm: panel-1 online with 10 samples a minute apart, panel-2 unreachable; tuit offline."""
    samples = [
        reading("upm-sc1-panel-1", T0 + timedelta(minutes=i), input="hdmi2") for i in range(10)
    ]
    ingest.handle(
        [
            health("upm", samples),
            health("upm", [reading("upm-sc1-panel-2", T0, reachable=False, error="timeout")]),
            agent_state("upm", "online", T0, T0),
            health("tuit", [reading("tuit-sc1-projector", T0, power="standby")]),
            agent_state("tuit", "offline", T0, RECEIVED),
        ]
    )
    return registered


@pytest.fixture
def client(fed: Engine, tmp_path: object, ingest: Ingest) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=str(fed.url)), engine=fed)
    app.state.ingest_status = ingest
    with TestClient(app, headers=ops_headers(fed)) as client:
        yield client


def registry_rows(engine: Engine) -> list[object]:
    with Session(engine) as session:
        return [
            r.model_dump()
            for model in (Site, Room, Device)
            for r in session.exec(select(model)).all()  # type: ignore[attr-defined]
        ]


def test_registry_sync_is_idempotent(engine: Engine, loaded_sites: list[LoadedSite]) -> None:
    first = sync_registry(engine, loaded_sites)
    rows = registry_rows(engine)
    second = sync_registry(engine, loaded_sites)

    assert first.changed and len(first.created) == len(rows)
    assert not second.changed
    assert registry_rows(engine) == rows


def test_device_removed_from_config_is_retired_then_restored(
    engine: Engine, loaded_sites: list[LoadedSite]
) -> None:
    sync_registry(engine, loaded_sites)
    upm = next(s for s in loaded_sites if s.config.code == "upm")
    room = upm.config.rooms[0].model_copy(update={"devices": upm.config.rooms[0].devices[1:]})
    trimmed = upm.config.model_copy(update={"rooms": [room, *upm.config.rooms[1:]]})
    result = sync_registry(engine, [LoadedSite(upm.path, trimmed, upm.profiles)])

    assert result.retired == ["device:upm-sc1-panel-1"]
    with Session(engine) as session:
        assert session.get(Device, "upm-sc1-panel-1").retired_at is not None  # type: ignore[union-attr]
    restored = sync_registry(engine, [upm])
    assert "device:upm-sc1-panel-1" in restored.updated
    with Session(engine) as session:
        assert session.get(Device, "upm-sc1-panel-1").retired_at is None  # type: ignore[union-attr]


def test_sites_list_counts_states_and_agent(client: TestClient) -> None:
    response = client.get("/api/v1/sites")
    assert response.status_code == 200
    sites = {s["code"]: s for s in response.json()}
    assert len(sites) == 8
    upm = sites["upm"]
    assert upm["devices"] == 5
    assert upm["devices_by_state"] == {"online": 1, "unreachable": 1, "unknown": 3}
    assert upm["agent"]["state"] == "online"
    assert upm["last_reported_at"] == "2025-03-03T11:09:00Z"
    assert sites["tuit"]["devices_by_state"] == {"site_offline": 2}
    assert sites["tuit"]["agent"]["state"] == "offline"
    assert sites["ugb"]["agent"] is None


def test_site_detail_lists_rooms_and_devices(client: TestClient) -> None:
    body = client.get("/api/v1/sites/upm").json()
    assert [r["id"] for r in body["rooms"]] == ["upm-smart-1", "upm-smart-2"]
    first = {d["id"]: d for d in body["rooms"][0]["devices"]}
    assert first["upm-sc1-panel-2"]["state"] == "unreachable"
    assert first["upm-sc1-panel-2"]["state_reason"] == "cannot reach upm-sc1-panel-2: timeout"
    assert body["timezone"] == "Asia/Kuala_Lumpur"


def test_unknown_ids_are_404_with_a_reason(client: TestClient) -> None:
    for path in ("/api/v1/sites/atlantis", "/api/v1/devices/nope", "/api/v1/devices/nope/health"):
        response = client.get(path)
        assert response.status_code == 404
        assert "nope" in response.json()["detail"] or "atlantis" in response.json()["detail"]


def test_devices_filter_by_site_vendor_kind_and_state(client: TestClient) -> None:
    def ids(**params: str) -> list[str]:
        body = client.get("/api/v1/devices", params=params).json()
        return [d["id"] for d in body["items"]]

    assert ids(site="tribhuvan") == ["tu-sc1-panel-1", "tu-sc1-panel-2", "tu-sc1-projector"]
    assert ids(site="upm", vendor="seewo", kind="panel") == [
        "upm-sc1-panel-1",
        "upm-sc1-panel-2",
        "upm-sc2-panel-1",
    ]
    assert ids(state="online") == ["upm-sc1-panel-1"]
    assert ids(state="site_offline") == ["tuit-sc1-pc", "tuit-sc1-projector"]
    assert client.get("/api/v1/devices", params={"state": "sleepy"}).status_code == 422


def test_devices_paginate_by_cursor(client: TestClient, loaded_sites: list[LoadedSite]) -> None:
    configured = sum(len(s.config.devices()) for s in loaded_sites)
    everything = client.get("/api/v1/devices", params={"limit": 1000}).json()
    assert everything["total"] == len(everything["items"]) == configured
    assert everything["next"] is None
    pages, after = [], None
    while True:
        params = {"limit": 5, **({"after": after} if after else {})}
        response = client.get("/api/v1/devices", params=params)
        page = response.json()
        assert page == {**page, "total": configured, "limit": 5}
        pages.append(page["items"])
        after = page["next"]
        if after is None:
            assert "Link" not in response.headers
            break
        assert (
            response.headers["Link"].endswith('>; rel="next"') and after in response.headers["Link"]
        )
    assert [d for p in pages for d in p] == everything["items"]
    assert [len(p) for p in pages] == [5] * (configured // 5) + [configured % 5]
    assert client.get("/api/v1/devices", params={"limit": 1001}).status_code == 422


def test_device_detail_has_latest_reading(client: TestClient) -> None:
    body = client.get("/api/v1/devices/upm-sc1-panel-1").json()
    assert body["state"] == "online"
    assert body["state_reason"] == "reachable, power on, input hdmi2"
    assert body["last_reading"]["ts"] == "2025-03-03T11:09:00Z"
    assert body["last_seen_at"] == "2025-03-03T11:09:00Z"


def test_device_health_range_newest_first(client: TestClient) -> None:
    url = "/api/v1/devices/upm-sc1-panel-1/health"
    params = {"from": "2025-03-03T11:02:00Z", "to": "2025-03-03T16:50:00+05:45", "limit": 100}
    body = client.get(url, params=params).json()
    # to = 11:05 UTC, exclusive
    assert [s["ts"] for s in body["items"]] == [
        "2025-03-03T11:04:00Z",
        "2025-03-03T11:03:00Z",
        "2025-03-03T11:02:00Z",
    ]
    assert len(client.get(url, params={"limit": 4}).json()["items"]) == 4


def test_device_health_rejects_from_after_to_and_naive_times(client: TestClient) -> None:
    url = "/api/v1/devices/upm-sc1-panel-1/health"
    backwards = client.get(
        url, params={"from": "2025-03-03T12:00:00Z", "to": "2025-03-03T11:00:00Z"}
    )
    assert backwards.status_code == 422
    assert "'from'" in backwards.text and "after 'to'" in backwards.text
    naive = client.get(url, params={"from": "2025-03-03T12:00:00"})
    assert naive.status_code == 422 and "timezone" in naive.text


def test_healthz_and_metrics(client: TestClient) -> None:
    health_body = client.get("/healthz").json()
    assert health_body["status"] == "ok" and health_body["database"] == "ok"
    assert health_body["ingest"]["readings"] == 12
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "fleet_ingest_readings_total" in metrics.text
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
