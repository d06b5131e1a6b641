"""Milestones from a site's programme page, in Debian's chromium against a real controller
process: ops records a milestone with its evidence and corrects it, each checked through the
programme API and audited as the API's routes are; a technician of the site sees the
programme but no form, and a post of theirs is the 403 page; a vendor is refused the page.
Hostile form values (Hypothesis) are a 4xx page with the reason and write nothing. At 390 px
the page, its forms open, does not scroll sideways, and axe-core finds no serious violation."""

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
from fleet.programme.milestones import MilestoneName
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for
from tests.test_web_accessibility import _serious

PHASES = "/api/v1/sites/upm/phases"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-milestones")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebm/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "tribhuvan.yaml", s.sites_dir)
    try:
        s.controller()
        wait_for(lambda: len(s.get("/api/v1/sites")) == 2, 30, "the two sites")
        wait_for(lambda: s.get(PHASES), 30, "upm's phases from its site config")
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


def _milestone(stack: Stack, name: str, room: str = "") -> dict[str, Any] | None:
    """The milestone as `GET /api/v1/sites/upm/phases` gives it (phase 1)."""
    phase = stack.get(PHASES)[0]
    found = [m for m in phase["milestones"] if m["milestone"] == name and (m["room"] or "") == room]
    return found[0] if found else None


