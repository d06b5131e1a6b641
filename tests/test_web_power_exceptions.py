"""Power exception dates from the site page, in Debian's chromium against a real controller
process: a site's technician adds one with the page's form (a same-origin form post, past
the CSRF/Origin policy) and the API shows it, audited as the API's own route audits it, then
deletes it; a vendor is shown no form; a technician of another site is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-power")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebp/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "tribhuvan.yaml", s.sites_dir)
    try:
        s.controller()
        wait_for(lambda: len(s.get("/api/v1/sites")) == 2, 30, "the two sites")
        yield s
    finally:
        s.stop_all()
        broker.stop()


@pytest.fixture(scope="module")
def stack_engine(stack: Stack) -> Iterator[Engine]:
    engine = make_engine(stack.database_url)
    yield engine
    engine.dispose()


def _tab(browser: Any, stack: Stack, token: str) -> Any:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    sign_in(tab, stack.base, token)
    return tab


def _exceptions(stack: Stack) -> list[str]:
    return [str(d) for d in stack.get("/api/v1/sites/upm/power-schedule")["exceptions"]]


def test_a_technician_adds_and_deletes_an_exception_date_from_the_site_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm", "technician", sites=["upm"])
    day = (utcnow() + timedelta(days=10)).date().isoformat()
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/sites/upm")
        panel = tab.get_by_test_id("power-schedule")
        assert panel.get_by_test_id("power-mode").get_attribute("data-mode") == "notify_only"
        form = panel.get_by_test_id("power-exception-form")
        form.locator("input[name=day]").fill(day)
        form.locator("input[name=note]").fill("Examens de fin de semestre\x07")
        form.get_by_role("button").click()
        tab.wait_for_url(f"{stack.base}/sites/upm#power")
        row = tab.locator(f"[data-testid=power-exceptions] tr[data-day='{day}']")
        assert "Examens de fin de semestre" in row.inner_text()
        assert "tech-upm" in row.inner_text()
        assert day in _exceptions(stack)  # what the API says, not only the page

        # A date the API would refuse is said on the page, and nothing is added.
        form = tab.get_by_test_id("power-exception-form")
        form.locator("input[name=day]").fill("1999-01-01")
        form.get_by_role("button").click()
        problem = tab.get_by_test_id("problem")
        problem.wait_for()
        assert "1999" not in " ".join(_exceptions(stack))

        tab.goto(f"{stack.base}/sites/upm")
        row = tab.locator(f"[data-testid=power-exceptions] tr[data-day='{day}']")
        row.get_by_role("button").click()
        tab.wait_for_url(f"{stack.base}/sites/upm#power")
        assert tab.locator(f"tr[data-day='{day}']").count() == 0
        assert day not in _exceptions(stack)
    finally:
        tab.context.close()
    with stack_engine.connect() as conn:
        audit = conn.execute(
            text(
                "SELECT actor, action, detail FROM audit_entry "
                "WHERE action LIKE 'power_exception.%' ORDER BY id"
            )
        ).all()
    details = [a[2] if isinstance(a[2], dict) else json.loads(a[2]) for a in audit]
    print(f"\n[power exceptions from the page] audit: {[(a[0], a[1]) for a in audit]}")
    assert [(a[0], a[1]) for a in audit] == [
        ("tech-upm", "power_exception.add"),
        ("tech-upm", "power_exception.remove"),
    ]
    # The control character pasted into the note was dropped, the rest kept.
    assert details[0] == {"day": day, "note": "Examens de fin de semestre"}


def test_a_vendor_is_shown_no_form(stack: Stack, stack_engine: Engine, browser: Any) -> None:
    vendor = user_token(stack_engine, "vendor-seewo-p", "vendor", vendor="Seewo")
    tab = _tab(browser, stack, vendor)
    try:
        response = tab.goto(f"{stack.base}/sites/upm")
        assert response.status in (403, 404)
        assert tab.get_by_test_id("power-exception-form").count() == 0
        assert tab.get_by_test_id("power-schedule").count() == 0
    finally:
        tab.context.close()


def test_a_technician_of_another_site_is_refused(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    other = user_token(stack_engine, "tech-tribhuvan", "technician", sites=["tribhuvan"])
    day = (utcnow() + timedelta(days=12)).date().isoformat()
    tab = _tab(browser, stack, other)
    try:
        # Their own site's page has the form; upm's page is not theirs.
        tab.goto(f"{stack.base}/sites/tribhuvan")
        assert tab.get_by_test_id("power-exception-form").count() == 1
        assert tab.goto(f"{stack.base}/sites/upm").status in (403, 404)
        assert tab.get_by_test_id("power-exception-form").count() == 0
        # The same form, posted by hand from their own page to upm's address: refused.
        tab.goto(f"{stack.base}/sites/tribhuvan")
        status = tab.evaluate(
            """async (day) => {
                const body = new URLSearchParams({day, note: "not mine"});
                const r = await fetch("/sites/upm/power-exceptions", {method: "POST", body});
                return r.status;
            }""",
            day,
        )
        assert status == 403, status
        assert day not in _exceptions(stack)
    finally:
        tab.context.close()


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("technician"), follow_redirects=False) as c:
        yield c


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    day=st.one_of(
        # Mostly dates near today, which the API's window takes, so the stored path is run.
        st.integers(-800, 800).map(lambda n: (date.today() + timedelta(days=n)).isoformat()),
        st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
        st.text(max_size=120),
        st.sampled_from(["", "2026-02-30", "9999-12-31", "-1", "NaN", "2026-13-01", "\x00"]),
    ),
    note=st.one_of(
        st.text(max_size=700),
        st.sampled_from(["\x00\x1b[31m", "<script>alert(1)</script>", "=1+1", "é" * 500]),
    ),
)
def test_any_form_post_is_stored_or_refused_with_its_reason(
    client: TestClient, day: str, note: str
) -> None:
    """Hostile form values: a date and note the API takes are stored (303 back to the page),
    anything else is a 422 page that says why; never a 500, and nothing half-stored."""
    answer = client.post(
        "/sites/upm/power-exceptions",
        data={"day": day, "note": note},
        headers={"Origin": "http://testserver"},
    )
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    stored = client.get("/api/v1/sites/upm/power-schedule").json()["exceptions"]
    event(f"status {answer.status_code}")
    if answer.status_code == 303:
        assert day in stored
        assert client.delete(f"/api/v1/sites/upm/power-exceptions/{day}").status_code == 204
    else:
        assert 'data-testid="problem"' in answer.text
        assert day not in stored
