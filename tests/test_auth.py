"""Authentication and refusals: login, and every kind of bad token or out-of-scope request is
refused, logged in the audit log, and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.api.app import create_app
from fleet.auth import passwords
from fleet.auth.models import ApiToken, AuditEntry, User
from fleet.auth.passwords import verify_password
from fleet.auth.tokens import token_hash
from fleet.auth.users import revoke_user
from fleet.protocol.messages import utcnow
from fleet.settings import Settings
from tests.fixtures_auth import PASSWORD, Tokens, user_token


@pytest.fixture
def client(registered: Engine) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    with TestClient(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def denied(engine: Engine) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.exec(select(AuditEntry).where(AuditEntry.outcome == "denied")))


def test_login_gives_short_lived_token_and_cookie(client: TestClient, tokens: Tokens) -> None:
    answer = client.post("/api/v1/auth/token", data={"username": "tech-upm", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert "fleet_token" in answer.cookies
    me = client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
    assert me.json() == {"name": "tech-upm", "role": "technician", "sites": ["upm"], "vendor": None}


def test_wrong_password_is_refused_and_audited(client: TestClient, tokens: Tokens) -> None:
    answer = client.post("/api/v1/auth/token", data={"username": "tech-upm", "password": "nope"})
    assert answer.status_code == 401
    assert "nope" not in answer.text
    audit = client.get("/api/v1/audit?action=login", headers=tokens.headers("ops")).json()
    assert [(e["actor"], e["outcome"]) for e in audit["items"]] == [("tech-upm", "denied")]


def test_tokens_are_stored_only_as_hashes(registered: Engine, tokens: Tokens) -> None:
    with Session(registered) as session:
        stored = {t.token_hash for t in session.exec(select(ApiToken))}
    assert token_hash(tokens.ops) in stored and tokens.ops not in stored


def test_passwords_are_stored_as_argon2id_at_the_products_parameters() -> None:
    """The product's own hashing (the tests' users use cheaper parameters, fixtures_auth)."""
    stored = passwords.password_context().hash(PASSWORD)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$") and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + "!", stored)


def test_a_pbkdf2_hash_still_verifies_and_is_replaced_at_the_next_login(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    old = passwords.LegacyPbkdf2Hasher().hash(PASSWORD)
    with Session(registered) as session:
        user = session.exec(select(User).where(User.name == "tech-upm")).one()
        user.password_hash = old
        session.add(user)
        session.commit()
    refused = client.post("/api/v1/auth/token", data={"username": "tech-upm", "password": "x"})
    assert refused.status_code == 401
    with Session(registered) as session:  # a wrong password changes nothing
        assert session.exec(select(User).where(User.name == "tech-upm")).one().password_hash == old
    answer = client.post("/api/v1/auth/token", data={"username": "tech-upm", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    with Session(registered) as session:
        stored = session.exec(select(User).where(User.name == "tech-upm")).one().password_hash
    assert stored is not None and stored.startswith("$argon2id$")
    assert verify_password(PASSWORD, stored)
    again = client.post("/api/v1/auth/token", data={"username": "tech-upm", "password": PASSWORD})
    assert again.status_code == 200


def test_unknown_or_mangled_hashes_are_no_match() -> None:
    for stored in (
        "",
        "plain",
        "pbkdf2_sha256$x$y$z",
        "pbkdf2_sha256$99999999999$AA==$AA==",
        "$argon2id$v=19$m=1,t=1,p=1$broken",
    ):
        assert not verify_password(PASSWORD, stored)


@pytest.mark.parametrize(
    ("case", "reason", "audited_as"),
    [
        # Nobody's token: counted, not stored (a flood must not grow the audit table).
        ("missing", "missing", None),
        ("malformed", "malformed", None),
        ("unknown", "unknown", None),
        # A real user's token, refused: someone to hold to account.
        ("expired", "expired", "old"),
        ("revoked", "revoked", "gone"),
    ],
)
def test_bad_tokens_are_refused_with_401_and_logged(
    client: TestClient,
    registered: Engine,
    tokens: Tokens,
    case: str,
    reason: str,
    audited_as: str | None,
) -> None:
    if case == "missing":
        headers: dict[str, str] = {}
    elif case == "malformed":
        headers = bearer("not-a-token")
    elif case == "unknown":
        headers = bearer("fleet_" + "A" * 43)
    elif case == "expired":
        headers = bearer(user_token(registered, "old", "ops", ttl=timedelta(seconds=-1)))
    else:
        token = user_token(registered, "gone", "ops")
        with Session(registered) as session:
            revoke_user(session, "gone")
        headers = bearer(token)
    before = refusals(reason)
    answer = client.get("/api/v1/devices", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert refusals(reason) == before + 1
    if audited_as is None:
        assert denied(registered) == []
    else:
        assert [(e.actor, e.detail) for e in denied(registered)] == [
            (audited_as, {"status": 401, "reason": reason})
        ]


def refusals(reason: str) -> float:
    total = 0.0
    for caller in ("anonymous", "user"):
        value = REGISTRY.get_sample_value(
            "fleet_auth_refused_total", {"reason": reason, "caller": caller}
        )
        total += value or 0.0
    return total


def test_a_flood_of_bad_tokens_is_counted_not_stored(
    client: TestClient, registered: Engine
) -> None:
    """200 requests with a token nobody issued add no audit row; each is counted."""
    before = refusals("unknown")
    for n in range(200):
        answer = client.get("/api/v1/sites", headers=bearer("fleet_" + f"{n:043d}"))
        assert answer.status_code == 401
    assert refusals("unknown") == before + 200
    with Session(registered) as session:
        assert session.exec(select(AuditEntry)).all() == []


def test_a_login_with_a_name_nobody_has_is_counted_not_stored(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    before = refusals("login_unknown_user")
    answer = client.post(
        "/api/v1/auth/token", data={"username": "nobody\x00\x1b[2J", "password": "x"}
    )
    assert answer.status_code == 401
    assert refusals("login_unknown_user") == before + 1
    assert denied(registered) == []


def test_wrong_role_is_403_and_nothing_changes(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    answer = client.post(
        "/api/v1/sites/upm/phases",
        json={"phase": 9, "rooms": []},
        headers=tokens.headers("technician"),
    )
    assert answer.status_code == 403
    phases = client.get("/api/v1/sites/upm/phases", headers=tokens.headers("ops")).json()
    assert all(p["phase"] != 9 for p in phases)
    (entry,) = denied(registered)
    assert (entry.actor, entry.action, entry.detail) == (
        "tech-upm",
        "programme:write",
        {"status": 403, "reason": "role"},
    )


def test_technician_sees_only_their_sites(client: TestClient, tokens: Tokens) -> None:
    headers = tokens.headers("technician")
    devices = client.get("/api/v1/devices?limit=1000", headers=headers).json()["items"]
    assert devices and {d["site_code"] for d in devices} == {"upm"}
    sites = client.get("/api/v1/sites", headers=headers).json()
    assert [s["code"] for s in sites] == ["upm"]


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "/api/v1/devices?site=tribhuvan", None),  # a query
        ("GET", "/api/v1/sites/tribhuvan", None),  # a path
        ("GET", "/api/v1/alerts?site=tribhuvan", None),
        ("POST", "/api/v1/enrolment/tokens", {"site": "tribhuvan"}),  # a body
    ],
)
def test_technician_naming_another_site_is_refused(
    client: TestClient, registered: Engine, tokens: Tokens, method: str, url: str, body: object
) -> None:
    answer = client.request(method, url, json=body, headers=tokens.headers("technician"))
    assert answer.status_code == 403, answer.text
    assert "tribhuvan" in answer.json()["detail"]
    assert [e.detail for e in denied(registered)] == [{"status": 403, "reason": "scope"}]


def test_vendor_sees_only_its_devices_and_not_others_by_id(
    client: TestClient, tokens: Tokens
) -> None:
    headers = tokens.headers("vendor")
    devices = client.get("/api/v1/devices?limit=1000", headers=headers).json()["items"]
    assert devices and {d["vendor"] for d in devices} == {"Seewo"}
    other = client.get("/api/v1/devices/usthb-sc1-panel-1", headers=headers)  # MAXHUB
    missing = client.get("/api/v1/devices/no-such-device", headers=headers)
    assert other.status_code == missing.status_code == 404
    assert other.json()["detail"].replace("usthb-sc1-panel-1", "X") == missing.json()[
        "detail"
    ].replace("no-such-device", "X")
    assert client.get("/api/v1/devices?vendor=MAXHUB", headers=headers).status_code == 403
    assert client.get("/api/v1/reports?vendor=maxhub", headers=headers).status_code == 403
    assert client.get("/api/v1/sites", headers=headers).status_code == 403


def test_audit_log_is_for_ops_only(client: TestClient, tokens: Tokens) -> None:
    assert client.get("/api/v1/audit", headers=tokens.headers("ops")).status_code == 200
    for role in ("technician", "vendor"):
        assert client.get("/api/v1/audit", headers=tokens.headers(role)).status_code == 403


def test_logout_revokes_the_login_token(client: TestClient, tokens: Tokens) -> None:
    token = client.post(
        "/api/v1/auth/token", data={"username": "ops-centre", "password": PASSWORD}
    ).json()["access_token"]
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    client.cookies.clear()
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 401


def test_revoking_a_user_refuses_their_token_at_once_though_it_was_just_used(
    client: TestClient, registered: Engine, tokens: Tokens
) -> None:
    # tokens: ops-centre is another ops user, so "leaving" is not the last (fleet.auth.users).
    token = user_token(registered, "leaving", "ops")
    assert client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    with Session(registered) as session:
        revoke_user(session, "leaving")
    assert client.get("/api/v1/devices", headers=bearer(token)).status_code == 401


def test_a_revocation_by_another_process_is_honoured_within_the_verified_ttl(
    client: TestClient, registered: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from fleet.auth.tokens import VERIFIED

    monkeypatch.setattr(VERIFIED, "ttl_s", 0.3)
    token = user_token(registered, "elsewhere", "ops")
    assert client.get("/api/v1/devices", headers=bearer(token)).status_code == 200
    with Session(registered) as session:  # as another process would: not through this one
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).one()
        row.revoked_at = utcnow()
        session.add(row)
        session.commit()
    time.sleep(0.35)
    assert client.get("/api/v1/devices", headers=bearer(token)).status_code == 401


def test_login_token_expires(registered: Engine, client: TestClient, tokens: Tokens) -> None:
    token = client.post(
        "/api/v1/auth/token", data={"username": "ops-centre", "password": PASSWORD}
    ).json()["access_token"]
    with Session(registered) as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == token_hash(token))).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()
    client.cookies.clear()
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 401


def test_dashboard_sends_to_login_and_back(client: TestClient, tokens: Tokens) -> None:
    first = client.get("/sites/upm", follow_redirects=False)
    assert (first.status_code, first.headers["location"]) == (303, "/login?next=/sites/upm")
    wrong = client.post("/login", data={"username": "tech-upm", "password": "x", "next": "/"})
    assert wrong.status_code == 401
    answer = client.post(
        "/login",
        data={"username": "tech-upm", "password": PASSWORD, "next": "/sites/upm"},
        follow_redirects=False,
    )
    assert (answer.status_code, answer.headers["location"]) == (303, "/sites/upm")
    assert client.get("/sites/upm").status_code == 200
    assert client.get("/sites/tribhuvan").status_code == 403  # not their site
    overview = client.get("/")  # the overview, of their sites only
    assert overview.status_code == 200 and 'data-site="upm"' in overview.text
    assert 'data-site="tribhuvan"' not in overview.text
    assert client.get("/programme").status_code == 403  # the programme page is for ops


def test_changes_and_report_downloads_are_audited(client: TestClient, tokens: Tokens) -> None:
    client.post("/api/v1/rollouts/999/pause", headers=tokens.headers("ops"))
    client.get("/api/v1/reports", headers=tokens.headers("vendor"))
    entries = client.get("/api/v1/audit", headers=tokens.headers("ops")).json()["items"]
    seen = {(e["actor"], e["action"], e["outcome"]) for e in entries}
    assert ("ops-centre", "rollouts.pause", "failed 404") in seen
    assert ("vendor-seewo", "reports.list_reports", "ok") in seen


def test_a_long_strong_password_is_judged_not_refused_with_a_500() -> None:
    """zxcvbn raises past 72 characters; a passphrase longer than that is still judged."""
    from fleet.auth.password_policy import password_problem

    long_phrase = "harbour lantern quietly orbits " * 10
    assert password_problem(long_phrase, ["ops-centre"]) is None
    assert password_problem("a" * 5000, ["ops-centre"]) is not None


def test_any_password_gets_a_verdict() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fleet.auth.password_policy import password_problem

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=3000))
    def judged(password: str) -> None:
        problem = password_problem(password, ["tech-upm"])
        assert problem is None or "Fix:" in problem

    judged()
