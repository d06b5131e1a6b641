"""The silences and e-mail notification screens in Debian's chromium against a real
controller process (with a real SMTP server on loopback, aiosmtpd), as ops, a site's
technician and a vendor: a silence made from the form (from an alert's "Silence" link) is
what the API then lists, the alert shows as silenced (🔇 and the word), and "end now" ends
it; a technician subscribes from the page and receives the e-mail when an alert opens at
their site, and another when it is resolved. Refusals: another site's silence, a vendor on
the silences screen. Hostile form posts: made as the API would make them, or a 422 page
that says why and nothing made. Both screens fit a phone and pass axe-core."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.embedded_broker import free_port
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.fixtures_browser import screenshot
from tests.procs import Stack, wait_for
from tests.smtp_sink import Sink, running_sink
from tests.test_web_alert_actions import raise_alert

PUBLIC = "https://fleet.example.edu"


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Sink, int]]:
    with running_sink(free_port()) as found:
        yield found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Sink, int]) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-silences")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebsil/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "tribhuvan.yaml", s.sites_dir)
    try:
        s.controller(
            FLEET_SMTP_HOST="127.0.0.1",
            FLEET_SMTP_PORT=str(smtp[1]),
            FLEET_NOTICE_TICK_S="0.5",
            FLEET_PUBLIC_URL=PUBLIC,
        )
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


def _tab(browser: Any, stack: Stack, token: str, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    sign_in(tab, stack.base, token)
    return tab


POST = """async ([path, fields]) => {
    const r = await fetch(path, {method: "POST", body: new URLSearchParams(fields)});
    return [r.status, r.headers.get("content-type"), await r.text()];
}"""


def test_ops_silences_a_device_from_its_alert_sees_it_silenced_and_ends_it(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    alert_id = raise_alert(stack_engine, "upm-sc2-projector")
    tab = _tab(browser, stack, stack.ops_token or "")
    try:
        tab.goto(f"{stack.base}/alerts/{alert_id}")
        tab.get_by_test_id("silence-link").click()
        tab.wait_for_url(f"{stack.base}/silences?site=upm&device=upm-sc2-projector#new")
        form = tab.get_by_test_id("silence-form")
        assert form.get_by_label("Device id (empty: every device there)").input_value() == (
            "upm-sc2-projector"
        )
        form.get_by_label("Reason").fill("Projector sent for repair")
        form.locator("input[name=hours]").fill("3")
        form.get_by_test_id("silence").click()
        tab.wait_for_url(f"{stack.base}/silences")
        [silence] = stack.get("/api/v1/silences?active=true")
        assert silence["device_id"] == "upm-sc2-projector" and silence["site_code"] == "upm"
        assert silence["created_by"] == "stack-ops"
        assert silence["reason"] == "Projector sent for repair"
        row = tab.locator(f"[data-testid=active-silences] tr[data-silence='{silence['id']}']")
        assert "Projector sent for repair" in row.inner_text()
        assert "stack-ops" in row.inner_text()

        # Shown as silenced, in words and not by colour only, where the alert is shown.
        tab.goto(f"{stack.base}/alerts?state=open")
        muted = tab.locator(f"tr[data-alert='{alert_id}'] [data-testid=silenced]")
        assert "🔇" in muted.inner_text() and "Silenced" in muted.inner_text()
        tab.goto(f"{stack.base}/alerts/{alert_id}")
        assert "stack-ops" in tab.get_by_test_id("silenced").inner_text()
        tab.goto(f"{stack.base}/devices/upm-sc2-projector")
        assert "Silenced" in tab.get_by_test_id("device-silenced").inner_text()
        tab.goto(f"{stack.base}/sites/upm")
        assert "Projector sent for repair" in tab.get_by_test_id("site-silences").inner_text()

        tab.goto(f"{stack.base}/silences")
        tab.locator(f"tr[data-silence='{silence['id']}']").get_by_test_id("expire").click()
        tab.wait_for_url(f"{stack.base}/silences")
        assert stack.get("/api/v1/silences?active=true") == []
        [ended] = stack.get("/api/v1/silences")
        assert ended["expired_by"] == "stack-ops" and ended["expired_at"] is not None
        tab.goto(f"{stack.base}/alerts?state=open")
        assert tab.locator(f"tr[data-alert='{alert_id}'] [data-testid=silenced]").count() == 0
    finally:
        tab.context.close()
    with stack_engine.connect() as conn:
        audit = conn.execute(
            text("SELECT actor, action FROM audit_entry WHERE action LIKE 'silence%' ORDER BY id")
        ).all()
    # The domain's own entries, as from the API, and the permission's record of each post.
    assert [tuple(a) for a in audit] == [
        ("stack-ops", "silence.create"),
        ("stack-ops", "silences.create_silence"),
        ("stack-ops", "silence.expire"),
        ("stack-ops", "silences.expire_silence"),
    ]


def test_a_technician_silences_a_room_of_their_site_and_no_other(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm-s", "technician", sites=["upm"])
    tab = _tab(browser, stack, tech, width=390)
    try:
        tab.goto(f"{stack.base}/silences")
        form = tab.get_by_test_id("silence-form")
        options = form.locator("select[name=site] option").all_inner_texts()
        assert options == ["upm"]  # only their own site is offered
        form.locator("select[name=room]").select_option("upm-smart-1")
        form.get_by_label("Reason").fill("Planned power cut in block 1")
        form.locator("input[name=hours]").fill("1.5")
        form.get_by_test_id("silence").click()
        tab.wait_for_url(f"{stack.base}/silences")
        mine = [
            s for s in stack.get("/api/v1/silences?active=true") if s["created_by"] == "tech-upm-s"
        ]
        assert [(s["site_code"], s["room_id"]) for s in mine] == [("upm", "upm-smart-1")]

        # The same form posted by hand for another site: the 403 page, nothing made.
        fields = {"site": "tribhuvan", "reason": "not mine", "hours": "2"}
        status, kind, body = tab.evaluate(POST, ["/silences", fields])
        assert status == 403 and kind.startswith("text/html") and 'data-testid="refused"' in body
        assert not [s for s in stack.get("/api/v1/silences") if s["site_code"] == "tribhuvan"]
        # A period the API refuses is said on the page, and nothing is made.
        form = tab.get_by_test_id("silence-form")
        form.get_by_label("Reason").fill("Too long")
        form.locator("input[name=hours]").evaluate("e => e.removeAttribute('max')")
        form.locator("input[name=hours]").fill("100000")
        form.get_by_test_id("silence").click()
        assert "at most 90 days" in tab.get_by_test_id("problem").inner_text()
        assert not [s for s in stack.get("/api/v1/silences") if s["reason"] == "Too long"]

        # Their own silence, ended from the list.
        tab.goto(f"{stack.base}/silences")
        tab.locator(f"tr[data-silence='{mine[0]['id']}']").get_by_test_id("expire").click()
        tab.wait_for_url(f"{stack.base}/silences")
        assert not [
            s for s in stack.get("/api/v1/silences?active=true") if s["id"] == mine[0]["id"]
        ]
    finally:
        tab.context.close()


def test_a_vendor_has_no_silences_screen(stack: Stack, stack_engine: Engine, browser: Any) -> None:
    vendor = user_token(stack_engine, "vendor-maker-s", "vendor", vendor="Seewo")
    tab = _tab(browser, stack, vendor)
    try:
        answer = tab.goto(f"{stack.base}/silences")
        assert answer.status == 403
        assert tab.get_by_test_id("refused").count() == 1  # a page, not JSON
        assert tab.locator("header nav a", has_text="Silences").count() == 0
        fields = {"site": "upm", "reason": "x", "hours": "2"}
        status, kind, _ = tab.evaluate(POST, ["/silences", fields])
        assert status == 403 and kind.startswith("text/html")
        status, kind, _ = tab.evaluate(POST, ["/silences/1/expire", {}])
        assert status == 403 and kind.startswith("text/html")
    finally:
        tab.context.close()


def test_a_technician_subscribes_from_the_page_and_hears_of_an_alert_and_its_end(
    stack: Stack, stack_engine: Engine, browser: Any, smtp: tuple[Sink, int]
) -> None:
    sink, _ = smtp
    address = "tech.upm@university.example"
    tech = user_token(stack_engine, "tech-upm-m", "technician", sites=["upm"])
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/subscriptions")
        form = tab.get_by_test_id("subscription-form")
        assert form.locator("select[name=site] option").all_inner_texts()[1:] == ["upm"]
        form.get_by_label("E-mail address").fill(address)
        form.locator("select[name=site]").select_option("upm")
        form.get_by_test_id("subscribe").click()
        tab.wait_for_url(f"{stack.base}/subscriptions")
        row = tab.locator("[data-testid=subscriptions] tr[data-subscription]")
        assert address in row.inner_text() and "upm" in row.inner_text()

        alert_id = raise_alert(stack_engine, "upm-sc2-panel-1")
        wait_for(lambda: sink.to(address), 30, "the e-mail about the new alert")
        [opened] = sink.to(address)
        assert f"{PUBLIC}/alerts/{alert_id}" in opened.get_content()

        tab.goto(f"{stack.base}/alerts/{alert_id}")
        form = tab.get_by_test_id("resolve-form")
        form.get_by_label("Resolution (what was done)").fill("Panel restarted")
        form.get_by_role("button").click()
        tab.get_by_test_id("resolved").wait_for()
        wait_for(lambda: len(sink.to(address)) == 2, 30, "the e-mail that it is resolved")
        ended = sink.to(address)[1]
        assert ended["Subject"].startswith("[resolved]")
        assert "Resolved by: tech-upm-m" in ended.get_content()
        assert "Resolution: Panel restarted" in ended.get_content()

        # Another site, posted by hand: the 403 page; nothing added.
        fields = {"email": "x@university.example", "site": "tribhuvan"}
        status, kind, _ = tab.evaluate(POST, ["/subscriptions", fields])
        assert status == 403 and kind.startswith("text/html")

        tab.goto(f"{stack.base}/subscriptions")
        tab.locator("[data-testid=subscriptions]").get_by_test_id("delete").click()
        tab.wait_for_url(f"{stack.base}/subscriptions")
        assert tab.locator("tr[data-subscription]").count() == 0
    finally:
        tab.context.close()
    with stack_engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM alert_subscription WHERE user_name = 'tech-upm-m'")
        ).scalar()
        actions = conn.execute(
            text(
                "SELECT action FROM audit_entry WHERE actor = 'tech-upm-m' "
                "AND action LIKE 'subscription.%' ORDER BY id"
            )
        ).scalars()
        assert list(actions) == ["subscription.create", "subscription.delete"]
    assert left == 0


def test_a_vendor_subscribes_to_its_own_devices_and_names_no_site(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    vendor = user_token(stack_engine, "vendor-maker-m", "vendor", vendor="Seewo")
    tab = _tab(browser, stack, vendor)
    try:
        tab.goto(f"{stack.base}/subscriptions")
        form = tab.get_by_test_id("subscription-form")
        assert form.locator("select[name=site]").count() == 0
        form.get_by_label("E-mail address").fill("support@maker.example")
        form.locator("select[name=min_severity]").select_option("critical")
        form.get_by_test_id("subscribe").click()
        tab.wait_for_url(f"{stack.base}/subscriptions")
        fields = {"email": "support@maker.example", "site": "upm"}
        status, kind, _ = tab.evaluate(POST, ["/subscriptions", fields])
        assert status == 403 and kind.startswith("text/html")
    finally:
        tab.context.close()
    with stack_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT site_code, min_severity FROM alert_subscription "
                "WHERE user_name = 'vendor-maker-m'"
            )
        ).all()
    assert [tuple(r) for r in rows] == [(None, "critical")]


def _serious(tab: Any) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    found = []
    for violation in Axe().run(tab).response["violations"]:
        if violation.get("impact") in {"serious", "critical"}:
            found.append(f"{violation['id']}: {[n['target'] for n in violation['nodes'][:3]]}")
    return found


@pytest.mark.parametrize("width", (390, 1366))
def test_the_screens_fit_a_phone_and_pass_axe(
    stack: Stack, stack_engine: Engine, browser: Any, width: int
) -> None:
    tech = user_token(stack_engine, f"tech-upm-w{width}", "technician", sites=["upm"])
    wrong: dict[str, Any] = {}
    for role, token in (("ops", stack.ops_token or ""), ("technician", tech)):
        tab = _tab(browser, stack, token, width=width)
        try:
            if width < 1000:  # on the phone, in Arabic: right to left as well
                tab.context.add_cookies([{"name": "fleet_lang", "value": "ar", "url": stack.base}])
            for path in ("/silences", "/subscriptions", "/silences?site=upm&device=upm-sc1-pc"):
                tab.goto(stack.base + path)
                widths = tab.evaluate(
                    "[document.documentElement.scrollWidth, document.body.scrollWidth,"
                    " window.innerWidth]"
                )
                if max(widths[:2]) > widths[2]:
                    wrong[f"{role} {path} scrolls sideways"] = widths
                found = _serious(tab)
                if found:
                    wrong[f"{role} {path}"] = found
                name = path.strip("/").split("?")[0]
                screenshot(tab, f"{name}-{role}-{width}.png")
        finally:
            tab.context.close()
    assert not wrong, wrong


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("technician"), follow_redirects=False) as c:
        yield c


ORIGIN = {"Origin": "http://testserver"}
TEXT = st.one_of(
    st.text(max_size=600),
    st.sampled_from(
        ["", "\x00", "\x1b[31m", "<script>alert(1)</script>", "é" * 501, "x" * 100_000]
    ),
)


HOSTILE_SILENCE = st.fixed_dictionaries(
    {
        "room": st.one_of(st.sampled_from(["", "upm-smart-1", "nosuch-room"]), TEXT),
        "device": st.one_of(
            st.sampled_from(["", "upm-sc1-pc", "upm-sc2-projector", "usthb-nosuch", "UPM-SC1-PC"]),
            TEXT,
        ),
        "reason": st.one_of(st.just("Planned power cut"), TEXT),
        "starts": st.one_of(
            st.sampled_from(["", "2020-01-01T08:00", "9999-12-31T23:59", "0001-01-01T00:00"]),
            st.datetimes().map(lambda d: d.isoformat()),
            TEXT,
        ),
        "hours": st.one_of(
            st.sampled_from(["NaN", "inf", "-inf", "-1", "0", "1e308", "2161", "", " 3 "]),
            st.floats().map(str),
            TEXT,
        ),
    }
)
# Forms a technician of upm may well send, so that what is made is checked often too.
SOUND_SILENCE = st.fixed_dictionaries(
    {
        "room": st.sampled_from(["", "upm-smart-1", "upm-smart-2"]),
        "device": st.sampled_from(["", "upm-sc1-pc", "upm-sc2-projector"]),
        "reason": st.text(
            st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=500
        ),
        "starts": st.sampled_from(["", "2099-01-01T08:00"]),
        "hours": st.floats(0.01, 2160).map(str),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.one_of(SOUND_SILENCE, HOSTILE_SILENCE))
def test_any_silence_form_post_is_made_or_refused_with_its_reason(
    client: TestClient, fields: dict[str, str]
) -> None:
    room, device, reason = fields["room"], fields["device"], fields["reason"]
    starts, hours = fields["starts"], fields["hours"]
    before = client.get("/api/v1/silences?limit=500").json()
    answer = client.post(
        "/silences",
        data={
            "site": "upm",
            "room": room,
            "device": device,
            "reason": reason,
            "starts": starts,
            "hours": hours,
        },
        headers=ORIGIN,
    )
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    after = client.get("/api/v1/silences?limit=500").json()
    event(f"status {answer.status_code}")
    if answer.status_code == 303:
        [made] = [s for s in after if s["id"] not in {b["id"] for b in before}]
        assert made["created_by"] == "tech-upm" and made["site_code"] == "upm"
        assert made["ends_at"] > made["starts_at"]
        assert client.post(f"/api/v1/silences/{made['id']}/expire").status_code == 200
    else:
        assert 'data-testid="problem"' in answer.text and "Nothing was silenced" in answer.text
        assert len(after) == len(before)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    email=st.one_of(
        st.sampled_from(["tech@upm.example", "a@b", "@x", "a b@c.d", "x" * 300 + "@e.f"]),
        st.emails().map(str),
        TEXT,
    ),
    site=st.sampled_from(["", "upm"]),
    severity=st.one_of(st.sampled_from(["warning", "critical", "", "WARNING", "info"]), TEXT),
)
def test_any_subscription_form_post_is_added_or_refused_with_its_reason(
    client: TestClient, email: str, site: str, severity: str
) -> None:
    before = client.get("/api/v1/alert-subscriptions").json()
    answer = client.post(
        "/subscriptions",
        data={"email": email, "site": site, "min_severity": severity},
        headers=ORIGIN,
    )
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    after = client.get("/api/v1/alert-subscriptions").json()
    event(f"status {answer.status_code}")
    if answer.status_code == 303:
        [made] = [s for s in after if s["id"] not in {b["id"] for b in before}]
        assert made["email"] == email.strip() and made["site_code"] == (site or None)
        assert client.delete(f"/api/v1/alert-subscriptions/{made['id']}").status_code == 204
    else:
        assert 'data-testid="problem"' in answer.text and "Nothing was added" in answer.text
        assert after == before


def test_forms_naming_another_site_are_the_403_page(client: TestClient, registered: Engine) -> None:
    for path, fields in (
        ("/silences", {"site": "usthb", "reason": "x", "hours": "2"}),
        ("/silences", {"site": "no-such-site", "reason": "x", "hours": "2"}),
        ("/subscriptions", {"email": "a@b.example", "site": "usthb"}),
    ):
        answer = client.post(path, data=fields, headers=ORIGIN)
        assert answer.status_code == 403, (path, fields, answer.status_code)
        assert 'data-testid="refused"' in answer.text
    assert client.get("/api/v1/silences").json() == []
    assert client.get("/api/v1/alert-subscriptions").json() == []
    with registered.connect() as conn:
        refused = conn.execute(
            text("SELECT action FROM audit_entry WHERE actor = 'tech-upm' AND outcome = :o"),
            {"o": "failed 403"},
        ).scalars()
        assert sorted(refused) == [
            "silences.create_silence",
            "silences.create_silence",
            "subscriptions.subscribe",
        ]


def test_ending_another_sites_silence_from_the_page_is_audited_as_from_the_api(
    client: TestClient, registered: Engine
) -> None:
    """A technician who edits another site's silence id into "End now" gets the 404 page,
    the silence goes on, and the audit log records the refused try as the API's route does
    (`failed 404`), so that probing others' ids is not hidden by using the page."""
    ops = {"Authorization": f"Bearer {user_token(registered, 'ops-silences', 'ops')}"}
    made = client.post(
        "/api/v1/silences",
        json={
            "site": "usthb",
            "reason": "works",
            "ends_at": (utcnow() + timedelta(days=1)).isoformat(),
        },
        headers=ops,
    )
    assert made.status_code == 201, made.text
    silence = made.json()["id"]
    page = client.post(f"/silences/{silence}/expire", headers=ORIGIN)
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert client.post(f"/api/v1/silences/{silence}/expire").status_code == 404
    assert client.get("/api/v1/silences?active=true", headers=ops).json()[0]["id"] == silence
    with registered.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT action, target, outcome FROM audit_entry WHERE actor = 'tech-upm' "
                "ORDER BY id"
            )
        ).all()
    assert ("silences.expire_silence", f"POST /silences/{silence}/expire", "failed 404") in rows
    assert (
        "silences.expire_silence",
        f"POST /api/v1/silences/{silence}/expire",
        "failed 404",
    ) in rows


