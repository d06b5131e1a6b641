"""The attention model and the pages' words, as each role reads them: a site's status follows
its open alerts by severity, a device with an open alert never shows plain "online", and the
"need attention" card counts those sites; readable labels, plurals, no doubled make, the menu
only after login; a vendor's devices listed and linked, its reports one click away."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.alerts.models import Alert
from fleet.api.app import create_app
from fleet.models import Device, Site
from fleet.protocol.messages import utcnow
from fleet.settings import Settings
from fleet.web.device_page import make_and_model
from fleet.web.words import readable
from tests.fixtures_auth import Tokens


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path, database_url=str(registered.url)), engine=registered
    )
    with TestClient(app) as c:
        yield c


def _open(engine: Engine, site: str, device: str | None, kind: str, severity: str) -> int:
    now = utcnow()
    with Session(engine) as session:
        alert = Alert(
            kind=kind,
            severity=severity,
            state="open",
            subject=f"device:{device}" if device else f"site:{site}",
            site_code=site,
            device_id=device,
            message=f"{kind} at {site}",
            opened_at=now - timedelta(minutes=5),
            updated_at=now,
        )
        session.add(alert)
        session.commit()
        assert alert.id is not None
        return alert.id


def _online(engine: Engine, site: str) -> list[str]:
    """Every device of the site made online, as a healthy site would be: the alerts alone
    must then decide its status."""
    with Session(engine) as session:
        devices = session.exec(select(Device).where(Device.site_code == site)).all()
        for d in devices:
            d.state, d.state_reason, d.last_seen_at = "online", "reachable, powered on", utcnow()
            session.add(d)
        session.commit()
        return sorted(d.id for d in devices)


def _page(client: TestClient, path: str, tokens: Tokens, role: str = "ops", **headers: str) -> str:
    response = client.get(path, headers={**tokens.headers(role), **headers})
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response.text


def _row(html: str, site: str) -> str:
    found = re.search(rf'<tr [^>]*data-site="{site}"[^>]*>(.*?)</tr>', html, re.S)
    assert found, f"no row for {site}"
    return found.group(0)


def test_a_warning_alert_makes_a_site_need_attention(
    registered: Engine, client: TestClient, tokens: Tokens
) -> None:
    devices = _online(registered, "upm")
    before = _page(client, "/", tokens)
    assert 'data-level="ok"' in _row(before, "upm")
    problem_before = int(re.search(r'data-testid="problem-sites">(\d+)<', before).group(1))  # type: ignore[union-attr]

    _open(registered, "upm", devices[0], "left_on_after_hours", "warning")
    after = _page(client, "/", tokens)
    row = _row(after, "upm")
    assert 'data-level="warning"' in row
    assert "Warning" in row and "1 warning alert" in row and "left on after hours" in row
    assert "1 warning alerts" not in row
    problem_after = int(re.search(r'data-testid="problem-sites">(\d+)<', after).group(1))  # type: ignore[union-attr]
    assert problem_after == problem_before + 1

    _open(registered, "upm", None, "programme_overdue", "critical")
    row = _row(_page(client, "/", tokens), "upm")
    assert 'data-level="critical"' in row and "1 critical alert" in row and "Critical" in row


def test_a_device_with_an_open_alert_is_never_plain_online(
    registered: Engine, client: TestClient, tokens: Tokens
) -> None:
    devices = _online(registered, "upm")
    alerting, quiet = devices[0], devices[1]
    _open(registered, "upm", alerting, "left_on_after_hours", "warning")
    html = _page(client, "/sites/upm", tokens)
    row = re.search(rf'<tr [^>]*data-device="{alerting}".*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
    assert "has-alerts" in row and 'data-testid="alert-mark"' in row and "1 open alert" in row
    calm = re.search(rf'<tr [^>]*data-device="{quiet}".*?</tr>', html, re.S).group(0)  # type: ignore[union-attr]
    assert "alert-mark" not in calm
    assert 'data-testid="site-status"' in html and "Warning" in html
    device = _page(client, f"/devices/{alerting}", tokens)
    assert "banner-alerting" in device and "1 open alert" in device


def test_the_words_are_readable(registered: Engine, client: TestClient, tokens: Tokens) -> None:
    with Session(registered) as session:
        device = session.exec(select(Device).where(Device.vendor == "Seewo")).first()
        assert device is not None
        device.last_reading = {
            "device": device.id,
            "ts": utcnow().isoformat(),
            "reachable": True,
            "power": "on",
            "metrics": {"sys_name": "panel", "update_status": "idle", "brightness_pct": 80},
            "errors": {"fan": "warning"},
        }
        session.add(device)
        session.commit()
        device_id, model = device.id, device.model
        zone = session.exec(select(Site.timezone).where(Site.code == device.site_code)).one()
    html = _page(client, f"/devices/{device_id}", tokens)
    for raw in (">sys_name<", ">update_status<", ">brightness_pct<", "fan flag"):
        assert raw not in html, raw
    for label in (
        "Device name (sysName)",
        "Firmware update status",
        "Brightness (%)",
        "Fan status",
    ):
        assert label in html, label
    assert "Seewo Seewo" not in html and model in html
    # Every time on the page is the site's, its zone named; no UTC "Z" stamps.
    assert not re.search(r"\d\d:\d\d:\d\dZ", html)
    assert f"{zone}</time>" in html or f" {zone}</td>" in html


def test_the_menu_appears_only_after_login(client: TestClient, tokens: Tokens) -> None:
    login = client.get("/login").text
    assert "<nav aria-label" not in login and "/rollouts" not in login
    ops = _page(client, "/", tokens)
    assert 'href="/rollouts"' in ops and 'href="/reports"' in ops


def test_a_vendor_sees_its_devices_linked_and_its_reports_one_click_away(
    registered: Engine, client: TestClient, tokens: Tokens
) -> None:
    html = _page(client, "/", tokens, role="vendor")
    assert 'data-testid="vendor-devices"' in html
    with Session(registered) as session:
        own = session.exec(select(Device.id).where(Device.vendor == "Seewo")).all()
        others = session.exec(select(Device.id).where(Device.vendor != "Seewo")).all()
    for device_id in own:
        assert f'href="/devices/{device_id}"' in html, device_id
    for device_id in others:
        assert f'href="/devices/{device_id}"' not in html, device_id
    assert 'data-testid="reports-link"' in html and 'href="/sites/' not in html
    # Its device's page: the breadcrumb leads to no site page it may not open.
    device = _page(client, f"/devices/{own[0]}", tokens, role="vendor")
    assert 'href="/sites/' not in device
    assert client.get(f"/devices/{own[0]}", headers=tokens.headers("vendor")).status_code == 200


def test_language_and_zone_are_the_users_choice(client: TestClient, tokens: Tokens) -> None:
    answer = client.get(
        "/preferences",
        params={"lang": "fr", "tz": "Europe/Paris", "next": "/alerts"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/alerts"
    # The client keeps the cookies, as a browser would: the next page is in both.
    page = _page(client, "/alerts", tokens)
    assert '<html lang="fr"' in page
    assert re.search(r'<option value="Europe/Paris" selected>', page)
    # Only a path on this site, and only values we have.
    for bad in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        moved = client.get("/preferences", params={"next": bad}, follow_redirects=False)
        assert moved.headers["location"] == "/", bad
    odd = client.get(
        "/preferences", params={"lang": "xx", "tz": "Mars/Base"}, follow_redirects=False
    )
    assert "fleet_lang" not in odd.cookies and "fleet_tz" not in odd.cookies


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    zone=st.one_of(
        # tzdata's directories and files that are not zones (zoneinfo raised OSError for the
        # first and for a name too long for the file system: every page was a 500), paths.
        st.sampled_from(
            [
                "Europe",
                "America",
                "__pycache__",
                "zone.tab",
                "x" * 300,
                "/etc/passwd",
                "..",
                "Asia/Kuala_Lumpur/",
                "Europe/" + "a" * 255,
                "right/UTC",
                "Asia/Kathmandu",
            ]
        ),
        st.text(st.characters(codec="ascii", exclude_characters=';"\\'), max_size=300),
    )
)
def test_any_zone_cookie_gives_a_page(client: TestClient, tokens: Tokens, zone: str) -> None:
    """The zone cookie is ours only until a user edits it: whatever it holds, the pages
    answer, in that zone if it is one and in each site's own if not."""
    client.cookies.set("fleet_tz", zone)
    try:
        for path in ("/", "/alerts", "/devices/upm-sc1-pc"):
            response = client.get(path, headers=tokens.headers("ops"))
            assert response.status_code == 200, (path, response.text[:300])
    finally:
        client.cookies.clear()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(header=st.text(max_size=300))
