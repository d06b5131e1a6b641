"""The dashboard on a phone (390 px) and a laptop (1366 px), in Debian's chromium, against the
real processes of tests/test_web.py, as each role: no page scrolls sideways, the controls a
technician needs are on screen, and a site with open alerts shows it in words."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_auth import sign_in, user_token
from tests.fixtures_browser import screenshot
from tests.procs import Stack
from tests.test_web import stack  # noqa: F401 (the same real processes, started once here)

WIDTHS = (390, 1366)
PAGES = ("/", "/sites/upm", "/devices/upm-sc2-projector", "/alerts")


@pytest.fixture(scope="module")
def role_tokens(stack: Stack) -> dict[str, str]:  # noqa: F811
    from fleet.db import make_engine

    engine = make_engine(stack.database_url)
    try:
        return {
            "ops": stack.ops_token or "",
            "technician": user_token(engine, "layout-tech", "technician", sites=["upm"]),
            "vendor": user_token(engine, "layout-seewo", "vendor", vendor="Seewo"),
        }
    finally:
        engine.dispose()


def _tab(browser: Any, width: int, base: str, token: str) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    sign_in(tab, base, token)
    return tab


def _no_sideways_scroll(tab: Any, where: str) -> None:
    widths = tab.evaluate(
        "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], f"{where}: scrolls sideways {widths}"


def _on_screen_horizontally(tab: Any, locator: Any, where: str) -> None:
    locator.scroll_into_view_if_needed()
    assert locator.is_visible(), where
    box = locator.bounding_box()
    width = tab.viewport_size["width"]
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, (where, box)


@pytest.mark.parametrize("width", WIDTHS)
def test_ops_pages_fit_the_screen(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],
    width: int,
) -> None:
    tab = _tab(browser, width, stack.base, role_tokens["ops"])
    try:
        for path in PAGES:
            tab.goto(stack.base + path)
            where = f"{path} at {width} px"
            _no_sideways_scroll(tab, where)
            for label in ("Overview", "Alerts", "Rollouts", "Reports"):
                _on_screen_horizontally(tab, tab.locator("header nav a", has_text=label), where)
            _on_screen_horizontally(tab, tab.locator("[data-testid=viewer]"), where)
            name = path.strip("/").replace("/", "-") or "overview"
            screenshot(tab, f"layout-{name}-{width}.png")
        tab.goto(stack.base + "/alerts?state=open")
        _on_screen_horizontally(tab, tab.locator("[data-testid=ack]").first, f"ack at {width}")
        assert not tab.errors, tab.errors
    finally:
        tab.context.close()


def test_a_site_with_open_alerts_needs_attention_in_words(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],
) -> None:
    open_alerts = stack.get("/api/v1/alerts?state=open&site=upm&limit=100")
    assert open_alerts["total"] > 0  # the stack's firmware minimum makes some
    tab = _tab(browser, 390, stack.base, role_tokens["technician"])
    try:
        tab.goto(stack.base + "/")
        row = tab.locator("tr[data-site=upm]")
        assert row.get_attribute("data-level") in ("warning", "critical")
        status = row.locator("[data-testid=site-status]").inner_text()
        assert "All well" not in status and ("Warning" in status or "Critical" in status)
        assert int(tab.locator("[data-testid=problem-sites]").inner_text()) >= 1
        tab.goto(stack.base + "/sites/upm")
        alerting = {a["device_id"] for a in open_alerts["items"] if a["device_id"]}
        for device in alerting:
            mark = tab.locator(f"tr[data-device='{device}'] [data-testid=alert-mark]")
            assert mark.count() == 1, device
        _no_sideways_scroll(tab, "site page, technician, 390 px")
        screenshot(tab, "attention-site-390.png")
    finally:
        tab.context.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_a_vendor_reaches_its_devices_and_reports(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],
    width: int,
) -> None:
    tab = _tab(browser, width, stack.base, role_tokens["vendor"])
    try:
        tab.goto(stack.base + "/")
        _no_sideways_scroll(tab, f"vendor overview at {width}")
        devices = tab.locator("[data-testid=vendor-devices] tbody tr[data-device]")
        assert devices.count() > 0
        first = devices.first.get_attribute("data-device")
        _on_screen_horizontally(tab, tab.locator("[data-testid=reports-link]"), "reports link")
        tab.locator(f"tr[data-device='{first}'] a").first.click()
        tab.wait_for_url(f"**/devices/{first}")
        _no_sideways_scroll(tab, f"vendor device at {width}")
        # Back to the overview by the breadcrumb: no JSON 403 on the way.
        tab.locator("nav.crumbs a").first.click()
        tab.wait_for_url(stack.base + "/")
        tab.locator("[data-testid=reports-link]").click()
        tab.wait_for_url("**/reports")
        assert tab.locator("h1").count() == 1
        assert not tab.errors, tab.errors
    finally:
        tab.context.close()


@pytest.mark.parametrize(
    ("lang", "heading", "direction"),
    [
        ("en", "Fleet overview", "ltr"),
        ("fr", "Vue d'ensemble du parc", "ltr"),
        ("ar", "نظرة عامة على الأسطول", "rtl"),
        ("ru", "Обзор парка", "ltr"),
    ],
)
def test_overview_in_each_language(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],
    lang: str,
    heading: str,
    direction: str,
) -> None:
    for width in WIDTHS:
        tab = _tab(browser, width, stack.base, role_tokens["ops"])
        try:
            tab.context.add_cookies([{"name": "fleet_lang", "value": lang, "url": stack.base}])
            tab.goto(stack.base + "/")
            assert tab.locator("h1").inner_text() == heading
            # The words made in macros and filters too, not only the template's own.
            badge = tab.locator(".cards .badge[data-state=site_offline]").inner_text()
            level = tab.locator("tr[data-site=upm] .level").inner_text()
            assert (badge == "site offline") == (lang == "en"), badge
            assert ("Warning" in level or "Critical" in level) == (lang == "en"), level
            assert tab.evaluate("document.documentElement.dir") == direction
            assert tab.evaluate("getComputedStyle(document.body).direction") == direction
            _no_sideways_scroll(tab, f"overview in {lang} at {width}")
            if width >= 1366:  # the whole sites table in view, not scrolled inside its box
                fits = (
                    "(t => t.scrollWidth <= t.parentElement.clientWidth)"
                    "(document.querySelector('table.sites'))"
                )
                assert tab.evaluate(fits), f"sites table wider than the screen in {lang}"
            if direction == "rtl":
                # Right to left: the header starts at the right edge, with the brand.
                brand = tab.locator("header .brand").bounding_box()
                assert brand is not None and brand["x"] + brand["width"] > width - 40, brand
            screenshot(tab, f"overview-{lang}-{width}.png")
            assert not tab.errors, tab.errors
        finally:
            tab.context.close()


def test_the_language_is_chosen_in_the_page(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],
) -> None:
    tab = _tab(browser, 390, stack.base, role_tokens["technician"])
    try:
        tab.goto(stack.base + "/alerts")
        tab.select_option("footer select[name=lang]", "ru")
        tab.locator("footer [data-testid=preferences] button").click()
        tab.wait_for_url("**/alerts")
        assert tab.locator("h1").inner_text() == "Оповещения"
        # The browser's own zone is offered, and chosen, and then named in the footer.
        own = tab.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
        tab.select_option("footer select[name=tz]", own)
        tab.locator("footer [data-testid=preferences] button").click()
        tab.wait_for_url("**/alerts")
        assert own in tab.locator("footer").inner_text()
    finally:
        tab.context.close()
