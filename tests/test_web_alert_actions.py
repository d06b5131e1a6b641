"""Acknowledging with a note and resolving an alert from the browser, in Debian's chromium
against a real controller process, as ops and as a site's technician: what the page did is
what the API then says (acknowledged_by, ack_note, resolved_by, resolution), audited as the
API's own routes audit it. Refusals: a technician of another site is told there is no such
alert, a vendor is shown no form and its post is the 403 page. Hostile notes from the form:
stored as the API would store them, or a 422 page that says why, and nothing changed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlmodel import Session

from fleet.alerts.models import Alert
from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.protocol.messages import CONTROL_RE, utcnow
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-alert-actions")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebaa/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
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


def raise_alert(engine: Engine, device: str, kind: str = "lamp_hours") -> int:
    """An open alert about `device` at upm, as the rules would record it."""
    now = utcnow()
    with Session(engine) as session:
        alert = Alert(
            kind=kind,
            severity="warning",
            state="open",
            subject=f"device:{device}",
            site_code="upm",
            device_id=device,
            message="lamp at 95 % of its life: order a replacement",
            opened_at=now - timedelta(minutes=5),
            updated_at=now,
        )
        session.add(alert)
        session.commit()
        assert alert.id is not None
        return alert.id


def _tab(browser: Any, stack: Stack, token: str, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    sign_in(tab, stack.base, token)
    return tab


def _audit(engine: Engine, alert_id: int) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT actor, action, outcome FROM audit_entry WHERE target LIKE :t ORDER BY id"),
            {"t": f"POST %/alerts/{alert_id}/%"},
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def test_ops_acknowledges_with_a_note_then_resolves_from_the_alert_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    alert_id = raise_alert(stack_engine, "upm-sc2-projector")
    tab = _tab(browser, stack, stack.ops_token or "")
    try:
        tab.goto(f"{stack.base}/alerts/{alert_id}")
        form = tab.get_by_test_id("ack-form")
        form.get_by_label("Note (what you are doing about it)").fill(
            "Spare lamp ordered from the store\x07"
        )
        form.get_by_role("button").click()
        tab.wait_for_url(f"{stack.base}/alerts/{alert_id}")
        shown = tab.get_by_test_id("acknowledged").inner_text()
        assert "Spare lamp ordered from the store" in shown
        seen = stack.get(f"/api/v1/alerts/{alert_id}")
        assert seen["state"] == "acknowledged"
        assert seen["acknowledged_by"] == "stack-ops"
        assert seen["ack_note"] == "Spare lamp ordered from the store"  # the BEL dropped

        form = tab.get_by_test_id("resolve-form")
        form.get_by_label("Resolution (what was done)").fill("Lamp replaced, hours reset")
        form.get_by_role("button").click()
        tab.get_by_test_id("resolved").wait_for()
        seen = stack.get(f"/api/v1/alerts/{alert_id}")
        assert seen["state"] == "resolved" and seen["resolved_by"] == "stack-ops"
        assert seen["resolution"] == "Lamp replaced, hours reset"
        assert tab.get_by_test_id("ack-form").count() == 0
        assert tab.get_by_test_id("resolve-form").count() == 0
    finally:
        tab.context.close()
    # Audited under the API routes' names, as the API's own calls are.
    assert _audit(stack_engine, alert_id) == [
        ("stack-ops", "alerts.acknowledge", "ok"),
        ("stack-ops", "alerts.resolve_by_hand", "ok"),
    ]


def test_a_technician_acknowledges_from_the_list_and_resolves_on_the_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm-a", "technician", sites=["upm"])
    alert_id = raise_alert(stack_engine, "upm-sc1-pc")
    tab = _tab(browser, stack, tech, width=390)
    try:
        tab.goto(f"{stack.base}/alerts?state=open")
        row = tab.locator(f"tr[data-alert='{alert_id}']")
        row.get_by_test_id("ack-note").fill("On my way to room 1")
        row.get_by_test_id("ack").click()
        tab.wait_for_url(f"{stack.base}/alerts?state=open")  # back to the list it was on
        seen = stack.get(f"/api/v1/alerts/{alert_id}")
        assert (seen["acknowledged_by"], seen["ack_note"]) == ("tech-upm-a", "On my way to room 1")

        tab.goto(f"{stack.base}/alerts/{alert_id}")
        assert tab.get_by_test_id("ack-form").count() == 0  # already acknowledged
        tab.get_by_test_id("resolve-form").get_by_role("button").click()
        tab.get_by_test_id("resolved").wait_for()
        seen = stack.get(f"/api/v1/alerts/{alert_id}")
        # An empty resolution takes the API's default words.
        assert (seen["resolved_by"], seen["resolution"]) == ("tech-upm-a", "resolved by hand")
        widths = tab.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths
    finally:
        tab.context.close()


def test_a_technician_of_another_site_and_a_vendor_are_refused(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    other = user_token(stack_engine, "tech-tribhuvan-a", "technician", sites=["tribhuvan"])
    vendor = user_token(stack_engine, "vendor-maker-a", "vendor", vendor="Seewo")
    alert_id = raise_alert(stack_engine, "upm-sc1-panel-1")  # a Seewo panel at upm
    post = """async ([path, field]) => {
        const r = await fetch(path, {method: "POST", body: new URLSearchParams({[field]: "x"})});
        return [r.status, r.headers.get("content-type"), await r.text()];
    }"""
    tab = _tab(browser, stack, other)
    try:
        assert tab.goto(f"{stack.base}/alerts/{alert_id}").status == 404
        for action, field in (("ack", "note"), ("resolve", "resolution")):
            status, kind, body = tab.evaluate(post, [f"/alerts/{alert_id}/{action}", field])
            assert status == 404 and kind.startswith("text/html"), (status, kind)
            assert f"There is no alert {alert_id}" in body
    finally:
        tab.context.close()
    tab = _tab(browser, stack, vendor)
    try:
        # Its own make's device: it reads the alert, and is offered no action on it.
        assert tab.goto(f"{stack.base}/alerts/{alert_id}").status == 200
        assert tab.get_by_test_id("ack-form").count() == 0
        assert tab.get_by_test_id("resolve-form").count() == 0
        assert tab.get_by_test_id("silence-link").count() == 0
        for action, field in (("ack", "note"), ("resolve", "resolution")):
            status, kind, body = tab.evaluate(post, [f"/alerts/{alert_id}/{action}", field])
            assert status == 403 and kind.startswith("text/html"), (status, kind)
            assert 'data-testid="refused"' in body and "may not use this" in body
    finally:
        tab.context.close()
    seen = stack.get(f"/api/v1/alerts/{alert_id}")
    assert seen["state"] == "open" and seen["acknowledged_by"] is None
    with stack_engine.connect() as conn:
        denied = conn.execute(
            text("SELECT actor FROM audit_entry WHERE outcome = 'denied' AND target LIKE :t"),
            {"t": f"POST /alerts/{alert_id}/%"},
        ).scalars()
        assert {"tech-tribhuvan-a", "vendor-maker-a"} <= set(denied)


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("technician"), follow_redirects=False) as c:
        yield c


HOSTILE = st.one_of(
    st.text(max_size=2500),
    st.text(min_size=1990, max_size=2010),  # around the API's 2000
    st.sampled_from(
        ["\x00", "\x1b[31mred", "<script>alert(1)</script>", "é" * 2001, "a\r\nb", "x" * 200_000]
    ),
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(note=HOSTILE, action=st.sampled_from(["ack", "resolve"]))
def test_any_note_from_the_form_is_stored_as_the_api_would_or_refused_with_its_reason(
    client: TestClient, registered: Engine, note: str, action: str
) -> None:
    alert_id = raise_alert(registered, "upm-sc2-panel-1", kind=f"test_{utcnow().timestamp()}")
    field = "note" if action == "ack" else "resolution"
    answer = client.post(
        f"/alerts/{alert_id}/{action}",
        data={field: note},
        headers={"Origin": "http://testserver"},
    )
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    seen = client.get(f"/api/v1/alerts/{alert_id}").json()
    event(f"{action} {answer.status_code}")
    kept = CONTROL_RE.sub("", note)
    if answer.status_code == 422:
        assert 'data-testid="problem"' in answer.text and "at most 2000" in answer.text
        assert seen["state"] == "open" and seen["acknowledged_by"] is None
    elif action == "ack":
        assert seen["acknowledged_by"] == "tech-upm" and seen["ack_note"] == (kept or None)
    else:
        assert seen["resolved_by"] == "tech-upm"
        assert seen["resolution"] == (kept.strip() or "resolved by hand")
    json.dumps(seen)  # the API still answers a plain document
