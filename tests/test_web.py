"""The dashboard in a real browser, against real processes: simulated devices → `fleet-agent
run` → the embedded broker → `fleet serve`. What the pages show is checked against the API."""

from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, load_site
from tests.fixtures_auth import sign_in
from tests.fixtures_broker import BrokerThread
from tests.fixtures_browser import screenshot
from tests.procs import Stack, wait_for

# A display name from a site config that tries to run script wherever it is shown.
EVIL_NAME = '<script>alert("xss")</script><img src=x onerror=alert(1)>Panel "A" & co'
EVIL_DEVICE = "upm-sc1-panel-1"
# Raised so every simulated Seewo panel (3.2.1) is below it: a firmware alert to acknowledge.
FIRMWARE_MINIMUM = "9.0.0"


class WebStack(Stack):
    """The usual stack with its own firmware profiles (a stricter firmware minimum)."""

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(FLEET_PROFILES_DIR=str(self.tmp / "firmware_profiles"), **extra)


def _prepare_configs(stack: Stack) -> None:
    config = yaml.safe_load(stack.config.read_text())
    for room in config["rooms"]:
        for device in room["devices"]:
            if device["id"] == EVIL_DEVICE:
                device["name"] = EVIL_NAME
    stack.config.write_text(yaml.safe_dump(config, allow_unicode=True))
    profiles = stack.tmp / "firmware_profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles)
    # Polled every 5 s, not every minute: the metrics test waits for a next reading.
    for path in profiles.glob("*.yaml"):
        text, n = re.subn(r"(?m)^(  interval_s:) \d+$", r"\1 5", path.read_text())
        assert n == 1, f"{path.name}: no poll interval_s to shorten"
        path.write_text(text)
    seewo = profiles / "seewo-panel.yaml"
    seewo.write_text(
        seewo.read_text().replace(
            'firmware_minimum: "3.0.0"', f'firmware_minimum: "{FIRMWARE_MINIMUM}"'
        )
    )
    assert FIRMWARE_MINIMUM in seewo.read_text()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web")
    broker = BrokerThread()
    broker.start()
    s = WebStack(tmp, broker.url, "tweb/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    _prepare_configs(s)
    try:
        s.simulate()
        s.controller()
        s.agent()
        expected = {
            d.id for _, d in load_site(s.config, tmp / "firmware_profiles").config.devices()
        }

        def all_reported() -> bool:
            items = s.get("/api/v1/devices?site=upm&limit=100")["items"]
            return {d["id"] for d in items if d["last_seen_at"]} == expected

        try:
            wait_for(all_reported, 60, "every upm device's first reading")
            wait_for(lambda: s.get("/api/v1/alerts?state=open")["total"] > 0, 30, "an alert")
        except TimeoutError:
            pytest.fail(f"the stack did not come up:\n{s.logs()}")
        yield s
    finally:
        s.stop_all()
        broker.stop()


@pytest.fixture
def page(page: Any, stack: Stack) -> Any:
    assert stack.ops_token is not None
    sign_in(page, stack.base, stack.ops_token)
    return page


def _html(stack: Stack, path: str) -> str:
    request = urllib.request.Request(
        stack.base + path, headers={"Authorization": f"Bearer {stack.ops_token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read().decode()


def _read_while_still(
    page: Any,
    stack: Stack,
    path: str,
    api_path: str,
    project: Callable[[Any], Any],
    read: Callable[[], Any],
    tries: int = 10,
) -> tuple[Any, Any]:
    """Load `path` and `read()` what it shows between two reads of `api_path` whose
    `project`ions are equal: (that projection, what the page showed).

    The stack's agent keeps polling, so a reading, or a state it brings, may land between a
    page and the API; only a page loaded and read while the API's answer stood still can be
    compared with it. Fails after `tries` loads that each saw it change."""
    for _ in range(tries):
        before = project(stack.get(api_path))
        page.goto(stack.base + path)
        shown = read()
        if project(stack.get(api_path)) == before:
            return before, shown
    pytest.fail(f"{api_path} changed during each of {tries} loads of {path}")


STATES = ("online", "standby", "faulty", "unreachable", "site_offline", "unknown")


def test_overview_shows_what_the_api_says(stack: Stack, page: Any) -> None:
    upm = page.locator("tr[data-site=upm]")
    sites, (rows, by_state, total) = _read_while_still(
        page,
        stack,
        "/",
        "/api/v1/sites",
        lambda found: {s["code"]: (s["devices"], s["devices_by_state"]) for s in found},
        lambda: (
            page.locator("table[data-testid=sites] tbody tr").count(),
            {
                state: upm.locator(f"td[data-state={state}]").get_attribute("data-value")
                for state in STATES
            },
            upm.locator("td").nth(2).inner_text(),
        ),
    )
    assert rows == len(sites)
    for state in STATES:
        assert int(by_state[state] or 0) == sites["upm"][1].get(state, 0), state
    assert total == str(sites["upm"][0])
    # Sorting by the Devices column (click twice: descending) puts the biggest site on top.
    header = page.locator("table[data-testid=sites] th", has_text="Devices")
    header.click()
    header.click()
    top = page.locator("table[data-testid=sites] tbody tr").first.get_attribute("data-site")
    assert sites[top][0] == max(devices for devices, _ in sites.values())
    screenshot(page, "overview.png")


def test_site_then_device_page_match_the_api(stack: Stack, page: Any) -> None:
    page.goto(stack.base + "/")
    page.locator("tr[data-site=upm] a").first.click()
    page.wait_for_url("**/sites/upm")

    def states(site: Any) -> dict[str, tuple[str, str]]:
        return {
            d["id"]: (d["state"], d["state_reason"]) for r in site["rooms"] for d in r["devices"]
        }

    def rows() -> dict[str, tuple[str | None, str]]:
        found = {}
        for row in page.locator("tr[data-device]").all():
            badge = row.locator("[data-testid=state] .badge")
            found[row.get_attribute("data-device")] = (
                badge.get_attribute("data-state"),
                row.inner_text(),
            )
        return found

    api, shown = _read_while_still(page, stack, "/sites/upm", "/api/v1/sites/upm", states, rows)
    for device_id, (state, reason) in api.items():
        assert shown[device_id][0] == state, device_id
        assert reason in shown[device_id][1], device_id
    assert "now" in (page.locator("svg.timetable").text_content() or "")
    assert "Local time at the site" in page.locator("[data-testid=local-now]").inner_text()

    page.locator("tr[data-device='upm-sc2-projector'] a").first.click()
    page.wait_for_url("**/devices/upm-sc2-projector")
    device, (banner, latest) = _read_while_still(
        page,
        stack,
        "/devices/upm-sc2-projector",
        "/api/v1/devices/upm-sc2-projector",
        lambda found: found,
        lambda: (
            page.locator("[data-testid=device-state]").inner_text(),
            page.locator("[data-testid=latest-reading]").inner_text(),
        ),
    )
    assert device["state"].replace("_", " ") in banner and device["state_reason"] in banner
    assert device["firmware"] in latest
    assert f"{device['last_reading']['temperature_c']:.1f}" in latest
    for chart in ("temperature", "power", "lamp"):
        assert page.locator(f"[data-testid=chart-{chart}] svg").count() == 1, chart
    screenshot(page, "device.png")


def test_page_refreshes_in_place(stack: Stack, page: Any) -> None:
    page.goto(stack.base + "/")
    page.evaluate("document.getElementById('live').dataset.marker = 'kept'")
    page.evaluate("document.getElementById('live').refreshNow()")
    # A locator wait, not wait_for_function: that evaluates a string inside the page, which the
    # page's Content-Security-Policy (no 'unsafe-eval') rightly refuses.
    page.locator("#refreshed", has_text="Updated").wait_for(timeout=30_000)
    # The live part was replaced, the page itself was not reloaded.
    assert page.evaluate("document.getElementById('live').dataset.marker") == "kept"
    assert page.locator("tr[data-site=upm]").count() == 1


def test_acknowledge_an_alert_in_the_page(stack: Stack, page: Any) -> None:
    page.goto(stack.base + "/alerts?state=open&site=upm")
    alert_id = page.locator("tr[data-alert]").first.get_attribute("data-alert")
    assert stack.get(f"/api/v1/alerts/{alert_id}")["state"] == "open"
    page.locator(f"tr[data-alert='{alert_id}'] [data-testid=ack]").click()
    page.wait_for_load_state()
    after = stack.get(f"/api/v1/alerts/{alert_id}")
    assert after["state"] == "acknowledged" and after["acknowledged_by"] == "stack-ops"
    page.goto(stack.base + "/alerts?state=acknowledged")
    row = page.locator(f"tr[data-alert='{alert_id}']")
    assert row.locator("[data-testid=alert-state]").inner_text().startswith("acknowledged")
    assert row.locator("[data-testid=ack]").count() == 0


def test_script_in_a_device_name_is_shown_as_text(stack: Stack, page: Any) -> None:
    device = stack.get(f"/api/v1/devices/{EVIL_DEVICE}")
    assert device["name"] == EVIL_NAME  # it really went in
    assert device["last_reading"]["metrics"]["sys_name"] == EVIL_NAME  # and the device says it
    for path in ("/sites/upm", f"/devices/{EVIL_DEVICE}", "/alerts"):
        page.goto(stack.base + path)
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("script:not([src])").count() == 0, path
        assert page.locator("img[src=x]").count() == 0, path
    page.goto(stack.base + f"/devices/{EVIL_DEVICE}")
    assert page.locator("h1").inner_text().startswith(EVIL_NAME)
    assert page.locator("td[data-metric=sys_name]").inner_text() == EVIL_NAME
    raw = _html(stack, f"/devices/{EVIL_DEVICE}")
    assert "<script>alert" not in raw and "&lt;script&gt;alert" in raw
    # `page` fails the test if any dialog opened or any script error happened on the way.


def test_unknown_ids_give_a_404_page(stack: Stack, page: Any) -> None:
    for path, text in (
        ("/sites/atlantis", "no site 'atlantis'"),
        ("/devices/no-such-panel", "no device 'no-such-panel'"),
        ("/no/such/page", "no page at /no/such/page"),
    ):
        response = page.goto(stack.base + path)
        assert response.status == 404, path
        assert "Not found" in page.locator("h1").inner_text()
        assert text in page.locator("main").inner_text().lower(), path
    # The API keeps its JSON errors.
    response = page.goto(stack.base + "/api/v1/sites/atlantis")
    assert response.status == 404 and "detail" in response.json()


def test_metrics_count_what_was_ingested(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def readings() -> float:
        families = {f.name: f for f in text_string_to_metric_families(_html(stack, "/metrics"))}
        return sum(
            s.value for s in families["fleet_ingest_readings"].samples if s.name.endswith("_total")
        )

    first = readings()
    assert first > 0
    wait_for(lambda: readings() > first, 60, "more readings counted at /metrics")
