"""The users page (`/users`), in Debian's chromium against a real controller process: ops
adds a technician with the page's form (a same-origin form post) and the API and the audit
log show them, changes their sites, revokes them, and the revoked technician's session and
sign-in fail; a technician and a vendor opening /users get the 403 page, not JSON. At 390 px
the page does not scroll sideways, and axe-core finds no serious violation. Hostile form
values are refused on the page with their reason (422)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.fixtures_browser import screenshot
from tests.procs import Stack, wait_for
from tests.test_web_accessibility import _serious
from tests.test_web_layout import _no_sideways_scroll

STRONG = "quartz lantern orbit ninety7"  # passes the password policy


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-users")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebu/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "usthb.yaml", s.sites_dir)
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


def _tab(browser: Any, stack: Stack, token: str | None, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    if token is not None:
        sign_in(tab, stack.base, token)
    return tab


def _users(stack: Stack) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in stack.get("/api/v1/users")}


def _sign_in_with_password(tab: Any, stack: Stack, name: str, password: str) -> Any:
    tab.goto(f"{stack.base}/login")
    tab.locator("input[name=username]").fill(name)
    tab.locator("input[name=password]").fill(password)
    with tab.expect_navigation() as navigation:
        tab.get_by_role("button", name="Log in").click()
    return navigation.value


def _status_as(stack: Stack, path: str, token: str) -> int:
    request = urllib.request.Request(
        stack.base + path, headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ops_adds_changes_and_revokes_a_technician_from_the_page(
    stack: Stack, browser: Any
) -> None:
    ops = _tab(browser, stack, stack.ops_token)
    tech = _tab(browser, stack, None)
    try:
        ops.goto(f"{stack.base}/users")
        assert ops.locator("header nav a", has_text="Users").get_attribute("aria-current") == "page"
        form = ops.get_by_test_id("add-form")
        form.locator("input[name=name]").fill("tech-usthb-new")
        form.locator("select[name=role]").select_option("technician")
        form.locator("input[name=sites][value=upm]").check()
        form.locator("input[name=password]").fill(STRONG)
        form.get_by_role("button", name="Add user").click()
        ops.wait_for_url(f"{stack.base}/users#user-tech-usthb-new")
        row = ops.locator("tr[data-user='tech-usthb-new']")
        assert row.get_by_test_id("user-scope").inner_text() == "upm"
        added = _users(stack)["tech-usthb-new"]  # what the API says, not only the page
        assert (added["role"], added["sites"], added["state"]) == ("technician", ["upm"], "active")

        # The new technician signs in with the password given on the form.
        landed = _sign_in_with_password(tech, stack, "tech-usthb-new", STRONG)
        assert landed.status == 200 and tech.url == f"{stack.base}/"
        assert tech.goto(f"{stack.base}/sites/usthb").status == 403

        # Ops gives them usthb as well: their open session sees it at once.
        row.locator("details.user-change summary").click()
        row.locator("input[name=sites][value=usthb]").check()
        row.get_by_role("button", name="Save").click()
        ops.wait_for_url(f"{stack.base}/users#user-tech-usthb-new")
        assert _users(stack)["tech-usthb-new"]["sites"] == ["upm", "usthb"]
        row = ops.locator("tr[data-user='tech-usthb-new']")
        assert row.get_by_test_id("user-scope").inner_text() == "upm, usthb"
        assert tech.goto(f"{stack.base}/sites/usthb").status == 200

        # Revoke, behind the second click of its <details>.
        assert row.get_by_test_id("revoke").is_hidden()
        row.locator("details.user-revoke summary").click()
        row.get_by_test_id("revoke").click()
        ops.wait_for_url(f"{stack.base}/users#user-tech-usthb-new")
        row = ops.locator("tr[data-user='tech-usthb-new']")
        assert row.get_attribute("data-state") == "revoked"
        assert _users(stack)["tech-usthb-new"]["state"] == "revoked"
        screenshot(ops, "users-ops.png")

        # Their session ends at once (back to the login), and signing in again fails.
        tech.goto(f"{stack.base}/sites/usthb")
        assert tech.url.startswith(f"{stack.base}/login")
        refused = _sign_in_with_password(tech, stack, "tech-usthb-new", STRONG)
        assert refused.status == 401
        assert "revoked" in tech.get_by_test_id("login-problem").inner_text()
        assert not ops.errors and not tech.errors, (ops.errors, tech.errors)
    finally:
        ops.context.close()
        tech.context.close()
    audit = stack.get("/api/v1/audit?actor=stack-ops&limit=1000")["items"]
    done = [(a["action"], a["target"]) for a in reversed(audit) if a["action"].startswith("user.")]
    print(f"\n[users from the page] audit: {done}")
    assert done == [
        ("user.add", "tech-usthb-new"),
        ("user.change", "tech-usthb-new"),
        ("user.revoke", "tech-usthb-new"),
    ]
    detail = next(a["detail"] for a in audit if a["action"] == "user.change")
    assert detail["sites"] == ["upm", "usthb"]


def test_the_last_ops_user_is_kept_and_said_so_on_the_page(stack: Stack, browser: Any) -> None:
    ops = _tab(browser, stack, stack.ops_token)
    try:
        ops.goto(f"{stack.base}/users")
        row = ops.locator("tr[data-user='stack-ops']")
        row.locator("details.user-revoke summary").click()
        with ops.expect_navigation() as navigation:
            row.get_by_test_id("revoke").click()
        assert navigation.value.status == 409
        assert "last active ops user" in ops.get_by_test_id("problem").inner_text()
        assert _users(stack)["stack-ops"]["state"] == "active"
    finally:
        ops.context.close()


@pytest.mark.parametrize("role", ["technician", "vendor"])
def test_technicians_and_vendors_get_the_403_page(
    stack: Stack, stack_engine: Engine, browser: Any, role: str
) -> None:
    token = (
        user_token(stack_engine, "tech-upm-p", "technician", sites=["upm"])
        if role == "technician"
        else user_token(stack_engine, "seewo-p", "vendor", vendor="Seewo")
    )
    tab = _tab(browser, stack, token)
    try:
        tab.goto(f"{stack.base}/")
        assert tab.locator("header nav a", has_text="Users").count() == 0
        answer = tab.goto(f"{stack.base}/users")
        assert answer.status == 403
        assert answer.headers["content-type"].startswith("text/html")
        assert tab.get_by_test_id("refused").is_visible()
        assert tab.locator("header nav a").count() >= 1  # the page keeps its menu
        # The add form, posted by hand from a page of theirs: refused, nothing added.
        status = tab.evaluate(
            """async () => {
                const body = new URLSearchParams({name: "sneaky-ops", role: "ops"});
                const r = await fetch("/users", {method: "POST", body});
                return r.status;
            }"""
        )
        assert status == 403
        assert "sneaky-ops" not in _users(stack)
        assert _status_as(stack, "/api/v1/users", token) == 403
    finally:
        tab.context.close()


def test_the_users_page_fits_a_phone_and_passes_axe(stack: Stack, browser: Any) -> None:
    tab = _tab(browser, stack, stack.ops_token, width=390)
    try:
        tab.goto(f"{stack.base}/users")
        _no_sideways_scroll(tab, "/users at 390 px")
        # With a user's change and revoke forms open, still no sideways scroll.
        for summary in tab.locator("tr[data-state=active] details summary").all()[:4]:
            summary.click()
        _no_sideways_scroll(tab, "/users at 390 px, forms open")
        screenshot(tab, "users-390.png")
        assert _serious(tab) == []
        tab.context.add_cookies([{"name": "fleet_lang", "value": "ar", "url": stack.base}])
        tab.goto(f"{stack.base}/users")
        _no_sideways_scroll(tab, "/users at 390 px in Arabic")
        assert _serious(tab) == []
        assert not tab.errors, tab.errors
    finally:
        tab.context.close()


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("ops"), follow_redirects=False) as c:
        yield c


HOSTILE = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["", "a" * 50_000, "\x00", "<script>alert(1)</script>", "ops\x1b[31m", "UPM"]),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.one_of(HOSTILE, st.from_regex(r"\Af[a-z0-9]{1,10}\Z")),
    role=st.one_of(st.sampled_from(["ops", "technician", "vendor"]), HOSTILE),
    sites=st.lists(st.one_of(st.sampled_from(["upm", "usthb", "nowhere"]), HOSTILE), max_size=3),
    vendor=st.one_of(st.sampled_from(["", "Seewo", "seewo", "Nobody"]), HOSTILE),
    password=st.one_of(st.just(""), st.just(STRONG), HOSTILE),
)
def test_any_add_form_is_stored_or_refused_on_the_page(
    client: TestClient, name: str, role: str, sites: list[str], vendor: str, password: str
) -> None:
    """Hostile form values: a user the API would take is added (303 back to the page);
    anything else is the page again, saying why (422, or 409 for a name taken); never a 500,
    never JSON, and nothing half-stored."""
    before = {u["name"] for u in client.get("/api/v1/users").json()}
    answer = client.post(
        "/users",
        data={"name": name, "role": role, "sites": sites, "vendor": vendor, "password": password},
        headers={"Origin": "http://testserver"},
    )
    event(f"status {answer.status_code}")
    assert answer.status_code in (303, 409, 422), (answer.status_code, answer.text[:300])
    after = {u["name"]: u for u in client.get("/api/v1/users").json()}
    if answer.status_code == 303:
        assert set(after) == before | {name}
        assert client.post(f"/api/v1/users/{name}/revoke").status_code == 200
    else:
        assert answer.headers["content-type"].startswith("text/html")
        assert 'data-testid="problem"' in answer.text
        assert "<script>alert(1)</script>" not in answer.text
        assert set(after) == before


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    role=st.one_of(st.sampled_from(["ops", "technician", "vendor"]), HOSTILE),
    sites=st.lists(st.one_of(st.sampled_from(["upm", "usthb"]), HOSTILE), max_size=3),
    vendor=st.one_of(st.sampled_from(["", "Seewo", "MAXHUB"]), HOSTILE),
)
def test_any_change_form_is_made_or_refused_on_the_page(
    client: TestClient, role: str, sites: list[str], vendor: str
) -> None:
    answer = client.post(
        "/users/tech-upm/change",
        data={"role": role, "sites": sites, "vendor": vendor},
        headers={"Origin": "http://testserver"},
    )
    event(f"status {answer.status_code}")
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    user = {u["name"]: u for u in client.get("/api/v1/users").json()}["tech-upm"]
    if answer.status_code == 422:
        assert 'data-testid="problem"' in answer.text
    else:
        assert user["role"] == role
        assert (role == "technician") == bool(user["sites"])
    assert user["state"] == "active"
    # Back to a technician of upm for the next example.
    back = {"role": "technician", "sites": ["upm"]}
    assert client.patch("/api/v1/users/tech-upm", json=back).status_code == 200
    json.dumps(user)  # the API's answer is plain JSON whatever was posted


@pytest.mark.parametrize("name", ["a\x00b", "\x00", "x" * 65, "tech-upm\n"])
@pytest.mark.parametrize("move", ["change", "revoke"])
def test_a_user_name_no_user_can_have_in_the_path_is_the_404_page(
    client: TestClient, name: str, move: str
) -> None:
    """A name edited into the form's URL (a NUL, which PostgreSQL cannot even look up) is the
    404 page, as a user who does not exist, not a 500; nobody is changed."""
    before = client.get("/api/v1/users").json()
    answer = client.post(
        f"/users/{quote(name, safe='')}/{move}",
        data={"role": "ops"},
        headers={"Origin": "http://testserver"},
    )
    assert answer.status_code == 404, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    assert client.get("/api/v1/users").json() == before