@pytest.mark.parametrize(
    "path",
    [
        "/silences/0/expire",
        "/silences/abc/expire",
        "/silences/99999999999999999999/expire",
        "/subscriptions/-1/delete",
        "/alerts/x/ack",
        "/devices/UPM-SC1-PC/commands",
        "/sites/a%00b/commands",
    ],
)
def test_an_id_no_row_can_have_in_a_forms_url_is_the_404_page_not_json(
    client: TestClient, path: str
) -> None:
    """A form's URL edited by hand to an id out of bounds or pattern: the 404 page for
    people, as an id that does not exist; the API keeps its 422 JSON."""
    answer = client.post(path, headers=ORIGIN)
    assert answer.status_code == 404, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    assert "detail" not in answer.text[:20]
    api = client.post("/api/v1/silences/0/expire")
    assert api.status_code == 422 and api.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/alerts/1/ack", {"note": "x", "back": "/" + "a" * 3000}),
        ("/sites/upm/power-exceptions", {"day": "2026-12-01" * 20, "note": "x"}),
        ("/silences", {"site": "u" * 100}),
    ],
)
def test_a_form_value_past_its_bound_is_a_page_naming_the_field_not_json(
    client: TestClient, path: str, form: dict[str, str]
) -> None:
    """A forged or pasted form (or a page's query) whose field is past the route's own
    bound: a 422 page that names the field, for people; nothing raw in the browser."""
    if path == "/silences":
        answer = client.get(path, params=form)
    else:
        answer = client.post(path, data=form, headers=ORIGIN)
    assert answer.status_code == 422, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    assert 'data-testid="form-refused"' in answer.text
    field = next(name for name, value in form.items() if len(value) > 60)
    assert f"{field}:" in answer.text
