"""Enrolment tokens from the enrolment page, in Debian's chromium against a real controller
process: a technician makes a token for their own site, sees it once (reloading, going back
and forward never show it again), and the very command line the page gives enrols an agent;
a token for another site, by an edited form, is the 403 page and no token is made; a vendor
is refused the page. Hostile form values (Hypothesis) are a 422 page with the reason and make
nothing. At 390 px the pages do not scroll sideways, and axe-core finds no serious violation."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy import event as sa_event
from sqlmodel import Session, col, select

from fleet.api.app import create_app
from fleet.auth.enrolment import TokenSpent, make_enrolment_token, revoke_enrolment_token
from fleet.auth.models import AuditEntry, EnrolmentToken
from fleet.auth.permissions import Caller
from fleet.auth.tokens import TokenRefused, redeem_enrolment_token
from fleet.db import make_engine
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from fleet.web.enrolment_page import SHOWN_COOKIE
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import BIN, Stack, wait_for
from tests.test_web_accessibility import _serious


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-enrolment")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebe/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
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


def _tab(browser: Any, stack: Stack, token: str, width: int = 1366) -> Any:
    context = browser.new_context(viewport={"width": width, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.errors = errors
    sign_in(tab, stack.base, token)
    return tab


def _tokens(engine: Engine, site: str | None = None) -> list[EnrolmentToken]:
    with Session(engine) as session:
        query = select(EnrolmentToken).order_by(col(EnrolmentToken.id))
        if site is not None:
            query = query.where(EnrolmentToken.site_code == site)
        return list(session.exec(query))


def test_a_technician_makes_a_token_sees_it_once_and_it_enrols(
    stack: Stack, stack_engine: Engine, browser: Any, tmp_path: Path
) -> None:
    tech = user_token(stack_engine, "tech-upm-enrol", "technician", sites=["upm"])
    made_before = len(_tokens(stack_engine))
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/sites/upm")
        tab.locator("header nav").get_by_role("link", name="Enrolment").click()
        tab.wait_for_url(f"{stack.base}/enrolment")
        form = tab.get_by_test_id("enrolment-form")
        # Only their own site is offered.
        options = form.locator("select[name=site] option")
        assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["upm"]
        form.locator("input[name=hours]").fill("2")
        with tab.expect_response(lambda r: r.url == f"{stack.base}/enrolment/new") as shown:
            form.get_by_role("button", name="Make a token").click()
        tab.wait_for_url(f"{stack.base}/enrolment/new")
        assert shown.value.headers["cache-control"] == "no-store"
        token = tab.get_by_test_id("token").inner_text().strip()
        command = tab.get_by_test_id("enrol-command").inner_text().strip()
        assert token.startswith("enrol_")
        assert command == f"fleet-agent enroll --controller {stack.base} --token {token}"
        # The token left no trace in the browser: the cookie that carried it is gone.
        assert SHOWN_COOKIE not in {c["name"] for c in tab.context.cookies()}

        # Never shown again: reloading, going back to the list, and forward again.
        tab.reload()
        assert tab.get_by_test_id("no-token").count() == 1
        assert token not in tab.content()
        tab.go_back()
        tab.wait_for_url(f"{stack.base}/enrolment")
        assert token not in tab.content()
        row = tab.get_by_test_id("enrolment-tokens").locator("tbody tr").first
        assert row.get_attribute("data-state") == "unused"
        assert "tech-upm-enrol" in row.inner_text() and "upm" in row.inner_text()
        tab.go_forward()
        tab.wait_for_url(f"{stack.base}/enrolment/new")
        assert tab.get_by_test_id("no-token").count() == 1
        assert token not in tab.content()

        made = _tokens(stack_engine)
        assert len(made) == made_before + 1  # one token, however often the pages were seen
        assert made[-1].site_code == "upm" and made[-1].created_by == "tech-upm-enrol"
        assert made[-1].expires_at - made[-1].created_at == timedelta(hours=2)
        assert token not in made[-1].token_hash

        # The line as a technician pastes it, run on "site": it enrols the agent.
        words = shlex.split(command)
        assert words[0] == "fleet-agent"
        out = subprocess.run(
            [str(BIN / "fleet-agent"), *words[1:], "--out-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "enrolled site upm" in out.stdout
        assert (tmp_path / "upm.yaml").exists() and (tmp_path / "upm.env").exists()
        tab.goto(f"{stack.base}/enrolment")
        row = tab.get_by_test_id("enrolment-tokens").locator("tbody tr").first
        assert row.get_attribute("data-state") == "used"
        assert not tab.errors, tab.errors
    finally:
        tab.context.close()
    with Session(stack_engine) as session:
        entries = session.exec(
            select(AuditEntry).where(AuditEntry.actor == "tech-upm-enrol").order_by(AuditEntry.id)
        ).all()
    assert [(e.action, e.target, e.outcome) for e in entries] == [("enrolment.token", "upm", "ok")]


def test_a_token_for_another_site_by_an_edited_form_is_refused(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm-edits", "technician", sites=["upm"])
    before = len(_tokens(stack_engine))
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/enrolment")
        form = tab.get_by_test_id("enrolment-form")
        # The form edited in the browser's tools: its only option now says tribhuvan.
        form.locator("select[name=site] option").first.evaluate("o => { o.value = 'tribhuvan' }")
        with tab.expect_response(lambda r: r.request.method == "POST") as posted:
            form.get_by_role("button", name="Make a token").click()
        assert posted.value.status == 403
        tab.get_by_test_id("refused").wait_for()
        assert "outside your sites" in tab.get_by_test_id("refused").inner_text()
        assert tab.get_by_test_id("token").count() == 0
    finally:
        tab.context.close()
    assert len(_tokens(stack_engine)) == before
    assert _tokens(stack_engine, "tribhuvan") == []
    with Session(stack_engine) as session:
        refused = session.exec(select(AuditEntry).where(AuditEntry.actor == "tech-upm-edits")).all()
    assert [(e.action, e.outcome) for e in refused] == [("scope", "denied")]


def test_ops_makes_a_token_for_any_site_and_revokes_it_unused(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    ops = user_token(stack_engine, "ops-enrol", "ops")
    tab = _tab(browser, stack, ops)
    try:
        tab.goto(f"{stack.base}/enrolment")
        form = tab.get_by_test_id("enrolment-form")
        form.locator("select[name=site]").select_option("tribhuvan")
        form.get_by_role("button", name="Make a token").click()
        tab.wait_for_url(f"{stack.base}/enrolment/new")
        token = tab.get_by_test_id("token").inner_text().strip()
        assert token.startswith("enrol_")
        made = _tokens(stack_engine, "tribhuvan")
        assert [t.created_by for t in made] == ["ops-enrol"]

        tab.goto(f"{stack.base}/enrolment")
        row = tab.locator(f"tr[data-token-id='{made[0].id}']")
        assert row.get_attribute("data-state") == "unused"
        row.get_by_test_id("revoke").click()
        tab.wait_for_url(f"{stack.base}/enrolment#tokens-title")
        row = tab.locator(f"tr[data-token-id='{made[0].id}']")
        assert row.get_attribute("data-state") == "expired"
        assert row.get_by_test_id("revoke").count() == 0
    finally:
        tab.context.close()
    # The revoked token no longer enrols.
    request = urllib.request.Request(
        f"{stack.base}/api/v1/enrolment",
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert "expired" in refused.value.read().decode()
    with Session(stack_engine) as session:
        entries = session.exec(select(AuditEntry).where(AuditEntry.actor == "ops-enrol")).all()
    assert [(e.action, e.target) for e in entries] == [
        ("enrolment.token", "tribhuvan"),
        ("enrolment.revoke", "tribhuvan"),
    ]


def test_a_vendor_is_refused_the_enrolment_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    vendor = user_token(stack_engine, "vendor-seewo-enrol", "vendor", vendor="Seewo")
    tab = _tab(browser, stack, vendor)
    try:
        tab.goto(f"{stack.base}/")
        assert tab.locator("header nav").get_by_role("link", name="Enrolment").count() == 0
        response = tab.goto(f"{stack.base}/enrolment")
        assert response.status == 403
        assert tab.get_by_test_id("refused").count() == 1
        assert tab.get_by_test_id("enrolment-form").count() == 0
        assert tab.goto(f"{stack.base}/enrolment/new").status == 403
    finally:
        tab.context.close()


def test_the_enrolment_pages_fit_a_phone_and_read_accessibly(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm-phone", "technician", sites=["upm"])
    tab = _tab(browser, stack, tech, width=390)
    try:
        for lang in ("en", "ar"):
            tab.context.add_cookies([{"name": "fleet_lang", "value": lang, "url": stack.base}])
            tab.goto(f"{stack.base}/enrolment")
            pages = {"/enrolment": (_widths(tab), _serious(tab))}
            tab.get_by_test_id("enrolment-form").locator("button").click()
            tab.wait_for_url(f"{stack.base}/enrolment/new")
            assert tab.get_by_test_id("token").count() == 1  # the long token, on a phone
            pages["/enrolment/new"] = (_widths(tab), _serious(tab))
            for path, (widths, serious) in pages.items():
                assert max(widths[:2]) <= widths[2], f"{path} {lang}: scrolls sideways {widths}"
                assert not serious, (path, lang, serious)
    finally:
        tab.context.close()


def _widths(tab: Any) -> list[int]:
    return list(
        tab.evaluate(
            "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
        )
    )


@pytest.fixture
def client(registered: Engine, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, follow_redirects=False) as c:
        yield c


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    site=st.one_of(
        st.just("upm"),
        st.sampled_from(["upm", "tribhuvan", "UPM", "", "nosuch", "upm\x00", " upm"]),
        st.text(max_size=60),
        st.just("u" * 50_000),
    ),
    hours=st.one_of(
        st.integers(1, 720).map(str),
        st.integers(-(10**20), 10**20).map(str),
        st.integers(1, 720).map(str),
        st.sampled_from(["NaN", "nan", "inf", "-1", "0", "1e308", "1.5", "", "\x00", "24 "]),
        st.text(max_size=30),
        st.just("9" * 5000),
    ),
)
def test_any_token_form_post_makes_one_token_or_says_why_not(
    client: TestClient, registered: Engine, tokens: Tokens, site: str, hours: str
) -> None:
    """As a technician of upm: a site and lifetime the API takes make one token (303 to the
    page that shows it); another site is the 403 page; anything else a 422 page with the
    reason. Never a 500, never a token made for a refused post."""
    before = len(_tokens(registered))
    answer = client.post(
        "/enrolment",
        data={"site": site, "hours": hours},
        headers={"Origin": "http://testserver", **tokens.headers("technician")},
    )
    event(f"status {answer.status_code}")
    made = _tokens(registered)
    assert answer.status_code in (303, 403, 422), (answer.status_code, answer.text[:300])
    assert answer.status_code == 303 or answer.headers["content-type"].startswith("text/html")
    if answer.status_code == 303:
        assert len(made) == before + 1
        assert made[-1].site_code == "upm"
        # As the API: never longer than FLEET_ENROLMENT_TTL_S (24 h here), the page says so.
        lifetime = min(timedelta(hours=int(hours)), timedelta(hours=24))
        assert made[-1].expires_at - made[-1].created_at == lifetime
        return
    assert len(made) == before
    if answer.status_code == 422:
        assert 'data-testid="problem"' in answer.text
    else:
        assert 'data-testid="refused"' in answer.text


def test_the_token_page_shows_a_token_once_and_only_to_its_maker(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    tech = tokens.headers("technician")
    origin = {"Origin": "http://testserver"}
    made = client.post("/enrolment", data={"site": "upm", "hours": "1"}, headers={**origin, **tech})
    assert made.status_code == 303 and made.headers["location"] == "/enrolment/new"
    token = made.cookies[SHOWN_COOKIE]
    first = client.get("/enrolment/new", headers=tech)
    assert token in first.text and first.headers["cache-control"] == "no-store"
    again = client.get("/enrolment/new", headers=tech)
    assert token not in again.text and 'data-testid="no-token"' in again.text
    listed = client.get("/enrolment", headers=tech)
    assert token not in listed.text and listed.headers["cache-control"] == "no-store"

    # Another user of the same browser is not shown a token the technician made.
    second = client.post(
        "/enrolment", data={"site": "upm", "hours": "1"}, headers={**origin, **tech}
    )
    other_token = second.cookies[SHOWN_COOKIE]
    other = client.get("/enrolment/new", headers=tokens.headers("ops"))
    assert other.status_code == 200 and other_token not in other.text

    # A cookie kept and sent again once the agent used the token shows nothing.
    assert client.post("/api/v1/enrolment", json={"token": token}).status_code == 200
    replay = client.get("/enrolment/new", headers={**tech, "Cookie": f"{SHOWN_COOKIE}={token}"})
    assert token not in replay.text and 'data-testid="no-token"' in replay.text


def test_revoking_is_scoped_and_only_for_unused_tokens(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    """Through the API and the page alike: a technician cannot revoke (nor learn of) another
    site's token, a used token cannot be revoked, an unused one of theirs can."""
    ops, tech = tokens.headers("ops"), tokens.headers("technician")
    other = client.post("/api/v1/enrolment/tokens", json={"site": "tribhuvan"}, headers=ops)
    own = client.post("/api/v1/enrolment/tokens", json={"site": "upm"}, headers=tech)
    used = client.post("/api/v1/enrolment/tokens", json={"site": "upm"}, headers=tech)
    assert {other.status_code, own.status_code, used.status_code} == {201}
    assert client.post("/api/v1/enrolment", json={"token": used.json()["token"]}).is_success
    ids = {t.site_code + ("-used" if t.used_at else ""): t.id for t in _tokens(registered)}
    origin = {"Origin": "http://testserver"}

    api = client.post(f"/api/v1/enrolment/tokens/{ids['tribhuvan']}/revoke", headers=tech)
    page = client.post(f"/enrolment/tokens/{ids['tribhuvan']}/revoke", headers={**origin, **tech})
    assert (api.status_code, page.status_code) == (404, 404)
    assert page.headers["content-type"].startswith("text/html")
    spent = client.post(f"/enrolment/tokens/{ids['upm-used']}/revoke", headers={**origin, **tech})
    assert spent.status_code == 409 and 'data-testid="problem"' in spent.text
    spent = client.post(f"/api/v1/enrolment/tokens/{ids['upm-used']}/revoke", headers=tech)
    assert spent.status_code == 409
    for bad in ("0", "-1", "abc", "99999999999", "1e3"):
        assert (
            client.post(f"/enrolment/tokens/{bad}/revoke", headers={**origin, **tech}).status_code
            == 404
        )
    assert all(t.expires_at > t.created_at for t in _tokens(registered))  # nothing ended yet

    done = client.post(f"/enrolment/tokens/{ids['upm']}/revoke", headers={**origin, **tech})
    assert done.status_code == 303
    state = {t.id: t for t in _tokens(registered)}
    assert state[ids["upm"]].expires_at <= state[ids["upm"]].created_at + timedelta(minutes=1)
    assert state[ids["tribhuvan"]].expires_at - state[ids["tribhuvan"]].created_at == timedelta(
        hours=24
    )
    again = client.post("/api/v1/enrolment", json={"token": own.json()["token"]})
    assert again.status_code == 401 and "expired" in again.text


