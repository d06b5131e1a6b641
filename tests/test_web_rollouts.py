"""The Rollouts and Reports pages, and the overview and alerts pages as a technician and a
vendor see them, in a real browser against a real `fleet serve` (three sites, no agent: the
rollout is created through the API and scheduled for tomorrow, so nothing is sent)."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.simulator.firmware_image import write_image
from fleet.alerts.models import Alert, AlertState
from fleet.db import make_engine
from fleet.models import Device
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.reports.models import StoredReport
from tests.fixtures_auth import sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.fixtures_browser import screenshot
from tests.procs import Stack, wait_for

SITES = ("upm", "tribhuvan", "usthb")  # Seewo panels at the first two, none at usthb
REPORT_CSV = b"vendor,site,device,hours_on\r\nSeewo,upm,upm-sc1-panel-1,12.5\r\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-rollouts")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebr/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    for site in SITES[1:]:
        shutil.copy(DEFAULT_SITES_DIR / f"{site}.yaml", s.sites_dir)
    write_image(tmp / "artifacts", "seewo-panel", "3.3.0")
    try:
        s.controller(FLEET_ARTIFACTS_DIR=str(tmp / "artifacts"))
        wait_for(lambda: len(s.get("/api/v1/sites")) == len(SITES), 30, "the three sites")
        yield s
    finally:
        s.stop_all()
        broker.stop()


@pytest.fixture(scope="module")
def engine(stack: Stack) -> Iterator[Engine]:
    engine = make_engine(stack.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def seeded(stack: Stack, engine: Engine) -> dict[str, Any]:
    """Seewo panels on 3.2.1; stored reports of two vendors; an alert about a Seewo panel,
    one about a MAXHUB panel and one about a site; a technician of upm and a Seewo vendor."""
    now = utcnow()
    with Session(engine) as session:
        seewo = list(session.exec(select(Device).where(Device.profile == "seewo-panel")))
        for device in seewo:
            device.firmware = "3.2.1"
            session.add(device)
        maxhub = session.exec(select(Device).where(Device.site_code == "usthb")).first()
        panel = next(d for d in seewo if d.site_code == "upm")
        assert maxhub is not None and maxhub.vendor.lower() != "seewo"
        reports = {}
        for vendor in ("Seewo", maxhub.vendor):
            content = REPORT_CSV.replace(b"Seewo", vendor.encode())
            report = StoredReport(
                vendor=vendor,
                period="monthly",
                period_start=date(2026, 10, 1),
                period_end=date(2026, 10, 31),
                format="csv",
                media_type="text/csv",
                filename=f"usage-{vendor.lower()}-2026-10.csv",
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                content=content,
                created_at=now,
            )
            session.add(report)
            reports[vendor] = report
        alerts = {
            "seewo": ("device_error", f"device:{panel.id}", "upm", panel.id),
            "maxhub": ("device_error", f"device:{maxhub.id}", "usthb", maxhub.id),
            # A kind the controller never raises for a site: it will not collide with its own.
            "site": ("lamp_hours", "site:upm", "upm", None),
        }
        rows = {}
        for key, (kind, subject, site, device_id) in alerts.items():
            rows[key] = Alert(
                kind=kind,
                severity="warning",
                state=AlertState.open.value,
                subject=subject,
                site_code=site,
                device_id=device_id,
                message=f"test alert about {subject}",
                opened_at=now,
                updated_at=now,
            )
            session.add(rows[key])
        session.commit()
        seeded = {
            "seewo": {d.id for d in seewo},
            "maxhub_vendor": maxhub.vendor,
            "reports": {v: r.id for v, r in reports.items()},
            "alerts": {k: a.id for k, a in rows.items()},
        }
    seeded["technician"] = user_token(engine, "tech-upm", "technician", sites=["upm"])
    seeded["vendor"] = user_token(engine, "vendor-seewo", "vendor", vendor="Seewo")
    return seeded


def attrs(locator: Any, name: str) -> list[str]:
    return [locator.nth(i).get_attribute(name) for i in range(locator.count())]


def alerts_shown(stack: Stack, page: Any) -> set[int]:
    """Every alert the alerts page lists, whatever its state by now."""
    shown: set[int] = set()
    for state in ("active", "resolved"):
        page.goto(stack.base + f"/alerts?state={state}")
        shown |= {int(a) for a in attrs(page.locator("tr[data-alert]"), "data-alert")}
    return shown


def api(stack: Stack, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        stack.base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Authorization": f"Bearer {token or stack.ops_token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def test_rollouts_page_shows_progress_and_pauses_through_the_api(
    stack: Stack, seeded: dict[str, Any], page: Any
) -> None:
    tomorrow = utcnow() + timedelta(days=1)
    created = api(
        stack,
        "POST",
        "/api/v1/rollouts",
        {
            "name": 'Seewo 3.3.0 <b>"canary"</b>',
            "release_version": "3.3.0",
            "targets": {"profile": "seewo-panel"},
            "waves": [{"count": 1}, {"percent": 100}],
            "start": True,
            "start_at": tomorrow.isoformat(),
        },
    )
    rollout_id = created["id"]
    assert created["state"] == "scheduled"
    detail = api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")

    sign_in(page, stack.base, stack.ops_token or "")
    page.goto(stack.base + "/")
    page.locator("header nav a", has_text="Rollouts").click()
    page.wait_for_url("**/rollouts")
    section = page.locator(f"section[data-rollout='{rollout_id}']")
    assert section.locator("[data-testid=rollout-state]").inner_text() == "scheduled"
    assert section.locator("h2").inner_text().startswith('Seewo 3.3.0 <b>"canary"</b>')
    # Per wave and per site, the counts are the API's devices grouped.
    waves = Counter(d["wave"] for d in detail["devices"])
    sites = Counter(d["site_code"] for d in detail["devices"])
    assert set(sites) == {"upm", "tribhuvan"} and sum(waves.values()) == len(seeded["seewo"])
    for wave, count in waves.items():
        row = section.locator(f"[data-testid=waves] tr[data-wave='Wave {wave + 1}']")
        assert row.locator("[data-testid=total]").inner_text() == str(count)
        assert row.locator("td[data-state=pending]").get_attribute("data-value") == str(count)
    for site, count in sites.items():
        row = section.locator(f"[data-testid=sites] tr[data-site='{site}']")
        assert row.locator("[data-testid=total]").inner_text() == str(count)
    screenshot(page, "rollouts.png")

    section.locator("[data-testid=pause]").click()
    page.wait_for_url(f"**/rollouts#rollout-{rollout_id}")
    assert api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")["state"] == "paused"
    assert section.locator("[data-testid=rollout-state]").inner_text() == "paused"
    assert section.locator("[data-testid=pause]").count() == 0

    section.locator("[data-testid=resume]").click()
    page.wait_for_load_state()
    assert api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")["state"] == "running"

    section.locator("details.cancel summary").click()
    section.locator("[data-testid=cancel]").click()
    page.wait_for_load_state()
    assert api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")["state"] == "aborted"
    assert section.locator("[data-testid=rollout-state]").inner_text() == "aborted"
    # A move that no longer applies says why, as the API's 409 does.
    answer = page.request.post(stack.base + f"/rollouts/{rollout_id}/pause")
    assert answer.status == 409 and "only a running or scheduled one pauses" in answer.text()

    # The audit log tells the refused pause from the one that happened. Its entry is written
    # as the request's permission closes, which may be just after the answer went out.
    def pauses() -> list[str] | None:
        audit = api(stack, "GET", "/api/v1/audit?limit=200")["items"]
        found = sorted(e["outcome"] for e in audit if e["action"] == "rollouts.pause_from_page")
        return found if len(found) >= 2 else None

    assert wait_for(pauses, 10, "both pauses in the audit") == ["failed 409", "ok"]


def test_reports_page_lists_stored_reports_and_downloads_them(
    stack: Stack, seeded: dict[str, Any], page: Any
) -> None:
    sign_in(page, stack.base, stack.ops_token or "")
    page.goto(stack.base + "/reports")
    listed = {r["id"] for r in api(stack, "GET", "/api/v1/reports")}
    shown = attrs(page.locator("table[data-testid=reports] tbody tr[data-report]"), "data-report")
    assert {int(r) for r in shown} == listed
    report_id = seeded["reports"]["Seewo"]
    with page.expect_download() as info:
        page.locator(f"tr[data-report='{report_id}'] [data-testid=download]").click()
    download = info.value
    assert download.suggested_filename == "usage-seewo-2026-10.csv"
    assert Path(download.path()).read_bytes() == REPORT_CSV
    screenshot(page, "reports.png")

    # The on-demand form goes to the API's usage report, without the fields left at "any".
    form = page.locator("[data-testid=usage-form]")
    form.locator("select[name=site]").select_option("upm")
    with page.expect_download() as info:
        form.locator("button[type=submit]").click()
    assert info.value.url.startswith(stack.base + "/api/v1/reports/usage?site=upm&from=")
    assert "vendor=" not in info.value.url and info.value.suggested_filename.endswith(".csv")


def test_vendor_sees_only_its_reports(stack: Stack, seeded: dict[str, Any], page: Any) -> None:
    sign_in(page, stack.base, seeded["vendor"])
    page.goto(stack.base + "/reports")
    rows = page.locator("table[data-testid=reports] tbody tr[data-report]")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-report") == str(seeded["reports"]["Seewo"])
    # Its menu offers only what it may open.
    menu = page.locator("header nav a").all_inner_texts()
    assert menu == ["Overview", "Alerts", "Reports", "E-mail"]


def test_technician_of_upm_sees_only_upm(stack: Stack, seeded: dict[str, Any], page: Any) -> None:
    sign_in(page, stack.base, seeded["technician"])
    page.goto(stack.base + "/")
    rows = page.locator("table[data-testid=sites] tbody tr[data-site]")
    assert attrs(rows, "data-site") == ["upm"]
    api_upm = api(stack, "GET", "/api/v1/sites", token=seeded["technician"])
    assert [s["code"] for s in api_upm] == ["upm"]
    assert page.locator("tr[data-site=upm] td").nth(2).inner_text() == str(api_upm[0]["devices"])
    menu = page.locator("header nav a").all_inner_texts()
    assert menu == ["Overview", "Alerts", "Enrolment", "Silences", "E-mail"]

    shown = alerts_shown(stack, page)
    assert {seeded["alerts"]["site"], seeded["alerts"]["seewo"]} <= shown  # upm's
    assert seeded["alerts"]["maxhub"] not in shown  # usthb's is not theirs
    assert page.goto(stack.base + "/alerts?site=usthb").status == 403


def test_vendor_sees_only_its_devices_and_their_alerts(
    stack: Stack, seeded: dict[str, Any], page: Any
) -> None:
    sign_in(page, stack.base, seeded["vendor"])
    page.goto(stack.base + "/")
    rows = page.locator("table[data-testid=sites] tbody tr[data-site]")
    codes = set(attrs(rows, "data-site"))
    assert codes == {"upm", "tribhuvan"}  # no usthb: it has no Seewo device
    own = api(stack, "GET", "/api/v1/devices?limit=1000", token=seeded["vendor"])["items"]
    assert {d["id"] for d in own} == seeded["seewo"]
    for code in codes:
        count = sum(d["site_code"] == code for d in own)
        assert page.locator(f"tr[data-site={code}] td").nth(2).inner_text() == str(count)
    assert page.locator("tr[data-site=upm] a[href^='/sites/']").count() == 0
    screenshot(page, "overview-vendor.png")

    shown = alerts_shown(stack, page)
    assert seeded["alerts"]["seewo"] in shown
    assert not shown & {seeded["alerts"]["site"], seeded["alerts"]["maxhub"]}
    for alert_id in shown:  # whatever else the controller raised: about Seewo panels only
        assert api(stack, "GET", f"/api/v1/alerts/{alert_id}")["device_id"] in seeded["seewo"]
    page.goto(stack.base + "/alerts")
    assert page.locator("[data-testid=ack]").count() == 0  # a vendor does not acknowledge
    assert page.goto(stack.base + "/rollouts").status == 403
