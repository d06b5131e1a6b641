"""The users API (`/api/v1/users`), ops only: add, list, change role and scope, revoke; the
same checks as `fleet users add`; the last active ops user kept; a revoked user's sessions
and tokens refused at once; every change audited; hostile bodies refused with their reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.api.app import create_app
from fleet.auth.models import AuditEntry, User
from fleet.protocol.messages import CONTROL_RE
from fleet.settings import Settings
from tests.fixtures_auth import Tokens, read_at_answer, user_token

# Strong enough for the password policy (zxcvbn 3 of 4 and up).
STRONG = "quartz lantern orbit ninety7"


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    with TestClient(app, headers=tokens.headers("ops")) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(client: TestClient, name: str, password: str = STRONG) -> Any:
    answer = client.post("/api/v1/auth/token", data={"username": name, "password": password})
    client.cookies.clear()  # the login's cookie must not stand in for the token under test
    return answer


def audit(engine: Engine, action_prefix: str = "user.") -> list[tuple[str, str, str]]:
    with Session(engine) as session:
        rows = session.exec(
            select(AuditEntry)
            .where(col(AuditEntry.action).startswith(action_prefix))
            .order_by(col(AuditEntry.id))
        ).all()
        return [(r.actor, r.action, r.target) for r in rows]


def test_ops_adds_changes_and_revokes_a_technician(client: TestClient, registered: Engine) -> None:
    added = client.post(
        "/api/v1/users",
        json={"name": "tech-upm-2", "role": "technician", "sites": ["upm"], "password": STRONG},
    )
    assert added.status_code == 201, added.text
    assert added.json() | {"created_at": None} == {
        "name": "tech-upm-2",
        "role": "technician",
        "sites": ["upm"],
        "vendor": None,
        "state": "active",
        "has_password": True,
        "created_at": None,
        "revoked_at": None,
    }
    assert STRONG not in added.text
    listed = {u["name"]: u for u in client.get("/api/v1/users").json()}
    assert listed["tech-upm-2"]["sites"] == ["upm"]

    login = log_in(client, "tech-upm-2")
    assert login.status_code == 200, login.text
    session_token = login.json()["access_token"]
    sites = client.get("/api/v1/sites", headers=bearer(session_token)).json()
    assert [s["code"] for s in sites] == ["upm"]

    # A new scope holds at once for the token already in use (no stale cached caller).
    changed = client.patch("/api/v1/users/tech-upm-2", json={"sites": ["upm", "usthb"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["sites"] == ["upm", "usthb"]
    sites = client.get("/api/v1/sites", headers=bearer(session_token)).json()
    assert sorted(s["code"] for s in sites) == ["upm", "usthb"]

    revoked = client.post("/api/v1/users/tech-upm-2/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"]
    assert client.get("/api/v1/sites", headers=bearer(session_token)).status_code == 401
    assert log_in(client, "tech-upm-2").status_code == 401
    assert client.patch("/api/v1/users/tech-upm-2", json={"sites": ["upm"]}).status_code == 409
    # Revoking again changes nothing and says so as a success.
    assert client.post("/api/v1/users/tech-upm-2/revoke").json()["state"] == "revoked"

    entries = audit(registered)
    assert entries[:3] == [
        ("ops-centre", "user.add", "tech-upm-2"),
        ("ops-centre", "user.change", "tech-upm-2"),
        ("ops-centre", "user.revoke", "tech-upm-2"),
    ]
    # And the permission's own trail of each write route, as every audited route has.
    assert ("ops-centre", "users.add_user", "POST /api/v1/users") in audit(registered, "users.")


def test_a_revoked_user_can_no_longer_call_the_api(client: TestClient, registered: Engine) -> None:
    token = user_token(registered, "vendor-maxhub", "vendor", vendor="MAXHUB")
    assert client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    assert client.post("/api/v1/users/vendor-maxhub/revoke").status_code == 200
    refused = client.get("/api/v1/devices", headers=bearer(token))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


@pytest.mark.parametrize("role", ["technician", "vendor"])
def test_technicians_and_vendors_are_refused(
    client: TestClient, registered: Engine, tokens: Tokens, role: str
) -> None:
    as_them = tokens.headers(role)
    assert client.get("/api/v1/users", headers=as_them).status_code == 403
    wider = {"name": "sneaky", "role": "ops"}
    assert client.post("/api/v1/users", json=wider, headers=as_them).status_code == 403
    own = "tech-upm" if role == "technician" else "vendor-seewo"
    widen = {"role": "ops"}
    assert client.patch(f"/api/v1/users/{own}", json=widen, headers=as_them).status_code == 403
    assert client.post("/api/v1/users/ops-centre/revoke", headers=as_them).status_code == 403
    users = {u["name"]: u for u in client.get("/api/v1/users").json()}
    assert "sneaky" not in users and users[own]["role"] == role
    assert users["ops-centre"]["state"] == "active"
    with Session(registered) as session:
        denied = session.exec(
            select(AuditEntry).where(AuditEntry.outcome == "denied", AuditEntry.actor == own)
        ).all()
    assert {d.action for d in denied} == {"users:read", "users:write"}


def test_the_last_ops_user_is_neither_revoked_nor_demoted(
    client: TestClient, registered: Engine
) -> None:
    refused = client.post("/api/v1/users/ops-centre/revoke")
    assert refused.status_code == 409
    assert "last active ops user" in refused.json()["detail"]
    to_technician = {"role": "technician", "sites": ["upm"]}
    demoted = client.patch("/api/v1/users/ops-centre", json=to_technician)
    assert demoted.status_code == 409 and "last active ops user" in demoted.json()["detail"]
    assert client.get("/api/v1/auth/me").json()["role"] == "ops"  # still ops, still in

    # With a second ops user, the first may step down, and then the second is the last.
    second = client.post("/api/v1/users", json={"name": "ops-night", "role": "ops"})
    assert second.status_code == 201
    night = user_token(registered, "ops-spare", "vendor", vendor="Seewo")  # not an ops
    assert client.post("/api/v1/users/ops-spare/revoke").status_code == 200
    assert client.get("/api/v1/users", headers=bearer(night)).status_code == 401
    with Session(registered) as session:
        from fleet.auth.users import create_token

        night_ops, _ = create_token(session, "ops-night", ttl=None)
    assert client.post("/api/v1/users/ops-centre/revoke").status_code == 200
    # ops-centre's own token is gone with it; ops-night cannot leave the fleet without ops.
    assert client.get("/api/v1/users").status_code == 401
    as_night = bearer(night_ops)
    assert client.post("/api/v1/users/ops-night/revoke", headers=as_night).status_code == 409
    assert (
        client.patch(
            "/api/v1/users/ops-night", json={"role": "vendor", "vendor": "Seewo"}, headers=as_night
        ).status_code
        == 409
    )


def test_a_new_role_ends_login_sessions_but_keeps_the_user(
    client: TestClient, registered: Engine
) -> None:
    assert (
        client.post(
            "/api/v1/users",
            json={"name": "moving-on", "role": "technician", "sites": ["upm"], "password": STRONG},
        ).status_code
        == 201
    )
    session_token = log_in(client, "moving-on").json()["access_token"]
    changed = client.patch("/api/v1/users/moving-on", json={"role": "vendor", "vendor": "seewo"})
    assert changed.status_code == 200, changed.text
    # The vendor as the fleet spells it; the technician's sites dropped with the old role.
    assert (changed.json()["vendor"], changed.json()["sites"]) == ("Seewo", [])
    assert client.get("/api/v1/devices", headers=bearer(session_token)).status_code == 401
    fresh = log_in(client, "moving-on").json()["access_token"]
    me = client.get("/api/v1/auth/me", headers=bearer(fresh)).json()
    assert (me["role"], me["vendor"]) == ("vendor", "Seewo")


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"name": "t1", "role": "technician", "sites": ["nowhere"]}, "sites", "unknown site"),
        ({"name": "t2", "role": "technician", "sites": ["UPM"]}, "sites", "upm"),
        ({"name": "t3", "role": "technician"}, "sites", "at least one site"),
        ({"name": "v1", "role": "vendor", "vendor": "Seewoo"}, "vendor", "did you mean 'Seewo'"),
        ({"name": "v2", "role": "vendor"}, "vendor", "needs its vendor"),
        ({"name": "o1", "role": "ops", "sites": ["upm"]}, "sites", "only a technician"),
        ({"name": "o2", "role": "ops", "vendor": "Seewo"}, "vendor", "only a vendor"),
        ({"name": "o3", "role": "admin"}, "role", "ops"),
        ({"name": "o4", "role": "ops", "password": "password1234"}, "password", "too easy"),
        ({"name": "o5", "role": "ops", "password": "short"}, "password", "at least 12"),
        ({"name": "bad name", "role": "ops"}, "name", "pattern"),
        ({"name": "o6", "role": "ops", "admin": True}, "admin", "Extra"),
    ],
)
def test_what_the_cli_refuses_the_api_refuses_with_its_reason(
    client: TestClient, body: dict[str, Any], field: str, says: str
) -> None:
    answer = client.post("/api/v1/users", json=body)
    assert answer.status_code == 422, answer.text
    problems = answer.json()["detail"]
    assert any(field in p["loc"] and says in p["msg"] for p in problems), problems
    assert body.get("password") is None or body["password"] not in answer.text
    assert body["name"] not in {u["name"] for u in client.get("/api/v1/users").json()}


def test_a_taken_name_is_409_and_an_unknown_user_404(client: TestClient) -> None:
    taken = client.post("/api/v1/users", json={"name": "tech-upm", "role": "ops"})
    assert taken.status_code == 409 and "exists" in taken.json()["detail"]
    assert client.patch("/api/v1/users/nobody", json={"role": "ops"}).status_code == 404
    assert client.post("/api/v1/users/nobody/revoke").status_code == 404
    assert client.post("/api/v1/users/%00x/revoke").status_code == 422


HOSTILE_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(min_size=60, max_size=70, alphabet="abc-"),
    st.sampled_from(["", "a" * 100_000, "\x00", "ops\x1b[31m", "tech\u202eupm", "upm\n", " "]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.one_of(HOSTILE_TEXT, st.from_regex(r"\Ah[a-z0-9]{1,12}\Z")),
    role=st.one_of(st.sampled_from(["ops", "technician", "vendor"]), HOSTILE_TEXT, st.integers()),
    sites=st.one_of(
        st.lists(st.sampled_from(["upm", "usthb", "tribhuvan", "UPM", "nowhere"]), max_size=4),
        st.lists(HOSTILE_TEXT, max_size=3),
        st.just(["upm"] * 300),
        st.text(max_size=5),
    ),
    vendor=st.one_of(st.none(), st.sampled_from(["Seewo", "maxhub", "Nobody"]), HOSTILE_TEXT),
)
def test_any_body_is_added_or_refused_with_its_reason(
    client: TestClient, registered: Engine, name: Any, role: Any, sites: Any, vendor: Any
) -> None:
    """Control characters, huge values, wrong types, unknown sites and vendors, wrong roles:
    a user is added as the rules allow (201), or refused with the field at fault (422) or as
    a name taken (409); never a 500, and nothing half-stored."""
    with Session(registered) as session:
        before = {u.name for u in session.exec(select(User)).all()}
    answer = client.post(
        "/api/v1/users", json={"name": name, "role": role, "sites": sites, "vendor": vendor}
    )
    event(f"status {answer.status_code}")
    assert answer.status_code in (201, 409, 422), (answer.status_code, answer.text[:300])
    with Session(registered) as session:
        after = {u.name: u for u in session.exec(select(User)).all()}
    if answer.status_code == 201:
        user = after[name]
        assert set(after) == before | {name}
        assert user.role == role and not CONTROL_RE.search(name)
        assert (user.role == "technician") == bool(user.sites)
        assert (user.role == "vendor") == (user.vendor is not None)
        assert client.post(f"/api/v1/users/{name}/revoke").status_code == 200
    else:
        assert set(after) == before
        assert answer.json()["detail"]  # the reason, said


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=HOSTILE_TEXT,
    body=st.one_of(
        st.fixed_dictionaries({"role": st.one_of(HOSTILE_TEXT, st.sampled_from(["ops"]))}),
        st.fixed_dictionaries({"sites": st.lists(HOSTILE_TEXT, max_size=3)}),
        st.fixed_dictionaries({"vendor": HOSTILE_TEXT}),
        st.just({"sites": ["usthb"]}),
    ),
)
def test_any_change_of_any_name_is_refused_or_made_never_a_500(
    client: TestClient, name: str, body: dict[str, Any]
) -> None:
    for target in (quote(name[:4000], safe=""), "tech-upm"):  # as long as a URL may be
        answer = client.patch(f"/api/v1/users/{target}", json=body)
        event(f"status {answer.status_code}")
        assert answer.status_code in (200, 404, 405, 409, 422), (answer.status_code, answer.text)
    users = {u["name"]: u for u in client.get("/api/v1/users").json()}
    tech = users["tech-upm"]
    assert tech["state"] == "active" and not CONTROL_RE.search("".join(tech["sites"]))
    assert users["ops-centre"]["role"] == "ops"


def test_two_ops_revoking_each_other_at_once_leave_one(migrated_postgres_url: str) -> None:
    """PostgreSQL: the active ops rows are locked while a revocation is made, so the other
    ops' revocation waits for it, then sees it and is refused; the fleet keeps one ops."""
    import threading

    from fleet.auth.users import LastOps, _refuse_last_ops, get_user, revoke_user
    from fleet.db import make_engine, migrate

    engine = make_engine(migrated_postgres_url)
    try:
        migrate(engine)
        user_token(engine, "ops-a", "ops")
        user_token(engine, "ops-b", "ops")
        outcome: list[object] = []

        def revoke_a() -> None:
            with Session(engine) as other:
                try:
                    outcome.append(revoke_user(other, "ops-a"))
                except LastOps as exc:
                    outcome.append(exc)

        with Session(engine) as first:
            b = get_user(first, "ops-b")
            _refuse_last_ops(first, b, "revoking them")  # what revoke_user("ops-b") does first
            b.revoked_at = b.created_at
            first.add(b)
            first.flush()
            racer = threading.Thread(target=revoke_a)
            racer.start()
            racer.join(timeout=2)
            assert racer.is_alive(), "the second revocation did not wait for the first"
            first.commit()
        racer.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], LastOps), outcome
        with Session(engine) as session:
            assert get_user(session, "ops-a").revoked_at is None
    finally:
        engine.dispose()