def test_any_accept_language_gives_a_page(client: TestClient, tokens: Tokens, header: str) -> None:
    # Raw bytes, as a client may send them (UTF-8 where ASCII belongs, control characters).
    raw = header.replace("\r", "").replace("\n", "").encode("utf-8", "surrogatepass")
    response = client.get("/", headers={**tokens.headers("ops"), "Accept-Language": raw})  # type: ignore[dict-item]
    assert response.status_code == 200
    assert re.search(r'<html lang="(en|fr|ar|ru)" dir="(ltr|rtl)">', response.text)


@given(code=st.text(max_size=60))
def test_any_code_is_made_readable(code: str) -> None:
    shown = readable(code)
    assert "_" not in shown or shown == code  # only a code with nothing but separators


def test_make_is_not_doubled() -> None:
    assert make_and_model("Seewo", "Seewo interactive flat panel") == "Seewo interactive flat panel"
    assert make_and_model("MAXHUB", "maxhub V6") == "maxhub V6"
    assert make_and_model("Epson", "EB-2250U") == "Epson EB-2250U"
    assert make_and_model("", "EB-2250U") == "EB-2250U"


def test_times_in_stored_texts_are_shown_in_the_sites_zone(
    registered: Engine, client: TestClient, tokens: Tokens
) -> None:
    """A state reason and an alert message keep UTC (the API's words); the pages show them in
    the site's time with its zone named, and no UTC stamp at all."""
    from fleet.devices.state import site_offline_reason

    at = datetime(2025, 3, 3, 14, 15, tzinfo=UTC)
    with Session(registered) as session:
        devices = session.exec(select(Device).where(Device.site_code == "tribhuvan")).all()
        for d in devices:
            d.state, d.state_reason = "site_offline", site_offline_reason("tu-agent", at)
            session.add(d)
        session.commit()
        first = devices[0].id
    alert = _open(registered, "tribhuvan", first, "device_error", "critical")
    with Session(registered) as session:
        row = session.get(Alert, alert)
        assert row is not None
        row.message = f"healthy since {at.isoformat()}, then not"
        session.add(row)
        session.commit()
    local = "20:00 Asia/Kathmandu"  # 14:15 UTC at +05:45
    for path in ("/sites/tribhuvan", f"/devices/{first}", "/alerts?site=tribhuvan"):
        html = _page(client, path, tokens)
        assert local in html, path
        assert "14:15:00Z" not in html and "14:15:00+00:00" not in html, path
    # The API keeps UTC.
    api = client.get(f"/api/v1/devices/{first}", headers=tokens.headers("ops")).json()
    assert "2025-03-03 14:15:00Z" in api["state_reason"]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200), year=st.integers(1, 9999))
def test_any_text_goes_through_the_stamp_filter(text: str, year: int) -> None:
    from jinja2.runtime import new_context

    from fleet.web.templating import ENV, stamps

    context = new_context(ENV, "t", {}, {"lang": "en", "user_zone": None, "zone": "Asia/Tokyo"})
    mixed = f"{text} {year:04d}-12-31 23:59:59Z {text} 2025-13-40 99:99:99Z"
    shown = stamps(context, mixed)
    assert "2025-13-40 99:99:99Z" in shown  # not a time: left as written
    assert f"{year:04d}-12-31 23:59:59Z" not in shown  # a time: shown with its zone named
