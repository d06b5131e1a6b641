"""axe-core (bundled by axe-playwright-python, injected from disk) on every page, as each role,
at phone and desktop widths, in Debian's chromium against the real processes of test_web.py:
no serious or critical violation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_auth import sign_in
from tests.procs import Stack
from tests.test_web import stack  # noqa: F401 (the same real processes, started once here)
from tests.test_web_layout import role_tokens  # noqa: F401

PAGES = {
    "ops": (
        "/",
        "/sites/upm",
        "/devices/upm-sc2-projector",
        "/alerts",
        "/programme",
        "/programme/upm",
        "/enrolment",
        "/rollouts",
        "/rollouts/new",
        "/reports",
        "/users",
        "/no/such/page",
    ),
    "technician": (
        "/",
        "/sites/upm",
        "/devices/upm-sc1-panel-1",
        "/alerts",
        "/programme/upm",
        "/enrolment",
    ),
    "vendor": ("/", "/devices/upm-sc1-panel-1", "/alerts", "/reports"),
    "anonymous": ("/login",),
}
SERIOUS = {"serious", "critical"}


def _serious(tab: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(tab)
    found = []
    for violation in results.response["violations"]:
        if violation.get("impact") in SERIOUS:
            targets = [" ".join(map(str, n["target"])) for n in violation["nodes"][:5]]
            found.append(f"{violation['id']} ({violation['impact']}): {targets}")
    return found


@pytest.mark.parametrize("width", (390, 1366))
@pytest.mark.parametrize("role", sorted(PAGES))
def test_no_serious_accessibility_violation(
    stack: Stack,  # noqa: F811
    browser: Any,
    role_tokens: dict[str, str],  # noqa: F811
    role: str,
    width: int,
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 800})
    tab = context.new_page()
    try:
        if role != "anonymous":
            sign_in(tab, stack.base, role_tokens[role])
        if width < 1000:  # on the phone, in Arabic: right to left must pass as well
            tab.context.add_cookies([{"name": "fleet_lang", "value": "ar", "url": stack.base}])
        wrong = {}
        for path in PAGES[role]:
            tab.goto(stack.base + path)
            found = _serious(tab)
            if found:
                wrong[path] = found
        assert not wrong, wrong
    finally:
        context.close()