def test_the_command_line_changes_and_revokes_through_the_same_checks(
    registered: Engine, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`fleet users change` and `revoke` call what the API calls: the same refusals, the same
    audit entries."""
    from typer.testing import CliRunner

    from fleet.cli import app

    monkeypatch.setenv("FLEET_DATABASE_URL", registered.url.render_as_string(hide_password=False))
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    done = runner.invoke(app, ["users", "change", "tech-upm", "--site", "upm", "--site", "usthb"])
    assert done.exit_code == 0, done.output
    assert "tech-upm is now technician\tsites: upm, usthb" in done.output
    refused = runner.invoke(app, ["users", "revoke", "ops-centre"])
    assert refused.exit_code == 2 and "last active ops user" in refused.output
    demoted = runner.invoke(app, ["users", "change", "ops-centre", "--role", "vendor"])
    assert demoted.exit_code == 2 and "needs its vendor" in demoted.output
    with Session(registered) as session:
        tech = session.exec(select(User).where(User.name == "tech-upm")).one()
        ops = session.exec(select(User).where(User.name == "ops-centre")).one()
        assert (tech.sites, ops.role, ops.revoked_at) == (["upm", "usthb"], "ops", None)
    assert next(a for a in audit(registered) if a[1] == "user.change")[2] == "tech-upm"


def test_a_change_is_audited_before_its_answer_is_sent(
    registered: Engine, tokens: Tokens, tmp_path: Any
) -> None:
    """The permission's entry is in the audit log when the answer starts: a client reading the
    log as soon as its change is answered finds it, and a controller stopped between the two
    cannot leave the change unaudited."""
    app = create_app(Settings(data_dir=tmp_path, database_url=str(registered.url)), registered)
    watched, at_answer = read_at_answer(app, lambda: audit(registered, "users."))
    with TestClient(watched, headers=tokens.headers("ops")) as client:
        added = client.post(
            "/api/v1/users",
            json={"name": "tech-upm-3", "role": "technician", "sites": ["upm"], "password": STRONG},
        )
        taken = client.post(
            "/api/v1/users",
            json={"name": "tech-upm-3", "role": "technician", "sites": ["upm"], "password": STRONG},
        )
    assert (added.status_code, taken.status_code) == (201, 409), (added.text, taken.text)
    entry = ("ops-centre", "users.add_user", "POST /api/v1/users")
    assert at_answer[0] == [entry]  # the change's entry, written before its answer began
    assert at_answer[1] == [entry, entry]  # and the refused one's too
