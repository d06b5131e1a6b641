"""The spine, end to end, as real processes: simulated SNMP devices on loopback UDP →
`fleet-agent run` → a real broker → `fleet serve` → the REST API: through the embedded broker
on SQLite (what `fleet demo` runs) and through Mosquitto on PostgreSQL (what a site runs)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.embedded_broker import free_port
from fleet.protocol.site_config import load_site
from tests.fixtures_broker import TestBroker
from tests.procs import Stack, wait_for

# Each broker and each database once, as the demo and a site pair them, not every pairing:
# the spine is the same code on all four, and each pairing starts every process again.
pytestmark = pytest.mark.parametrize(
    ("broker", "db_url"),
    [("embedded", "sqlite"), pytest.param("mosquitto", "postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


@pytest.fixture
def stack(tmp_path: Path, broker: TestBroker, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, broker.url, broker.topic_root, db_url)
    yield s
    s.stop_all()


def agent_metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def all_reported(stack: Stack, expected: set[str]) -> dict[str, Any] | None:
    page = stack.get(f"/api/v1/devices?site={stack.site}&limit=100")
    devices = {d["id"]: d for d in page["items"]}
    if set(devices) == expected and all(d["last_seen_at"] for d in devices.values()):
        return devices
    return None


def test_simulated_values_reach_the_api(stack: Stack) -> None:
    site = load_site(stack.config)
    expected = {device.id for _, device in site.config.devices()}
    stack.simulate()
    stack.controller()
    metrics_port = free_port()
    agent = stack.agent("--metrics-port", str(metrics_port))
    try:
        devices = wait_for(lambda: all_reported(stack, expected), 45, "every device's reading")
    except TimeoutError:
        pytest.fail(f"not every device reported:\n{stack.logs()}")
    assert agent.alive()
    scraped = agent_metrics(metrics_port)
    assert scraped["fleet_agent_polls_total"] >= len(expected)
    assert scraped["fleet_agent_publish_seconds_count"] >= 1

    for _, device in site.config.devices():
        profile = site.profile_of(device)
        row = devices[device.id]
        assert row["reachable"] is True, row
        assert row["state"] in ("online", "standby"), row
        detail = stack.get(f"/api/v1/devices/{device.id}")
        last = detail["last_reading"]
        # The simulator answers sysName with the device id and its profile's firmware.
        assert last["metrics"]["sys_name"] == device.id
        if any(o.field == "firmware" for o in profile.snmp.objects):  # type: ignore[union-attr]
            assert row["firmware"] == profile.simulation.firmware
        if profile.kind == "panel":
            assert last["power"] in ("on", "standby")
            low = min(profile.simulation.temperature_standby_c, profile.simulation.temperature_on_c)
            assert low - 10 < last["temperature_c"] < profile.simulation.temperature_on_c + 10
        assert last["uptime_s"] > 0

    health = stack.get(f"/api/v1/devices/{sorted(expected)[0]}/health")
    assert len(health["items"]) >= 1
    sites = stack.get("/api/v1/sites")
    upm = next(s for s in sites if s["code"] == "upm")
    assert upm["agent"]["state"] == "online"
    assert sum(upm["devices_by_state"].values()) == len(expected)


def test_agent_stop_publishes_offline_and_devices_go_site_offline(stack: Stack) -> None:
    site = load_site(stack.config)
    expected = {device.id for _, device in site.config.devices()}
    stack.simulate()
    stack.controller()
    agent = stack.agent()
    wait_for(lambda: all_reported(stack, expected), 45, "every device's reading")
    assert agent.stop() == 0  # SIGTERM: a clean stop says offline

    def site_offline() -> bool:
        page = stack.get(f"/api/v1/devices?site={stack.site}&limit=100")
        return all(d["state"] == "site_offline" for d in page["items"])

    wait_for(site_offline, 20, "the site's devices to show site_offline")
    upm = next(s for s in stack.get("/api/v1/sites") if s["code"] == "upm")
    assert upm["agent"]["state"] == "offline"
