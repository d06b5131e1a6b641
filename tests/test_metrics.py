"""/metrics: parses with Prometheus' own parser, and moves when health is ingested."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.ingest.pipeline import Ingest
from fleet.settings import Settings
from tests.fixtures_db import RECEIVED, health, message, reading


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_move_after_ingest(registered: Engine, ingest: Ingest) -> None:
    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    with TestClient(app) as client:
        before = scrape(client)
        readings = [
            reading("upm-sc1-panel-1", RECEIVED - timedelta(seconds=90 + i)) for i in range(3)
        ]
        ingest.handle(
            [
                health("upm", readings),
                health("upm", [reading("upm-sc1-panel-2", RECEIVED, reachable=False)]),
                message("fleet/v1/atlantis/health", b"{}"),  # unknown site: rejected
            ]
        )
        after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("fleet_ingest_readings_total") == 4
    assert moved("fleet_ingest_messages_total", outcome="stored") == 2
    assert moved("fleet_ingest_rejected_total", reason="unknown_site") == 1
    assert moved("fleet_ingest_lag_seconds_count") == 4
    # Three readings 90-92 s old and one 0 s old on arrival.
    assert 272 <= moved("fleet_ingest_lag_seconds_sum") <= 274
    assert moved("fleet_ingest_lag_seconds_bucket", le="60.0") == 1
    # Read from the database at scrape time.
    assert after[("fleet_devices", (("site", "upm"), ("state", "online")))] == 1
    assert after[("fleet_devices", (("site", "upm"), ("state", "unreachable")))] == 1
    assert after[("fleet_devices", (("site", "upm"), ("state", "faulty")))] == 0
    assert ("fleet_site_last_report_age_seconds", (("site", "upm"),)) in after
    assert after[("fleet_db_scrape_ok", ())] == 1
