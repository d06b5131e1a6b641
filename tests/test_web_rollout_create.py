"""The New rollout page, in Debian's chromium against a real `fleet serve`: ops fill the form,
the preview names the devices of each wave as the API's preview does (and the devices another
rollout holds as refused), then create, start, pause, resume and cancel it from the pages, each
seen through the API and audited. A technician and a vendor get the 403 page; hostile form
values (Hypothesis, through the TestClient) get a 422 page with the reason and create nothing.
The page and its preview have no sideways scroll at 390 px and no serious axe-core violation."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, text
from sqlmodel import Session, select

from agent.simulator.firmware_image import write_image
from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.models import Device
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.rollouts.models import Rollout
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.fixtures_browser import screenshot
from tests.procs import Stack, wait_for
from tests.test_web_accessibility import _serious
from tests.test_web_layout import _no_sideways_scroll


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-rollout-create")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebrc/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "tribhuvan.yaml", s.sites_dir)
    write_image(tmp / "artifacts", "seewo-panel", "3.3.0")
    try:
        s.controller(FLEET_ARTIFACTS_DIR=str(tmp / "artifacts"))
        wait_for(lambda: len(s.get("/api/v1/sites")) == 2, 30, "the two sites")
        yield s
    finally:
        s.stop_all()
        broker.stop()


@pytest.fixture(scope="module")
def stack_engine(stack: Stack) -> Iterator[Engine]:
    engine = make_engine(stack.database_url)
    with Session(engine) as session:
        for device in session.exec(select(Device).where(Device.profile == "seewo-panel")):
            device.firmware = "3.2.1"
            session.add(device)
        session.commit()
    yield engine
    engine.dispose()


def api(stack: Stack, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        stack.base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {stack.ops_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def _tab(browser: Any, stack: Stack, token: str, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    sign_in(tab, stack.base, token)
    return tab


# What the test fills in, and the same as the API's body.
FORM = {"name": "Seewo 3.3.0 from the page", "waves": "1, 50%, 100%", "threshold": "80"}
BODY = {
    "name": FORM["name"],
    "release_version": "3.3.0",
    "targets": {"profile": "seewo-panel"},
    "waves": [{"count": 1}, {"percent": 50}, {"percent": 100}],
    "success_threshold_pct": 80,
}


def _fill(tab: Any) -> None:
    form = tab.get_by_test_id("rollout-form")
    form.locator("input[name=name]").fill(FORM["name"])
    form.locator("select[name=release]").select_option("seewo-panel/3.3.0")
    form.locator("input[name=waves]").fill(FORM["waves"])
    form.locator("input[name=success_threshold_pct]").fill(FORM["threshold"])
    form.get_by_test_id("preview-button").click()
    tab.get_by_test_id("preview").wait_for()


def _shown_waves(tab: Any) -> dict[int, list[tuple[str, str | None]]]:
    """Wave -> [(device id, the rollout holding it)] as the preview shows them."""
    out: dict[int, list[tuple[str, str | None]]] = {}
    tables = tab.locator("[data-testid=preview-wave]")
    for i in range(tables.count()):
        table = tables.nth(i)
        rows = table.locator("tbody tr")
        out[int(table.get_attribute("data-wave"))] = [
            (rows.nth(j).get_attribute("data-device"), rows.nth(j).get_attribute("data-held-by"))
            for j in range(rows.count())
        ]
    return out


def _api_waves(preview: dict[str, Any]) -> dict[int, list[tuple[str, str | None]]]:
    return {
        w["wave"]: [
            (d["device_id"], str(d["held_by"]) if d["held_by"] is not None else None)
            for d in w["devices"]
        ]
        for w in preview["waves"]
    }


def test_ops_preview_create_start_pause_resume_cancel(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    # Another rollout holds tribhuvan's panels: the preview names them as refused.
    holder = api(
        stack,
        "POST",
        "/api/v1/rollouts",
        {
            **BODY,
            "name": "tribhuvan first",
            "targets": {"profile": "seewo-panel", "sites": ["tribhuvan"]},
            "abort_min_done": 1,
        },
    )
    tab = _tab(browser, stack, stack.ops_token or "")
    try:
        tab.goto(stack.base + "/rollouts")
        tab.get_by_test_id("new-rollout").click()
        tab.wait_for_url("**/rollouts/new")
        assert tab.locator("input[name=waves]").input_value() == "1, 100%"  # the API's default
        _fill(tab)
        held = api(stack, "POST", "/api/v1/rollouts/preview", BODY)
        assert held["refused"] and "a device is in one rollout at a time" in held["reasons"][0]
        shown = _shown_waves(tab)
        assert shown == _api_waves(held)
        held_ids = {d for devices in shown.values() for d, by in devices if by}
        assert held_ids == {"tu-sc1-panel-1", "tu-sc1-panel-2"}
        assert {by for devices in shown.values() for _, by in devices if by} == {str(holder["id"])}
        assert held["reasons"][0] in tab.get_by_test_id("preview-reasons").inner_text()
        assert tab.get_by_test_id("create").count() == 0  # nothing to create while refused

        api(stack, "POST", f"/api/v1/rollouts/{holder['id']}/cancel")
        tab.reload()
        tab.get_by_test_id("preview").wait_for()
        free = api(stack, "POST", "/api/v1/rollouts/preview", BODY)
        assert not free["refused"] and free["matched"] == 5
        shown = _shown_waves(tab)
        assert shown == _api_waves(free)
        assert [len(v) for _, v in sorted(shown.items())] == [1, 1, 3]  # 50% of 5 is 2
        counts = tab.get_by_test_id("preview-counts")
        assert counts.get_attribute("data-matched") == "5"
        before = len(api(stack, "GET", "/api/v1/rollouts"))
        assert before == 1  # the preview stored nothing

        tab.get_by_test_id("create").click()
        tab.wait_for_url("**/rollouts#rollout-*")
        rollout_id = int(tab.url.rsplit("-", 1)[1])
        detail = api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")
        assert detail["name"] == FORM["name"] and detail["state"] == "draft"
        assert detail["policy"]["success_threshold_pct"] == 80
        created: dict[int, list[tuple[str, str | None]]] = {}
        for d in sorted(detail["devices"], key=lambda d: d["device_id"]):
            created.setdefault(d["wave"], []).append((d["device_id"], None))
        assert created == _api_waves(free)  # what was previewed is what was created

        section = tab.locator(f"section[data-rollout='{rollout_id}']")
        for move, state in (
            ("start", "running"),
            ("pause", "paused"),
            ("resume", "running"),
            ("cancel", "aborted"),
        ):
            if move == "cancel":
                section.locator("details.cancel summary").click()
            section.get_by_test_id(move).click()
            tab.wait_for_url(f"**/rollouts#rollout-{rollout_id}")
            assert api(stack, "GET", f"/api/v1/rollouts/{rollout_id}")["state"] == state, move
            section.get_by_test_id("rollout-state").wait_for()
            assert section.get_by_test_id("rollout-state").inner_text() == state

        # Start again: the move no longer applies, said on a page as the API's 409 says it.
        answer = tab.request.post(stack.base + f"/rollouts/{rollout_id}/start")
        assert answer.status == 409 and "only a draft is started" in answer.text()
        assert "text/html" in answer.headers["content-type"]
    finally:
        tab.context.close()

    def audited() -> list[tuple[str, str]] | None:
        with stack_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT action, outcome FROM audit_entry WHERE action LIKE 'rollouts.%' "
                    "AND action LIKE '%from_page' ORDER BY id"
                )
            ).all()
        found = [(a, o) for a, o in rows]
        return found if len(found) >= 6 else None

    assert wait_for(audited, 10, "the page's moves in the audit") == [
        ("rollouts.create_from_page", "ok"),
        ("rollouts.start_from_page", "ok"),
        ("rollouts.pause_from_page", "ok"),
        ("rollouts.resume_from_page", "ok"),
        ("rollouts.cancel_from_page", "ok"),
        ("rollouts.start_from_page", "failed 409"),
    ]


@pytest.mark.parametrize("role", ["technician", "vendor"])
def test_a_technician_and_a_vendor_get_the_403_page(
    stack: Stack, stack_engine: Engine, browser: Any, role: str
) -> None:
    token = user_token(
        stack_engine,
        f"{role}-rc",
        role,
        sites=["upm"] if role == "technician" else None,
        vendor="Seewo" if role == "vendor" else None,
    )
    tab = _tab(browser, stack, token)
    try:
        answer = tab.goto(stack.base + "/rollouts/new")
        assert answer.status == 403
        assert tab.get_by_test_id("refused").is_visible()
        assert "rollouts:write" in tab.get_by_test_id("refused-reason").inner_text()
        assert tab.get_by_test_id("rollout-form").count() == 0
        before = len(api(stack, "GET", "/api/v1/rollouts"))
        posted = tab.request.post(
            stack.base + "/rollouts/new",
            form={"name": "not mine", "release": "seewo-panel/3.3.0", "waves": "1, 100%"},
        )
        assert posted.status == 403 and "text/html" in posted.headers["content-type"]
        assert len(api(stack, "GET", "/api/v1/rollouts")) == before
    finally:
        tab.context.close()


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_the_page_and_its_preview_fit_a_phone_and_pass_axe(
    stack: Stack, stack_engine: Engine, browser: Any, lang: str
) -> None:
    tab = _tab(browser, stack, stack.ops_token or "", width=390)
    tab.context.add_cookies([{"name": "fleet_lang", "value": lang, "url": stack.base}])
    try:
        tab.goto(stack.base + "/rollouts/new")
        _no_sideways_scroll(tab, f"/rollouts/new at 390 px ({lang})")
        assert not _serious(tab), _serious(tab)
        _fill(tab)
        assert tab.locator("[data-testid=preview-wave] tbody tr").count() > 0
        _no_sideways_scroll(tab, f"the preview at 390 px ({lang})")
        screenshot(tab, f"rollout-new-preview-390-{lang}.png")
        assert not _serious(tab), _serious(tab)
    finally:
        tab.context.close()


# ---- Hostile form values, through the TestClient -------------------------------------------


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    # The projectors' release is installed by a technician: no artifact file is needed.
    with Session(registered) as session:
        for device in session.exec(select(Device).where(Device.profile == "snmp-projector")):
            device.firmware = "1.4.0"
            session.add(device)
        session.commit()
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("ops"), follow_redirects=False) as c:
        yield c


def _rollouts(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(Rollout)).one()


NUMBERS = st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "NaN", "nan", "-inf", "1e309", "-1", "101", "0", "50", "\x00", "٣"]),
    st.text(max_size=20),
)
CONTROL = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1)
FIELDS = st.fixed_dictionaries(
    {
        "name": st.one_of(
            st.just("projectors 1.5.0"),
            st.text(max_size=300),
            CONTROL.map(lambda c: f"bad{c}name"),
            st.just(""),
        ),
        "release": st.one_of(
            st.just("snmp-projector/1.5.0"),
            st.sampled_from(["", "snmp-projector/9.9.9", "nope/1.0", "seewo-panel/3.3.0\x00"]),
            st.text(max_size=40),
        ),
        "sites": st.lists(
            st.one_of(st.sampled_from(["upm", "tribhuvan", "usthb"]), st.text(max_size=12)),
            max_size=3,
        ),
        "waves": st.one_of(
            st.just("1, 100%"),
            st.lists(
                st.one_of(
                    st.integers(-(10**12), 10**12).map(str),
                    st.floats().map(lambda f: f"{f}%"),
                    st.sampled_from(["0", "-5", "101%", "NaN%", "1e999", "%", "x"]),
                ),
                max_size=6,
            ).map(", ".join),
        ),
        "success_threshold_pct": NUMBERS,
        "abort_failure_pct": NUMBERS,
        "abort_min_done": NUMBERS,
        "max_retries": NUMBERS,
        "device_timeout_min": NUMBERS,
        "margin_min": NUMBERS,
        "nights_only": st.sampled_from(["", "1"]),
        "night_start": st.sampled_from(["22:00", "06:00", "25:00", "", "x", "06:00\x1b"]),
        "night_end": st.sampled_from(["06:00", "22:00", "", "-1:00"]),
        "start": st.sampled_from(["draft", "now", "at", "later", ""]),
        "start_at": st.sampled_from(
            ["", "2026-12-01T10:00", "1999-01-01T00:00", "9999-12-31T23:59", "not a time"]
        ),
    }
)


# A form the API takes; each example spoils some of its fields with hostile values.
VALID: dict[str, Any] = {
    "name": "projectors 1.5.0",
    "release": "snmp-projector/1.5.0",
    "sites": [],
    "waves": "1, 100%",
    "success_threshold_pct": "90",
    "abort_failure_pct": "20",
    "abort_min_done": "1",
    "max_retries": "1",
    "device_timeout_min": "30",
    "margin_min": "30",
    "nights_only": "",
    "night_start": "22:00",
    "night_end": "06:00",
    "start": "draft",
    "start_at": "",
}


def _valid_number(value: str, low: float, high: float) -> bool:
    try:
        number = float(value)
    except ValueError:
        return value.strip() == ""  # blank (a pasted NBSP too): the API's default
    return math.isfinite(number) and low <= number <= high


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile=FIELDS, spoiled=st.sets(st.sampled_from(sorted(VALID))))
def test_any_form_is_created_or_refused_with_its_reason(
    client: TestClient, registered: Engine, hostile: dict[str, Any], spoiled: set[str]
) -> None:
    """Created (303 to the rollouts page) only when the API would take it; anything else is a
    422 page that says why, with nothing stored; never a 500. The preview answers alike."""
    fields = {**VALID, **{key: hostile[key] for key in spoiled}}
    before = _rollouts(registered)
    query = urlencode({**fields, "preview": "1"}, doseq=True)
    preview = client.get(f"/rollouts/new?{query}")
    assert preview.status_code in (200, 422), (preview.status_code, preview.text[:300])
    assert _rollouts(registered) == before
    answer = client.post("/rollouts/new", data=fields, headers={"Origin": "http://testserver"})
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    event(f"status {answer.status_code}")
    if answer.status_code == 422:
        assert 'data-testid="problem"' in answer.text
        assert _rollouts(registered) == before
        if preview.status_code == 422:
            assert 'data-testid="problem"' in preview.text
        return
    assert _rollouts(registered) == before + 1
    assert preview.status_code == 200 and 'data-testid="create-form"' in preview.text
    # Only what the API bounds take was stored.
    for key, low, high in (("success_threshold_pct", 0, 100), ("abort_failure_pct", 0, 100)):
        assert _valid_number(fields[key], low, high), (key, fields[key])
    newest = client.get("/api/v1/rollouts?limit=1").json()[0]
    assert newest["release_version"] == "1.5.0"
    assert client.post(f"/api/v1/rollouts/{newest['id']}/cancel").status_code == 200


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"waves": "-5, 100%"}, "wave 1"),
        ({"waves": "99999999999999999999"}, "wave 1"),
        ({"success_threshold_pct": "150"}, "Success threshold (%)"),
        ({"abort_failure_pct": "NaN"}, "Abort above this failure rate (%)"),
        ({"name": "bad\x07name"}, "Name"),
        ({"release": "snmp-projector/9.9.9"}, "unknown release"),
        ({"sites": "ugb"}, "no device matches the targets"),
        ({"nights_only": "1", "night_start": "06:00", "night_end": "06:00"}, "no time at all"),
        ({"start": "at", "start_at": "1999-01-01T00:00"}, "outside the times"),
        ({"start": "at", "start_at": ""}, "Start at"),
        ({"current_versions": "1.4.0, " * 3000}, "longer than"),
        ({"device_timeout_min": "1e309"}, "Device timeout (minutes)"),
    ],
)
def test_each_refusal_names_its_reason(
    client: TestClient, registered: Engine, fields: dict[str, str], said: str
) -> None:
    body = {"name": "projectors", "release": "snmp-projector/1.5.0", "waves": "1, 100%"}
    answer = client.post(
        "/rollouts/new", data={**body, **fields}, headers={"Origin": "http://testserver"}
    )
    assert answer.status_code == 422 and said in answer.text, answer.text[-2000:]
    assert _rollouts(registered) == 0


def test_the_api_preview_is_what_creation_stores(client: TestClient, registered: Engine) -> None:
    body = {
        "name": "projectors",
        "release_version": "1.5.0",
        "targets": {"profile": "snmp-projector"},
        "waves": [{"count": 1}, {"percent": 100}],
        "abort_min_done": 1,
    }
    preview = client.post("/api/v1/rollouts/preview", json=body).json()
    assert not preview["refused"] and preview["method"] == "technician"
    assert _rollouts(registered) == 0
    created = client.post("/api/v1/rollouts", json=body).json()
    detail = client.get(f"/api/v1/rollouts/{created['id']}").json()
    stored = {d["device_id"]: d["wave"] for d in detail["devices"]}
    previewed = {d["device_id"]: w["wave"] for w in preview["waves"] for d in w["devices"]}
    assert stored == previewed and len(stored) >= 2
    # The same body again: every device is held by the first, named in the preview.
    again = client.post("/api/v1/rollouts/preview", json=body).json()
    assert again["refused"] and f"rollout {created['id']}" in again["reasons"][0]
    assert {d["held_by"] for w in again["waves"] for d in w["devices"]} == {created["id"]}
    refused = client.post("/api/v1/rollouts", json=body)
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["msg"] == f"rollout refused: {again['reasons'][0]}"
    # A body the API refuses is refused alike by the preview: 422, nothing stored.
    bad = client.post("/api/v1/rollouts/preview", json={**body, "success_threshold_pct": "NaN"})
    assert bad.status_code == 422 and _rollouts(registered) == 1