def test_ops_records_a_milestone_with_evidence_and_corrects_it(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    ops = user_token(stack_engine, "ops-programme", "ops")
    assert _milestone(stack, "in_use") is None
    tab = _tab(browser, stack, ops)
    try:
        tab.goto(f"{stack.base}/programme/upm")
        phase = tab.get_by_test_id("phase-1")
        phase.locator("details.record summary").click()
        form = phase.get_by_test_id("record-form")
        form.locator("select[name=milestone]").select_option("in_use")
        form.locator("select[name=room]").select_option("")
        form.locator("input[name=actual]").fill("2024-05-01")
        form.locator("textarea[name=note]").fill("Timetabled in every class of the faculty")
        form.locator("textarea[name=evidence]").fill(
            "classes_per_week: 12\nreport: https://intranet.upm.example/smart/in-use.pdf"
        )
        form.get_by_role("button", name="Record").click()
        tab.wait_for_url(f"{stack.base}/programme/upm#m-1-phase-in_use")
        row = tab.locator("#m-1-phase-in_use")
        assert "classes_per_week: 12" in row.get_by_test_id("evidence").inner_text()

        recorded = _milestone(stack, "in_use")  # what the API says, not only the page
        assert recorded is not None
        assert (recorded["actual"], recorded["reached"], recorded["recorded_by"]) == (
            "2024-05-01",
            True,
            "ops-programme",
        )
        assert recorded["note"] == "Timetabled in every class of the faculty"
        assert recorded["evidence"] == {
            "classes_per_week": 12,
            "report": "https://intranet.upm.example/smart/in-use.pdf",
        }

        # Recording it again is refused on the page, and the record is unchanged.
        tab.goto(f"{stack.base}/programme/upm")
        phase = tab.get_by_test_id("phase-1")
        phase.locator("details.record summary").click()
        form = phase.get_by_test_id("record-form")
        form.locator("select[name=milestone]").select_option("in_use")
        form.locator("input[name=actual]").fill("2024-06-01")
        form.get_by_role("button", name="Record").click()
        problem = tab.get_by_test_id("problem")
        problem.wait_for()
        assert "already recorded" in problem.inner_text()
        assert _milestone(stack, "in_use") == recorded

        # The correction: another date, one more piece of evidence; the rest kept.
        tab.goto(f"{stack.base}/programme/upm")
        row = tab.locator("#m-1-phase-in_use")
        row.locator("summary").click()
        form = row.get_by_test_id("correct-form")
        assert form.locator("input[name=actual]").input_value() == "2024-05-01"
        form.locator("input[name=actual]").fill("2024-05-06")
        form.locator("textarea[name=evidence]").fill("photos: share/upm/phase-1/in-use")
        form.get_by_role("button").click()
        tab.wait_for_url(f"{stack.base}/programme/upm#m-1-phase-in_use")
        corrected = _milestone(stack, "in_use")
        assert corrected is not None
        assert corrected["actual"] == "2024-05-06"
        assert corrected["note"] == "Timetabled in every class of the faculty"
        assert corrected["evidence"] == {
            "classes_per_week": 12,
            "report": "https://intranet.upm.example/smart/in-use.pdf",
            "photos": "share/upm/phase-1/in-use",
        }
        # A correction the ordering rules refuse (in use before its installation) is said
        # on the page, and nothing changes.
        tab.goto(f"{stack.base}/programme/upm")
        row = tab.locator("#m-1-phase-in_use")
        row.locator("summary").click()
        form = row.get_by_test_id("correct-form")
        form.locator("input[name=actual]").fill("2023-01-01")
        form.get_by_role("button").click()
        tab.get_by_test_id("problem").wait_for()
        assert "before the earlier" in tab.get_by_test_id("problem").inner_text()
        assert _milestone(stack, "in_use") == corrected
        assert not tab.errors, tab.errors
    finally:
        tab.context.close()
    with stack_engine.connect() as conn:
        audit = conn.execute(
            text(
                "SELECT actor, action, outcome, detail FROM audit_entry "
                "WHERE actor = 'ops-programme' AND action LIKE 'programme.%' ORDER BY id"
            )
        ).all()
    print(f"\n[milestones from the page] audit: {[tuple(a[:3]) for a in audit]}")
    assert [tuple(a[:3]) for a in audit] == [
        ("ops-programme", "programme.post_milestone", "ok"),
        ("ops-programme", "programme.post_milestone", "failed 409"),
        ("ops-programme", "programme.patch_milestone", "ok"),
        ("ops-programme", "programme.patch_milestone", "failed 422"),
    ]
    detail = audit[2][3] if isinstance(audit[2][3], dict) else json.loads(audit[2][3])
    assert detail == {"code": "upm", "phase": "1", "milestone_name": "in_use"}


def test_a_technician_sees_the_programme_but_no_form_and_a_post_is_refused(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-upm-programme", "technician", sites=["upm"])
    before = stack.get(PHASES)
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/sites/upm")
        tab.get_by_role("link", name="Programme: phases and milestones").click()
        tab.wait_for_url(f"{stack.base}/programme/upm")
        assert tab.locator("#m-1-phase-installed").count() == 1
        assert tab.get_by_test_id("record-form").count() == 0
        assert tab.get_by_test_id("correct-form").count() == 0
        # The form posted by hand from the page: the 403 page, and nothing is written.
        answer = tab.evaluate(
            """async () => {
                const body = new URLSearchParams({milestone: "in_use", actual: "2024-07-01"});
                const r = await fetch("/programme/upm/phases/1/milestones", {method: "POST", body});
                return [r.status, await r.text()];
            }"""
        )
        assert answer[0] == 403, answer
        assert 'data-testid="refused"' in answer[1]
        assert stack.get(PHASES) == before
        # Another site's programme is not theirs.
        assert tab.goto(f"{stack.base}/programme/tribhuvan").status == 403
        assert tab.get_by_test_id("refused").count() == 1
    finally:
        tab.context.close()


def test_a_vendor_is_refused_the_programme(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    vendor = user_token(stack_engine, "vendor-seewo-programme", "vendor", vendor="Seewo")
    tab = _tab(browser, stack, vendor)
    try:
        response = tab.goto(f"{stack.base}/programme/upm")
        assert response.status == 403
        assert tab.get_by_test_id("refused").count() == 1
        assert tab.get_by_test_id("milestones").count() == 0
    finally:
        tab.context.close()


@pytest.mark.parametrize("role", ("ops", "technician"))
def test_the_programme_page_fits_a_phone_and_reads_accessibly(
    stack: Stack, stack_engine: Engine, browser: Any, role: str
) -> None:
    token = user_token(
        stack_engine, f"{role}-phone-programme", role, sites=["upm"] if role != "ops" else None
    )
    tab = _tab(browser, stack, token, width=390)
    try:
        for lang in ("en", "ar"):
            tab.context.add_cookies([{"name": "fleet_lang", "value": lang, "url": stack.base}])
            tab.goto(f"{stack.base}/programme/upm")
            for summary in tab.locator("summary").all():  # every form open
                summary.click()
            widths = tab.evaluate(
                "[document.documentElement.scrollWidth, document.body.scrollWidth, "
                "window.innerWidth]"
            )
            assert max(widths[:2]) <= widths[2], f"{role} {lang}: scrolls sideways {widths}"
            assert not _serious(tab), _serious(tab)
    finally:
        tab.context.close()


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("ops"), follow_redirects=False) as c:
        yield c


HOSTILE_TEXT = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        ["\x00", "\x1b[31mred", "<script>alert(1)</script>", "=1+1", "é" * 2500, "a\r\nb"]
    ),
)
# Text the forms take (letters, digits, spaces), so that the stored path runs as well.
PLAIN_TEXT = st.text(st.characters(categories=["L", "N", "Zs"]), max_size=60)
NOTES = st.one_of(PLAIN_TEXT, HOSTILE_TEXT)
DATES = st.one_of(
    st.just(""),
    # Mostly near today, which the rules may take, so the stored path runs too.
    st.integers(-4000, 400).map(lambda n: (date.today() + timedelta(days=n)).isoformat()),
    st.dates(min_value=date(1, 1, 1)).map(date.isoformat),
    st.sampled_from(["9999-12-31", "0001-01-01", "2026-02-30", "NaN", "-1", "1e308", "\x00"]),
    st.text(max_size=40),
)
EVIDENCE = st.one_of(
    st.just(""),
    st.sampled_from(["trained: 25", "report: https://intranet.upm.example/r.pdf\ntrained: -3"]),
    st.lists(
        st.tuples(st.sampled_from(["trained", "report", "photos", ""]), HOSTILE_TEXT),
        max_size=25,
    ).map(lambda pairs: "\n".join(f"{k}: {v}" for k, v in pairs)),
    HOSTILE_TEXT,
    st.just("x" * 100_000),
)