def test_a_token_stops_working_when_its_maker_no_longer_looks_after_the_site(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    """A technician of upm makes a token, then ops moves them to usthb: the token, unused,
    enrols no agent at upm any more (they could no longer make it), as it would not once
    they were revoked."""
    tech = {"Authorization": f"Bearer {tokens.technician}"}
    made = client.post("/api/v1/enrolment/tokens", json={"site": "upm"}, headers=tech)
    assert made.status_code == 201, made.text
    moved = client.patch(
        "/api/v1/users/tech-upm",
        json={"role": "technician", "sites": ["usthb"]},
        headers={"Authorization": f"Bearer {tokens.ops}"},
    )
    assert moved.status_code == 200, moved.text
    redeem = client.post("/api/v1/enrolment", json={"token": made.json()["token"]})
    assert redeem.status_code == 401, redeem.text
    assert "no longer looks after site upm" in redeem.json()["detail"]
    assert [t.used_at for t in _tokens(registered, "upm")] == [None]


def _interleaved(engine: Engine, statement_start: str, other: Any) -> Iterator[None]:
    """Run `other()` (its own session, committed) once, just before this engine next sends a
    statement starting with `statement_start`: the moment between a read and the write that
    follows it, where a concurrent request lands."""
    fired: list[bool] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not fired and statement.lstrip().upper().startswith(statement_start):
            fired.append(True)
            other()

    sa_event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        sa_event.remove(engine, "before_cursor_execute", before)
    assert fired, f"no {statement_start} was sent"


def test_a_token_revoked_between_an_agents_read_and_its_use_does_not_enrol(
    registered: Engine, tokens: Tokens
) -> None:
    """An agent redeems while ops revokes: if the revoke commits between the redeem's read
    and its write, the agent is refused, so that a revoke reported done holds."""
    ops = Caller(name="ops-centre", role="ops")
    with Session(registered) as session:
        token, row = make_enrolment_token(session, ops, "upm", ttl=timedelta(hours=1))
        token_id = row.id
    assert token_id is not None

    def revoke() -> None:
        with Session(registered) as other:
            revoke_enrolment_token(other, ops, token_id)

    interleaved = contextmanager(_interleaved)(registered, "UPDATE ENROLMENT_TOKEN", revoke)
    with Session(registered) as session, interleaved, pytest.raises(TokenRefused):
        redeem_enrolment_token(session, token)
    [stored] = _tokens(registered, "upm")
    assert stored.used_at is None


def test_a_token_used_between_a_revokes_read_and_its_write_is_told_as_used(
    registered: Engine, tokens: Tokens
) -> None:
    """Ops revokes while an agent redeems: if the agent's use commits between the revoke's
    read and its write, the revoke is refused as spent (409 on the page), not reported done
    (and audited) while the agent enrolled."""
    ops = Caller(name="ops-centre", role="ops")
    with Session(registered) as session:
        token, row = make_enrolment_token(session, ops, "upm", ttl=timedelta(hours=1))
        token_id = row.id
    assert token_id is not None

    def redeem() -> None:
        with Session(registered) as other:
            redeem_enrolment_token(other, token)
            other.commit()

    interleaved = contextmanager(_interleaved)(registered, "UPDATE ENROLMENT_TOKEN", redeem)
    with Session(registered) as session, interleaved, pytest.raises(TokenSpent):
        revoke_enrolment_token(session, ops, token_id)
    with Session(registered) as session:
        revoked = session.exec(
            select(AuditEntry).where(AuditEntry.action == "enrolment.revoke")
        ).all()
    assert revoked == []
    [stored] = _tokens(registered, "upm")
    assert stored.used_at is not None
