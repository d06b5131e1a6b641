"""Power commands and power schedules from the pages.

In Debian's chromium against real processes (`fleet serve`, `fleet-agent simulate` with a
PJLink projector that honours POWR, `fleet-agent run`, a real broker): a site's technician
presses power off on the device page and watches the command go to done with the
projector's answer, refreshed in place, and the API's device state follow; edits the site's
power schedule through its form and reads it back from the API; switches a room off after
the confirm page; marks a room in use. A vendor is shown none of the forms and a technician
of another site is refused with a page, not JSON.

Through TestClient, Hypothesis on the forms: hostile minutes, modes, rooms and reasons are a
422 page that says why, and the schedule is what it was.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from fleet.api.app import create_app
from fleet.db import make_engine
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DEFAULT_SITES_DIR
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for
from tests.test_web_accessibility import _serious

PROJECTOR = "ugb-sc1-projector"  # pjlink-projector: power and input over PJLink
PANEL = "ugb-sc1-panel-1"  # weidong-panel, read by the simulated collector: takes neither
ROOM = "ugb-smart-1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-power")
    broker = BrokerThread()
    broker.start()
    # The projector polled every 5 s, not every 2 minutes, and warmed up in 5 s, not a minute:
    # what these tests wait for is the page and the command, not the projector's pace.
    profiles = tmp / "profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles)
    pjlink = profiles / "pjlink-projector.yaml"
    pjlink.write_text(pjlink.read_text().replace("interval_s: 120", "interval_s: 5"))
    s = Stack(
        tmp,
        broker.url,
        "twpow/fleet/v1",
        f"sqlite:///{tmp / 'fleet.db'}",
        "ugb",
        profiles_dir=profiles,
    )
    # No classes: the projector stays in standby until someone switches it.
    config = yaml.safe_load(s.config.read_text())
    config["timetable"] = {"weekly": {}}
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))
    # Another site in the registry (its agent is not run): the other technician's site.
    (s.sites_dir / "upm.yaml").write_text((DEFAULT_SITES_DIR / "upm.yaml").read_text())
    try:
        s.simulate("--warm-up-s", "5")
        s.controller(FLEET_ROLLOUT_TICK_S="0.5")
        s.agent()
        wait_for(
            lambda: s.get(f"/api/v1/devices/{PROJECTOR}")["last_seen_at"],
            60,
            "the projector's first reading",
        )
        yield s
    except BaseException:
        print(s.logs())
        raise
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
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    tab.problems = problems
    sign_in(tab, stack.base, token)
    return tab


def _audit(engine: Engine, like: str) -> list[tuple[str, str, dict[str, Any]]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT actor, action, target, detail FROM audit_entry "
                "WHERE action LIKE :like ORDER BY id"
            ),
            {"like": like},
        ).all()
    return [
        (r[0], r[1], r[3] if isinstance(r[3], dict) else json.loads(r[3] or "{}")) for r in rows
    ]


@pytest.mark.timeout(240)
def test_a_technician_switches_the_projector_off_from_its_page_and_sees_the_answer(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-ugb", "technician", sites=["ugb"])
    ops = stack.ops_token
    assert ops is not None
    # On first (through the API), so that power off has something to do.
    from tests.test_power_commands import call

    code, sent = call(
        stack,
        ops,
        "POST",
        f"/api/v1/devices/{PROJECTOR}/commands",
        {"power": "on", "reason": "test: on before the page switches it off"},
    )
    assert code == 202, sent
    wait_for(
        lambda: stack.get(f"/api/v1/devices/{PROJECTOR}")["power"] == "on",
        120,
        "the projector warmed up and on",
    )
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/devices/{PROJECTOR}")
        control = tab.get_by_test_id("device-control")
        # A PJLink projector takes both power and input.
        assert control.get_by_test_id("power-form").count() == 1
        assert control.get_by_test_id("input-form").count() == 1
        form = control.get_by_test_id("power-form")
        form.locator("input[name=reason]").fill("end of the evening session")
        form.get_by_role("button", name="Power off").click()
        tab.wait_for_url(f"{stack.base}/devices/{PROJECTOR}#commands")
        newest = tab.locator("[data-testid=device-commands] tbody tr").first
        assert "end of the evening session" in newest.inner_text()
        # The page refreshes in place (no reload) until the projector's answer is there.
        tab.locator("[data-testid=device-commands] tbody tr:first-child[data-state=done]").wait_for(
            timeout=90_000
        )
        row_text = tab.locator("[data-testid=device-commands] tbody tr").first.inner_text()
        assert tab.url == f"{stack.base}/devices/{PROJECTOR}#commands"
        assert not tab.problems, tab.problems
    finally:
        tab.context.close()
    _, rows = call(stack, tech, "GET", f"/api/v1/devices/{PROJECTOR}/commands")
    off = rows[0]
    device = wait_for(
        lambda: (
            (d := stack.get(f"/api/v1/devices/{PROJECTOR}"))["power"]
            in ("off", "standby", "cooling")
            and d
        ),
        60,
        "the API's state: switched off",
    )
    audit = _audit(stack_engine, "commands.%")
    print(
        f"\n[power off from the page] {off['state']} ({off['answer']}); row: {row_text!r}; "
        f"device power {device['power']}; audit {[(a[0], a[1]) for a in audit]}"
    )
    assert off["value"] == "off" and off["state"] == "done", off
    assert off["requested_by"] == "tech-ugb"
    assert "POWR 0" in off["answer"] and "POWR 0" in row_text
    assert audit[-1][:2] == ("tech-ugb", "commands.power")
    assert audit[-1][2]["reason"] == "end of the evening session"


def test_a_technician_edits_the_schedule_and_marks_a_room_in_use_from_the_site_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-ugb-2", "technician", sites=["ugb"])
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/sites/ugb")
        form = tab.get_by_test_id("power-schedule-form")
        form.locator("select[name=mode]").select_option("act")
        form.locator("input[name=off_after_last_class_min]").fill("45")
        form.locator("input[name=off_after_idle_min]").fill("")
        form.locator(f"select[name='room_mode:{ROOM}']").select_option("notify_only")
        form.locator(f"input[name='room_idle:{ROOM}']").fill("90")
        form.get_by_role("button", name="Save the schedule").click()
        tab.wait_for_url(f"{stack.base}/sites/ugb#power")
        assert tab.get_by_test_id("power-mode").get_attribute("data-mode") == "act"
        schedule = stack.get("/api/v1/sites/ugb/power-schedule")

        # 25:00 typed where minutes go: said on the page, the schedule as it was.
        form = tab.get_by_test_id("power-schedule-form")
        form.locator("input[name=off_after_last_class_min]").evaluate("(e) => { e.type = 'text'; }")
        form.locator("input[name=off_after_last_class_min]").fill("25:00")
        form.get_by_role("button", name="Save the schedule").click()
        problem = tab.get_by_test_id("problem")
        problem.wait_for()
        problem_text = problem.inner_text()
        after_refusal = stack.get("/api/v1/sites/ugb/power-schedule")

        # Keep the room on for an hour.
        row = tab.locator(f"[data-testid=rooms-in-use] tr[data-room='{ROOM}']")
        tab.goto(f"{stack.base}/sites/ugb")
        row.locator("input[name=minutes]").fill("60")
        row.locator("input[name=reason]").fill("open day")
        row.get_by_role("button").click()
        tab.wait_for_url(f"{stack.base}/sites/ugb#power")
        assert row.get_by_test_id("in-use-until").inner_text() != "—"
        in_use = stack.get("/api/v1/sites/ugb/power-schedule")["rooms_in_use"]
    finally:
        tab.context.close()
    print(f"\n[schedule from the page] {schedule}; refused: {problem_text!r}")
    assert schedule["mode"] == "act"
    assert schedule["off_after_last_class_min"] == 45
    assert schedule["off_after_idle_min"] is None
    assert schedule["rooms"] == {
        ROOM: {"mode": "notify_only", "off_after_last_class_min": None, "off_after_idle_min": 90}
    }
    assert "off_after_last_class_min" in problem_text
    assert {k: v for k, v in after_refusal.items() if k != "rooms_in_use"} == {
        k: v for k, v in schedule.items() if k != "rooms_in_use"
    }
    assert ROOM in in_use
    assert [a[:2] for a in _audit(stack_engine, "power_schedule.%")] == [
        ("tech-ugb-2", "power_schedule.set")
    ]
    assert _audit(stack_engine, "room.in_use")[-1][2] == {"minutes": 60, "reason": "open day"}


def test_a_room_is_switched_off_after_the_confirm_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-ugb-3", "technician", sites=["ugb"])
    tab = _tab(browser, stack, tech)
    try:
        tab.goto(f"{stack.base}/sites/ugb")
        form = tab.get_by_test_id("switch-off-form")
        form.locator("select[name=room]").select_option(ROOM)
        form.locator("input[name=reason]").fill("room closed for cleaning")
        form.get_by_role("button").click()
        confirm = tab.get_by_test_id("power-confirm")
        listed = confirm.locator("[data-device]").evaluate_all(
            "(items) => items.map((i) => i.dataset.device)"
        )
        before = len(stack.get(f"/api/v1/devices/{PROJECTOR}/commands"))
        confirm.get_by_role("button").click()
        tab.wait_for_url(re.compile(r".*/sites/ugb\?campaign=power-\d+#sent$"))
        sent = tab.locator("[data-testid=sent-commands] tbody tr")
        devices = sent.evaluate_all("(rows) => rows.map((r) => r.dataset.device)")
        tab.locator(
            f"[data-testid=sent-commands] tr[data-device='{PROJECTOR}']:not([data-state=sent])"
        ).wait_for(timeout=60_000)
        after = stack.get(f"/api/v1/devices/{PROJECTOR}/commands")
    finally:
        tab.context.close()
    print(f"\n[room off] confirm listed {listed}; sent to {devices}; {after[0]['state']}")
    # Only what takes a power command: the PJLink projector, not the simulated panels.
    assert listed == [PROJECTOR] and devices == [PROJECTOR]
    assert len(after) == before + 1
    assert after[0]["reason"] == "room closed for cleaning"
    assert _audit(stack_engine, "commands.%")[-1][:2] == ("tech-ugb-3", "commands.power")


def test_a_vendor_sees_no_form_and_another_sites_technician_is_refused_with_a_page(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    vendor = user_token(stack_engine, "vendor-weidong", "vendor", vendor="Weidong")
    other = user_token(stack_engine, "tech-upm-o", "technician", sites=["upm"])
    before = len(stack.get(f"/api/v1/devices/{PANEL}/commands"))
    schedule = stack.get("/api/v1/sites/ugb/power-schedule")
    tab = _tab(browser, stack, vendor)
    try:
        # The vendor's own panel: its page, without a form or the command history.
        assert tab.goto(f"{stack.base}/devices/{PANEL}").status == 200
        assert tab.get_by_test_id("device-control").count() == 0
        assert tab.get_by_test_id("device-commands").count() == 0
        posted = _post_from(tab, f"/devices/{PANEL}/commands", {"power": "off", "reason": "x"})
        assert posted["status"] == 403 and "<h1>" in posted["body"], posted
        assert not posted["json"]
        posted = _post_from(tab, "/sites/ugb/power-schedule", {"mode": "act"})
        assert posted["status"] == 403 and not posted["json"], posted
    finally:
        tab.context.close()
    tab = _tab(browser, stack, other)
    try:
        tab.goto(f"{stack.base}/sites/upm")
        assert tab.get_by_test_id("power-schedule-form").count() == 1
        page = tab.goto(f"{stack.base}/devices/{PROJECTOR}")
        assert page.status == 404 and tab.get_by_test_id("device-control").count() == 0
        tab.goto(f"{stack.base}/sites/upm")
        refusals = {
            "device": _post_from(
                tab, f"/devices/{PROJECTOR}/commands", {"power": "off", "reason": "x"}
            ),
            "site off": _post_from(tab, "/sites/ugb/commands", {"reason": "x", "confirm": "yes"}),
            "schedule": _post_from(tab, "/sites/ugb/power-schedule", {"mode": "act"}),
            "in use": _post_from(tab, f"/sites/ugb/rooms/{ROOM}/in-use", {"minutes": "5"}),
        }
    finally:
        tab.context.close()
    print(f"\n[refused] { {k: v['status'] for k, v in refusals.items()} }")
    # As the API answers: another site's device is not there (404), another site is 403.
    assert refusals["device"]["status"] == 404
    assert {refusals[k]["status"] for k in ("site off", "schedule", "in use")} == {403}
    assert not any(r["json"] for r in refusals.values())
    assert all("<h1>" in r["body"] for r in refusals.values())
    assert len(stack.get(f"/api/v1/devices/{PANEL}/commands")) == before
    assert stack.get("/api/v1/sites/ugb/power-schedule") == schedule


def _post_from(tab: Any, path: str, fields: dict[str, str]) -> dict[str, Any]:
    """A same-origin form post made by hand from the open page (past the Origin check)."""
    answer: dict[str, Any] = tab.evaluate(
        """async ([path, fields]) => {
            const r = await fetch(path, {method: "POST", body: new URLSearchParams(fields)});
            const body = await r.text();
            return {status: r.status, body, json: (r.headers.get("content-type") || "")
                .startsWith("application/json")};
        }""",
        [path, fields],
    )
    return answer


def test_the_pages_with_the_forms_fit_a_phone_and_pass_axe(
    stack: Stack, stack_engine: Engine, browser: Any
) -> None:
    tech = user_token(stack_engine, "tech-ugb-4", "technician", sites=["ugb"])
    found = {}
    for width in (390, 1366):
        tab = _tab(browser, stack, tech, width)
        try:
            for path in (f"/devices/{PROJECTOR}", "/sites/ugb"):
                tab.goto(f"{stack.base}{path}")
                assert tab.locator("form[method=post]").count() >= 1
                wide = tab.evaluate(
                    "() => document.documentElement.scrollWidth - window.innerWidth"
                )
                assert wide <= 0, f"{path} at {width} px scrolls sideways by {wide} px"
                found[f"{path} at {width}"] = _serious(tab)
        finally:
            tab.context.close()
    print(f"\n[axe] {found}")
    assert all(v == [] for v in found.values()), found
    assert len(found) == 4


# --- hostile form values, through TestClient ------------------------------------------------


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("technician"), follow_redirects=False) as c:
        yield c


ORIGIN = {"Origin": "http://testserver"}


def _post_form(client: TestClient, path: str, fields: list[tuple[str, str]]) -> Any:
    """A form post whose fields repeat and keep their order, as a browser sends them."""
    headers = {**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
    return client.post(path, content=urlencode(fields), headers=headers)


HOSTILE = st.one_of(
    st.sampled_from(
        [
            "25:00",
            "-1",
            "0",
            "1441",
            "1e3",
            "NaN",
            "Infinity",
            "9" * 40,
            "30\x00",
            "\x1b[31m",
            " ",
            "½",
            "٣٠",
            "=1+1",
            "<script>",
            "1.5",
            "-0",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=50),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    mode=st.one_of(st.sampled_from(["notify_only", "act", "", "ACT", "off"]), st.text(max_size=20)),
    last=HOSTILE,
    idle=st.one_of(st.just(""), HOSTILE),
    rooms=st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(["upm-smart-1", "upm-smart-2", "ugb-sc1", "no-such-room"]),
                st.text(max_size=40),
            ),
            st.sampled_from(["room_mode", "room_last", "room_idle"]),
            st.one_of(st.sampled_from(["act", "notify_only", "30"]), HOSTILE),
        ),
        max_size=12,
    ),
    extra=st.booleans(),
)
def test_hostile_schedule_forms_are_refused_with_the_reason_and_change_nothing(
    client: TestClient, mode: str, last: str, idle: str, rooms: list[Any], extra: bool
) -> None:
    before = client.get("/api/v1/sites/upm/power-schedule").json()
    fields = [("mode", mode), ("off_after_last_class_min", last), ("off_after_idle_min", idle)]
    fields += [(f"{name}:{room}", value) for room, name, value in rooms]
    if extra:
        fields.append(("rooms", "x" * 10_000))
    answer = _post_form(client, "/sites/upm/power-schedule", fields)
    event(f"status {answer.status_code}")
    assert answer.status_code in (303, 422), (answer.status_code, answer.text[:300])
    after = client.get("/api/v1/sites/upm/power-schedule").json()
    if answer.status_code == 422:
        assert 'data-testid="problem"' in answer.text
        assert "The schedule was not changed" in answer.text
        assert "text/html" in answer.headers["content-type"]
        assert after == before
    else:
        # Taken: what the API validates, stored as the API stores it.
        assert after["mode"] == (mode.strip() or "notify_only")
        # A blank field is that rule off (None), as the form says.
        assert after["off_after_last_class_min"] == (int(last) if last.strip() else None)


def test_a_huge_schedule_form_is_refused_with_the_reason(client: TestClient) -> None:
    before = client.get("/api/v1/sites/upm/power-schedule").json()
    fields = [(f"room_mode:room-{n}", "act") for n in range(5000)]
    answer = _post_form(client, "/sites/upm/power-schedule", fields)
    print(f"\n[huge form] {answer.status_code} {answer.text[:200]!r}")
    assert answer.status_code in (400, 413, 422), answer.status_code
    assert "text/html" in answer.headers["content-type"]
    assert client.get("/api/v1/sites/upm/power-schedule").json() == before


def test_unknown_rooms_are_named_on_the_page(client: TestClient) -> None:
    answer = client.post(
        "/sites/upm/power-schedule",
        data={"mode": "act", "room_mode:ugb-sc1": "act", "room_mode:upm-smart-1": "act"},
        headers=ORIGIN,
    )
    assert answer.status_code == 422
    assert "ugb-sc1" in answer.text and "not rooms of upm" in answer.text
    assert client.get("/api/v1/sites/upm/power-schedule").json()["mode"] == "notify_only"


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    power=st.one_of(st.sampled_from(["on", "off", "", "ON", "reboot"]), st.text(max_size=20)),
    input_name=st.one_of(st.just(""), st.sampled_from(["hdmi1", "HDMI1", "../x"]), HOSTILE),
    reason=st.one_of(st.just(""), st.text(max_size=600), st.just("\x00\x07")),
)
def test_hostile_command_forms_send_nothing_they_should_not(
    client: TestClient, power: str, input_name: str, reason: str
) -> None:
    """upm-sc1-panel-1 (a Seewo panel read by the simulated collector) takes no command: every
    post is a 422 page with the reason, and nothing is stored."""
    answer = client.post(
        "/devices/upm-sc1-panel-1/commands",
        data={"power": power, "input": input_name, "reason": reason},
        headers=ORIGIN,
    )
    assert answer.status_code == 422, (answer.status_code, answer.text[:300])
    assert 'data-testid="problem"' in answer.text
    assert client.get("/api/v1/devices/upm-sc1-panel-1/commands").json() == []


def test_the_api_refuses_a_command_the_device_does_not_take(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/devices/upm-sc1-panel-1/commands", json={"power": "off", "reason": "test"}
    )
    assert answer.status_code == 422
    assert "takes no power command" in json.dumps(answer.json())
    # A site's command goes to the devices that take it only: upm's SNMP projector.
    answer = client.post("/api/v1/sites/upm/commands", json={"power": "off", "reason": "test"})
    assert answer.status_code == 202
    assert [r["device_id"] for r in answer.json()] == ["upm-sc2-projector"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    minutes=st.one_of(HOSTILE, st.sampled_from(["1", "1440", "60"])),
    reason=st.one_of(st.text(max_size=600), st.just("<script>x</script>\x00")),
    room=st.sampled_from(["upm-smart-1", "ugb-smart-1", "no-such-room"]),
)
def test_hostile_in_use_and_switch_off_forms(
    client: TestClient, minutes: str, reason: str, room: str
) -> None:
    """Keep on: minutes 1..1440 of one of the site's rooms, else a 422 page (or the 404 page
    for a room that is not the site's) and no room marked. Switch off: the confirm page
    first, whatever the reason, with nothing sent; a refused value is a 422 page."""
    before = client.get("/api/v1/sites/upm/power-schedule").json()["rooms_in_use"]
    answer = _post_form(
        client, f"/sites/upm/rooms/{room}/in-use", [("minutes", minutes), ("reason", reason)]
    )
    event(f"in use {answer.status_code}")
    in_use = client.get("/api/v1/sites/upm/power-schedule").json()["rooms_in_use"]
    if answer.status_code == 303:
        assert room in in_use and 1 <= int(minutes) <= 1440
    else:
        # As the API: the values are checked first (422), then whether the room is the site's.
        assert answer.status_code in ((422,) if room == "upm-smart-1" else (404, 422))
        assert "text/html" in answer.headers["content-type"]
        assert in_use == before
    answer = _post_form(client, "/sites/upm/commands", [("room", room), ("reason", reason)])
    assert answer.status_code in (200, 404, 422), answer.status_code
    assert "text/html" in answer.headers["content-type"]
    assert client.get("/api/v1/devices/upm-sc2-projector/commands").json() == []


def test_what_the_controller_offers_is_what_the_agent_can_switch() -> None:
    """Profile.control_problem (the controller's word on what a model takes) against the
    agent's registered controls: a button offered for a protocol the agent cannot switch would
    only ever fail."""
    from agent.collectors.control import control_for
    from fleet.protocol.profiles import load_profiles
    from fleet.protocol.site_config import DEFAULT_PROFILES_DIR

    seen = {}
    for profile in load_profiles(DEFAULT_PROFILES_DIR).values():
        agent_can = control_for(profile.protocol) is not None
        for kind in ("power", "input"):
            offered = profile.control_problem(kind) is None
            seen[(profile.id, kind)] = offered
            assert not offered or agent_can, (profile.id, kind)
        if not agent_can:
            assert profile.control_problem("power") is not None
    print(f"\n[controls] {sorted(k for k, v in seen.items() if v)}")
    assert seen[("pjlink-projector", "power")] and seen[("snmp-projector", "power")]
    assert not seen[("snmp-projector", "input")]  # the profile names no input object
    assert not seen[("seewo-panel", "power")]