def _phase_one(client: TestClient) -> Any:
    return client.get(PHASES).json()[0]


def _answered(answer: Any) -> None:
    """A stored post goes back to the page (303); a refused one is a page saying why."""
    assert answer.status_code in (303, 409, 422), (answer.status_code, answer.text[:300])
    event(f"status {answer.status_code}")
    if answer.status_code != 303:
        assert 'data-testid="problem"' in answer.text
        assert answer.headers["content-type"].startswith("text/html")


HOSTILE_RECORD = st.fixed_dictionaries(
    {
        "milestone": st.one_of(
            st.sampled_from([m.value for m in MilestoneName]),
            st.sampled_from(["", "INSTALLED"]),
            HOSTILE_TEXT,
        ),
        "room": st.sampled_from(["", "upm-smart-1", "upm-smart-2", "tribhuvan-x", "\x00"]),
        "planned": DATES,
        "actual": DATES,
        "actual_end": DATES,
        "reached": st.sampled_from(["", "1"]),
        "note": NOTES,
        "evidence": EVIDENCE,
        "correction": st.sampled_from(["", "1"]),
    }
)
# What ops would type: a classroom's milestone planned ahead, with plain words and evidence.
PLAUSIBLE_RECORD = st.fixed_dictionaries(
    {
        "milestone": st.sampled_from([m.value for m in MilestoneName]),
        "room": st.just("upm-smart-1"),
        "planned": st.integers(1, 3000).map(
            lambda n: (date.today() + timedelta(days=n)).isoformat()
        ),
        "note": PLAIN_TEXT,
        "evidence": st.sampled_from(["", "trained: 25", "report: share/upm/plan.pdf"]),
        "correction": st.just("1"),
    }
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(form=st.one_of(HOSTILE_RECORD, PLAUSIBLE_RECORD))
def test_any_record_form_post_is_stored_or_refused_with_its_reason(
    client: TestClient, form: dict[str, str]
) -> None:
    before = _phase_one(client)
    answer = client.post(
        "/programme/upm/phases/1/milestones", data=form, headers={"Origin": "http://testserver"}
    )
    _answered(answer)
    after = _phase_one(client)
    if answer.status_code != 303:
        assert after == before  # nothing written
        return
    new = [m for m in after["milestones"] if m not in before["milestones"]]
    assert [(m["milestone"], m["room"] or "") for m in new] == [(form["milestone"], form["room"])]
    assert (new[0]["note"], new[0]["planned"]) == (form["note"], form.get("planned") or None)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    planned=DATES,
    actual=DATES,
    actual_end=DATES,
    reached=st.sampled_from(["", "1"]),
    note=NOTES,
    evidence=EVIDENCE,
    correction=st.sampled_from(["", "1"]),
)
def test_any_correction_form_post_is_stored_or_refused_with_its_reason(
    client: TestClient, **form: str
) -> None:
    before = _phase_one(client)
    answer = client.post(
        "/programme/upm/phases/1/milestones/installed",
        data={"room": "", **form},
        headers={"Origin": "http://testserver"},
    )
    _answered(answer)
    after = _phase_one(client)
    if answer.status_code != 303:
        assert after == before
        return
    installed = [m for m in after["milestones"] if m["milestone"] == "installed" and not m["room"]]
    assert installed[0]["note"] == form["note"]
    assert installed[0]["actual"] == (form["actual"] or None)


def test_a_technician_post_from_a_client_is_the_403_page(
    client: TestClient, tokens: Tokens
) -> None:
    before = _phase_one(client)
    answer = client.post(
        "/programme/upm/phases/1/milestones",
        data={"milestone": "in_use", "actual": "2024-07-01"},
        headers={"Origin": "http://testserver", **tokens.headers("technician")},
    )
    assert answer.status_code == 403
    assert 'data-testid="refused"' in answer.text
    assert _phase_one(client) == before


@pytest.mark.parametrize(
    ("path", "room"),
    [
        ("/programme/upm/phases/1/milestones/installed", "\x00"),
        ("/programme/upm/phases/1/milestones/installed", "x" * 5000),
        ("/programme/upm/phases/1/milestones/installed", "upm-smart-2"),
        ("/programme/upm/phases/1/milestones/in_use", ""),
        ("/programme/upm/phases/1/milestones/nope", ""),
        ("/programme/upm/phases/abc/milestones/installed", ""),
        ("/programme/upm/phases/99999999999999999999/milestones/installed", ""),
        ("/programme/UPM/phases/1/milestones/installed", ""),
        ("/programme/nosuch/phases/1/milestones", ""),
    ],
)
def test_an_edited_address_or_room_is_the_404_page(
    client: TestClient, path: str, room: str
) -> None:
    before = _phase_one(client)
    answer = client.post(
        path, data={"room": room, "note": "x"}, headers={"Origin": "http://testserver"}
    )
    assert answer.status_code == 404, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    assert _phase_one(client) == before
